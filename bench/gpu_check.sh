#!/usr/bin/env bash
# The one GPU check: build the CUDA path once (library, C++ tests, CUDA benchmark and the Python
# extension, dropped next to the package: no second build by pip), run the CUDA tests (C++ and
# Python), then the benchmarks, most important first, each under its own timeout and all under one
# time budget, and print short tables. Run it on the GPU machine through the device tool:
#   here:   bash scripts/prepare_gpu_deps.sh            (copies Eigen/xtensor/xtl/Catch2 headers to .deps)
#   device: run(command="bash bench/gpu_check.sh", carry=[".deps"], timeout_s=570)
# A rerun can leave steps out (LW_GPU_SKIP="heads_cuda knn_gpu torch_cuda_tests ...", "sanitizers" for
# all three) and point the sanitizers at some tests (LW_MEMCHECK_A / LW_MEMCHECK_B / LW_RACECHECK:
# comma-separated Catch test specs, a comma inside a test name written \, or replaced by a *
# wildcard; prefix each with [cuda] ("[cuda]knn_graph*") or CPU tests of the same name run too, slowly;
# default "[cuda]"; a spec that matches nothing fails: -w NoTests).
# Every log lands in $OUT/logs.tgz (when set, it comes back even if the run is cut) and on stdout; copy the
# tables into bench/RESULTS.md. LW_GPU_BUDGET (seconds, default 540) stops starting new steps.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
# the device tool brings back at most 8 files: every log goes to $LOGS, packed into $OUT/logs.tgz
# after each step (so a run cut short still returns what it did)
LOGS=$(mktemp -d)
mkdir -p "$OUT"
pack() { tar czf "$OUT/logs.tgz" -C "$LOGS" . 2>/dev/null || true; }
trap pack EXIT
BUDGET=${LW_GPU_BUDGET:-540}
START=$(date +%s)
status=0
log() { echo "== [$(($(date +%s) - START)) s] $*"; }
# one row per step for the closing table: name, result, seconds
summary=()
record() { summary+=("$(printf '| %-24s | %-22s | %5s |' "$1" "$2" "$3")"); }
# outcome RC: a step's exit status in words (timeout's 124 is a time-out)
outcome() { (($1 == 0)) && echo ok || { (($1 == 124)) && echo "TIMED OUT" || echo "FAILED (exit $1)"; }; }
# LW_GPU_SKIP: step names to leave out (a rerun after a fix: "heads_cuda diversity_gpu")
SKIP=" ${LW_GPU_SKIP:-} "
# step NAME TIMEOUT CMD...: runs CMD (output to stdout and $LOGS/NAME.log) unless the budget is spent.
step() {
  local name=$1 limit=$2
  shift 2
  [[ $SKIP == *" $name "* ]] && { log "skipped $name (LW_GPU_SKIP)"; record "$name" "skipped (LW_GPU_SKIP)" -; return; }
  local left=$((BUDGET - ($(date +%s) - START)))
  if ((left < 20)); then
    log "skipped $name: time budget spent"
    record "$name" "skipped (budget)" -
    status=1
    return
  fi
  ((limit > left)) && limit=$left
  log "$name (timeout ${limit} s)"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | tail -40
  local rc=${PIPESTATUS[0]}
  ((rc != 0)) && { echo "   -> exit $rc"; status=1; }
  record "$name" "$(outcome "$rc")" "$(($(date +%s) - t0))"
  pack
}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:$PWD/tests/python${PYTHONPATH:+:$PYTHONPATH}"

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
nvcc --version | tail -1
echo "cores: $(nproc)"

[[ -d .deps ]] || echo "!! .deps is missing: run scripts/prepare_gpu_deps.sh here and pass carry=[\".deps\"]"
command -v nvcc >/dev/null || echo "!! nvcc is not on PATH: the build would have no CUDA kernels"

