"""Synchronized batch normalization across data-parallel replicas: BatchNormalization(synchronized = true) and
`[parallel] sync_batch_norm = true` normalize with the global batch's statistics, so 1, 2, 4 and (with
--allow-uneven) 3 CPU replicas, ZeRO-1, `mpirun -np 2` and a resume on another replica count train what one
device trains, to rounding; without it the replicas' moving statistics part ways. The [parallel] switch
rewrites the layers exactly as the layer flag does, and an ONNX model's BatchNormalization too. One device runs
the plain layer.

The model is a small Conv2D -> BatchNormalization -> tanh -> Dense -> BatchNormalization -> tanh network on
Fashion-MNIST. tanh, not relu: a ReLU unit whose normalized input sits at zero switches on a rounding
difference, and then its gradients move by far more than the rounding itself (see test_parallel.py).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np

import cli_util
from cli_util import assert_input_error, run, skip_without_fashion

TOLERANCE = 1e-5


def spec_text(synchronized=True, parallel="", onnx_model=None, epochs=2):
    d = cli_util.FASHION_DIR
    flag = "true" if synchronized else "false"
    if onnx_model:
        model = f'[model]\nonnx = "{onnx_model}"\n'
    else:
        normalized = (f'[[model.layers]]\ntype = "BatchNormalization"\nsynchronized = {flag}\n'
                      '[[model.layers]]\ntype = "Activation"\nactivation = "tanh"\n')
        model = f"""[model]
