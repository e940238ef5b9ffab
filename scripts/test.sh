#!/usr/bin/env bash
# Builds labelwise and runs every test: C++ (Catch2 via ctest, incl. the LibTorch adapter and the
# find_package / add_subdirectory consumer projects), the C++ tests again under ASan + UBSan,
# then `pip install .` and the pytest suite against the installed package.
# CUDA tests are tagged [cuda] and skipped here; bench/gpu_check.sh runs them on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
start=$SECONDS

echo "== [1/4] C++ build (Release) and ctest"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLABELWISE_TORCH=ON -DLABELWISE_PYTHON=OFF \
  "${LW_LAUNCHER[@]}" >/dev/null
cmake --build build -j "$LW_JOBS"
ctest --test-dir build --output-on-failure -j "$LW_JOBS" -E heads_roundtrip  # needs the installed package: step 4

echo "== [2/4] C++ tests under AddressSanitizer + UndefinedBehaviorSanitizer (CPU build)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DLABELWISE_CUDA=OFF -DLABELWISE_SANITIZE=address,undefined \
  -DLABELWISE_BUILD_BENCHMARKS=OFF -DLABELWISE_BUILD_EXAMPLES=OFF "${LW_LAUNCHER[@]}" >/dev/null
cmake --build build-asan -j "$LW_JOBS" --target labelwise_tests
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ./build-asan/tests/labelwise_tests "~[cuda]"
echo "== [2b/4] C++ tests on each CPU code path (generic, AVX2; AVX-512 ran above where present)"
for isa in generic avx2; do LABELWISE_CPU_ISA=$isa ./build/tests/labelwise_tests "~[cuda]" | tail -2; done

echo "== [3/4] pip install . (scikit-build-core)"
if ((${#LW_LAUNCHER[@]})); then export CMAKE_ARGS="${CMAKE_ARGS:-} ${LW_LAUNCHER[*]}"; fi
"$LW_PY" -m pip install -q --no-build-isolation -C build-dir=build-py/{wheel_tag} .

echo "== [4/4] pytest against the installed package, and the Python <-> C++ head weights round trip"
(cd tests/python && "$LW_PY" -m pytest -q -p no:cacheprovider)
ctest --test-dir build --output-on-failure -R heads_roundtrip

echo "== all tests passed in $((SECONDS - start)) s"
