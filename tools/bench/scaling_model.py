#!/usr/bin/env python3
"""A model of data-parallel scaling on one 8-GPU node, for docs/scaling.md: per-step compute from each op's
FLOPs and bytes, gradient all-reduce from bytes and bus bandwidth, and the overlap of bucketed reductions with
the rest of backward. Every number it prints is a model until measured; the assumptions are the options.

Ops, their order and gradient sizes follow the plans `trainer bench SPEC --set train.precision=bf16` lists
for the sample specs (bf16 is what precision = auto gives on an H200). Standard library only.

Usage: scaling_model.py [--latency-us 15] [--busbw-ring 370] [--busbw-nvls 480] [--gemm-eff 0.5] ...
"""
import argparse
import json

MiB = 1 << 20
MB = 1e6  # [parallel] bucket_mb counts MB of 10^6 bytes


class Op:
    """One kernel (or a fixed group of kernels) of the planned step, in execution order."""

    def __init__(self, name, flops=0.0, nbytes=0.0, kernels=1, fp32=False, grads=(), after=None):
        self.name, self.flops, self.nbytes, self.kernels, self.fp32 = name, flops, nbytes, kernels, fp32
        self.grads = list(grads)  # (parameter, gradient bytes) ready once this op has run
        self.after = after  # a weight gradient's op: the backward op after which its inputs exist


def cast(n):  # f32 <-> bf16: read one, write the other
    return 6.0 * n


def gemm(m, n, k, name, grads=(), after=None):  # bf16 operands and result
    return Op(name, 2.0 * m * n * k, 2.0 * (m * k + k * n + m * n), grads=grads, after=after)


def weight_grads_first(bwd):
    """The planner's schedule with gradients to bucket (engine/plan/planner.cpp): a weight gradient's ops run
    as soon as their inputs exist, i.e. right after the op named by `after` (in their listed order)."""
    moved = [o for o in bwd if o.after]
    out = [o for o in bwd if not o.after]
    for o in reversed(moved):
        i = next(k for k, x in enumerate(out) if x.name == o.after)
        out.insert(i + 1, o)
    return out


def adam(params):  # fused update per parameter: read p, g, m, v; write p, m, v (f32)
    ops = [Op(f"Adam {p}", 0, 28.0 * n) for p, n in params]
    for o, (p, _) in zip(ops, params):
        o.param = p
    return ops


# ---------------------------------------------------------------------------------------------------------
# The sample models: the ops of their bf16 training plans in the planner's order, per-GPU batch B.


def cifar_cnn(B, first=True):
    X, Y, P, H, L = B * 3 * 32 * 32, B * 32 * 30 * 30, B * 7200, B * 512, B * 10
    Wd, W1 = 7200 * 512, 512 * 10
    fwd = [Op("step counters"), Op("Cast input", 0, cast(X)), Op("Cast conv2d/kernel", 0, cast(864)),
           Op("Cast conv2d/bias", 0, cast(32)),
           Op("Conv", 1555200.0 * B, 2.0 * (X + Y)), Op("Cast conv out", 0, cast(Y)), Op("Relu", 0, 8.0 * Y),
           Op("MaxPool", 0, 4.0 * (Y + P)), Op("Cast flatten", 0, cast(P)), Op("Cast dense/kernel", 0, cast(Wd)),
           Op("Cast dense/bias", 0, cast(512)), gemm(B, 512, 7200, "FusedGemm dense"),
           Op("Cast h f32", 0, cast(H)), Op("Cast h bf16", 0, cast(H)), Op("Cast dense_1/kernel", 0, cast(W1)),
           Op("Cast dense_1/bias", 0, cast(10)), gemm(B, 10, 512, "FusedGemm dense_1"),
           Op("Cast logits", 0, cast(L)), Op("Softmax", 0, 8.0 * L), Op("SoftmaxCrossEntropyLoss", 0, 8.0 * L)]
    dwd = [gemm(7200, 512, B, "MatMulTransposed dW dense", after="Cast dh bf16"),
           Op("Cast dW dense", 0, cast(Wd), grads=[("dense/kernel", 4 * Wd)], after="Cast dh bf16")]
    bwd = [Op("SoftmaxCrossEntropyLossGrad", 0, 12.0 * L),
           Op("ReduceSum dense_1 bias", 0, 4.0 * L, grads=[("dense_1/bias", 40)]), Op("Cast dlogits", 0, cast(L)),
           gemm(B, 512, 10, "MatMulTransposed dX dense_1"), Op("Cast dh f32", 0, cast(H)),
           Op("ReluGrad dense", 0, 12.0 * H), Op("ReduceSum dense bias", 0, 4.0 * H, grads=[("dense/bias", 2048)]),
           gemm(512, 10, B, "MatMulTransposed dW dense_1"),
           Op("Cast dW dense_1", 0, cast(W1), grads=[("dense_1/kernel", 4 * W1)]), Op("Cast dh bf16", 0, cast(H))]
    bwd += [gemm(B, 7200, 512, "MatMulTransposed dX dense"), Op("Cast dX dense", 0, cast(P)),
            Op("MaxPoolGrad", 0, 4.0 * (P + 2 * Y)), Op("ReluGrad conv", 0, 12.0 * Y)]
    bwd += dwd
    bwd += [Op("Cast dconv bf16", 0, cast(Y)), Op("ConvGradWeight", 1584000.0 * B, 2.0 * (X + Y)),
            Op("Cast dW conv", 0, cast(864), grads=[("conv2d/kernel", 3456)]),
            Op("Cast db conv", 0, cast(32), grads=[("conv2d/bias", 128)])]
    upd = adam([("conv2d/kernel", 864), ("conv2d/bias", 32), ("dense/kernel", Wd), ("dense/bias", 512),
                ("dense_1/kernel", W1), ("dense_1/bias", 10)])
    return fwd, weight_grads_first(bwd) if first else bwd, upd


