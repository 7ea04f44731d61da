#!/usr/bin/env python3
"""Training throughput of `trainer fit` against PyTorch on the CPU, for the Fashion-MNIST samples, the IMDB
LSTM, 1-D CNN and transformer (imdb-lstm, imdb-cnn, imdb-transformer: samples/imdb/*.toml on random token ids,
as the reviews are not shipped) and the CIFAR-10 CNN (cifar-cnn: samples/cifar10/cnn.toml on random records of
the binary format).

For each sample spec, in one run and with the same thread count: trainer's training samples/s (from its JSON
lines), PyTorch's samples/s for the same model, optimizer, loss and batch size on the same data (in-memory
tensors), both processes' peak memory, and the trainer step's GFLOP/s (3 x forward FLOPs per sample x samples/s)
against the fp32 GEMM ceiling that oneDNN reaches here (bench_cpu). Measurements alternate between the two
sides and repeat; medians are reported. A table goes to stderr, one JSON line per sample to stdout.

The PyTorch side builds the spec's sequential layers, optimizer and sparse categorical cross-entropy;
learning-rate schedules are left out (they change no work per step). PyTorch runs under the system Python
(Debian's python3-torch: `apt-get install -y python3-torch`; it is for /usr/bin/python3). Each PyTorch
measurement uses the thread settings that ran fastest in a short probe (see --torch-configs), so the
comparison is against PyTorch at its best on this machine.

Usage: tools/bench/bench_fit.py [--build-dir build] [--repeats 3] [--profile]   (TRAINER_CPU_PROFILE=1 on a
trainer run prints per-kernel medians of each plan to stderr; --profile shows the training step's.)
"""
import argparse
import gzip
import json
import math
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SAMPLES = ["mlp", "cnn", "lstm", "imdb-cnn", "imdb-transformer", "cifar-cnn", "imdb-lstm"]

# Stand-ins with the product's models for sample specs that are not in the tree yet; the data, loss and
# optimizer sections are taken from mlp.toml.
FALLBACK_MODELS = {
    "cnn": """[model]
input = [28, 28, 1]

[[model.layers]]
type = "Conv2D"
filters = 32
kernel_size = 3
activation = "relu"

[[model.layers]]
type = "MaxPooling2D"
pool_size = 2

[[model.layers]]
type = "Flatten"

[[model.layers]]
type = "Dense"
units = 512
activation = "relu"

[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""",
    "lstm": """[model]
input = [28, 28]

[[model.layers]]
type = "LSTM"
units = 128

[[model.layers]]
type = "Dense"
units = 16
activation = "relu"

[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""",
}