log "build (sm_90 + compute_75 PTX; library, CUDA benchmark and Python extension first, then the tests)"
PYBIND_DIR=$(python3 -m pybind11 --cmakedir 2>/dev/null || true)
configure() {
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps" \
    -DLABELWISE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="90-real;75-virtual" -DLABELWISE_BUILD_EXAMPLES=OFF \
    -DPython_EXECUTABLE="$(command -v python3)" ${PYBIND_DIR:+-Dpybind11_DIR="$PYBIND_DIR"} "$@" >"$LOGS/configure.log" 2>&1
}
# without Python headers / pybind11 the C++ tests and benchmark still run
configure -DLABELWISE_PYTHON=ON || { log "configure with Python failed: retrying without the extension"; \
  tail -15 "$LOGS/configure.log"; status=1; configure -DLABELWISE_PYTHON=OFF; } \
  || { tail -30 "$LOGS/configure.log"; exit 1; }
# one failing compile must not cost the rest: the library and the CUDA benchmark first, then the
# Python extension, then the tests
cmake --build build-gpu -j "$(nproc)" --target labelwise bench_cuda >"$LOGS/build.log" 2>&1 \
  || { tail -30 "$LOGS/build.log"; exit 1; }
log "library built"
if ninja -C build-gpu -t targets all 2>/dev/null | grep -q "^_core: "; then
  cmake --build build-gpu -j "$(nproc)" --target _core >"$LOGS/build_python.log" 2>&1 \
    || { tail -30 "$LOGS/build_python.log"; status=1; }
fi
cmake --build build-gpu -j "$(nproc)" >"$LOGS/build_tests.log" 2>&1 || { tail -30 "$LOGS/build_tests.log"; status=1; }
log "build done"
pack
python3 -c "import labelwise; print('labelwise', labelwise.__file__, 'CUDA:', labelwise.built_with_cuda())" || status=1

# 0. a C++ error must reach Python as its exception (it crashed the interpreter on this machine once:
#    Python 3.12, numpy 2.5, g++ 13 from /opt/gcc); on a crash, a native backtrace from cuda-gdb
cat >"$LOGS/errors.py" <<'PY'
import sys
if "torch" in sys.argv: import torch  # noqa: F401
import numpy as np
import labelwise.acquisition as A
import labelwise.uncertainty as U
for call in (lambda: A.batchbald(np.full((5, 3, 3), 1 / 3), 6, num_samples=10, seed=0),
             lambda: U.score(np.full((4, 2, 3), 0.5), ["bald"])):
    try:
        call()
        print("no error raised"); sys.exit(1)
    except ValueError as e:
        print("ValueError:", str(e)[:100])
PY
step python_errors 30 python3 -X faulthandler "$LOGS/errors.py"
step python_errors_torch 30 python3 -X faulthandler "$LOGS/errors.py" torch
if grep -q "Segmentation fault\|Fatal Python error" "$LOGS/python_errors.log" "$LOGS/python_errors_torch.log" 2>/dev/null \
  && command -v cuda-gdb >/dev/null; then
  step python_errors_backtrace 90 cuda-gdb -q -nx -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 "$LOGS/errors.py"
fi

# 1. correctness: every CUDA kernel against the CPU (C++), then the Python CUDA paths; meanwhile, in the
#    background, the sanitizers (compute-sanitizer works on Firecracker machines) look for memory errors
#    and races the comparisons cannot see, and the LibTorch component is built and its CUDA test run
step cuda_tests 150 ./build-gpu/tests/labelwise_tests -w NoTests "[cuda]"
bg_pids=()
bg_names=()
# bg_step NAME TIMEOUT CMD...: CMD in the background, output to $LOGS/NAME.log, "exit RC" appended
bg_step() {
  local name=$1 limit=$2
  shift 2
  [[ $SKIP == *" $name "* ]] && { log "skipped $name (LW_GPU_SKIP)"; return; }
  log "$name in the background (timeout $limit s)"
  (timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1; echo "exit $?" >>"$LOGS/$name.log") &
  bg_pids+=($!)
  bg_names+=("$name")
}
# sanitize NAME TOOL SPEC: compute-sanitizer TOOL over the C++ tests SPEC, in the background. SPEC is
# one argument: Catch2 v2 joins several test-spec arguments without a separator.
sanitize() {
  bg_step "$1" "${LW_SANITIZER_TIMEOUT:-150}" compute-sanitizer --tool "$2" --error-exitcode 9 \
    ./build-gpu/tests/labelwise_tests -w NoTests "$3"
}
if command -v compute-sanitizer >/dev/null && [[ $SKIP != *" sanitizers "* ]]; then
  sanitize memcheck memcheck "${LW_MEMCHECK_A:-[cuda]}"
  [[ -n ${LW_MEMCHECK_B:-} ]] && sanitize memcheck_b memcheck "$LW_MEMCHECK_B"
  sanitize racecheck racecheck "${LW_RACECHECK:-[cuda]}"
