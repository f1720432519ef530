#!/usr/bin/env bash
# Lists the CPythons 3.11+ this machine has, one "X.Y /path/to/python" a line, newest patch of each minor.
# Looks at python3.X on PATH (skipping pyenv shims that refuse a version not selected) and at pyenv's versions.
set -uo pipefail
declare -A seen
candidates=()
for minor in $(seq 11 20); do
  for exe in "$(command -v "python3.$minor" 2>/dev/null)" \
             $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3."$minor".*/bin/python3 2>/dev/null | sort -V -r); do
    [ -n "$exe" ] && candidates+=("$exe")
  done
done
for exe in "${candidates[@]}"; do
  version=$("$exe" -c 'import sys, platform; assert platform.python_implementation() == "CPython"; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) || continue
  [ -n "${seen[$version]:-}" ] && continue
  seen[$version]=1
  echo "$version $exe"
done | sort -V