def fashion_mlp(B, first=True):
    X = B * 784
    W0, W1, W2 = 784 * 1024, 1024 * 512, 512 * 10
    H0, H1, L = B * 1024, B * 512, B * 10
    fwd = [Op("step counters"), Op("Cast input", 0, cast(X)), Op("Cast dense/kernel", 0, cast(W0)),
           Op("Cast dense/bias", 0, cast(1024)), gemm(B, 1024, 784, "FusedGemm dense"),
           Op("Cast h0 f32", 0, cast(H0)), Op("Cast h0 bf16", 0, cast(H0)), Op("Cast dense_1/kernel", 0, cast(W1)),
           Op("Cast dense_1/bias", 0, cast(512)), gemm(B, 512, 1024, "FusedGemm dense_1"),
           Op("Cast h1 f32", 0, cast(H1)), Op("Cast h1 bf16", 0, cast(H1)), Op("Cast dense_2/kernel", 0, cast(W2)),
           Op("Cast dense_2/bias", 0, cast(10)), gemm(B, 10, 512, "FusedGemm dense_2"),
           Op("Cast logits", 0, cast(L)), Op("Softmax", 0, 8.0 * L), Op("SoftmaxCrossEntropyLoss", 0, 8.0 * L)]
    bwd = [Op("SoftmaxCrossEntropyLossGrad", 0, 12.0 * L),
           Op("ReduceSum dense_2 bias", 0, 4.0 * L, grads=[("dense_2/bias", 40)]), Op("Cast dlogits", 0, cast(L)),
           gemm(B, 512, 10, "MatMulTransposed dX dense_2"), Op("Cast dh1 f32", 0, cast(H1)),
           Op("ReluGrad dense_1", 0, 12.0 * H1),
           Op("ReduceSum dense_1 bias", 0, 4.0 * H1, grads=[("dense_1/bias", 2048)]),
           gemm(512, 10, B, "MatMulTransposed dW dense_2", after="Cast dlogits"),
           Op("Cast dW dense_2", 0, cast(W2), grads=[("dense_2/kernel", 4 * W2)], after="Cast dlogits"),
           Op("Cast dh1 bf16", 0, cast(H1)),
           gemm(B, 1024, 512, "MatMulTransposed dX dense_1"), Op("Cast dh0 f32", 0, cast(H0)),
           Op("ReluGrad dense", 0, 12.0 * H0), Op("ReduceSum dense bias", 0, 4.0 * H0, grads=[("dense/bias", 4096)]),
           gemm(1024, 512, B, "MatMulTransposed dW dense_1", after="Cast dh1 bf16"),
           Op("Cast dW dense_1", 0, cast(W1), grads=[("dense_1/kernel", 4 * W1)], after="Cast dh1 bf16"),
           Op("Cast dh0 bf16", 0, cast(H0)),
           gemm(784, 1024, B, "MatMulTransposed dW dense"),
           Op("Cast dW dense", 0, cast(W0), grads=[("dense/kernel", 4 * W0)])]
    upd = adam([("dense/kernel", W0), ("dense/bias", 1024), ("dense_1/kernel", W1), ("dense_1/bias", 512),
                ("dense_2/kernel", W2), ("dense_2/bias", 10)])
    return fwd, weight_grads_first(bwd) if first else bwd, upd


