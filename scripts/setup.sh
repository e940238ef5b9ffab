#!/usr/bin/env bash
# Installs everything labelwise needs on a fresh Debian 12 machine (run as root), idempotently:
# C++ libraries from Debian's apt, Python packages from PyPI into ./.venv (made from the python3 on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(build-essential cmake ninja-build ccache git pkg-config
  libeigen3-dev xtensor-dev xtl-dev pybind11-dev catch2 libbenchmark-dev libtorch-dev zlib1g-dev
  mricron-data python3-venv python3-dev)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  # installed, not merely known to dpkg (a removed but not purged package still answers dpkg -s)
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" == installed ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "[setup] apt: all ${#APT_PACKAGES[@]} packages present"
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv from $(command -v "$PY") ($("$PY" --version))"
  "$PY" -m venv .venv
fi
# pip skips what is already satisfied, so this is quick after the first run.
echo "[setup] pip: requirements-dev.txt (torch is large; the first run takes a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
echo "[setup] pip: requirements-peers.txt (comparison peers, --no-deps)"
.venv/bin/python -m pip install -q --no-deps -r requirements-peers.txt
if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  echo "[setup] CUDA: $( (command -v nvcc || echo /usr/local/cuda/bin/nvcc) ) found; the CUDA kernels will be built"
else
  echo "[setup] CUDA: nvcc not found; building the CPU-only library (CUDA input then raises 'built without CUDA')"
fi
