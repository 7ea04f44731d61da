"""The sample models on a GPU, through `trainer fit` as a user runs it: 20 steps on CUDA (fp32) give the CPU's loss
within 1e-4; graph replay gives what kernel-by-kernel launches give, bitwise; the README's sample fit runs with
--device cuda. Data: generated files in the real formats (tools/make-test-data.py), in a temporary folder, or made
once in $CUDA_CLI_DATA when that is set. Without a GPU it exits 77 (skipped). Each fit has 60 s: one that hangs
fails its test and is named on stderr at once, and the fits after it are not started.
Usage: test_cuda_cli.py TRAINER [unittest arguments, e.g. the names of the tests to run, in that order]"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER = None
DATA = None
STEPS, BATCH = 20, 64
FIT_SECONDS = 60
HUNG = []  # the command of a fit that did not end: the fits after it are not started
FP32 = ["--set", "train.precision=fp32"]
SAMPLES = {"fashion_mnist/mlp.toml": "fashion", "fashion_mnist/cnn.toml": "fashion",
           "fashion_mnist/lstm.toml": "fashion", "cifar10/cnn.toml": "cifar10", "imdb/lstm.toml": "imdb",
           "imdb/cnn.toml": "imdb", "imdb/transformer.toml": "imdb"}


def data_sets(kind):
    d = os.path.join(DATA, kind)
    if kind == "fashion":
        return ["--set", f"data.train.x={d}/train-images-idx3-ubyte.gz",
                "--set", f"data.train.y={d}/train-labels-idx1-ubyte.gz",
                "--set", f"data.validation.x={d}/t10k-images-idx3-ubyte.gz",
                "--set", f"data.validation.y={d}/t10k-labels-idx1-ubyte.gz"]
    if kind == "cifar10":
        return ["--set", f"data.train.x={d}/data_batch_*.bin", "--set", f"data.validation.x={d}/test_batch.bin"]
    return ["--set", f"data.train.x={d}/x_train.npy", "--set", f"data.train.y={d}/y_train.npy",
            "--set", f"data.validation.x={d}/x_test.npy", "--set", f"data.validation.y={d}/y_test.npy"]


def batch_norm_spec(synchronized):
    """A Conv2D -> BatchNormalization -> Dense -> BatchNormalization network on the Fashion data, written into
    the data folder; returns its path (fit takes it in place of a sample's)."""
    path = os.path.join(DATA, f"batch_norm_{'sync' if synchronized else 'plain'}.toml")
    layer = f'type = "BatchNormalization"\nsynchronized = {"true" if synchronized else "false"}\n'
    with open(path, "w") as f:
        f.write(f"""format_version = 1
[model]
input = [28, 28, 1]
[[model.layers]]
type = "Conv2D"
filters = 16
kernel_size = 3
use_bias = false
[[model.layers]]
{layer}[[model.layers]]
type = "Activation"
activation = "tanh"
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 64
use_bias = false
[[model.layers]]
{layer}[[model.layers]]
type = "Activation"
activation = "tanh"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
[data]
scale = 0.00392156862745098
[data.train]
x = "unset"
y = "unset"
[data.validation]
x = "unset"
y = "unset"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
""")
    return path


def fit(spec, *extra):
    args = [TRAINER, "fit", os.path.join(ROOT, "samples", spec), "--epochs", "1", "--log-format", "jsonl",
            "--set", f"train.batch_size={BATCH}", "--set", f"data.train.limit={STEPS * BATCH}",
            "--set", "data.validation.limit=256", *data_sets(SAMPLES.get(spec, "fashion")), *extra]
    if HUNG:
        raise AssertionError(f"not run: an earlier fit did not end ({HUNG[0]})")
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=FIT_SECONDS)
    except subprocess.TimeoutExpired as e:
        HUNG.append(" ".join(args))
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
        message = f"{' '.join(args)}\ndid not end within {FIT_SECONDS} s; its stderr:\n{err}"
        # Printed at once too: unittest reports failures only at the end, which a time limit may not let come.
        print(message, file=sys.stderr, flush=True)
        raise AssertionError(message) from None
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(args)}\nexit {r.returncode}\n{r.stderr}")
    events = [json.loads(line) for line in r.stdout.splitlines()]
    return events[-1], r.stderr


