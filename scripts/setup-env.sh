#!/usr/bin/env bash
# Create (or reuse) .venv with the package and every extra installed. Sourced by the other scripts.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PROCENGINE_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "!! $PY is $("$PY" -V 2>&1 || echo 'not runnable'): procengine_nb needs CPython 3.11 or newer (set PYTHON=...)" >&2
  return 1 2>/dev/null || exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.procengine-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "== installing procengine_nb with all extras into $VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[lab,processes,dask,test,bench]"
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
