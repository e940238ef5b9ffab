#!/usr/bin/env bash
# The one GPU check: build the CUDA path once (library, C++ tests, CUDA benchmark and the Python
# extension, dropped next to the package: no second build by pip), run the CUDA tests, then the
# benchmarks that the open issues need, then the sanitizers, the Python CUDA tests and the LibTorch
# CUDA test, each under its own timeout and all under one time budget, and print a closing table.
# Run it on the GPU machine through the device tool:
#   here:   bash scripts/prepare_gpu_deps.sh            (copies Eigen/xtensor/xtl/Catch2 headers to .deps)
#   device: run(command="bash bench/gpu_check.sh", carry=[".deps"], timeout_s=480)
# LW_GPU_BUDGET (seconds, default 420: 60 s below that timeout) stops starting new steps and bounds the
# background jobs, so that the table and the logs always come back.
# A session with 15 minutes of device time in all (the machine's start included) has room for two
# calls on one warm machine (the second reuses the build, within the machine's idle release): first
# the metrics kernel, e.g. LW_GPU_BUDGET=300 with timeout_s=360 and
# LW_GPU_SKIP="torch_build heads_cuda python_errors python_errors_torch diversity_gpu knn_gpu batchbald_gpu",
# then, at once, what is left (LW_GPU_SKIP="sanitizers bench_cuda compare_gpu ...").
# A rerun can leave steps out (LW_GPU_SKIP="heads_cuda knn_gpu torch_cuda_tests ...", "sanitizers" for
# all of them) and point the sanitizers at other tests (LW_MEMCHECK / LW_RACECHECK: one Catch2 test
# spec each, alternatives joined by commas, AND by juxtaposition ("[cuda]CUDA equals*" is tag [cuda]
# and a name starting "CUDA equals"), a comma inside a test name written \, or replaced by *; a spec
# that matches nothing fails: -w NoTests).
# Every log lands in $OUT/logs.tgz (packed after each step, so a run cut short still returns what it
# did; each log cut to its first and last MiB) and the tail of each step on stdout.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu-check}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
# pack: $LOGS into $OUT/logs.tgz, every log over 2 MiB cut to its first and last MiB (a kernel wrong
# everywhere must not make the archive too large to come back)
pack() {
  local stage f size
  stage=$(mktemp -d)
  for f in "$LOGS"/*; do
    [[ -f $f ]] || continue
    size=$(stat -c %s "$f")
    if ((size > 2097152)); then
      { head -c 1048576 "$f"; printf '\n... [%d bytes cut] ...\n' $((size - 2097152)); tail -c 1048576 "$f"; } \
        >"$stage/$(basename "$f")"
    else
      cp "$f" "$stage/"
    fi
  done
  tar czf "$OUT/logs.tgz" -C "$stage" . 2>/dev/null || true
  rm -rf "$stage"
}
BUDGET=${LW_GPU_BUDGET:-420}
START=$(date +%s)
status=0
elapsed() { echo $(($(date +%s) - START)); }
log() { echo "== [$(elapsed) s] $*"; }
# one row per step for the closing table: name, result, seconds
summary=()
record() { summary+=("$(printf '| %-26s | %-34s | %5s |' "$1" "$2" "$3")"); }
table() {
  echo
  echo "| step                       | result                             |     s |"
  echo "|----------------------------|------------------------------------|-------|"
  printf '%s\n' "${summary[@]}"
}
# the table and the logs come back however the script ends (set -u, an early exit, a signal)
trap 'table; pack' EXIT
# outcome RC: a step's exit status in words (timeout's 124 is a time-out)
outcome() { (($1 == 0)) && echo ok || { (($1 == 124)) && echo "TIMED OUT" || echo "FAILED (exit $1)"; }; }
# LW_GPU_SKIP: step names to leave out (a rerun after a fix: "heads_cuda diversity_gpu")
SKIP=" ${LW_GPU_SKIP:-} "
# leave_out REASON STEP...: steps this run cannot do (their binary did not build, the metrics kernel
# hangs); a stale binary from an earlier build on a warm machine must not run in their place
declare -A left_out=()
leave_out() { local why=$1 n; shift; for n in "$@"; do [[ -n ${left_out[$n]:-} ]] || left_out[$n]=$why; done; }
skipped() { [[ $SKIP == *" $1 "* || -n ${left_out[$1]:-} ]]; }
why_skipped() { [[ $SKIP == *" $1 "* ]] && echo "LW_GPU_SKIP" || echo "${left_out[$1]}"; }
OPTIONAL=0  # set for the last benchmarks: running out of budget there does not fail the run
# clamp LIMIT: LIMIT, or the budget left if less (0 when it is spent)
clamp() {
  local left=$((BUDGET - $(elapsed)))
  ((left < 0)) && left=0
  (($1 < left)) && echo "$1" || echo "$left"
}
# may_start NAME LIMIT: true when step NAME may start with LIMIT seconds (clamped); otherwise logs and
# records why not (left out, or the budget spent: a failure unless OPTIONAL)
may_start() {
  if skipped "$1"; then log "skipped $1 ($(why_skipped "$1"))"; record "$1" "skipped ($(why_skipped "$1"))" -; return 1; fi
  if (($2 < 15)); then
    log "skipped $1: time budget spent"
    record "$1" "skipped (budget)" -
    ((OPTIONAL)) || status=1
    return 1
  fi
}
# step NAME TIMEOUT CMD...: runs CMD (output to $LOGS/NAME.log, its tail to stdout) unless skipped or the
# budget is spent
step() {
  local name=$1 limit
  shift
  limit=$(clamp "$1")
  shift
  may_start "$name" "$limit" || return 0
  log "$name (timeout ${limit} s)"
  local t0
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -15 "$LOGS/$name.log"
  ((rc != 0)) && { echo "   -> exit $rc"; status=1; }
  record "$name" "$(outcome "$rc")" "$(($(date +%s) - t0))"
  pack
  return $rc
}
bg_pids=()
bg_names=()
# bg_step NAME TIMEOUT CMD...: CMD in the background (timeout clamped to the budget left), output to
# $LOGS/NAME.log with "exit RC" appended; bg_wait collects them into the table
bg_step() {
  local name=$1 limit
  limit=$(clamp "$2")
  shift 2
  may_start "$name" "$limit" || return 0
  log "$name in the background (timeout $limit s)"
  # on a line of its own even when the job was killed mid-line
  (timeout -k 10 "$limit" "$@" >"$LOGS/$name.log" 2>&1; printf '\nexit %d\n' $? >>"$LOGS/$name.log") &
  bg_pids+=($!)
  bg_names+=("$name")
}
bg_wait() {
  ((${#bg_pids[@]})) || return 0
  log "waiting for ${bg_names[*]}"
  local p
  for p in "${bg_pids[@]}"; do
    while kill -0 "$p" 2>/dev/null; do sleep 10; pack; done  # packed meanwhile: a cut run keeps them
  done
  local f rc
  for f in "${bg_names[@]}"; do
    echo "--- $f:"
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|test cases|^exit|Invalid|Race reported|FAILED|Error" "$LOGS/$f.log" | head -8
    rc=$(sed -n 's/^exit //p' "$LOGS/$f.log" | tail -1)
    [[ $rc == 0 ]] || status=1
    record "$f (background)" "$(outcome "${rc:-255}")" -
  done
  bg_pids=()
  bg_names=()
  pack
}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/python:$PWD/tests/python${PYTHONPATH:+:$PYTHONPATH}"
NPROC=$(nproc)

log "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader || true
nvcc --version | tail -1
echo "cores: $NPROC; budget ${BUDGET} s"
[[ -d .deps ]] || echo "!! .deps is missing: run scripts/prepare_gpu_deps.sh here and pass carry=[\".deps\"]"
command -v nvcc >/dev/null || echo "!! nvcc is not on PATH: the build would have no CUDA kernels"
command -v compute-sanitizer >/dev/null || echo "!! compute-sanitizer is not on PATH: no sanitizer runs"

# ---- build: one configure, one build of every target; -k 0 goes on past a failed compile, so one bad
#      test file costs only its own binary. The LibTorch component builds in the background after it.
log "build (sm_90 + compute_75 PTX)"
PYBIND_DIR=$(python3 -m pybind11 --cmakedir 2>/dev/null || true)
configure() {
  timeout -k 10 "$(clamp 90)" cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps" \
    -DLABELWISE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="90-real;75-virtual" -DLABELWISE_BUILD_EXAMPLES=OFF \
    -DPython_EXECUTABLE="$(command -v python3)" ${PYBIND_DIR:+-Dpybind11_DIR="$PYBIND_DIR"} "$@" >"$LOGS/configure.log" 2>&1
}
t0=$(date +%s)
# without Python headers / pybind11 the C++ tests and benchmark still run
if configure -DLABELWISE_PYTHON=ON; then
  record configure ok "$(($(date +%s) - t0))"
else
  log "configure with Python failed: retrying without the extension"
  tail -15 "$LOGS/configure.log"
  status=1
  if configure -DLABELWISE_PYTHON=OFF; then record configure "ok without Python" "$(($(date +%s) - t0))"; else
    tail -30 "$LOGS/configure.log"; record configure FAILED "$(($(date +%s) - t0))"; exit 1
  fi
fi
t0=$(date +%s)
timeout -k 10 "$(clamp 300)" cmake --build build-gpu -j "$NPROC" -- -k 0 >"$LOGS/build.log" 2>&1
build_rc=$?
((build_rc != 0)) && { grep -E "error|FAILED" "$LOGS/build.log" | head -20; status=1; }
# built TARGET: ninja has nothing left to do for it (outputs captured first: grep -q would close the
# pipe early, and under pipefail ninja's SIGPIPE would read as a failure)
built() { local o; o=$(ninja -C build-gpu -n "$1" 2>&1); grep -q "no work to do" <<<"$o"; }
targets=$(ninja -C build-gpu -t targets all 2>/dev/null)
# the steps that need each target (a stale binary of a failed target must not run)
declare -A needs=(
  [labelwise_tests]="metrics_smoke cuda_tests memcheck racecheck synccheck"
  [bench_cuda]="bench_cuda bench_cuda_target"
  [_core]="python_errors python_errors_torch compare_gpu heads_cuda python_cuda_tests diversity_gpu knn_gpu batchbald_gpu"
)
for t in labelwise labelwise_tests bench_cuda _core; do
  if ! grep -q "^$t: " <<<"$targets"; then
    record "build $t" "not configured" -
    [[ -n ${needs[$t]:-} ]] && leave_out "$t not configured" ${needs[$t]}
    continue
  fi
  if built "$t"; then record "build $t" ok -; else
    record "build $t" "FAILED" -
    status=1
    [[ -n ${needs[$t]:-} ]] && leave_out "$t did not build" ${needs[$t]}
  fi
done
record "build (all)" "$(outcome "$build_rc")" "$(($(date +%s) - t0))"
log "build done"
pack
built labelwise || { log "the library did not build: nothing to run"; exit 1; }

# The LibTorch component (labelwise::torch) against the PyTorch that python3 holds, in its own build
# folder (a Torch configure failure cannot take the main build down); its test runs later, as a step.
torch_build() {
  local torch_dir
  torch_dir=$(python3 -c "import os, torch; print(os.path.join(torch.utils.cmake_prefix_path, 'Torch'))") || return 1
  cmake -S . -B build-gpu-torch -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PWD/.deps" \
    -DLABELWISE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90-real -DLABELWISE_BUILD_EXAMPLES=OFF \
    -DLABELWISE_BUILD_BENCHMARKS=OFF -DLABELWISE_TORCH=ON -DTorch_DIR="$torch_dir" || return 1
  cmake --build build-gpu-torch -j "$((NPROC / 2 > 1 ? NPROC / 2 : 1))" --target labelwise_torch_tests
}
export -f torch_build
export NPROC
bg_step torch_build "${LW_TORCH_TIMEOUT:-240}" bash -c torch_build

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
  step python_errors_backtrace 60 cuda-gdb -q -nx -batch -ex run -ex bt -ex "info sharedlibrary" --args python3 "$LOGS/errors.py"
fi

# 1. correctness: every CUDA kernel against the CPU. First one metrics case alone: if the metrics
#    kernel hangs, everything that scores on the GPU is left out instead of each running to its limit.
TESTS=./build-gpu/tests/labelwise_tests
METRICS_SPEC="[cuda]CUDA equals*,[cuda]CUDA names*,[cuda]CUDA reports*"
step metrics_smoke 40 "$TESTS" -w NoTests -d yes "[cuda]CUDA equals CPU for all metrics*"
if (($? == 124)); then
  log "the metrics kernel hangs: its other tests, benchmarks and sanitizer runs are left out"
  leave_out "metrics kernel hangs" compare_gpu bench_cuda bench_cuda_target python_cuda_tests
  step cuda_tests 150 "$TESTS" -w NoTests -d yes '[cuda]~"CUDA equals*"~"CUDA names*"~"CUDA reports*"'  # quoted: ~ chains
  METRICS_SPEC=""
else
  step cuda_tests 150 "$TESTS" -w NoTests -d yes "[cuda]"
fi

# 2. speed, the open issues' GPU targets first, on a quiet GPU (only the LibTorch build runs, on the CPUs)
step bench_cuda 60 ./build-gpu/bench/bench_cuda                       # metrics, selection: bandwidth
step bench_cuda_target 30 ./build-gpu/bench/bench_cuda 100000 20 10   # the metrics issue's CPU shape (80 MB)
step compare_gpu 60 python3 bench/compare_uncertainty_gpu.py --device cuda
step heads_cuda 90 python3 bench/bench_heads.py --device cuda         # 512x512x300, F=64, C=14, K=20

# 3. what the comparisons cannot see: compute-sanitizer (works on Firecracker machines) on the kernels
#    changed since their last sanitizer run, in the background, while the Python CUDA tests and the
#    LibTorch CUDA test run
sanitize() {
  bg_step "$1" "${LW_SANITIZER_TIMEOUT:-120}" compute-sanitizer --tool "$2" --error-exitcode 9 \
    "$TESTS" -w NoTests -d yes "$3"
}
if command -v compute-sanitizer >/dev/null && ! skipped sanitizers; then
  memcheck_spec=${LW_MEMCHECK:-${METRICS_SPEC:+$METRICS_SPEC,}[cuda][head_score],[cuda][diversity]}
  sanitize memcheck memcheck "$memcheck_spec"
  [[ -n ${LW_RACECHECK:-$METRICS_SPEC} ]] && sanitize racecheck racecheck "${LW_RACECHECK:-$METRICS_SPEC}"
  # barriers and shuffle masks of the metrics kernels: every kernel shape (class counts) and the block
  # loops (several passes), at sizes the sanitizer gets through in seconds
  [[ -n $METRICS_SPEC || -n ${LW_SYNCCHECK:-} ]] && sanitize synccheck synccheck \
    "${LW_SYNCCHECK:-[cuda]CUDA equals CPU at class counts*,[cuda]CUDA equals CPU where blocks loop*}"
fi
# -k: the tests named for the GPU, plus those with a CUDA / CuPy branch under another name (not the
# campaigns' CPU runs); xdist (when there) keeps going past a crashed test
py_opts=()
python3 -c "import xdist" 2>/dev/null && py_opts+=(-n 4)
python3 -c "import pytest_timeout" 2>/dev/null && py_opts+=(--timeout 60)
step python_cuda_tests 120 python3 -m pytest -q -p no:cacheprovider -rs "${py_opts[@]}" -k \
  "(cuda or gpu or cupy or torch_in_torch_out or bad_inputs or region_errors or any_thread_count) and not campaign" tests/python
# the LibTorch test once its build is done (NoAssertions: a PyTorch that sees no GPU makes the test
# return after a warning, which must fail here; Catch2 v2 takes one -w only)
for i in "${!bg_names[@]}"; do
  [[ ${bg_names[$i]} == torch_build ]] || continue
  while kill -0 "${bg_pids[$i]}" 2>/dev/null; do sleep 5; done
done
# only a binary this run built (its log ends "exit 0"), never one left by an earlier call
if [[ $(sed -n 's/^exit //p' "$LOGS/torch_build.log" 2>/dev/null | tail -1) == 0 ]]; then
  step torch_cuda_tests 60 ./build-gpu-torch/tests/labelwise_torch_tests -w NoAssertions -d yes "[cuda]"
elif [[ -f $LOGS/torch_build.log ]]; then  # started (not skipped) and failed
  record torch_cuda_tests "not built (see torch_build)" -
  status=1
fi
bg_wait

# 4. the other GPU benchmarks (already measured in session 12), while the budget lasts
OPTIONAL=1
step diversity_gpu 90 python3 bench/diversity_gpu.py                  # core-set 1e5x512, BADGE 5e4
step knn_gpu 100 python3 bench/knn_gpu.py                             # N=10^6, D=128, k=10
step batchbald_gpu 60 python3 bench/batchbald_gpu.py                  # N=5000, K=20, C=10, b=10
log "done, status $status"
exit $status
