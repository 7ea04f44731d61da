"""Keras's recurrent_dropout on LSTM and GRU: the mask is drawn per sample, so 1 and 2 CPU replicas train the same
parameters; it changes training (rate 0 does not match rate 0.4) but not the same run twice; trainer predict and
evaluate leave it out."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [12, 3]
[[model.layers]]
type = "{layer}"
{wrapped}
units = 6
return_sequences = true
recurrent_dropout = {rate}
[[model.layers]]
type = "GRU"
units = 5
recurrent_dropout = {rate}
reset_after = false
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
x = "x.npy"
y = "y.npy"
[data.validation]
x = "x.npy"
y = "y.npy"
[train]
loss = "binary_crossentropy"
epochs = 2
batch_size = 32
seed = 7
[train.optimizer]
name = "adam"
learning_rate = 0.01
"""


class RecurrentDropout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(3)
        x = rng.normal(size=(128, 12, 3)).astype(np.float32)
        np.save(os.path.join(cls.tmp.name, "x.npy"), x)
        np.save(os.path.join(cls.tmp.name, "y.npy"), (x[:, :4, 0].sum(axis=1) > 0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, name, rate, devices=1, bidirectional=False):
        spec = os.path.join(self.tmp.name, name + ".toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(layer="Bidirectional" if bidirectional else "LSTM",
                                wrapped='layer = "LSTM"' if bidirectional else "", rate=rate))
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--log-format", "jsonl", "-q",
                 "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        return epochs, cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), spec, out

    def assert_close(self, want, got, tolerance):
        self.assertEqual(sorted(want), sorted(got))
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=0, atol=tolerance * np.abs(want[k]).max(), err_msg=k)

    def test_replicas_draw_the_masks_of_one_replica(self):
        for bidirectional in (False, True):
            with self.subTest(bidirectional=bidirectional):
                tag = "bi" if bidirectional else "uni"
                one_epochs, one, _, _ = self.fit(f"{tag}_one", 0.4, 1, bidirectional)
                two_epochs, two, _, _ = self.fit(f"{tag}_two", 0.4, 2, bidirectional)
                self.assert_close(one, two, 1e-5)
                self.assertAlmostEqual(one_epochs[-1]["loss"], two_epochs[-1]["loss"], delta=1e-5)

    def test_replicas_draw_the_masks_of_one_replica_inside_time_distributed(self):
        # TimeDistributed folds the steps into the batch: its layers' draws still count whole samples, so a
        # replica's rows draw what they draw on one device (Dropout, recurrent dropout, GaussianNoise).
        spec = os.path.join(self.tmp.name, "td.toml")
        with open(spec, "w") as f:
            f.write("""format_version = 1
[model]
input = [4, 3, 3]
[[model.layers]]
type = "TimeDistributed"
layer = "LSTM"
units = 4
dropout = 0.3
recurrent_dropout = 0.3
[[model.layers]]
type = "TimeDistributed"
layer = "Dropout"
rate = 0.4
[[model.layers]]
type = "TimeDistributed"
layer = "GaussianNoise"
stddev = 0.3
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
x = "xtd.npy"
y = "y.npy"
[train]
loss = "binary_crossentropy"
epochs = 2
batch_size = 32
seed = 7
""")
        np.save(os.path.join(self.tmp.name, "xtd.npy"),
                np.load(os.path.join(self.tmp.name, "x.npy")).reshape(128, 4, 3, 3))
        runs = []
        for devices in (1, 2):
            out = os.path.join(self.tmp.name, f"td_{devices}")
            r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "-q", "--output-dir", out])
            self.assertEqual(r.returncode, 0, r.stderr)
            runs.append(cli_util.read_checkpoint(os.path.join(out, "last.ckpt")))
        self.assert_close(runs[0], runs[1], 1e-5)

    def test_the_mask_changes_training_and_is_the_same_each_run(self):
        _, none, _, _ = self.fit("rate0", 0.0)
        _, first, _, _ = self.fit("rate4a", 0.4)
        _, again, _, _ = self.fit("rate4b", 0.4)
        for k in first:
            np.testing.assert_array_equal(first[k], again[k], err_msg=k)
        changed = [k for k in first if k.endswith("recurrent_kernel") and np.abs(first[k] - none[k]).max() > 1e-4]
        self.assertEqual(len(changed), 2, changed)

    def test_inference_leaves_the_mask_out(self):
        # evaluate reports what the last epoch's validation reported; two predictions agree exactly.
        epochs, _, spec, out = self.fit("infer", 0.5)
        ckpt = os.path.join(out, "last.ckpt")
        r = run(["evaluate", ckpt, "--device", "cpu"])
        self.assertEqual(r.returncode, 0, r.stderr)
        report = [e for e in map(json.loads, r.stdout.splitlines()) if "loss" in e][-1]
        self.assertAlmostEqual(report["loss"], epochs[-1]["val_loss"], delta=1e-5)
        x = os.path.join(self.tmp.name, "x.npy")
        a = run(["predict", ckpt, x, "--probabilities"])
        b = run(["predict", ckpt, x, "--probabilities"])
        self.assertEqual(a.returncode, 0, a.stderr)
        self.assertEqual(a.stdout, b.stdout)


if __name__ == "__main__":
    cli_util.main()
