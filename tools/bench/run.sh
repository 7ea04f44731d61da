#!/usr/bin/env bash
# Runs the CPU backend benchmark and numpy's matmul in one go and compares them: a table on stderr, and on stdout
# one JSON line per case (GEMM lines gain numpy_gflops and ratio = trainer / numpy).
# usage: tools/bench/run.sh [path/to/bench_cpu] [extra bench_cpu options...]
# BENCH_THREADS (default: every core) sets the thread count of both sides.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bench="${1:-$here/../../build/tools/bench/bench_cpu}"
shift || true
if [[ ! -x "$bench" ]]; then
  echo "run.sh: no bench_cpu at $bench (build it: ninja -C build bench_cpu, or pass its path)" >&2
  exit 2
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
threads="${BENCH_THREADS:-$(nproc)}"
"$bench" --threads "$threads" "$@" > "$tmp/trainer.jsonl"
OPENBLAS_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" \
  python3 "$here/numpy_matmul.py" > "$tmp/numpy.jsonl"
python3 - "$tmp/trainer.jsonl" "$tmp/numpy.jsonl" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = {(r["bench"], r["shape"]): r for r in map(json.loads, filter(str.strip, open(sys.argv[2])))}
print(f"{'case':<18} {'shape':<32} {'ms':>9} {'GFLOP/s':>9} {'numpy':>9} {'ratio':>7}", file=sys.stderr)
for r in ours:
    n = ref.get((r["bench"], r["shape"]))
    if n:
        r["numpy_gflops"] = n["gflops"]
        r["ratio"] = round(r["gflops"] / n["gflops"], 3) if n["gflops"] else None
    print(f"{r['bench']:<18} {r['shape']:<32} {r['ms']:>9.3f} {r['gflops']:>9.1f} "
          f"{(str(r['numpy_gflops']) if n else '-'):>9} {(str(r['ratio']) if n else '-'):>7}", file=sys.stderr)
    print(json.dumps(r), flush=True)
PY
