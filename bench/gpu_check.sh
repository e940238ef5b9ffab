#!/usr/bin/env bash
# The one GPU check: build the CUDA path, run the CUDA tests (C++ and Python) and the CUDA
# benchmark, and print a short table. Run it on the GPU machine through the device tool:
#   here:   bash scripts/prepare_gpu_deps.sh            (copies Eigen/xtensor/xtl/Catch2 headers to .deps)
#   device: run(command="bash bench/gpu_check.sh", carry=[".deps"], timeout_s=540)
# Results land in $OUT (when set) and on stdout; copy the table into bench/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
log() { echo "== $*"; }
status=0

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
nvcc --version | tail -1
nproc

log "build (sm_90 + compute_75 PTX)"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps" \
  -DCMAKE_CUDA_ARCHITECTURES="90-real;75-virtual" -DLABELWISE_BUILD_EXAMPLES=OFF >"$OUT/configure.log" 2>&1 \
  && cmake --build build-gpu -j "$(nproc)" >"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }

log "C++ tests: CUDA-tagged, then all the rest"
./build-gpu/tests/labelwise_tests "[cuda]" 2>&1 | tee "$OUT/cuda_tests.log" | tail -4 || status=1
./build-gpu/tests/labelwise_tests "~[cuda]" 2>&1 | tail -2 || status=1

log "Python: pip install and the CUDA / CuPy tests"
CMAKE_ARGS="-DCMAKE_PREFIX_PATH=$PWD/.deps -DCMAKE_CUDA_ARCHITECTURES=90-real;75-virtual" \
  python3 -m pip install -q --no-build-isolation --no-deps . >"$OUT/pip.log" 2>&1 || { tail -20 "$OUT/pip.log"; status=1; }
(cd tests/python && python3 -m pytest -q -p no:cacheprovider -rs 2>&1 | tail -6) || status=1

log "CUDA benchmark (CUDA events, best of 5-10)"
./build-gpu/bench/bench_cuda 2>&1 | tee "$OUT/bench_cuda.md" || status=1
log "fused head sample-and-score: CPU == CUDA test, then 512x512x300, F=64, C=14, K=20 (CUDA events)"
./build-gpu/tests/labelwise_tests "[cuda][head_score]" 2>&1 | tail -2 || status=1
timeout 240 python3 bench/bench_heads.py --device cuda 2>&1 | tee "$OUT/bench_heads_cuda.md" || status=1
log "core-set and BADGE on CUDA vs the CPU (issue sizes)"
timeout 300 python3 bench/diversity_gpu.py 2>&1 | tee "$OUT/diversity_gpu.md" || status=1
log "BatchBALD on CUDA vs the CPU (N=5000, K=20, C=10, b=10, num_samples=10000)"
timeout 200 python3 bench/batchbald_gpu.py 2>&1 | tee "$OUT/batchbald_gpu.md" || status=1
log "exact kNN graph on CUDA: CPU == GPU on 20000 rows, then N=10^6, D=128, k=10 (shrunk if the pilot predicts > 75 s)"
timeout 150 python3 bench/knn_gpu.py 2>&1 | tee "$OUT/knn_gpu.md" || status=1
log "Python: labelwise vs the torch formulation on the same CUDA tensors (CUDA events)"
timeout 180 python3 bench/compare_uncertainty_gpu.py --device cuda 2>&1 | tee "$OUT/compare_gpu.md" || status=1
exit $status
