#!/bin/sh
# Make the example's repository: calc/ next to this file, a git repository with one commit.
# Run once before `dagrun run examples/code-edit/dag.json` (again after deleting calc/).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo="$here/calc"
if [ -e "$repo" ]; then echo "$repo exists already" >&2; exit 0; fi
mkdir "$repo"
cp "$here/seed/calc.py" "$here/seed/README.md" "$repo/"
cp "$here/seed/gitignore" "$repo/.gitignore"   # (no dot-file in the package: wheels drop them)
export GIT_AUTHOR_NAME=example GIT_AUTHOR_EMAIL=example@localhost
export GIT_COMMITTER_NAME=example GIT_COMMITTER_EMAIL=example@localhost
git -C "$repo" init -q -b main
git -C "$repo" add -A
git -C "$repo" commit -q -m "calc: add()"
echo "created $repo"
