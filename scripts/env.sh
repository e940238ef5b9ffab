# Sourced by the scripts: common paths and compiler launcher.
export PATH="/usr/local/cuda/bin:$PATH"
LW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LW_PY="$LW_ROOT/.venv/bin/python"
LW_JOBS="${LW_JOBS:-$(nproc)}"
LW_LAUNCHER=()
if command -v ccache >/dev/null 2>&1; then
  LW_LAUNCHER=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi
