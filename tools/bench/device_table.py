#!/usr/bin/env python3
"""The table that tools/device-check.sh ends with: training samples/s of `trainer bench` (CUDA graph replay and
kernel by kernel) beside PyTorch's (tools/bench/torch_gpu.py, eager and torch.compile), per sample model and
precision, and the ratios; then a line per run on several replicas (`trainer bench --gpus N`): its step against one
device's and its scaling efficiency. A missing measurement is a dash. Lines that are not JSON (a run cut short) are
skipped.

Usage: device_table.py BENCH_JSONL TORCH_JSONL
"""
import json
import os
import sys


def rows(path):
    out = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def model_of(spec):
    return "cifar_cnn" if "cifar" in spec else "imdb_lstm" if "imdb" in spec else "fashion_mlp"


def table(bench, torch):
    ours = {(model_of(b["spec"]), b["precision"]): b for b in bench
            if "spec" in b and "samples_per_s" in b and not b.get("replicas")}
    ref = {(t["model"], t["precision"], t["mode"]): t for t in torch if "samples_per_s" in t}

    def num(v):
        return f"{v:,.0f}" if isinstance(v, (int, float)) else "-"

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "-"

    lines = [f"{'model':<12} {'prec':<5} {'trainer graph':>14} {'trainer eager':>14} {'torch eager':>12} "
             f"{'torch.compile':>14} {'vs eager':>9} {'vs compile':>10}"]
    for model in ("cifar_cnn", "fashion_mlp", "imdb_lstm"):
        for prec in ("fp32", "bf16"):
            b = ours.get((model, prec))
            te = ref.get((model, prec, "eager"), {}).get("samples_per_s")
            tc = ref.get((model, prec, "compile"), {}).get("samples_per_s")
            graph = b["samples_per_s"] if b else None
            eager = b["batch_size"] / b["step_ms"]["median"] * 1e3 if b else None
            lines.append(f"{model:<12} {prec:<5} {num(graph):>14} {num(eager):>14} {num(te):>12} {num(tc):>14} "
                         f"{ratio(graph, te):>9} {ratio(graph, tc):>10}")
    lines.append("samples/s; trainer graph = CUDA graph replay, eager = kernel by kernel; torch fp32 with TF32 off")
    # `trainer bench --gpus N`: the step on N replicas, each with the whole batch, against one GPU's.
    for b in bench:
        r = b.get("replicas") if "spec" in b else None
        if not r:
            continue
        lines.append(f"{model_of(b['spec'])} {b['precision']} on {r['replicas']} replicas, batch "
                     f"{r['batch_per_replica']} each{', optimizer state sharded' if r.get('shard_optimizer') else ''}: "
                     f"step {r['step_ms']['median']:.3f} ms against {b['step_ms']['median']:.3f} ms on one, "
                     f"exposed communication {r['exposed_comm_ms']:.3f} ms, scaling efficiency "
                     f"{100 * r['scaling_efficiency']:.1f}%")
    return "\n".join(lines)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print()
    print(table(rows(sys.argv[1]), rows(sys.argv[2])))


if __name__ == "__main__":
    main()
