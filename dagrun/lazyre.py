"""Regular expressions compiled on their first use.

re.compile of a pattern costs 0.6-1.1 M instructions (the parser and compiler are Python);
the run path's modules held 14 compiled at import, of which a one-task `dagrun run` uses 4
(docs/performance.md, "2026-12-06 (3): start-up"). A module-level pattern of a module that a
run loads is a `Pattern` instead: the same name and use, compiled when first used."""
from __future__ import annotations

import re


class Pattern:
    """`re.compile(pattern, flags)`, made on the first use of anything but `.pattern`: each
    other attribute (fullmatch, match, search, sub, ...) is the compiled pattern's, kept on
    this object once read, so later uses cost what they cost on the compiled pattern."""

    def __init__(self, pattern: str, flags: int = 0):
        self.pattern = pattern
        self._flags = flags

    def __getattr__(self, name: str):          # only for names not yet kept here
        value = getattr(re.compile(self.pattern, self._flags), name)
        setattr(self, name, value)
        return value

    def __repr__(self) -> str:
        return f"lazyre.Pattern({self.pattern!r})"
