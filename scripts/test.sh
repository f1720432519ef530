#!/usr/bin/env bash
# The whole test suite, from a fresh machine.
#
#   scripts/test.sh                 everything: on the default Python (python3, or $PYTHON) lint, doctests,
#                                   unit/kernel/stress/browser tests with coverage, the notebooks under nbval and
#                                   a benchmark smoke run; then the suite (browser tests and benchmark aside) on
#                                   every other CPython 3.11+ this machine has, each in its own fresh venv.
#   scripts/test.sh --python 3.12   the suite (browser tests and benchmark aside) on that one Python only.
#
# Extra arguments go to pytest. Under CI=true a missing CPython 3.11, 3.12 or 3.13 is a failure.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUIRED_IN_CI="3.11 3.12 3.13"

only=""
if [ "${1:-}" = "--python" ]; then
  only="${2:?--python needs a version, e.g. --python 3.12}"
  shift 2
fi

python_for() {  # the interpreter of version $1, or nothing
  bash scripts/pythons.sh | awk -v v="$1" '$1 == v { print $2 }'
}

suite_on() {  # $1 = X.Y: a fresh venv for that Python, then the suite without the browser tests
  local version="$1"; shift
  local exe; exe="$(python_for "$version")"
  if [ -z "$exe" ]; then
    echo "!! CPython $version is not on this machine (scripts/pythons.sh lists what is)" >&2
    return 1
  fi
  local venv="$ROOT/.venv-$version"
  if [ "${CI:-}" = "true" ]; then rm -rf "$venv"; fi
  echo "== Python $version ($exe): venv $venv"
  (
    export PYTHON="$exe" PROCENGINE_VENV="$venv"
    source scripts/setup-env.sh
    python -c 'import sys; print("== pytest on", sys.version.split()[0])'
    python -m pytest -p no:cacheprovider --doctest-modules procengine_nb tests --ignore=tests/e2e -m "not e2e" "$@"
  )
}

if [ -n "$only" ]; then
  suite_on "$only" "$@"
  echo "== all checks passed on Python $only"
  exit 0
fi

source scripts/setup-env.sh
main_version="$(python -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

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

echo "== pytest on Python $main_version (docstring examples, unit, kernel, stress, browser) with coverage"
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

echo "== the other CPythons"
versions="$(bash scripts/pythons.sh | awk '{ print $1 }')"
echo "found: $(echo $versions)"
if [ "${CI:-}" = "true" ]; then
  for required in $REQUIRED_IN_CI; do
    if ! grep -qx "$required" <<<"$versions"; then
      echo "!! CI needs CPython $required and this machine has none (found: $(echo $versions))" >&2
      exit 1
    fi
  done
fi
for version in $versions; do
  [ "$version" = "$main_version" ] && continue
  suite_on "$version" "$@"
done
echo "== all checks passed (Pythons: $(echo $versions))"
