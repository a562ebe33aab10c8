#!/usr/bin/env bash
# The README's main command: install into .venv (created if missing) and open JupyterLab
# on the quickstart notebook. Extra arguments go to `jupyter lab` (e.g. --no-browser).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -e ".[lab]" 2> >(grep -v "is ignored" >&2)
# Jupyter refuses to run as root (containers, CI machines) unless told it may.
root_flag=()
[ "$(id -u)" = 0 ] && root_flag=(--allow-root)
exec .venv/bin/jupyter lab notebooks/quickstart.ipynb "${root_flag[@]}" "$@"