def imdb_lstm(B, T=200, first=True):
    # The LSTM runs in fp32 (the bf16 rewrite covers GEMMs and convolutions only): one input GEMM, then per
    # time step a recurrent GEMM and a gate kernel; backward: per time step a gate-gradient kernel and a GEMM,
    # then the weight GEMMs. Its time is mostly per-kernel overhead.
    G = 4 * 128
    fwd = [Op("step counters"), Op("Gather", 0, 2.0 * 4 * B * T * 16), Op("Concat", 0, 8.0 * 1024),
           Op("LSTM", 2.0 * B * T * G * (16 + 128), 4.0 * B * T * (16 + 2 * G + 3 * 128), kernels=1 + 2 * T,
              fp32=True),
           Op("Cast h", 0, cast(B * 128)), Op("Cast dense/kernel", 0, cast(2048)), Op("Cast dense/bias", 0, cast(16)),
           gemm(B, 16, 128, "FusedGemm dense"), Op("Cast", 0, cast(B * 16)), Op("Cast", 0, cast(B * 16)),
           Op("Cast dense_1/kernel", 0, cast(16)), Op("Cast dense_1/bias", 0, cast(1)),
           gemm(B, 1, 16, "FusedGemm dense_1"), Op("Cast", 0, cast(B)), Op("Sigmoid", 0, 8.0 * B),
           Op("BinaryCrossEntropyWithLogits", 0, 8.0 * B)]
    bwd = [Op("BinaryCrossEntropyWithLogitsGrad", 0, 12.0 * B),
           Op("ReduceSum dense_1 bias", 0, 4.0 * B, grads=[("dense_1/bias", 4)]), Op("Cast", 0, cast(B)),
           gemm(B, 16, 1, "MatMulTransposed dX dense_1"), Op("Cast", 0, cast(B * 16)),
           Op("ReluGrad dense", 0, 12.0 * B * 16), Op("ReduceSum dense bias", 0, 64.0 * B, grads=[("dense/bias", 64)]),
           gemm(16, 1, B, "MatMulTransposed dW dense_1", after="ReduceSum dense_1 bias"),
           Op("Cast dW dense_1", 0, cast(16), grads=[("dense_1/kernel", 64)], after="ReduceSum dense_1 bias"),
           Op("Cast", 0, cast(B * 16)),
           gemm(B, 128, 16, "MatMulTransposed dX dense"), Op("Cast", 0, cast(B * 128)),
           Op("LSTMGrad", 4.0 * B * T * G * (16 + 128), 4.0 * B * T * (2 * 16 + 4 * G + 4 * 128), kernels=2 * T + 4,
              fp32=True, grads=[("lstm/kernel", 4 * 512 * 16), ("lstm/recurrent_kernel", 4 * 512 * 128)]),
           Op("Slice (bias)", 0, 8.0 * 1024, grads=[("lstm/bias", 4 * 512)]),
           Op("GatherGrad", 0, 4.0 * (B * T * 16 * 2 + 10000 * 16), grads=[("embedding/embeddings", 4 * 160000)]),
           gemm(128, 16, B, "MatMulTransposed dW dense", after="ReduceSum dense bias"),
           Op("Cast dW dense", 0, cast(2048), grads=[("dense/kernel", 4 * 2048)], after="ReduceSum dense bias")]
    upd = adam([("embedding/embeddings", 160000), ("lstm/kernel", 8192), ("lstm/recurrent_kernel", 65536),
                ("lstm/bias", 512), ("dense/kernel", 2048), ("dense/bias", 16), ("dense_1/kernel", 16),
                ("dense_1/bias", 1)])
    return fwd, weight_grads_first(bwd) if first else bwd, upd


