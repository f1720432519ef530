#!/usr/bin/env bash
# The whole test suite, from a fresh machine: venv + deps, chromium for the browser tests, lint,
# unit/kernel/stress/browser tests with coverage, notebooks validated by nbval, a benchmark smoke run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup-env.sh

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing Debian chromium for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "!! chromium is missing: install it (apt-get install -y chromium); the browser tests need it" >&2
  fi
fi

echo "== ruff"
ruff check procengine_nb tests bench

echo "== pytest (docstring examples, unit, kernel, stress, browser) with coverage"
python -m pytest --doctest-modules procengine_nb tests --cov=procengine_nb --cov-report=term "$@"
echo "== coverage of the progress and cancellation modules (>= 95%)"
python -m coverage report --fail-under=95 --include='procengine_nb/progress.py,procengine_nb/cancellation.py'

if compgen -G "notebooks/*.ipynb" >/dev/null; then
  echo "== notebooks (nbval, strict output comparison)"
  python -m pytest -p no:cacheprovider --nbval --nbval-current-env \
    --nbval-sanitize-with notebooks/nbval-sanitize.cfg notebooks/
fi

if [ -f bench/__main__.py ]; then
  echo "== benchmark smoke run (tiny N, no timing assertion)"
  python -m bench --smoke
fi
echo "== all checks passed"
