"""Shared helpers of the command-line tests: each test script runs the `trainer` binary as a user would.

Every script is invoked by CTest as `python3 SCRIPT TRAINER [DATA_DIR]`: TRAINER is the binary under test,
DATA_DIR holds the generated CIFAR-10 and IMDB files (tools/make-test-data.py, run by the cli.data fixture).
"""

import json
import math
import os
import subprocess
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(ROOT, "samples")
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
TRAINER = None
DATA_DIR = None


def _cpu_runs_bf16():
    """Whether this CPU has the AVX-512 subsets oneDNN's bf16 kernels need (AVX512F, BW, VL, DQ): on others
    trainer refuses precision = "bf16" on the CPU, with a message the tests check instead."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), [])
    except OSError:
        return False
    return all(f in flags for f in ("avx512f", "avx512bw", "avx512vl", "avx512dq"))


CPU_BF16 = _cpu_runs_bf16()

# Every sample spec of the repository, relative to samples/.
SAMPLE_SPECS = ["fashion_mnist/mlp.toml", "fashion_mnist/cnn.toml", "fashion_mnist/lstm.toml", "cifar10/cnn.toml",
                "imdb/lstm.toml", "imdb/lstm_text.toml", "imdb/cnn.toml", "imdb/transformer.toml", "flowers/cnn.toml"]


def main():
    """Takes TRAINER [DATA_DIR] off the command line, then runs the script's unittest cases."""
    global TRAINER, DATA_DIR
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} TRAINER [DATA_DIR] [unittest arguments]")
    TRAINER = os.path.abspath(sys.argv[1])
    rest = sys.argv[2:]
    if rest and not rest[0].startswith("-"):
        DATA_DIR = os.path.abspath(rest.pop(0))
    result = unittest.main(argv=[sys.argv[0]] + rest, verbosity=2, exit=False).result
    # A script whose every test was skipped (its data or a tool missing) says so to CTest (SKIP_RETURN_CODE)
    # instead of passing.
    if not result.wasSuccessful():
        sys.exit(1)
    sys.exit(77 if result.testsRun and len(result.skipped) == result.testsRun else 0)


def sample(name):
    return os.path.join(SAMPLES, name)


def run(args, timeout=120, **kw):
    """Runs trainer with `args`; stdout and stderr are pipes, so stdout is not a terminal (JSON lines by default)."""
    return subprocess.run([TRAINER] + list(args), capture_output=True, text=True, timeout=timeout, **kw)


# The checkpoint's safetensors dtype names as numpy's.
CHECKPOINT_DTYPES = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8", "U8": "u1", "BOOL": "?"}


def read_checkpoint(path, blobs=False):
    """A checkpoint's tensors (its safetensors layout) by name as numpy arrays; with `blobs`, also the files it
    embeds (names starting with '@', such as an imported model's '@model.onnx')."""
    import numpy as np
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__" or (name.startswith("@") and not blobs):
            continue
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[8 + n + b:8 + n + e], dtype=CHECKPOINT_DTYPES[info["dtype"]]).reshape(
            info["shape"])
    return out


def checkpoint_bytes(path):
    """A checkpoint's metadata and its tensors (the safetensors layout) as name -> bytes, read with the standard
    library: for comparing two runs' results bit for bit."""
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    base = 8 + n
    return meta, {k: data[base + v["data_offsets"][0]:base + v["data_offsets"][1]] for k, v in header.items()}


def signed_checkpoint(header, payload):
    """A checkpoint's bytes from its header (a dict, as read_checkpoint's file holds it) and payload, with both
    checksums of formats/checkpoint.h made right: for tests that edit a checkpoint as an earlier version, or a
    damaged file, would have it."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "formats"))
    from checkpoint_numpy_check import xxh64
    header["__metadata__"]["checksum"] = "xxh64:" + "0" * 16 + ":" + f"{xxh64(bytes(payload)):016x}"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    signed = len(text).to_bytes(8, "little") + text
    at = signed.index(b'"checksum":"xxh64:') + len('"checksum":"xxh64:')
    return signed[:at] + f"{xxh64(signed):016x}".encode() + signed[at + 16:] + bytes(payload)


def have_fashion():
    return all(os.path.exists(os.path.join(FASHION_DIR, f)) for f in
               ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                "t10k-labels-idx1-ubyte.gz"))


skip_without_fashion = unittest.skipUnless(have_fashion(), f"Fashion-MNIST is not installed in {FASHION_DIR}")


def data_sets(kind):
    """--set overrides that point a sample's data at the generated files of `kind` (cifar10 or imdb)."""
    if DATA_DIR is None:
        raise unittest.SkipTest("no DATA_DIR given: the generated CIFAR-10/IMDB files are missing")
    d = os.path.join(DATA_DIR, kind)
    if kind == "cifar10":
        return ["--set", f"data.train.x={d}/data_batch_*.bin", "--set", f"data.validation.x={d}/test_batch.bin"]
    return ["--set", f"data.train.x={d}/x_train.npy", "--set", f"data.train.y={d}/y_train.npy",
            "--set", f"data.validation.x={d}/x_test.npy", "--set", f"data.validation.y={d}/y_test.npy"]


def json_lines(test, stdout):
    """Parses every line of stdout as one JSON object (a line that is not one fails the test)."""
    events = []
    for i, line in enumerate(stdout.splitlines()):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            test.fail(f"stdout line {i + 1} is not JSON ({e}): {line!r}")
        test.assertIsInstance(obj, dict, f"stdout line {i + 1}")
        events.append(obj)
    return events


def assert_finite_number(test, obj, key):
    test.assertIn(key, obj)
    v = obj[key]
    test.assertIsInstance(v, (int, float), f"{key} = {v!r} in {obj}")
    test.assertNotIsInstance(v, bool, f"{key} = {v!r} in {obj}")
    test.assertTrue(math.isfinite(v), f"{key} = {v!r} in {obj}")
    return v


def predict_rows(test, args, ndmin=0, **kw):
    """Runs `trainer predict ARGS --probabilities -q` (kw: stdin, ...), checks that it succeeded, and returns the
    rows it wrote as an array."""
    import numpy as np
    r = run(["predict", *args, "--probabilities", "-q"], **kw)
    test.assertEqual(r.returncode, 0, r.stderr)
    return np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=ndmin)


def assert_input_error(test, result, *needles):
    """Bad input: exit code 2 (a crash gives a negative code), a `trainer: error:` message that contains every
    needle (the place, what is wrong), and no internal error."""
    err = result.stderr
    test.assertEqual(result.returncode, 2, f"exit code {result.returncode}; stderr:\n{err}")
    test.assertIn("trainer: error: ", err)
    test.assertNotIn("internal error", err)
    test.assertNotIn("Assertion", err)
    for n in needles:
        test.assertIn(n, err, f"stderr does not name {n!r}:\n{err}")
    return err