# Environment settings tried for PyTorch. Debian's PyTorch runs its GEMMs in OpenBLAS (pthreads) and its other
# ops in OpenMP; with both pools spinning on two cores it can run several times slower than with one of them
# quiet, so the probe picks the fastest.
TORCH_CONFIGS = {
    "blas1": {"OPENBLAS_NUM_THREADS": "1"},
    "blas1-passive": {"OPENBLAS_NUM_THREADS": "1", "OMP_WAIT_POLICY": "passive"},
    "blasN-passive": {"OPENBLAS_NUM_THREADS": "{threads}", "OMP_WAIT_POLICY": "passive"},
    "blasN": {"OPENBLAS_NUM_THREADS": "{threads}"},
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def load_toml(path):
    try:
        import tomllib
    except ImportError:
        sys.exit("bench_fit: needs Python 3.11 or later (tomllib)")
    with open(path, "rb") as f:
        return tomllib.load(f)


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_child(cmd, env, timeout=None):
    """Runs cmd; returns (exit code, stdout, stderr, max RSS in bytes of that child alone)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG if deadline else 0)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.05)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---- specs ----


def imdb_spec(name, tmp, limit):
    """samples/imdb/NAME.toml reading random token ids written to tmp (labels: whether the last token is in the
    lower half of the vocabulary), so the run needs no download."""
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.integers(1, 10000, (max(limit, 1), 200)).astype(np.int32)
    y = (x[:, -1] < 5000).astype(np.int64)
    np.save(pathlib.Path(tmp) / "imdb_x.npy", x)
    np.save(pathlib.Path(tmp) / "imdb_y.npy", y)
    text = (ROOT / "samples" / "imdb" / f"{name}.toml").read_text()
    for split in ("train", "test"):
        text = text.replace(f'"data/x_{split}.npy"', f'"{tmp}/imdb_x.npy"')
        text = text.replace(f'"data/y_{split}.npy"', f'"{tmp}/imdb_y.npy"')
    path = pathlib.Path(tmp) / f"imdb_{name}.toml"
    path.write_text(text)
    return path


def cifar_spec(tmp, limit):
    """samples/cifar10/cnn.toml reading random CIFAR-10 binary records written to tmp (the product card's CNN;
    the dataset is not shipped)."""
    import numpy as np
    rng = np.random.default_rng(0)
    n = max(limit, 1)
    records = np.concatenate([rng.integers(0, 10, (n, 1), dtype=np.uint8),
                              rng.integers(0, 256, (n, 3072), dtype=np.uint8)], axis=1)
    records.tofile(pathlib.Path(tmp) / "cifar_batch.bin")
    text = (ROOT / "samples" / "cifar10" / "cnn.toml").read_text()
    for old in ('"data/data_batch_*.bin"', '"data/test_batch.bin"'):
        text = text.replace(old, f'"{tmp}/cifar_batch.bin"')
    path = pathlib.Path(tmp) / "cifar_cnn.toml"
    path.write_text(text)
    return path


def sample_specs(names, tmp, limit):
    """Path of each sample's spec: samples/fashion_mnist/NAME.toml, imdb-NAME for samples/imdb/NAME.toml on
    random reviews, or a stand-in written to tmp."""
    base = ROOT / "samples" / "fashion_mnist"
    specs = {}
    for name in names:
        if name == "cifar-cnn":
            specs[name] = cifar_spec(tmp, limit)
            continue
        if name.startswith("imdb-"):
            specs[name] = imdb_spec(name[len("imdb-"):], tmp, limit)
            continue
        path = base / f"{name}.toml"
        if path.exists():
            specs[name] = path
            continue
        if name not in FALLBACK_MODELS:
            sys.exit(f"bench_fit: no spec {path}")
        mlp = (base / "mlp.toml").read_text()
        rest = mlp[mlp.index("[data]"):]
        # Data paths of mlp.toml are absolute or relative to its folder; keep them valid from tmp.
        lines = []
        for line in rest.splitlines():
            key = line.split("=", 1)[0].strip()
            if key in ("x", "y") and '"' in line:
                value = line.split('"')[1]
                if not os.path.isabs(value):
                    line = f'{key} = "{(base / value).resolve()}"'
            lines.append(line)
        path = pathlib.Path(tmp) / f"{name}.toml"
        path.write_text(f"# Stand-in for samples/fashion_mnist/{name}.toml\nformat_version = 1\n\n"
                        + FALLBACK_MODELS[name] + "\n" + "\n".join(lines) + "\n")
        log(f"bench_fit: {base / (name + '.toml')} is missing; using the product's model in {path}")
        specs[name] = path
    return specs


# ---- trainer side ----


def trainer_summary(trainer, spec, batch):
    rc, out, err, _ = run_child([str(trainer), "summary", str(spec), "--batch-size", str(batch), "--json"],
                                os.environ.copy())
    if rc != 0:
        sys.exit(f"bench_fit: trainer summary {spec} failed:\n{err}")
    return json.loads(out)


def trainer_fit(trainer, spec, args, env):
    cfg = load_toml(spec)
    cmd = [str(trainer), "fit", str(spec), "--epochs", str(args.trainer_epochs), "--batch-size", str(args.batch),
           "--set", f"data.train.limit={args.limit}", "--log-format", "jsonl", "--quiet"]
    if "validation" in cfg.get("data", {}):
        # Validation is not timed; keep it short.
        cmd += ["--set", f"data.validation.limit={args.batch}"]
    rc, out, err, rss = run_child(cmd, env, timeout=args.timeout)
    if rc != 0:
        log(f"bench_fit: {' '.join(cmd)} exited with {rc}:\n{err.strip()}")
        return None
    epochs = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    if not epochs:
        log(f"bench_fit: no epoch lines from {' '.join(cmd)}")
        return None
    # The last epoch: the first one warms caches and oneDNN's kernels up.
    return {"samples_per_s": epochs[-1]["samples_per_s"], "max_rss_bytes": rss}


def trainer_profile(trainer, spec, args, env):
    """Per-kernel medians of the training step (TRAINER_CPU_PROFILE): the training plan's table, as text."""
    env = dict(env, TRAINER_CPU_PROFILE="1")
    cmd = [str(trainer), "fit", str(spec), "--epochs", "1", "--batch-size", str(args.batch),
           "--set", f"data.train.limit={args.limit}", "--log-format", "jsonl", "--quiet"]
    if "validation" in load_toml(spec).get("data", {}):
        cmd += ["--set", f"data.validation.limit={args.batch}"]
    rc, _, err, _ = run_child(cmd, env, timeout=args.timeout)
    if rc != 0:
        return f"(profile run failed with {rc})"
    # One table per plan; the training plan is the one with the most runs.
    tables, cur = [], None
    for line in err.splitlines():
        if line.startswith("CPU plan profile:"):
            cur = [line]
            tables.append(cur)
        elif cur is not None and line.startswith("  "):
            cur.append(line)
        else:
            cur = None

    def runs(t):
        try:
            return int(t[0].split(",")[1].split()[0])
        except (IndexError, ValueError):
            return 0

    if not tables:
        return "(no profile: the trainer binary predates TRAINER_CPU_PROFILE)"
    best = max(tables, key=runs)
    return "\n".join(best[:1 + args.profile_top])


def gemm_ceiling(bench_cpu, threads, env):
    cmd = [str(bench_cpu), "--threads", str(threads), "--cases", "gemm", "--repeats", "3", "--min-seconds", "0.2"]
    rc, out, err, _ = run_child(cmd, env)
    if rc != 0:
        log(f"bench_fit: {' '.join(cmd)} failed:\n{err}")
        return None
    rows = [json.loads(l) for l in out.splitlines() if l.startswith("{")]
    # The median single run: the trainer's samples/s are epoch averages under the same load.
    return max((r.get("median_gflops", r["gflops"]) for r in rows if r.get("bench") == "gemm"), default=None)


# ---- PyTorch side ----


def torch_run(args, spec, steps, warmup, config, env_base):
    env = env_base.copy()
    for k, v in TORCH_CONFIGS[config].items():
        env[k] = v.format(threads=args.threads)
    cmd = [args.torch_python, str(pathlib.Path(__file__).resolve()), "--torch-worker", str(spec),
           "--batch-size", str(args.batch), "--limit", str(args.limit), "--threads", str(args.threads),
           "--worker-steps", str(steps), "--worker-warmup", str(warmup)]
    rc, out, err, rss = run_child(cmd, env, timeout=args.timeout)
    if rc == 3:
        sys.exit(err.strip())
    if rc != 0:
        log(f"bench_fit: PyTorch ({config}) on {spec} exited with {rc}:\n{err.strip()}")
        return None
    res = json.loads(out.strip().splitlines()[-1])
    res["max_rss_bytes"] = rss
    res["config"] = config
    return res


def torch_worker(args):
    """Runs inside the system Python: trains the spec's model with PyTorch and prints one JSON line."""
    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"bench_fit: PyTorch is missing for {sys.executable} ({e}).\n"
              "  Install it with: apt-get install -y python3-torch   (Debian's package, for /usr/bin/python3),\n"
              "  point --torch-python at a Python that has it, or pass --no-torch.", file=sys.stderr)
        sys.exit(3)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec_path = pathlib.Path(args.torch_worker)
    cfg = load_toml(spec_path)
    x, y = load_train_data(cfg, spec_path.parent, args.limit, np)
    model, in_shape = build_torch_model(cfg["model"], torch)
    x = torch.from_numpy(x.reshape((-1,) + in_shape))
    y = torch.from_numpy(y.astype(np.int64))
    opt = build_torch_optimizer(cfg.get("train", {}), model.parameters(), torch)
    loss_name = cfg.get("train", {}).get("loss", "sparse_categorical_crossentropy")
    if loss_name == "sparse_categorical_crossentropy":
        loss_fn = torch.nn.CrossEntropyLoss()  # on logits: the trainer fuses softmax + CE the same way
    elif loss_name == "binary_crossentropy":
        # On logits, as the trainer fuses sigmoid + binary cross-entropy.
        bce = torch.nn.BCEWithLogitsLoss()
        y = y.float()

        def loss_fn(out, target):
            return bce(out.squeeze(-1), target)
    else:
        sys.exit(f"bench_fit: the PyTorch side supports sparse categorical and binary cross-entropy, not {loss_name}")
    n, batch = x.shape[0], args.batch_size
    gen = torch.Generator().manual_seed(1)

    def step(idx):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss.item()  # read each step, as the trainer does

    def batches(count):
        done = 0
        while done < count:
            perm = torch.randperm(n, generator=gen)
            for b in range(0, n, batch):
                if done == count:
                    return
                yield perm[b:b + batch]
                done += 1

    model.train()
    for idx in batches(args.worker_warmup):
        step(idx)
    steps = args.worker_steps if args.worker_steps > 0 else math.ceil(n / batch)
    seen = 0
    t0 = time.perf_counter()
    for idx in batches(steps):
        step(idx)
        seen += idx.numel()
    seconds = time.perf_counter() - t0

    # Peak bytes held by tensors during a step: what persists across steps (parameters, optimizer state) plus
    # the highest point of the profiler's allocation trace over one step (gradients, activations,
    # temporaries). The trace has op granularity, so this is an estimate.
    persistent = sum(p.numel() * p.element_size() for p in model.parameters())
    for st in opt.state.values():
        persistent += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    peak_alloc = None
    try:
        from torch.profiler import ProfilerActivity, profile
        idx = next(batches(1))
        opt.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        # Each event's own (self) allocations, counted at its start when they grow memory and at its end
        # when they free it (a parent op frees its children's temporaries after they ran).
        points = []
        for e in prof.events():
            u = e.self_cpu_memory_usage
            if u:
                points.append((e.time_range.start if u > 0 else e.time_range.end, u))
        cur = top = 0
        for _, u in sorted(points):
            cur += u
            top = max(top, cur)
        peak_alloc = persistent + top
    except Exception as e:  # the profiler is optional; report what is known
        print(f"bench_fit: PyTorch allocation trace unavailable: {e}", file=sys.stderr)
    print(json.dumps({"samples_per_s": seen / seconds, "steps": steps, "seconds": seconds,
                      "peak_alloc_bytes": peak_alloc, "persistent_bytes": persistent,
                      "torch": torch.__version__}), flush=True)


