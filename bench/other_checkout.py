"""Run the dagrun of another checkout (a source tree, e.g. `git archive main | tar -x -C DIR`)
with this venv's packages: `python bench/other_checkout.py DIR ARGS...` is `dagrun ARGS...` of
DIR. For A/B runs (bench/cluster.py's BASELINE). `PYTHONPATH=DIR python -m dagrun` does not do
it: the editable install's import hook finds this checkout's dagrun before PYTHONPATH."""
import runpy
import sys

if __name__ == "__main__":
    root = sys.argv.pop(1)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, root)
    for k in [k for k in sys.modules if k == "dagrun" or k.startswith("dagrun.")]:
        del sys.modules[k]
    runpy.run_module("dagrun", run_name="__main__", alter_sys=True)
