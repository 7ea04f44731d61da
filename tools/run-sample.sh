#!/usr/bin/env bash
# Configures and builds trainer, then trains the Fashion-MNIST sample (the README's first command): on the first
# GPU when there is one, else on the CPU.
# Usage: tools/run-sample.sh [build-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)" --target trainer
"$build/cli/trainer" fit samples/fashion_mnist/mlp.toml
