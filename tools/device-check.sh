#!/usr/bin/env bash
# The GPU checks as one prepared script, in two halves (docs/gpu-testing.md):
#   tools/device-check.sh pack [BUILD_DIR]  on the build machine: builds with CUDA and packs the binaries with the
#                                           non-system shared libraries they need into .device/bundle.tar.gz
#   tools/device-check.sh run [CHECK...]    on the GPU machine, in a checkout carrying .device/: unpacks, runs the
#                                           GPU tests and the GPU benchmark (only the checks whose names start with
#                                           a CHECK given) within $DEVICE_CHECK_SECONDS (default 480), writes eight
#                                           files under $OUT and ends with status.txt: a line per check, a table
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

# One check: `check NAME CAP OUT ERR COMMAND...` runs COMMAND with its stdout appended to OUT and its stderr to
# ERR (- for OUT), for at most CAP seconds or what is left of the budget, whichever is less. A check is not started
# when less than 20 s of the budget is left. Each outcome is a line of status.txt, and a failed check's output is
# printed again at the end. With CHECK names given, only the checks whose names start with one of them run.
check() {
  local name=$1 cap=$2 out=$3 err=$4
  shift 4
  [ "$err" = - ] && err=$out
  selected "$name" || return 0
  local left=$((BUDGET - SECONDS))
  if [ $left -lt 20 ]; then
    note "$name" "the budget of ${BUDGET} s was spent"
    return 0
  fi
  local limit=$((cap < left ? cap : left)) t0=$SECONDS rc=0 from
  from=$(($(stat -c %s "$err" 2>/dev/null || echo 0) + 1))
  echo "== $name: $*" >>"$err"
  timeout -k 5 "$limit" "$@" >>"$out" 2>>"$err" || rc=$?
  local result=passed
  case $rc in
    0) ;;
    77) result=skipped ;;
    124) result="timed out" ;;
    137) result=killed ;; # past its limit and deaf to SIGTERM, or out of memory
    *) result="exit $rc" ;;
  esac
  printf '%-18s %-10s %5ss  %s\n' "$name" "$result" $((SECONDS - t0)) "$(basename "$err")" | tee -a "$STATUS" >&2
  if [ $rc -ne 0 ]; then
    STATUS_CODE=1
    FAILED+=("$name|$err|$from|$(stat -c %s "$err")")
  fi
}