# GPT-2 small (124,439,808 parameters, the token embedding tied to the output projection): n_layer 12,
# d_model 768, 1024 positions, vocabulary 50257. Modelled per layer at a model-FLOPs utilization instead of op
# by op: its GEMMs are large enough for that.
GPT2 = dict(layers=12, d=768, ctx=1024, vocab=50257)


def gpt2_params():
    d, V, C = GPT2["d"], GPT2["vocab"], GPT2["ctx"]
    layer = [("ln_1.w", d), ("ln_1.b", d), ("attn.c_attn.w", d * 3 * d), ("attn.c_attn.b", 3 * d),
             ("attn.c_proj.w", d * d), ("attn.c_proj.b", d), ("ln_2.w", d), ("ln_2.b", d),
             ("mlp.c_fc.w", d * 4 * d), ("mlp.c_fc.b", 4 * d), ("mlp.c_proj.w", 4 * d * d), ("mlp.c_proj.b", d)]
    return layer, [("ln_f.w", d), ("ln_f.b", d)], [("wpe", C * d), ("wte", V * d)]


def gpt2(seqs, a):
    d, V, C, nl = GPT2["d"], GPT2["vocab"], GPT2["ctx"], GPT2["layers"]
    tokens = seqs * C
    layer, final, emb = gpt2_params()
    # Forward FLOPs per token: 2 per multiply-add of the weight GEMMs, plus QK^T and AV over the full context.
    layer_fwd = tokens * (2.0 * 12 * d * d + 2 * 2.0 * C * d)
    head_fwd = tokens * 2.0 * d * V
    rate = a.peak_tflops * 1e12 * a.gpt2_mfu
    fwd = [Op("forward (12 layers and the output projection)", (nl * layer_fwd + head_fwd), 0, kernels=0)]
    bwd = [Op("backward: output projection and ln_f", 2 * head_fwd, 0, kernels=0,
              grads=[(n, 4 * p) for n, p in final])]
    for i in reversed(range(nl)):
        bwd.append(Op(f"backward: layer {i}", 2 * layer_fwd, 0, kernels=0,
                      grads=[(f"h.{i}.{n}", 4 * p) for n, p in layer]))
    bwd.append(Op("backward: embeddings (wte complete only now: it is tied to the output projection)", 0,
                  4.0 * tokens * d, kernels=1, grads=[(n, 4 * p) for n, p in emb]))
    upd = adam([(f"h.{i}.{n}", p) for i in range(nl) for n, p in layer] + final + emb)
    for o in fwd + bwd:
        o.rate = rate
    return fwd, bwd, upd


# ---------------------------------------------------------------------------------------------------------
# Time


def op_us(o, a):
    if hasattr(o, "rate"):
        compute = o.flops / o.rate
    else:
        peak = (a.fp32_tflops if o.fp32 else a.peak_tflops) * 1e12
        compute = o.flops / (peak * a.gemm_eff)
    memory = o.nbytes / (a.hbm_tbs * 1e12 * a.hbm_eff)
    return (max(compute, memory) * 1e6 + o.kernels * a.kernel_us) * getattr(o, "scale", 1.0)


# The sample specs `trainer bench` names, and the model each is.
SPECS = {"cifar10/cnn.toml": "CIFAR-10 CNN", "fashion_mnist/mlp.toml": "Fashion-MNIST MLP",
         "imdb/lstm.toml": "IMDB LSTM"}


def measured_phases(path):
    """Per model and per-GPU batch, the forward, backward and update times (us) one GPU measured: `trainer
    bench SPEC --device cuda` JSON lines. The per-op times split the step into phases; the step itself is the
    replayed graph's when there is one (what a run takes), else the kernel-by-kernel step."""
    out = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            b = json.loads(line)
            name = next((m for spec, m in SPECS.items() if b.get("spec", "").endswith(spec)), None)
            if not name or b.get("precision") != "bf16" or not b.get("phases"):
                continue
            ops = sum(ph["ms_per_step"] for ph in b["phases"].values())
            step_ms = (b.get("step_ms_graph") or b["step_ms"])["median"]
            out[(name, int(b["batch_size"]))] = {k: 1e3 * step_ms * ph["ms_per_step"] / ops
                                                 for k, ph in b["phases"].items()}
    return out