def read_idx(path, np):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_train_data(cfg, folder, limit, np):
    data = cfg["data"]
    src = data["train"]
    x_path = str(src["x"][0] if isinstance(src["x"], list) else src["x"])
    fmt = src.get("format", "npy" if x_path.endswith(".npy") else "cifar10" if x_path.endswith(".bin") else "idx")
    if fmt not in ("idx", "npy", "cifar10"):
        sys.exit(f"bench_fit: the PyTorch side reads idx, npy and CIFAR-10 binary data, not {fmt}")

    def one(v):
        v = v[0] if isinstance(v, list) else v
        return v if os.path.isabs(v) else str(folder / v)

    if fmt == "cifar10":  # records of a label byte and 3x32x32 channels-first pixels
        records = np.fromfile(one(src["x"]), dtype=np.uint8).reshape(-1, 3073)
        if limit:
            records = records[:limit]
        x = records[:, 1:].astype(np.float32) * np.float32(data.get("scale", 1.0))
        return np.ascontiguousarray(x), records[:, 0].astype(np.int64)

    if str(one(src["x"])).endswith(".npy"):  # token ids: as they are
        x, y = np.load(one(src["x"])), np.load(one(src["y"]))
        if limit:
            x, y = x[:limit], y[:limit]
        return np.ascontiguousarray(x.astype(np.int64)), y
    x = read_idx(one(src["x"]), np)
    y = read_idx(one(src["y"]), np)
    if limit:
        x, y = x[:limit], y[:limit]
    x = x.astype(np.float32) * np.float32(data.get("scale", 1.0))
    mean, std = data.get("mean"), data.get("std")
    if mean is not None:
        x -= np.float32(mean if not isinstance(mean, list) else mean[0])
    if std is not None:
        x /= np.float32(std if not isinstance(std, list) else std[0])
    return np.ascontiguousarray(x), y


