#!/usr/bin/env bash
# Installs everything trainer needs to build and test: Debian packages, then the PyPI cross-check tools.
# Idempotent: when everything is present it only checks and returns.
set -euo pipefail

debs=(
  build-essential cmake ninja-build ccache pkg-config python3 python3-pip groff-base
  libonnx-dev libprotobuf-dev protobuf-compiler libcli11-dev libfmt-dev doctest-dev
  libtomlplusplus-dev libdnnl-dev libopenblas-dev zlib1g-dev libpng-dev libjpeg-dev libgif-dev libopenmpi-dev openmpi-bin
  dataset-fashion-mnist libonnx-testdata python3-torch
)

missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Cross-check tools for the tests (onnx checker, onnxruntime, numpy, Pillow). Prefer the interpreter CMake will
# find.
py=${PYTHON:-python3}
# Pillow writes and reads the image files of the image-folder tests; tensorboard's reader reads the event
# files of fit --tensorboard.
if ! "$py" -c "import numpy, onnx, onnxruntime, PIL, tensorboard" >/dev/null 2>&1; then
  echo "install-deps: installing numpy onnx onnxruntime pillow tensorboard from PyPI" >&2
  "$py" -m pip install -q --disable-pip-version-check numpy onnx onnxruntime pillow tensorboard 2>/dev/null ||
    "$py" -m pip install -q --disable-pip-version-check --break-system-packages numpy onnx onnxruntime pillow \
      tensorboard
fi
# cuobjdump, for the test of the architectures compiled into a CUDA build; the CUDA image ships nvcc without it.
if [ -x /usr/local/cuda/bin/nvcc ] && [ ! -x /usr/local/cuda/bin/cuobjdump ] &&
  ! "$py" -c "import importlib.util as u, os, sys; s = u.find_spec('nvidia'); sys.exit(0 if s and any(os.path.exists(os.path.join(p, 'cu13', 'bin', 'cuobjdump')) for p in s.submodule_search_locations) else 1)" 2>/dev/null; then
  echo "install-deps: installing cuobjdump from PyPI" >&2
  "$py" -m pip install -q --disable-pip-version-check "nvidia-cuda-cuobjdump>=13,<14" 2>/dev/null ||
    "$py" -m pip install -q --disable-pip-version-check --break-system-packages "nvidia-cuda-cuobjdump>=13,<14"
fi
echo "install-deps: ok" >&2
