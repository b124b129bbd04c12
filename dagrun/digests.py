"""SHA-1 and SHA-256 without hashlib's OpenSSL. hashlib's first import loads libcrypto and
reads its configuration: ~12 M instructions, 3-4 ms of every `dagrun` start (docs/performance.md,
"2026-12-06 (2): start-up and exit"), for the few digests dagrun takes -- a host's tag, a
plan's and a task definition's digest, the result cache's keys. The interpreter's own
implementations (_sha1, _sha256 -- _sha2 from Python 3.12) give the same digests with the
same interface; an interpreter built without them gets hashlib's."""
from __future__ import annotations

try:
    from _sha1 import sha1
except ImportError:            # pragma: no cover - a Python built without its own SHA-1
    from hashlib import sha1
try:
    from _sha2 import sha256   # Python 3.12+
except ImportError:
    try:
        from _sha256 import sha256
    except ImportError:        # pragma: no cover
        from hashlib import sha256

__all__ = ["sha1", "sha256"]
