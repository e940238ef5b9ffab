#!/usr/bin/env bash
# The main job: install what is missing, build and install labelwise into ./.venv, then score a real
# data set (scikit-learn's breast-cancer data by default) and print the items to label next.
# Extra arguments go to examples/python/next_to_label.py (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
if ! "$LW_PY" -c "import labelwise" 2>/dev/null || [[ -n "$(find include src python CMakeLists.txt pyproject.toml -newer .venv/.labelwise-installed 2>/dev/null | head -1)" ]] || [[ ! -f .venv/.labelwise-installed ]]; then
  echo "[run] building and installing labelwise into .venv (pip install .)"
  "$LW_PY" -m pip install -q --no-build-isolation .
  touch .venv/.labelwise-installed
fi
exec "$LW_PY" examples/python/next_to_label.py "$@"
