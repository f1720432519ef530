#!/usr/bin/env bash
# The main job: JupyterLab opened on the quickstart notebook (same venv as the tests).
# Pass --demo for the terminal demo instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup-env.sh
if [ "${1:-}" = "--demo" ]; then
  shift
  exec python -m procengine_nb demo "$@"
fi
extra=()
[ "$(id -u)" = "0" ] && extra+=(--allow-root)
exec jupyter lab --ServerApp.ip=127.0.0.1 ${extra[@]+"${extra[@]}"} "notebooks/01-quickstart.ipynb" "$@"
