#!/usr/bin/env bash
# Configures and builds trainer, then runs the sample training program on the CPU (the README's first command).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)" --target train_spiral
"$build/samples/train_spiral"