def calibrate(model, phases, a):
    """Scales each phase's modelled op times to the measured phase time: the ops' order, gradients and relative
    times stay the model's, the phase totals are measured."""
    for ops, key in zip(model[:3], ("forward", "backward", "update")):
        modelled = sum(op_us(o, a) for o in ops)
        if key in phases and modelled > 0:
            for o in ops:
                o.scale = phases[key] / modelled
    return model


def buckets_of(bwd, bucket_bytes, first_bytes=MB):
    """The planner's packing (engine/plan/planner.cpp): gradients in the order backward produces them, a new
    bucket once the current one holds its cap or more (min(first_bytes, bucket_bytes) for the first one,
    bucket_bytes after), gradients made by one op kept together. Returns [bytes, tensors, ready op index,
    parameters] per bucket."""
    out = []
    for i, o in enumerate(bwd):
        for param, nbytes in o.grads:
            cap = min(first_bytes, bucket_bytes) if len(out) == 1 else bucket_bytes
            if not out or (out[-1][0] >= cap and out[-1][2] != i):
                out.append([0, 0, i, []])
            out[-1][0] += nbytes
            out[-1][1] += 1
            out[-1][2] = i
            out[-1][3].append(param)
    return out


def allreduce_us(nbytes, calls, n, busbw_gbs, a):
    return calls * a.latency_us + 2.0 * (n - 1) / n * nbytes / (busbw_gbs * 1e9) * 1e6


# How the trainer reduced before and how it does now: the planner's schedule (id order, or weight gradients
# first), the first bucket's cap, and whether each update waits only for its own bucket (updates in gradient
# order) or for every reduction.
BEFORE = dict(first=False, first_bytes=None, overlap_updates=False)
NOW = dict(first=True, first_bytes=MB, overlap_updates=True)


def step(model, n, bucket_bytes, busbw, a, first_bytes=MB, overlap_updates=True):
    """Per-GPU step time at n replicas: reductions start when their bucket is ready and run one after another
    on one communication stream. With overlap_updates each parameter's update runs, in the order the
    gradients were produced, once its own bucket is reduced; without, the updates start after the last
    reduction."""
    fwd, bwd, upd = model
    t = sum(op_us(o, a) for o in fwd)
    ends = []
    for o in bwd:
        t += op_us(o, a)
        ends.append(t)
    backward_end = t
    comm_end, comm_total, reduced = 0.0, 0.0, {}
    bks = buckets_of(bwd, bucket_bytes, first_bytes or bucket_bytes)
    if n > 1:
        for nbytes, tensors, ready, params in bks:
            d = allreduce_us(nbytes, 1, n, busbw, a)
            comm_end = max(comm_end, ends[ready]) + d
            comm_total += d
            for p in params:
                reduced[p] = comm_end
    update = sum(op_us(o, a) for o in upd)
    if overlap_updates:
        made = {p: i for i, o in enumerate(bwd) for p, _ in o.grads}
        t = backward_end
        for o in sorted(upd, key=lambda o: made[o.param]):
            t = max(t, reduced.get(o.param, 0.0)) + op_us(o, a)
    else:
        t = max(backward_end, comm_end) + update
    # Contention: while a reduction overlaps compute, NCCL's kernels take SMs and HBM bandwidth, and the compute
    # they overlap runs slower; charged as a fraction of the hidden communication time.
    waited = max(0.0, t - backward_end - update)
    t += a.contention * max(0.0, comm_total - waited)
    return dict(step=t, compute=backward_end + update, comm=comm_total, exposed=max(0.0, t - backward_end - update),
                buckets=len(bks), backward=backward_end - sum(op_us(o, a) for o in fwd))


def grad_bytes(model):
    return sum(nb for o in model[1] for _, nb in o.grads)


def efficiency(model, n, bucket_bytes, busbw, a, **how):
    return step(model, 1, bucket_bytes, busbw, a, **how)["step"] / step(model, n, bucket_bytes, busbw, a, **how)["step"]


BUCKET_SIZES = [0.25, 0.5, 1, 2, 4, 8, 14, 16, 25, 50, 100]  # MB


def best_bucket(model, n, busbw, a):
    return max(BUCKET_SIZES, key=lambda mb: (round(efficiency(model, n, mb * MB, busbw, a, **how_of(NOW)), 6), mb))