fi
# The LibTorch component (labelwise::torch) against the PyTorch that python3 holds: its own build
# folder, its CUDA test (C++ heads and torch adapter on CUDA tensors, on a stream of torch's pool)
torch_cuda() {
  local torch_dir
  torch_dir=$(python3 -c "import os, torch; print(os.path.join(torch.utils.cmake_prefix_path, 'Torch'))") || return 1
  cmake -S . -B build-gpu-torch -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps" \
    -DLABELWISE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DLABELWISE_BUILD_EXAMPLES=OFF \
    -DLABELWISE_BUILD_BENCHMARKS=OFF -DLABELWISE_TORCH=ON -DTorch_DIR="$torch_dir" || return 1
  cmake --build build-gpu-torch -j 8 --target labelwise_torch_tests || return 1
  # NoAssertions: a PyTorch that sees no GPU makes the test return after a warning, which must fail here
  ./build-gpu-torch/tests/labelwise_torch_tests -w NoAssertions "[cuda]"  # Catch2 v2: one -w only
}
export -f torch_cuda
bg_step torch_cuda_tests "${LW_TORCH_TIMEOUT:-240}" bash -c torch_cuda
# -k: the tests named for the GPU, plus those with a CUDA / CuPy branch under another name; xdist (when
# there) keeps going past a crashed test
xdist=(); python3 -c "import xdist" 2>/dev/null && xdist=(-n 4)
step python_cuda_tests 150 python3 -m pytest -q -p no:cacheprovider -rs "${xdist[@]}" -k \
  "cuda or gpu or cupy or torch_in_torch_out or bad_inputs or region_errors or any_thread_count" tests/python
if ((${#bg_pids[@]})); then
  log "waiting for ${bg_names[*]}"
  wait "${bg_pids[@]}"
  for f in "${bg_names[@]}"; do
    echo "--- $f:"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test cases|^exit|Invalid|Race reported|FAILED|Error" "$LOGS/$f.log" | head -12
    rc=$(sed -n 's/^exit //p' "$LOGS/$f.log" | tail -1)
    [[ $rc == 0 ]] || status=1
    record "$f (background)" "$(outcome "${rc:-255}")" -
  done
  pack
fi
# 2. speed, in the order of the issues' GPU targets (the GPU to themselves: the background jobs are done)
step bench_cuda 60 ./build-gpu/bench/bench_cuda                       # metrics, selection: bandwidth
step bench_cuda_target 30 ./build-gpu/bench/bench_cuda 100000 20 10   # the metrics issue's CPU shape (80 MB)
step compare_gpu 60 python3 bench/compare_uncertainty_gpu.py --device cuda
step heads_cuda 120 python3 bench/bench_heads.py --device cuda        # 512x512x300, F=64, C=14, K=20
step knn_gpu 100 python3 bench/knn_gpu.py                             # N=10^6, D=128, k=10
step batchbald_gpu 60 python3 bench/batchbald_gpu.py                  # N=5000, K=20, C=10, b=10
step diversity_gpu 90 python3 bench/diversity_gpu.py                  # core-set 1e5x512, BADGE 5e4
log "done, status $status"
echo
echo "| step                     | result                 |     s |"
echo "|--------------------------|------------------------|-------|"
printf '%s\n' "${summary[@]}"
exit $status
