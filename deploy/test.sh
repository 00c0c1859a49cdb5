#!/usr/bin/env bash
# Builds Moat with its tests into build/ (Release, the same objects run.sh uses) and runs
# the whole suite through ctest: Catch2 unit and conformance tests, then the integration
# tests that start the real daemon on loopback. Extra arguments go to ctest (-R, -L ...).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
moat_install_missing "${moat_build_packages[@]}" "${moat_test_packages[@]}"
jobs=$(nproc)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOAT_TESTS=ON >/dev/null
cmake --build build -j"$jobs"
cd build
ctest --output-on-failure -j"$jobs" "$@"
