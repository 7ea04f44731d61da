#!/usr/bin/env python3
"""PyTorch's training throughput on the GPU for the sample models, as the reference of tools/device-check.sh:
the same layers, Adam, sparse categorical cross-entropy and batch as the trainer's spec, eager and under
torch.compile, in fp32 (TF32 off, as trainer's fp32) and bf16 (autocast). Each timing: warm-up steps, then CUDA
events around N steps; also the peak memory PyTorch's allocator held. One JSON line per case on stdout.

Usage: torch_gpu.py [--steps 50] [--warmup 10] [--models cifar_cnn:256,fashion_mlp:64] [--modes eager,compile]
"""
import argparse
import json
import sys

import torch
import torch.nn as nn


def cifar_cnn():
    # samples/cifar10/cnn.toml: Conv2D 32 3x3 relu (valid) -> MaxPool 2x2 -> Flatten -> Dense 512 relu -> Dense 10
    return nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 15 * 15, 512),
                         nn.ReLU(), nn.Linear(512, 10)), (3, 32, 32)


def fashion_mlp():
    # samples/fashion_mnist/mlp.toml: Flatten -> Dense 1024 relu -> Dense 512 relu -> Dense 10
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 512), nn.ReLU(),
                         nn.Linear(512, 10)), (28, 28)


MODELS = {"cifar_cnn": cifar_cnn, "fashion_mlp": fashion_mlp}


def measure(name, batch, precision, compiled, steps, warmup):
    torch.manual_seed(0)
    net, shape = MODELS[name]()
    net = net.cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(batch, *shape, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(step) if compiled else step
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        fn()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / steps
    return {"event": "torch_bench", "model": name, "batch_size": batch, "precision": precision,
            "mode": "compile" if compiled else "eager", "step_ms": ms, "samples_per_s": batch / ms * 1e3,
            "peak_memory_bytes": torch.cuda.max_memory_allocated()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--models", default="cifar_cnn:256,fashion_mlp:64")
    p.add_argument("--modes", default="eager,compile", help="eager, compile or both (torch.compile takes minutes)")
    a = p.parse_args()
    modes = a.modes.split(",")
    if not modes or any(m not in ("eager", "compile") for m in modes):
        p.error(f"--modes: '{a.modes}' is not a list of eager and compile")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    for item in a.models.split(","):
        name, batch = item.split(":")
        for precision in ("fp32", "bf16"):
            for compiled in [m == "compile" for m in modes]:
                try:
                    r = measure(name, int(batch), precision, compiled, a.steps, a.warmup)
                except Exception as e:  # torch.compile may be unavailable; report and go on
                    r = {"event": "torch_bench", "model": name, "precision": precision,
                         "mode": "compile" if compiled else "eager", "error": str(e).splitlines()[0][:200]}
                print(json.dumps(r), flush=True)


if __name__ == "__main__":
    sys.exit(main())
