"""A tiny calculator: the code the example goal edits."""


def add(a, b):
    return a + b
