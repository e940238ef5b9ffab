#!/usr/bin/env bash
# The main job: install what is missing, build and install labelwise into ./.venv, then
#  1. score one MC-dropout model on real data (breast cancer) and print the items to label next;
#  2. run the default active-learning campaign on real data (scikit-learn's breast-cancer and digits data)
#     and write its report.
# Extra arguments go to the campaign (python -m labelwise.campaign --help), e.g. --quick, --out DIR.
set -euo pipefail
caller_dir=$PWD  # the campaign's --out / --data are paths relative to where the user ran this script
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
if ! "$LW_PY" -c "import labelwise" 2>/dev/null || [[ -n "$(find include src python CMakeLists.txt pyproject.toml -newer .venv/.labelwise-installed 2>/dev/null | head -1)" ]] || [[ ! -f .venv/.labelwise-installed ]]; then
  echo "[run] building and installing labelwise into .venv (pip install .)"
  if ((${#LW_LAUNCHER[@]})); then export CMAKE_ARGS="${CMAKE_ARGS:-} ${LW_LAUNCHER[*]}"; fi
  "$LW_PY" -m pip install -q --no-build-isolation -C build-dir=build-py/{wheel_tag} .
  touch .venv/.labelwise-installed
fi
echo "== what to label next (one round, breast cancer, BalEntAcq)"
"$LW_PY" examples/python/next_to_label.py
echo "== active-learning campaign"
cd "$caller_dir"
exec "$(dirname "$LW_PY")/labelwise-campaign" "$@"  # a console script: the caller's folder is not on sys.path