def how_of(mode):
    return dict(first_bytes=mode["first_bytes"], overlap_updates=mode["overlap_updates"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--busbw-ring", type=float, default=370, help="GB/s, NCCL ring all-reduce bus bandwidth")
    p.add_argument("--busbw-nvls", type=float, default=480, help="GB/s, NVLink SHARP (NVLS) all-reduce")
    p.add_argument("--latency-us", type=float, default=15, help="fixed cost of one NCCL call")
    p.add_argument("--peak-tflops", type=float, default=790, help="dense bf16, measured with PyTorch on an H200")
    p.add_argument("--fp32-tflops", type=float, default=60, help="fp32 without tensor cores (the LSTM)")
    p.add_argument("--gemm-eff", type=float, default=0.5, help="fraction of peak a GEMM or convolution reaches")
    p.add_argument("--hbm-tbs", type=float, default=4.8, help="TB/s, H200 HBM3e")
    p.add_argument("--hbm-eff", type=float, default=0.7, help="fraction of HBM bandwidth a memory-bound op reaches")
    p.add_argument("--kernel-us", type=float, default=2.0, help="per kernel in a replayed CUDA graph: gap and ramp")
    p.add_argument("--gpt2-mfu", type=float, default=0.4, help="GPT-2's model-FLOPs utilization")
    p.add_argument("--contention", type=float, default=0.1,
                   help="compute time lost per unit of communication it overlaps (NCCL's SMs and HBM share)")
    p.add_argument("--cnn-batch", type=int, default=256)
    p.add_argument("--gpt2-seqs", type=int, default=16, help="sequences of 1024 tokens per GPU")
    p.add_argument("--measured", metavar="JSONL",
                   help="`trainer bench SPEC --device cuda --set train.precision=bf16` lines of one GPU: the "
                        "sample models' forward, backward and update times become the measured ones")
    a = p.parse_args()
    measured = measured_phases(a.measured) if a.measured else {}

    def fitted(name, batch, model):
        phases = measured.get((name, batch))
        return calibrate(model, phases, a) if phases else model

    def models(first):
        return [("CIFAR-10 CNN", f"{a.cnn_batch}", fitted("CIFAR-10 CNN", a.cnn_batch, cifar_cnn(a.cnn_batch, first))),
                ("Fashion-MNIST MLP", "64", fitted("Fashion-MNIST MLP", 64, fashion_mlp(64, first))),
                ("IMDB LSTM", "64", fitted("IMDB LSTM", 64, imdb_lstm(64, first=first))),
                ("GPT-2 small", f"{a.gpt2_seqs}x1024", gpt2(a.gpt2_seqs, a))]
    now, before = models(True), models(False)
    if a.measured:
        fitted_names = sorted({name for name, _ in measured})
        print(f"Measured on one GPU ({a.measured}): the forward, backward and update times of "
              f"{', '.join(fitted_names) or 'no model (no bf16 bench line at the batch modelled)'}; the rest "
              f"is modelled. Tables that vary the batch stay modelled.\n")
    print(f"Assumptions: bf16 {a.peak_tflops:g} TFLOP/s x {a.gemm_eff:g}, fp32 {a.fp32_tflops:g} TFLOP/s x "
          f"{a.gemm_eff:g}, HBM {a.hbm_tbs:g} TB/s x {a.hbm_eff:g}, {a.kernel_us:g} us per kernel, GPT-2 at "
          f"{a.gpt2_mfu:.0%} MFU; all-reduce 2(N-1)/N bytes / busbw (ring {a.busbw_ring:g}, NVLS "
          f"{a.busbw_nvls:g} GB/s) + {a.latency_us:g} us per call; overlapped communication costs "
          f"{a.contention:.0%} of its time in compute.\n")

    print("## Per-GPU step (N = 1)\n")
    print("| model | per-GPU batch | parameters | gradient MiB | tensors | forward ms | backward ms | update ms "
          "| step ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, batch, m in now:
        s = step(m, 1, 25 * MB, a.busbw_ring, a)
        fw = sum(op_us(o, a) for o in m[0]) / 1e3
        up = sum(op_us(o, a) for o in m[2]) / 1e3
        nt = sum(len(o.grads) for o in m[1])
        print(f"| {name} | {batch} | {grad_bytes(m) // 4:,} | {grad_bytes(m) / MiB:.2f} | {nt} | {fw:.3f} "
              f"| {s['backward'] / 1e3:.3f} | {up:.3f} | {s['step'] / 1e3:.3f} |")

    print("\n## All-reduce of the whole gradient, one call (us)\n")
    print("| model | N=2 ring | N=4 ring | N=8 ring | N=8 NVLS |")
    print("|---|---|---|---|---|")
    for name, _, m in now:
        b = grad_bytes(m)
        cells = [allreduce_us(b, 1, n, a.busbw_ring, a) for n in (2, 4, 8)] + [allreduce_us(b, 1, 8, a.busbw_nvls, a)]
        print(f"| {name} | " + " | ".join(f"{c:,.1f}" for c in cells) + " |")

    print("\n## Scaling efficiency (per-GPU step at N=1 / at N; per-GPU batch fixed; one call per bucket)\n")
    print("Before: 25 MB buckets, the planner's id order, the updates after the last reduction. Now: the defaults "
          "(first bucket 1 MB, then 25 MB; weight gradients first; each update after its own bucket). Best: now, "
          "with the best bucket_mb for N = 8.\n")
    print("| model | before N=8 | buckets now | now N=2 | now N=4 | now N=8 | now N=8 NVLS | now exposed us N=8 "
          "| best bucket_mb | best N=8 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, _, m), (_, _, mb_) in zip(now, before):
        B8 = efficiency(mb_, 8, 25 * MB, a.busbw_ring, a, **how_of(BEFORE))
        C = [efficiency(m, n, 25 * MB, a.busbw_ring, a) for n in (2, 4, 8)]
        Cn = efficiency(m, 8, 25 * MB, a.busbw_nvls, a)
        ex = step(m, 8, 25 * MB, a.busbw_ring, a)["exposed"]
        nb = len(buckets_of(m[1], 25 * MB))
        best = best_bucket(m, 8, a.busbw_ring, a)
        print(f"| {name} | {B8:.1%} | {nb} | " + " | ".join(f"{e:.1%}" for e in C) + f" | {Cn:.1%} | {ex:.1f} "
              f"| {best:g} | {efficiency(m, 8, best * MB, a.busbw_ring, a):.1%} |")

    print(f"\n## CIFAR-10 CNN at per-GPU batch {a.cnn_batch}, N = 8: where the time goes (us)\n")
    print("| reduction | bucket_mb | buckets | step N=1 | all-reduce | exposed | ring | NVLS |")
    print("|---|---|---|---|---|---|---|---|")
    for label, mode, mb in (("before", BEFORE, 25), ("before", BEFORE, 8), ("now", NOW, 25), ("now", NOW, 8)):
        m = cifar_cnn(a.cnn_batch, mode["first"])
        s1 = step(m, 1, mb * MB, a.busbw_ring, a, **how_of(mode))
        s8 = step(m, 8, mb * MB, a.busbw_ring, a, **how_of(mode))
        print(f"| {label} | {mb:g} | {s8['buckets']} | {s1['step']:.1f} | {s8['comm']:.1f} | {s8['exposed']:.1f} "
              f"| {efficiency(m, 8, mb * MB, a.busbw_ring, a, **how_of(mode)):.1%} "
              f"| {efficiency(m, 8, mb * MB, a.busbw_nvls, a, **how_of(mode)):.1%} |")

    print("\n## CIFAR-10 CNN: smallest per-GPU batch with >= 95% at N = 8 (25 MB buckets)\n")
    print("| reduction | ring | NVLS |")
    print("|---|---|---|")
    for label, mode in (("before", BEFORE), ("now", NOW)):
        cells = []
        for bw in (a.busbw_ring, a.busbw_nvls):
            b = 32
            while b <= 8192 and efficiency(cifar_cnn(b, mode["first"]), 8, 25 * MB, bw, a, **how_of(mode)) < 0.95:
                b += 32
            cells.append(str(b) if b <= 8192 else "> 8192")
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\n## Sensitivity: CIFAR-10 CNN, N = 8, ring, the defaults\n")
    print("| latency per call | 5 us | 10 us | 15 us | 20 us | 30 us |")
    print("|---|---|---|---|---|---|")
    for ke in (1.0, 2.0, 4.0):
        cells = []
        for lat in (5, 10, 15, 20, 30):
            b = argparse.Namespace(**{**vars(a), "latency_us": lat, "kernel_us": ke})
            cells.append(f"{efficiency(cifar_cnn(a.cnn_batch), 8, 25 * MB, a.busbw_ring, b):.1%}")
        print(f"| {ke:g} us per kernel | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