def build_torch_model(model, torch):
    """The spec's layers as torch modules, sequential or in the graph form (inputs = [...]); images run
    channels-first (NCHW)."""
    nn = torch.nn
    shape = model["input"]
    if isinstance(shape, dict):
        shape = shape["shape"]
    shape = tuple(shape)
    if len(shape) == 3:  # Keras's [H, W, C] is PyTorch's [C, H, W]
        shape = (shape[2], shape[0], shape[1])
    in_shape = shape
    acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
            "leaky_relu": nn.LeakyReLU}

    class LastStep(nn.Module):
        """An LSTM returning its last hidden state, or every step's with return_sequences."""

        def __init__(self, inputs, units, sequences):
            super().__init__()
            self.lstm = nn.LSTM(inputs, units, batch_first=True)
            self.sequences = sequences

        def forward(self, v):
            out, (h, _) = self.lstm(v)
            return out if self.sequences else h[-1]

    class Conv1d(nn.Module):
        """Keras's Conv1D on [N, steps, features]: PyTorch's on [N, features, steps] between transposes."""

        def __init__(self, inputs, layer):
            super().__init__()
            padding = layer.get("padding", "valid")
            if padding not in ("valid", "same"):
                sys.exit(f"bench_fit: the PyTorch side builds Conv1D with padding valid or same, not {padding}")
            self.conv = nn.Conv1d(inputs, layer["filters"], layer["kernel_size"], stride=layer.get("strides", 1),
                                  dilation=layer.get("dilation_rate", 1), padding=padding,
                                  bias=layer.get("use_bias", True))

        def forward(self, v):
            return self.conv(v.transpose(1, 2)).transpose(1, 2)

    class GlobalPool1d(nn.Module):
        def __init__(self, max_):
            super().__init__()
            self.max = max_

        def forward(self, v):
            return v.amax(1) if self.max else v.mean(1)

    class TokenAndPosition(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.tokens = nn.Embedding(layer["vocabulary_size"], layer["embedding_dim"])
            self.positions = nn.Parameter(torch.randn(layer["sequence_length"], layer["embedding_dim"]) * 0.05)

        def forward(self, v):
            return self.tokens(v) + self.positions[:v.shape[1]]

    class Attention(nn.Module):
        """Keras's MultiHeadAttention: projections to heads x key_dim (wider than the model when Keras's
        key_dim is), scaled dot-product attention, and the output projection."""

        def __init__(self, width, layer):
            super().__init__()
            self.heads, kd = layer["num_heads"], layer["key_dim"]
            vd = layer.get("value_dim", kd)
            self.q, self.k = nn.Linear(width, self.heads * kd), nn.Linear(width, self.heads * kd)
            self.v = nn.Linear(width, self.heads * vd)
            self.o = nn.Linear(self.heads * vd, layer.get("output_shape", width))
            self.dropout = layer.get("dropout", 0.0)
            self.causal = layer.get("use_causal_mask", False)

        def forward(self, query, value=None, key=None):
            value = query if value is None else value
            key = value if key is None else key
            n, tq, tv = query.shape[0], query.shape[1], value.shape[1]
            q = self.q(query).view(n, tq, self.heads, -1).transpose(1, 2)
            k = self.k(key).view(n, tv, self.heads, -1).transpose(1, 2)
            v = self.v(value).view(n, tv, self.heads, -1).transpose(1, 2)
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            if self.causal:
                scores = scores.masked_fill(torch.ones(tq, tv, dtype=torch.bool).triu(1), float("-inf"))
            w = torch.nn.functional.dropout(scores.softmax(-1), self.dropout, self.training)
            a = w @ v
            return self.o(a.transpose(1, 2).reshape(n, tq, -1))

    class Sum(nn.Module):
        def forward(self, *vs):
            return sum(vs)

    class Graph(nn.Module):
        """Layers in order, each applied to the outputs of the layers it names."""

        def __init__(self, steps):
            super().__init__()
            self.mods = nn.ModuleList(m for m, _, _ in steps)
            self.wiring = [(name, inputs) for _, name, inputs in steps]

        def forward(self, v):
            out = {"input": v}
            for mod, (name, inputs) in zip(self.mods, self.wiring):
                v = mod(*[out[i] for i in inputs])
                out[name] = v
            return v

    def pair(v):
        return tuple(v) if isinstance(v, list) else (v, v)

    layers = []
    graph = any("inputs" in layer for layer in model["layers"])
    steps, shapes, previous, counts = [], {"input": shape}, "input", {}
    explicit = {layer["name"] for layer in model["layers"] if "name" in layer}
    for i, layer in enumerate(model["layers"]):
        kind = layer["type"]
        last = i == len(model["layers"]) - 1
        base = "".join("_" + c.lower() if c.isupper() and j and kind[j - 1].islower() else c.lower()
                       for j, c in enumerate(kind))
        name = layer.get("name")
        while name is None or (name in explicit and "name" not in layer):  # Keras's generated names
            k = counts.get(base, 0)
            counts[base] = k + 1
            name = base if k == 0 else f"{base}_{k}"
        inputs = layer.get("inputs", [previous])
        shape = shapes[inputs[0]]
        before = len(layers)
        if kind == "Flatten":
            layers.append(nn.Flatten())
            shape = (math.prod(shape),)
        elif kind == "Dense":
            layers.append(nn.Linear(shape[-1], layer["units"], bias=layer.get("use_bias", True)))
            shape = shape[:-1] + (layer["units"],)
        elif kind == "Conv2D":
            k, s = pair(layer["kernel_size"]), pair(layer.get("strides", 1))
            d = pair(layer.get("dilation_rate", 1))
            same = layer.get("padding", "valid") == "same"
            layers.append(nn.Conv2d(shape[0], layer["filters"], k, stride=s, dilation=d,
                                    padding="same" if same else 0, bias=layer.get("use_bias", True)))
            if same:
                h, w = math.ceil(shape[1] / s[0]), math.ceil(shape[2] / s[1])
            else:
                h = (shape[1] - d[0] * (k[0] - 1) - 1) // s[0] + 1
                w = (shape[2] - d[1] * (k[1] - 1) - 1) // s[1] + 1
            shape = (layer["filters"], h, w)
        elif kind in ("MaxPooling2D", "AveragePooling2D"):
            p = pair(layer.get("pool_size", 2))
            s = pair(layer.get("strides", layer.get("pool_size", 2)))
            if layer.get("padding", "valid") != "valid":
                sys.exit("bench_fit: the PyTorch side pools with padding = valid only")
            cls = nn.MaxPool2d if kind == "MaxPooling2D" else nn.AvgPool2d
            layers.append(cls(p, s))
            shape = (shape[0], (shape[1] - p[0]) // s[0] + 1, (shape[2] - p[1]) // s[1] + 1)
        elif kind == "Dropout":
            layers.append(nn.Dropout(layer["rate"]))
        elif kind == "Embedding":
            layers.append(nn.Embedding(layer["input_dim"], layer["output_dim"]))
            shape = shape + (layer["output_dim"],)
        elif kind == "Conv1D":
            k, s, d = layer["kernel_size"], layer.get("strides", 1), layer.get("dilation_rate", 1)
            layers.append(Conv1d(shape[-1], layer))
            length = (math.ceil(shape[0] / s) if layer.get("padding", "valid") == "same"
                      else (shape[0] - d * (k - 1) - 1) // s + 1)
            shape = (length, layer["filters"])
        elif kind in ("GlobalMaxPooling1D", "GlobalAveragePooling1D"):
            layers.append(GlobalPool1d(kind == "GlobalMaxPooling1D"))
            shape = (shape[-1],)
        elif kind == "LSTM":
            seq = layer.get("return_sequences", False)
            layers.append(LastStep(shape[-1], layer["units"], seq))
            shape = (shape[0], layer["units"]) if seq else (layer["units"],)
        elif kind == "TokenAndPositionEmbedding":
            layers.append(TokenAndPosition(layer))
            shape = shape + (layer["embedding_dim"],)
        elif kind == "MultiHeadAttention":
            layers.append(Attention(shape[-1], layer))
            shape = (shape[0], layer.get("output_shape", shape[-1]))
        elif kind == "LayerNormalization":
            layers.append(nn.LayerNorm(shape[-1], eps=layer.get("epsilon", 1e-3)))
        elif kind == "Add":
            layers.append(Sum())
        else:
            sys.exit(f"bench_fit: the PyTorch side does not build {kind} layers")
        act = layer.get("activation")
        if not (act in (None, "linear") or (act in ("softmax", "sigmoid") and last)):
            # (a final softmax or sigmoid is part of the loss, as in the trainer's fused cross-entropy)
            if act not in acts:
                sys.exit(f"bench_fit: the PyTorch side does not build activation {act}")
            layers.append(acts[act]())
        added = layers[before:]
        steps.append((added[0] if len(added) == 1 else nn.Sequential(*added), name, inputs))
        shapes[name] = shape
        previous = name
    return (Graph(steps) if graph else nn.Sequential(*layers)), in_shape


def build_torch_optimizer(train, params, torch):
    o = train.get("optimizer", {})
    name, lr = o.get("name", "adam"), o.get("learning_rate", 0.001)
    b1, b2, eps = o.get("beta_1", 0.9), o.get("beta_2", 0.999), o.get("epsilon", 1e-7)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(b1, b2), eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=o.get("weight_decay", 0.004))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.get("momentum", 0.0), nesterov=o.get("nesterov", False))
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=o.get("rho", 0.9), eps=eps, momentum=o.get("momentum", 0.0))
    sys.exit(f"bench_fit: the PyTorch side does not build optimizer {name}")


