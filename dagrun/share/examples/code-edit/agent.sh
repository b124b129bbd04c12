#!/bin/sh
# A fake coding agent: instead of an LLM it writes the change its task asks for into the
# current folder (its git worktree under dagrun), then says on stdout what it did. It runs
# offline; replace it by `claude -p` or `codex exec` for real work (docs/workspaces.md).
set -eu
cat > /dev/null                       # the prompt (a real agent reads it)
: "${DAGRUN_WORKSPACE:?run me through dagrun with a workspace}"
case "$DAGRUN_TASK" in
mul)
    mkdir -p ops
    printf 'def mul(a, b):\n    return a * b\n' > ops/mul.py
    echo "added ops/mul.py with mul()" ;;
div)
    mkdir -p ops
    printf 'def div(a, b):\n    if b == 0:\n        raise ZeroDivisionError("b must not be 0")\n    return a / b\n' > ops/div.py
    echo "added ops/div.py with div()" ;;
cli)
    # it starts from a snapshot that already holds both prerequisites' files
    test -e ops/mul.py && test -e ops/div.py || { echo "prerequisites missing" >&2; exit 1; }
    cat > cli.py <<'PY'
import sys

from calc import add
from ops.div import div
from ops.mul import mul

OPS = {"+": add, "*": mul, "/": div}

if __name__ == "__main__":
    a, op, b = sys.argv[1:4]
    print(OPS[op](float(a), float(b)))
PY
    echo "added cli.py using add, mul and div" ;;
tests)
    cat > test_calc.py <<'PY'
import unittest

from calc import add
from ops.div import div
from ops.mul import mul


class CalcTest(unittest.TestCase):
    def test_ops(self):
        self.assertEqual(add(2, 3), 5)
        self.assertEqual(mul(2, 3), 6)
        self.assertEqual(div(6, 3), 2)


if __name__ == "__main__":
    unittest.main()
PY
    python3 -m unittest -q test_calc 2>&1 | tail -1 >&2
    echo "added test_calc.py; the tests pass" ;;
*)
    echo "nothing to do for $DAGRUN_TASK" ;;
esac
