#!/usr/bin/env bash
# The README's main command: install into .venv (created if missing) and open JupyterLab on the
# quickstart notebook. JupyterLab runs in work/, a git-ignored working copy of notebooks/ made on
# first run (new notebooks are added later, yours are never overwritten), so running and saving
# the notebooks never modifies the checkout. Extra arguments go to `jupyter lab` (e.g. --no-browser).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e ".[lab]" 2> >(grep -v "is ignored" >&2)
mkdir -p work
for nb in notebooks/*.ipynb; do
  [ -e "work/$(basename "$nb")" ] || cp "$nb" work/
done
# Jupyter refuses to run as root (containers, CI machines) unless told it may.
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-root)
cd work
exec ../.venv/bin/jupyter lab quickstart.ipynb "${root_flag[@]}" "$@"