input = [28, 28, 1]
[[model.layers]]
type = "Conv2D"
filters = 8
kernel_size = 3
use_bias = false
{normalized}[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 32
use_bias = false
{normalized}[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
"""
    return f"""format_version = 1
{model}[data]
scale = 0.00392156862745098
[data.train]
x = "{d}/train-images-idx3-ubyte.gz"
y = "{d}/train-labels-idx1-ubyte.gz"
limit = 640
[data.validation]
x = "{d}/t10k-images-idx3-ubyte.gz"
y = "{d}/t10k-labels-idx1-ubyte.gz"
limit = 256
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 64
[train.checkpoint]
every_epochs = 1
{parallel}"""


@skip_without_fashion
class SyncBatchNorm(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.specs = {}

    def tearDown(self):
        self.tmp.cleanup()

    def spec(self, name, **kw):
        path = os.path.join(self.tmp.name, name + ".toml")
        with open(path, "w") as f:
            f.write(spec_text(**kw))
        return path

    def fit(self, spec, devices, name, *extra, command=None):
        out = os.path.join(self.tmp.name, name)
        args = ["fit", spec, "--device", "cpu", "--output-dir", out, "--log-format", "jsonl", "--quiet", *extra]
        if command is None:
            r = run(args + ["--devices", str(devices)], timeout=300)
        else:
            r = subprocess.run(command + args, capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        end = cli_util.json_lines(self, r.stdout)[-1]
        return cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), end

    def largest_difference(self, want, got):
        self.assertEqual(sorted(want), sorted(got))
        worst, where = 0.0, None
        for name in want:
            a, b = want[name].astype(np.float64), got[name].astype(np.float64)
            self.assertEqual(a.shape, b.shape, name)
            if a.size:
                d = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
                if d > worst:
                    worst, where = d, name
        return worst, where

    def assert_same_run(self, want, got, what):
        (pw, ew), (pg, eg) = want, got
        worst, where = self.largest_difference(pw, pg)
        print(f"{what}: largest difference {worst:.3g} ({where})")
        self.assertLessEqual(worst, TOLERANCE, f"{what}: {where} differs by {worst:.3g}")
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            self.assertAlmostEqual(ew[key], eg[key], delta=TOLERANCE * max(1.0, abs(ew[key])), msg=f"{what}: {key}")

    def test_replicas_train_what_one_device_trains(self):
        spec = self.spec("sync")
        one = self.fit(spec, 1, "one")
        # The moving statistics are trained state too: they are compared with the weights.
        self.assertIn("batch_normalization/moving_mean", one[0])
        for devices, extra in ((2, []), (4, []), (3, ["--allow-uneven"]),
                               (4, ["--set", "parallel.shard_optimizer=true"])):
            what = f"{devices} replicas {' '.join(extra)}".strip()
            with self.subTest(what):
                self.assert_same_run(one, self.fit(spec, devices, what.replace(" ", "_"), *extra), what)
        # Unsynchronized, each replica normalizes its own 32 rows: another model altogether.
        plain = self.spec("plain", synchronized=False)
        plain_one, plain_two = self.fit(plain, 1, "plain_one"), self.fit(plain, 2, "plain_two")
        worst, _ = self.largest_difference(plain_one[0], plain_two[0])
        self.assertGreater(worst, 100 * TOLERANCE)
        # One device runs the plain fused layer: the same run, bit for bit.
        for name in one[0]:
            self.assertTrue(np.array_equal(plain_one[0][name], one[0][name]), name)

    def test_mpirun_ranks_train_what_one_device_trains(self):
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        spec = self.spec("sync")
        self.assert_same_run(self.fit(spec, 1, "one"),
                             self.fit(spec, 2, "np2", command=[mpirun, "-np", "2", "--oversubscribe",
                                                               "--allow-run-as-root", cli_util.TRAINER]),
                             "mpirun -np 2")

    def test_parallel_switch_is_the_layer_flag_and_resumes_on_other_counts(self):
        layers = self.spec("layers")
        switch = self.spec("switch", synchronized=False, parallel="[parallel]\nsync_batch_norm = true\n")
        by_layer = self.fit(layers, 2, "by_layer")
        by_switch = self.fit(switch, 2, "by_switch")
        for name in by_layer[0]:
            self.assertTrue(np.array_equal(by_layer[0][name], by_switch[0][name]), name)
        self.assertEqual(by_layer[1]["val_loss"], by_switch[1]["val_loss"])
        # The checkpoint's spec keeps the switch: epoch 1 of 4 replicas resumed on 1 and on 2 ends where 2 did.
        four = self.fit(switch, 4, "four")
        self.assert_same_run(by_switch, four, "4 replicas")
        for devices in (1, 2):
            with self.subTest(resumed_on=devices):
                out = os.path.join(self.tmp.name, f"resumed_{devices}")
                r = run(["fit", "--resume", os.path.join(self.tmp.name, "four", "epoch-1.ckpt"), "--device", "cpu",
                         "--devices", str(devices), "--output-dir", out, "--log-format", "jsonl", "--quiet"],
                        timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                resumed = (cli_util.read_checkpoint(os.path.join(out, "last.ckpt")),
                           cli_util.json_lines(self, r.stdout)[-1])
                self.assert_same_run(four, resumed, f"resumed on {devices}")

    def test_an_onnx_models_batch_norm_is_synchronized_by_the_switch(self):
        # The spec's model, exported to ONNX, trained again from there: its BatchNormalization nodes are
        # rewritten by [parallel] sync_batch_norm.
        self.fit(self.spec("seed", epochs=1), 1, "seed")
        model = os.path.join(self.tmp.name, "model.onnx")
        r = run(["export", os.path.join(self.tmp.name, "seed", "last.ckpt"), "-o", model, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        synced = self.spec("onnx_sync", onnx_model=model, parallel="[parallel]\nsync_batch_norm = true\n")
        plain = self.spec("onnx_plain", onnx_model=model)
        one = self.fit(synced, 1, "onnx_one")
        self.assert_same_run(one, self.fit(synced, 2, "onnx_two"), "ONNX model on 2 replicas")
        worst, _ = self.largest_difference(one[0], self.fit(plain, 2, "onnx_plain_two")[0])
        self.assertGreater(worst, 100 * TOLERANCE)

    def test_a_time_distributed_layer_is_synchronized(self):
        # TimeDistributed(BatchNormalization(synchronized = true)) over [4 steps, 3 features], momentum 0: the
        # moving statistics are the last batch's, over all its samples' steps, on 1 and on 2 replicas.
        d = self.tmp.name
        rng = np.random.default_rng(5)
        x = (rng.normal(size=(16, 4, 3)) * rng.uniform(0.5, 10, size=(16, 1, 1))).astype(np.float32)
        np.save(os.path.join(d, "td_x.npy"), x)
        np.save(os.path.join(d, "td_y.npy"), rng.normal(size=(16, 1)).astype(np.float32))
        spec = os.path.join(d, "td.toml")
        with open(spec, "w") as f:
            f.write(f"""format_version = 1
[model]
input = [4, 3]
[[model.layers]]
type = "TimeDistributed"
layer = "BatchNormalization"
momentum = 0.0
synchronized = true
[[model.layers]]
type = "GlobalAveragePooling1D"
[[model.layers]]
type = "Dense"
units = 1
[data.train]
x = "{d}/td_x.npy"
y = "{d}/td_y.npy"
[train]
loss = "mse"
epochs = 1
batch_size = 16
""")
        for devices in (1, 2):
            with self.subTest(devices=devices):
                out = os.path.join(d, f"td_{devices}")
                r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--output-dir", out, "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                w = cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
                rows = x.reshape(-1, 3).astype(np.float64)
                np.testing.assert_allclose(w["time_distributed/moving_mean"], rows.mean(axis=0), rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(w["time_distributed/moving_variance"], rows.var(axis=0), rtol=1e-5)
        r = run(["summary", spec, "--devices", "2"])
        self.assertIn("BatchNormalization: 1 layer synchronized across the replicas", r.stdout)

    def test_a_rank_stalled_in_a_statistics_collective_ends_the_run(self):
        # A rank stalls before its first collective, the forward pass's first mean (replica 0 runs on the
        # process's main thread, replica 1 on a worker). The watchdog ends the run within the collective timeout
        # (and its grace), naming rank, bucket and step.
        # A stall of 4.002 s wakes the rank while the run ends (3 s, plus the report): it must not crash it
        # (it once did, touching what the other replica's unwinding had freed: exit 134 or 139).
        for rank, seconds in ((0, 60), (1, 60), (1, 4.002)):
            with self.subTest(stalled_rank=rank, seconds=seconds):
                out = os.path.join(self.tmp.name, f"stalled_{rank}_{seconds}")
                start = time.monotonic()
                r = subprocess.run([cli_util.TRAINER, "fit", self.spec("sync"), "--device", "cpu", "--devices", "2",
                                    "--collective-timeout", "3", "--output-dir", out, "-q"], capture_output=True,
                                   text=True, timeout=120, env=dict(os.environ, TRAINER_FAULT_STALL=f"{rank}:0:{seconds}"))
                self.assertLess(time.monotonic() - start, 40)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertRegex(r.stderr, r"rank \d+ on .*\(bucket \d+ of step 0\) did not complete within \d+ s")
                self.assertFalse(os.path.exists(os.path.join(out, "last.ckpt")))

    def test_summary_says_which_layers_are_synchronized(self):
        for name, kw, synchronized, extra in (("plain", {"synchronized": False}, 0, []),
                                              ("layers", {}, 2, []),
                                              ("switch", {"synchronized": False}, 2,
                                               ["--set", "parallel.sync_batch_norm=true"])):
            with self.subTest(name):
                spec = self.spec(name, **kw)
                r = run(["summary", spec, "--json", *extra])
                self.assertEqual(r.returncode, 0, r.stderr)
                s = json.loads(r.stdout)
                self.assertEqual((s["batch_norm_layers"], s["synchronized_batch_norm_layers"]), (2, synchronized))
                last = run(["summary", spec, "--devices", "2", *extra]).stdout.splitlines()[-1]
                self.assertEqual(last.startswith("BatchNormalization: 2 layers synchronized across the replicas"),
                                 synchronized == 2, last)
                self.assertEqual("2 of 2 normalize each replica's own rows" in last, synchronized == 0, last)

    def test_bad_values_are_input_errors(self):
        spec = self.spec("sync")
        with open(spec) as f:
            text = f.read()
        for name, edit, needles in (
                ("layer", lambda t: t.replace("synchronized = true", 'synchronized = "yes"', 1),
                 ["synchronized"]),
                ("switch", lambda t: t + '[parallel]\nsync_batch_norm = 1\n', ["sync_batch_norm"])):
            with self.subTest(name):
                bad = os.path.join(self.tmp.name, f"bad_{name}.toml")
                with open(bad, "w") as f:
                    f.write(edit(text))
                r = run(["fit", bad, "--device", "cpu", "--output-dir", os.path.join(self.tmp.name, "bad")])
                assert_input_error(self, r, *needles)


if __name__ == "__main__":
    cli_util.main()
