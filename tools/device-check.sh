#!/usr/bin/env bash
# The GPU checks as one prepared script, in two halves (docs/gpu-testing.md):
#   tools/device-check.sh pack [BUILD_DIR]  on the build machine: builds with CUDA and packs the binaries with the
#                                           non-system shared libraries they need into .device/bundle.tar.gz
#   tools/device-check.sh run               on the GPU machine, in a checkout carrying .device/: unpacks, runs the
#                                           GPU tests and the GPU benchmark, writes logs under $OUT, prints a table
# The GPU machine has the NVIDIA driver, Python with PyTorch (cuBLAS and cuDNN in its nvidia/* wheels), and none of
# the Debian libraries trainer links (oneDNN, protobuf, ONNX, fmt): the bundle brings those.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUNDLE=$ROOT/.device/bundle.tar.gz

pack() {
  local build=${1:-$ROOT/build}
  cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTRAINER_CUDA=ON >/dev/null
  cmake --build "$build" --target trainer cuda_tests
  local stage=$ROOT/.device/stage
  rm -rf "$stage"
  mkdir -p "$stage/bin" "$stage/lib"
  cp "$build/cli/trainer" "$build/tests/cuda_tests" "$stage/bin/"
  # Every shared library the binaries load, except glibc's and the compiler runtime's own, which the GPU
  # machine's newer system provides (binaries built against an older glibc run on a newer one).
  ldd "$stage/bin/trainer" "$stage/bin/cuda_tests" | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
    case $(basename "$lib") in
      libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libstdc++.so* | libgcc_s.so*) ;;
      *) cp -L "$lib" "$stage/lib/" ;;
    esac
  done
  tar -C "$stage" -czf "$BUNDLE" .
  rm -rf "$stage"
  echo "device-check: packed $(du -h "$BUNDLE" | cut -f1) into ${BUNDLE#"$ROOT"/}" >&2
}

# Folders holding the CUDA libraries that trainer loads with dlopen (cuBLASLt, cuDNN, NCCL): PyTorch's wheels,
# or a CUDA toolkit.
cuda_library_path() {
  python3 - <<'EOF'
import glob, importlib.util, os
dirs = []
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec else []
for root in roots + ["/usr/local/cuda/lib64", "/usr/local/cuda/lib"]:
    for pattern in ("libcublasLt.so.13*", "libcudnn.so.9*", "libnccl.so.2*"):
        for f in glob.glob(os.path.join(root, "**", pattern), recursive=True):
            d = os.path.dirname(f)
            if d not in dirs:
                dirs.append(d)
print(":".join(dirs))
EOF
}

run_checks() {
  local out=${OUT:-/tmp/device-check-out}
  mkdir -p "$out"
  [ -f "$BUNDLE" ] || { echo "device-check: $BUNDLE is missing: run 'tools/device-check.sh pack' first" >&2; exit 2; }
  local dir=/tmp/trainer-bundle
  rm -rf "$dir" && mkdir -p "$dir" && tar -C "$dir" -xzf "$BUNDLE"
  export LD_LIBRARY_PATH="$dir/lib:$(cuda_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONUNBUFFERED=1
  local trainer=$dir/bin/trainer
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    "$trainer" --version
  } 2>&1 | tee "$out/facts.txt"

  local status=0
  echo "== GPU tests (CUDA against the CPU)" >&2
  timeout 240 "$dir/bin/cuda_tests" 2>&1 | tee "$out/cuda_tests.log" || status=1
  echo "== sample models on CUDA" >&2
  timeout 240 python3 "$ROOT/tests/cuda/test_cuda_cli.py" "$trainer" 2>&1 | tee "$out/cuda_cli.log" || status=1

  echo "== benchmark" >&2
  : >"$out/bench.jsonl"
  for args in "samples/cifar10/cnn.toml --batch-size 256" "samples/fashion_mnist/mlp.toml --batch-size 64" \
    "samples/imdb/lstm.toml --batch-size 64"; do
    for precision in fp32 bf16; do
      # shellcheck disable=SC2086
      timeout 120 "$trainer" bench "$ROOT"/$args --device cuda --steps 50 --warmup 5 \
        --set train.precision=$precision >>"$out/bench.jsonl" 2>>"$out/bench.log" || status=1
    done
  done
  timeout 240 python3 "$ROOT/tools/bench/torch_gpu.py" --models cifar_cnn:256,fashion_mlp:64 \
    >"$out/torch.jsonl" 2>>"$out/bench.log" || status=1
  python3 - "$out" <<'EOF' | tee "$out/summary.txt"
import json, os, sys
out = sys.argv[1]
def lines(name):
    path = os.path.join(out, name)
    return [json.loads(l) for l in open(path) if l.strip()] if os.path.exists(path) else []
def model_of(spec):
    return "cifar_cnn" if "cifar" in spec else "imdb_lstm" if "imdb" in spec else "fashion_mlp"
ours = {(model_of(b["spec"]), b["precision"]): b for b in lines("bench.jsonl")}
torch = {(t["model"], t["precision"], t["mode"]): t for t in lines("torch.jsonl")}
print(f"{'model':<12} {'prec':<5} {'trainer graph':>14} {'trainer eager':>14} {'torch eager':>12} {'torch.compile':>14} "
      f"{'vs eager':>9} {'vs compile':>10}")
for model in ("cifar_cnn", "fashion_mlp"):
    for prec in ("fp32", "bf16"):
        b = ours.get((model, prec))
        te, tc = torch.get((model, prec, "eager"), {}), torch.get((model, prec, "compile"), {})
        g = b["samples_per_s"] if b else None
        e = b["batch_size"] / b["step_ms"]["median"] * 1e3 if b else None
        def f(v): return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"
        def r(a, c): return f"{a / c:.2f}x" if a and c else "-"
        print(f"{model:<12} {prec:<5} {f(g):>14} {f(e):>14} {f(te.get('samples_per_s')):>12} "
              f"{f(tc.get('samples_per_s')):>14} {r(g, te.get('samples_per_s')):>9} {r(g, tc.get('samples_per_s')):>10}")
print("samples/s; trainer graph = CUDA graph replay, eager = kernel by kernel; torch fp32 with TF32 off")
EOF
  # docs/scaling.md's model with the sample models' forward, backward and update times measured here.
  python3 "$ROOT/tools/bench/scaling_model.py" --measured "$out/bench.jsonl" >"$out/scaling.md" 2>>"$out/bench.log" ||
    status=1
  exit $status
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  run) run_checks ;;
  *) echo "usage: tools/device-check.sh pack [BUILD_DIR] | run" >&2; exit 2 ;;
esac
