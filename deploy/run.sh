#!/usr/bin/env bash
# Builds Moat (Release) into build/ and runs `moat serve` on deploy/moat.toml in the
# foreground. Ctrl-C (SIGINT) or SIGTERM stops it gracefully. Extra arguments go to
# `moat serve` (e.g. -c other.toml replaces the default config).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/deps.sh
moat_install_missing "${moat_build_packages[@]}"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
mkdir -p var
if [ $# -eq 0 ]; then set -- -c deploy/moat.toml; fi
exec build/moat serve "$@"