# ---- main ----


def find_binary(args, name, rel):
    explicit = getattr(args, name)
    if explicit:
        return pathlib.Path(explicit)
    for build in ([args.build_dir] if args.build_dir else ["build"]):
        p = (ROOT / build / rel) if not os.path.isabs(build) else pathlib.Path(build) / rel
        if p.exists():
            return p
    sys.exit(f"bench_fit: no {rel} under {args.build_dir or 'build'} (build it, or pass --{name.replace('_', '-')})")


def fmt_bytes(b):
    return "-" if b is None else f"{b / 2**20:.0f} MiB"


def fmt_num(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", default=",".join(SAMPLES), help="comma-separated: " + ",".join(SAMPLES))
    p.add_argument("--build-dir", help="build folder holding cli/trainer and tools/bench/bench_cpu (default: build)")
    p.add_argument("--trainer", help="path of the trainer binary")
    p.add_argument("--bench-cpu", help="path of bench_cpu (the GEMM ceiling)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", os.cpu_count() or 1)),
                   help="threads of both sides (default: every core, or BENCH_THREADS)")
    p.add_argument("--batch-size", dest="batch", type=int, default=64)
    p.add_argument("--limit", type=int, default=20000, help="training samples per epoch")
    p.add_argument("--trainer-epochs", type=int, default=2, help="trainer epochs per run; the last one is timed")
    p.add_argument("--torch-warmup", type=int, default=30, help="PyTorch steps before the timed epoch")
    p.add_argument("--repeats", type=int, default=3, help="alternating measurements per sample; medians reported")
    p.add_argument("--torch-python", default="/usr/bin/python3", help="a Python with torch (default /usr/bin/python3)")
    p.add_argument("--torch-configs", default=",".join(TORCH_CONFIGS),
                   help="PyTorch thread settings to probe: " + ", ".join(TORCH_CONFIGS))
    p.add_argument("--no-torch", action="store_true", help="measure the trainer only")
    p.add_argument("--trainer-env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment for the trainer runs, e.g. OMP_WAIT_POLICY=passive (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also run each sample once with TRAINER_CPU_PROFILE=1 and print where the step's time goes")
    p.add_argument("--profile-top", type=int, default=12, help="kernels listed per profile")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child process")
    # Worker mode (internal): run PyTorch on a spec and print one JSON line.
    p.add_argument("--torch-worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--worker-warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.torch_worker:
        args.batch_size = args.batch
        return torch_worker(args)

    names = [s for s in args.samples.split(",") if s]
    trainer = find_binary(args, "trainer", "cli/trainer")
    bench_cpu = find_binary(args, "bench_cpu", "tools/bench/bench_cpu")
    if not args.no_torch and not shutil.which(args.torch_python):
        sys.exit(f"bench_fit: no Python at {args.torch_python}; pass --torch-python or --no-torch")
    env = os.environ.copy()
    env["OMP_NUM_THREADS"] = str(args.threads)  # the trainer's CPU backend and PyTorch's OpenMP pool
    trainer_env = env.copy()
    for kv in args.trainer_env:
        if "=" not in kv:
            sys.exit(f"bench_fit: --trainer-env takes KEY=VALUE, got '{kv}'")
        k, v = kv.split("=", 1)
        trainer_env[k] = v
    configs = [c for c in args.torch_configs.split(",") if c]
    for c in configs:
        if c not in TORCH_CONFIGS:
            sys.exit(f"bench_fit: unknown PyTorch config {c} (choose from {', '.join(TORCH_CONFIGS)})")

    with tempfile.TemporaryDirectory(prefix="bench_fit.") as tmp:
        specs = sample_specs(names, tmp, args.limit)
        log(f"bench_fit: {trainer} vs PyTorch, {args.threads} threads, batch {args.batch}, "
            f"{args.limit} samples per epoch, {args.repeats} repeats; load {loadavg()}")
        info = {n: trainer_summary(trainer, specs[n], args.batch) for n in names}

        # PyTorch's thread settings: the fastest in a short probe, per sample.
        best_config = {}
        if not args.no_torch:
            for n in names:
                probe = {}
                for c in configs:
                    r = torch_run(args, specs[n], 40, 10, c, env)
                    probe[c] = r["samples_per_s"] if r else 0
                best_config[n] = max(probe, key=probe.get)
                log(f"bench_fit: PyTorch probe on {n}: " +
                    ", ".join(f"{c} {v:.0f}/s" for c, v in probe.items()) + f" -> {best_config[n]}")

        runs = {n: {"trainer": [], "torch": []} for n in names}
        ceilings, loads = [], [loadavg()]
        for r in range(args.repeats):
            ceilings.append(gemm_ceiling(bench_cpu, args.threads, env))
            for n in names:
                runs[n]["trainer"].append(trainer_fit(trainer, specs[n], args, trainer_env))
                if not args.no_torch:
                    runs[n]["torch"].append(torch_run(args, specs[n], 0, args.torch_warmup, best_config[n], env))
                loads.append(loadavg())
                log(f"bench_fit: repeat {r + 1}/{args.repeats} {n}: trainer "
                    f"{fmt_num((runs[n]['trainer'][-1] or {}).get('samples_per_s'))}/s, PyTorch "
                    f"{fmt_num((runs[n]['torch'][-1] or {}).get('samples_per_s')) if runs[n]['torch'] else '-'}/s; "
                    f"load {loads[-1]}")
        ceiling = median(ceilings)
        print(json.dumps({"bench": "gemm_ceiling", "gflops": ceiling, "runs": ceilings, "threads": args.threads}),
              flush=True)

        rows = []
        for n in names:
            tr = [x for x in runs[n]["trainer"] if x]
            th = [x for x in runs[n]["torch"] if x]
            t_sps = median([x["samples_per_s"] for x in tr])
            p_sps = median([x["samples_per_s"] for x in th])
            flops = info[n]["flops_per_sample"]
            t_gflops = 3 * flops * t_sps / 1e9 if t_sps else None
            row = {
                "bench": "fit", "sample": n, "spec": str(specs[n]), "threads": args.threads,
                "batch_size": args.batch, "train_samples": args.limit,
                "trainer_samples_per_s": t_sps, "trainer_runs": [x["samples_per_s"] for x in tr],
                "torch_samples_per_s": p_sps, "torch_runs": [x["samples_per_s"] for x in th],
                "torch_config": best_config.get(n),
                "trainer_env": args.trainer_env,
                "speedup": t_sps / p_sps if t_sps and p_sps else None,
                "trainer_arena_bytes": info[n]["planned_bytes"],
                "trainer_max_rss_bytes": median([x["max_rss_bytes"] for x in tr]),
                "torch_max_rss_bytes": median([x["max_rss_bytes"] for x in th]),
                "torch_peak_alloc_bytes": median([x["peak_alloc_bytes"] for x in th]),
                "flops_per_sample": flops,
                "trainer_gflops": t_gflops,
                "torch_gflops": 3 * flops * p_sps / 1e9 if p_sps else None,
                "ceiling_gflops": ceiling,
                "ceiling_fraction": t_gflops / ceiling if t_gflops and ceiling else None,
                "loadavg": loads,
            }
            row["rss_ratio"] = (row["trainer_max_rss_bytes"] / row["torch_max_rss_bytes"]
                                if row["trainer_max_rss_bytes"] and row["torch_max_rss_bytes"] else None)
            row["alloc_ratio"] = (row["trainer_arena_bytes"] / row["torch_peak_alloc_bytes"]
                                  if row["torch_peak_alloc_bytes"] else None)
            rows.append(row)
            print(json.dumps(row), flush=True)

        log("")
        log(f"{'sample':<6} {'trainer/s':>10} {'torch/s':>9} {'ratio':>6} {'arena':>9} {'torch peak':>10} "
            f"{'RSS':>9} {'torch RSS':>9} {'GFLOP/s':>8} {'ceiling':>8} {'of ceil':>7}")
        for r in rows:
            log(f"{r['sample']:<6} {fmt_num(r['trainer_samples_per_s']):>10} {fmt_num(r['torch_samples_per_s']):>9} "
                f"{fmt_num(r['speedup'], '.2f'):>6} {fmt_bytes(r['trainer_arena_bytes']):>9} "
                f"{fmt_bytes(r['torch_peak_alloc_bytes']):>10} {fmt_bytes(r['trainer_max_rss_bytes']):>9} "
                f"{fmt_bytes(r['torch_max_rss_bytes']):>9} {fmt_num(r['trainer_gflops'], '.1f'):>8} "
                f"{fmt_num(r['ceiling_gflops'], '.1f'):>8} "
                f"{(fmt_num(100 * r['ceiling_fraction'], '.0f') + '%') if r['ceiling_fraction'] else '-':>7}")
        log(f"load average (1, 5, 15 min) from start to end: {loads[0]} .. {loads[-1]}")
        if args.profile:
            for n in names:
                log(f"\n{n}: where a training step's time goes (median per kernel, load {loadavg()})")
                log(trainer_profile(trainer, specs[n], args, trainer_env))


if __name__ == "__main__":
    sys.exit(main())