class SampleModelsOnCuda(unittest.TestCase):
    def test_cuda_equals_cpu_within_1e_4(self):
        for spec in SAMPLES:
            with self.subTest(spec=spec):
                cpu, _ = fit(spec, "--device", "cpu", *FP32)
                gpu, err = fit(spec, "--device", "cuda", *FP32)
                self.assertIn("cuda:0", err)
                for k in ("loss", "val_loss"):
                    self.assertLessEqual(abs(cpu[k] - gpu[k]), 1e-4 * max(1.0, abs(cpu[k])),
                                         f"{spec} {k}: CPU {cpu[k]} CUDA {gpu[k]}")

    def test_bf16_follows_fp32(self):
        # bf16 operands carry 8 significant bits: 20 steps stay within a few percent of the fp32 loss.
        for spec in ("fashion_mnist/mlp.toml", "cifar10/cnn.toml"):
            with self.subTest(spec=spec):
                full, _ = fit(spec, "--device", "cpu", *FP32)
                half, err = fit(spec, "--device", "cuda")  # auto: bf16 on sm_80 and newer
                self.assertIn("bf16", err)
                self.assertLessEqual(abs(full["loss"] - half["loss"]), 0.05 * abs(full["loss"]))

    def test_graph_replay_equals_eager(self):
        for spec in ("fashion_mnist/mlp.toml", "cifar10/cnn.toml"):
            with self.subTest(spec=spec):
                graph, _ = fit(spec, "--device", "cuda")
                eager, _ = fit(spec, "--device", "cuda", "--no-cuda-graph")
                self.assertEqual(graph["loss"], eager["loss"])
                self.assertEqual(graph["val_loss"], eager["val_loss"])

    def test_gpus_1_through_nccl_equals_one_device(self):
        # --gpus always reduces through NCCL (a group of one here); with one replica the sum is the identity.
        # From the second step the replica's step is replayed as a CUDA graph with its NCCL collectives
        # captured in it: it must equal kernel-by-kernel launches, and capture must not fail (no warning).
        for spec in ("fashion_mnist/mlp.toml", "cifar10/cnn.toml"):
            with self.subTest(spec=spec):
                nccl, err = fit(spec, "--gpus", "1", *FP32)
                self.assertNotIn("capture failed", err)
                eager, _ = fit(spec, "--gpus", "1", "--no-cuda-graph", *FP32)
                plain, _ = fit(spec, "--device", "cuda", "--no-cuda-graph", *FP32)
                self.assertEqual(nccl["loss"], plain["loss"], err)
                self.assertEqual(nccl["val_loss"], plain["val_loss"])
                self.assertEqual(eager["loss"], plain["loss"])

    def test_synchronized_batch_norm_through_nccl(self):
        # The statistics' ReplicaMean buckets go through NCCL (a group of one: the identity) and are captured
        # into the replayed step with the gradient buckets: equal to kernel-by-kernel launches, bitwise; within
        # 1e-4 of the plain layer's cuDNN kernel on one device and of the synchronized layer on the CPU.
        synced, plain = batch_norm_spec(True), batch_norm_spec(False)
        nccl, err = fit(synced, "--gpus", "1", *FP32)
        self.assertNotIn("capture failed", err)
        eager, _ = fit(synced, "--gpus", "1", "--no-cuda-graph", *FP32)
        self.assertEqual(nccl["loss"], eager["loss"])
        self.assertEqual(nccl["val_loss"], eager["val_loss"])
        for what, other in (("the plain layer on cuda", fit(plain, "--device", "cuda", *FP32)[0]),
                            ("the CPU", fit(synced, "--device", "cpu", *FP32)[0])):
            for k in ("loss", "val_loss"):
                self.assertLessEqual(abs(nccl[k] - other[k]), 1e-4 * max(1.0, abs(other[k])),
                                     f"{k}: --gpus 1 {nccl[k]}, {what} {other[k]}")

    def test_readme_sample_fit_on_cuda(self):
        args = [TRAINER, "fit", os.path.join(ROOT, "samples", "fashion_mnist", "mlp.toml"), "--device", "cuda",
                "--epochs", "2", "--log-format", "jsonl", *data_sets("fashion")]
        r = subprocess.run(args, capture_output=True, text=True, timeout=2 * FIT_SECONDS)
        self.assertEqual(r.returncode, 0, r.stderr)
        end = json.loads(r.stdout.splitlines()[-1])
        self.assertGreater(end["val_accuracy"], 0.9, r.stderr)