# Whether the check NAME is to run: all are when no CHECK was named.
selected() {
  [ ${#SELECTED[@]} -eq 0 ] && return 0
  local s
  for s in "${SELECTED[@]}"; do [[ $1 == "$s"* ]] && return 0; done
  return 1
}

# A line of status.txt for a check that could not start; it fails the run unless the third argument is "fine".
note() {
  printf '%-18s %-10s %6s  %s\n' "$1" "not run" "" "$2" | tee -a "$STATUS" >&2
  [ "${3:-}" = fine ] || STATUS_CODE=1
}

run_checks() {
  local out=${OUT:-/tmp/device-check-out}
  BUDGET=${DEVICE_CHECK_SECONDS:-480}
  SELECTED=("$@")
  STATUS=$out/status.txt
  STATUS_CODE=0
  FAILED=()
  mkdir -p "$out"
  rm -f "$out"/{facts.txt,status.txt,cuda_tests.log,cuda_cli.log,bench.jsonl,bench.log,torch.jsonl,scaling.md}
  printf '%-18s %-10s %6s  %s\n' check result time log >"$STATUS"
  [ -f "$BUNDLE" ] || { echo "device-check: $BUNDLE is missing: run 'tools/device-check.sh pack' first" >&2; exit 2; }
  local dir=/tmp/trainer-bundle
  rm -rf "$dir" && mkdir -p "$dir" && tar -C "$dir" -xzf "$BUNDLE"
  export LD_LIBRARY_PATH="$dir/lib:$(cuda_library_path)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PYTHONUNBUFFERED=1
  # test_cuda_cli.py makes its data once, there, for all its runs
  export CUDA_CLI_DATA=/tmp/trainer-cuda-cli-data
  rm -rf "$CUDA_CLI_DATA"
  local trainer=$dir/bin/trainer tests=$dir/bin/cuda_tests cli=$ROOT/tests/cuda/test_cuda_cli.py
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())" || true
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    "$trainer" --version || echo "trainer --version: exit $?"
    # The NCCL that loads, and the CUDA kernel registry's count
    "$tests" --test-suite=cuda_registry -s 2>&1 | grep -oE "NCCL [0-9]+|[0-9]+ ops with CUDA kernels.*" || true
  } >"$out/facts.txt" 2>&1
  cat "$out/facts.txt" >&2

  # In the order of what a short run must not miss: NCCL and the op parity first, the PyTorch reference last.
  local t=$out/cuda_tests.log c=$out/cuda_cli.log j=$out/bench.jsonl b=$out/bench.log
  local cases=SampleModelsOnCuda.test_
  check nccl 60 "$t" - "$tests" "-tc=cuda: NCCL*"
  check ops 150 "$t" - "$tests" "-tc=cuda: every registered op*"
  check steps 150 "$t" - "$tests" "-tce=cuda: NCCL*,cuda: every registered op*"
  check cli-gpus1 240 "$c" - python3 "$cli" "$trainer" ${cases}gpus_1_through_nccl_equals_one_device \
    ${cases}synchronized_batch_norm_through_nccl
  # What only several GPUs show: sums across them, ZeRO-1 through NCCL, and the measured scaling.
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
  if [ "${gpus:-0}" -ge 2 ]; then
    check cli-several 240 "$c" - python3 "$cli" "$trainer" SeveralGpus
  elif selected cli-several; then
    note cli-several "${gpus:-0} GPU here: sums across GPUs need two" fine
  fi
  check cli-cpu 240 "$c" - python3 "$cli" "$trainer" ${cases}cuda_equals_cpu_within_1e_4
  check cli-graph-bf16 180 "$c" - python3 "$cli" "$trainer" ${cases}graph_replay_equals_eager \
    ${cases}bf16_follows_fp32 ${cases}readme_sample_fit_on_cuda
  local item spec precision
  for item in cifar10/cnn.toml:256 fashion_mnist/mlp.toml:64 imdb/lstm.toml:64; do
    spec=${item%:*}
    for precision in bf16 fp32; do
      check "bench-$(basename "$spec" .toml)-$precision" 60 "$j" "$b" "$trainer" bench "$ROOT/samples/$spec" \
        --batch-size "${item#*:}" --device cuda --steps 50 --warmup 5 --set train.precision=$precision
    done
  done
  if [ "${gpus:-0}" -ge 2 ]; then
    check bench-cnn-gpus 120 "$j" "$b" "$trainer" bench "$ROOT/samples/cifar10/cnn.toml" --batch-size 256 \
      --gpus all --steps 50 --warmup 5
  elif selected bench-cnn-gpus; then
    note bench-cnn-gpus "${gpus:-0} GPU here: scaling needs several" fine
  fi
  # docs/scaling.md's model with the sample models' forward, backward and update times measured here.
  if [ -s "$j" ]; then
    check scaling 30 "$out/scaling.md" "$b" python3 "$ROOT/tools/bench/scaling_model.py" --measured "$j"
  elif selected scaling; then
    note scaling "no benchmark results to calibrate it"
  fi
  check torch-eager 90 "$out/torch.jsonl" "$b" python3 "$ROOT/tools/bench/torch_gpu.py" --modes eager
  check torch-compile 180 "$out/torch.jsonl" "$b" python3 "$ROOT/tools/bench/torch_gpu.py" --modes compile

  python3 "$ROOT/tools/bench/device_table.py" "$j" "$out/torch.jsonl" >>"$STATUS" || STATUS_CODE=1
  # The failed checks' own output again, so that the end of this command's output shows what went wrong.
  local f name log from to
  for f in "${FAILED[@]}"; do
    IFS='|' read -r name log from to <<<"$f"
    echo "== the output of the failed check $name (its last 60 lines)" >&2
    head -c "$to" "$log" | tail -c +"$from" | tail -n 60 >&2
  done
  echo "== device-check: ${SECONDS} s of a budget of ${BUDGET} s" >&2
  cat "$STATUS" >&2
  exit $STATUS_CODE
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  run) shift; run_checks "$@" ;;
  *) echo "usage: tools/device-check.sh pack [BUILD_DIR] | run [CHECK...]" >&2; exit 2 ;;
esac
