#!/usr/bin/env bash
# Copies the header-only C++ dependencies (Eigen, xtensor, xtl, Catch2) from this machine's apt
# install into .deps/ (git-ignored), so that the GPU machine, which has nvcc / CMake / PyTorch /
# pybind11 but no apt headers, can build the tests. Name `.deps` in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .deps && mkdir -p .deps/include .deps/lib/cmake .deps/lib/x86_64-linux-gnu/cmake .deps/share/cmake
cp -r /usr/include/eigen3 .deps/include/
cp -r /usr/share/eigen3 .deps/share/                        # Eigen3Config.cmake
cp -r /usr/include/xtensor /usr/include/xtl /usr/include/catch2 .deps/include/
# Same relative places as under /usr, since each config computes its prefix from its own location.
cp -r /usr/lib/x86_64-linux-gnu/cmake/xtensor .deps/lib/x86_64-linux-gnu/cmake/
cp -r /usr/share/cmake/xtl .deps/share/cmake/
cp -r /usr/lib/cmake/Catch2 .deps/lib/cmake/
cp /usr/lib/libCatch2WithMain.a .deps/lib/
# Eigen's config hard-codes /usr/include/eigen3: point it into .deps.
sed -i 's#/usr/include/eigen3#${CMAKE_CURRENT_LIST_DIR}/../../../include/eigen3#g' .deps/share/eigen3/cmake/Eigen3Targets.cmake
du -sh .deps