def gpu_count():
    """The GPUs nvidia-smi lists (0 without it)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


class SeveralGpus(unittest.TestCase):
    """What one GPU cannot show: sums and weights across GPUs, ZeRO-1's reduce and gather through NCCL, each
    replayed from CUDA graphs and kernel by kernel. Skipped where there is one GPU."""

    def setUp(self):
        if gpu_count() < 2:
            self.skipTest("one GPU: sums across GPUs need two")

    def test_gpus_2_train_what_2_cpu_replicas_train(self):
        shard = ["--set", "parallel.shard_optimizer=true"]
        for spec in ("fashion_mnist/mlp.toml", "cifar10/cnn.toml"):
            for gpu_extra, cpu_extra in (([], []), (["--no-cuda-graph"], []), (shard, shard)):
                with self.subTest(spec=spec, extra=gpu_extra):
                    cpu, _ = fit(spec, "--device", "cpu", "--devices", "2", *FP32, *cpu_extra)
                    gpu, err = fit(spec, "--gpus", "2", *FP32, *gpu_extra)
                    self.assertNotIn("capture failed", err)
                    for k in ("loss", "val_loss"):
                        self.assertLessEqual(abs(cpu[k] - gpu[k]), 1e-4 * max(1.0, abs(cpu[k])),
                                             f"{spec} {gpu_extra} {k}: 2 CPU replicas {cpu[k]}, 2 GPUs {gpu[k]}")

    def test_synchronized_batch_norm_on_2_gpus_is_one_device(self):
        synced = batch_norm_spec(True)
        one, _ = fit(synced, "--device", "cpu", *FP32)
        for extra in ([], ["--no-cuda-graph"]):
            with self.subTest(extra=extra):
                two, err = fit(synced, "--gpus", "2", *FP32, *extra)
                self.assertNotIn("capture failed", err)
                for k in ("loss", "val_loss"):
                    self.assertLessEqual(abs(one[k] - two[k]), 1e-4 * max(1.0, abs(one[k])),
                                         f"{extra} {k}: one CPU {one[k]}, 2 GPUs {two[k]}")


def main():
    global TRAINER, DATA
    if len(sys.argv) < 2:
        sys.exit(f"usage: {sys.argv[0]} TRAINER")
    TRAINER = os.path.abspath(sys.argv.pop(1))
    if not os.path.exists("/dev/nvidiactl"):
        print("skipped: no CUDA device")
        sys.exit(77)
    kept = os.environ.get("CUDA_CLI_DATA")
    with tempfile.TemporaryDirectory() as tmp:
        DATA = os.path.abspath(kept) if kept else tmp
        done = os.path.join(DATA, "complete")
        if not os.path.exists(done):
            make = [sys.executable, os.path.join(ROOT, "tools", "make-test-data.py")]
            subprocess.run(make + ["fashion", os.path.join(DATA, "fashion"), "--train", str(STEPS * BATCH)],
                           check=True)
            subprocess.run(make + ["cifar10", os.path.join(DATA, "cifar10"), "--per-batch",
                                   str(STEPS * BATCH // 5)], check=True)
            subprocess.run(make + ["imdb", os.path.join(DATA, "imdb"), "--train", str(STEPS * BATCH), "--test",
                                   "256"], check=True)
            open(done, "w").close()
        unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
