#!/usr/bin/env bash
# The README's test command: install into .venv (created if missing) and run the whole suite.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch and torchvision come from the registry together (torchvision pins its torch);
# the filter only hides pip's notes about local index folders this machine lists.
.venv/bin/python -m pip install -q -e ".[test]" 2> >(grep -v "is ignored" >&2)
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }
.venv/bin/python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
.venv/bin/ruff check
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
