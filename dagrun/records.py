"""The methods @dataclass generates, for a class that writes them out instead.

@dataclass makes __init__, __repr__ and __eq__ (and more when frozen) by building their
source text and compiling it with exec, class by class: ~0.4 ms a class, ~80 M instructions
-- a quarter -- of a one-task `dagrun run` for the ~30 classes of its path (docs/performance.md,
"2026-12-06 (2): start-up and exit"). A class declared `@dataclass(init=False, repr=False,
eq=False)` keeps its field table (dataclasses.fields, replace, asdict work as before) and
compiles nothing; it writes its __init__ out (the same assignments, a default_factory field
taking NEW as "not given"; a frozen one sets its fields with object.__setattr__), and takes
__repr__ and __eq__ from plain_methods (and a frozen one frozen_methods) -- the same
output and the same comparison as the generated ones (tests/test_cli_startup.py checks each
against @dataclass's own)."""
from __future__ import annotations

from dataclasses import FrozenInstanceError
from operator import attrgetter

NEW = object()     # "not given" for a field with a default_factory (dataclasses' _HAS_DEFAULT_FACTORY)


def plain_methods(*names: str):
    """(__repr__, __eq__) over the fields `names` (in order): what @dataclass's repr=True and
    eq=True generate -- `Name(a=1, b='x')`, and equality of the fields' tuples between
    objects of the very same class (NotImplemented otherwise). A class defining __eq__ gets
    __hash__ None, as a dataclass with eq=True and not frozen."""
    def __repr__(self):
        return self.__class__.__qualname__ + "(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in names) + ")"

    values = _values(names)

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return values(self) == values(other)
        return NotImplemented
    return __repr__, __eq__


def frozen_methods(*names: str):
    """(__setattr__, __delattr__, __hash__) of @dataclass(frozen=True) with eq=True, for a class
    declared without frozen (whose __init__ sets its fields with object.__setattr__): any
    assignment or deletion on an instance raises FrozenInstanceError, worded as the generated
    methods word it, and the hash is that of the tuple of the compared fields `names`."""
    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")

    values = _values(names)

    def __hash__(self):
        return hash(values(self))
    return __setattr__, __delattr__, __hash__


def _values(names: tuple) -> "attrgetter":
    """The fields' values as one tuple (attrgetter of one name gives the value alone)."""
    return attrgetter(*names) if len(names) > 1 else (lambda obj, n=names[0]: (getattr(obj, n),))
