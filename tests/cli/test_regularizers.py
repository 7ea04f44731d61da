"""Keras's weight regularizers (kernel_regularizer = "l2(0.01)", ...): the penalty is in the reported loss and in
val_loss, with the value Keras gives it, and its gradient moves the weights as Keras's does; activity
regularizers (activity_regularizer, the ActivityRegularization layer) penalize outputs per sample."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [6]
[[model.layers]]
type = "Dense"
units = 5
activation = "tanh"
{regularizers}
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
epochs = 1
batch_size = 64
seed = 5
[train.optimizer]
name = "sgd"
learning_rate = 0.05
"""


class Regularizers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(11)
        x = rng.normal(size=(64, 6)).astype(np.float32)
        np.save(os.path.join(cls.tmp.name, "x.npy"), x)
        np.save(os.path.join(cls.tmp.name, "y.npy"), (x[:, :1] > 0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, name, regularizers):
        """One SGD step on one batch; returns the epoch's report and the trained weights."""
        spec = os.path.join(self.tmp.name, name + ".toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(regularizers=regularizers))
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        epoch = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        return epoch, cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), os.path.join(out, "last.ckpt")

    def evaluate(self, ckpt, *sets):
        r = run(["evaluate", ckpt, "--device", "cpu", "-q"] + [a for s in sets for a in ("--set", s)])
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["loss"]

    def test_the_penalty_is_in_the_loss_and_val_loss(self):
        _, w, ckpt = self.fit("l1l2", 'kernel_regularizer = "l1_l2(l1=0.01, l2=0.02)"\nbias_regularizer = "l2"')
        with_penalty = self.evaluate(ckpt)
        without = self.evaluate(ckpt, "model.layers.0.kernel_regularizer=None", "model.layers.0.bias_regularizer=None")
        k, b = w["dense/kernel"].astype(np.float64), w["dense/bias"].astype(np.float64)
        penalty = 0.01 * np.abs(k).sum() + 0.02 * (k ** 2).sum() + 0.01 * (b ** 2).sum()
        self.assertGreater(penalty, 0.01)
        self.assertAlmostEqual(with_penalty - without, penalty, places=5)

    def test_the_gradient_is_keras(self):
        # One step of SGD from the same initial weights w0 (a frozen copy of the layer keeps them): the data's
        # gradient is the same, so the difference is the penalty's gradient, -lr * (l1 sign(w0) + 2 l2 w0).
        lr = 0.05
        _, frozen, _ = self.fit("frozen", "trainable = false")
        _, plain, _ = self.fit("plain", "")
        _, l2, _ = self.fit("l2", 'kernel_regularizer = "l2(0.1)"')
        _, l1, _ = self.fit("l1", 'kernel_regularizer = "L1(l1=0.2)"')
        k = "dense/kernel"
        w0 = frozen[k].astype(np.float64)
        self.assertGreater(np.abs(plain[k] - w0).max(), 1e-3)  # the step moved the weights
        np.testing.assert_allclose(l2[k] - plain[k], -2 * lr * 0.1 * w0, rtol=1e-3, atol=1e-7)
        np.testing.assert_allclose(l1[k] - plain[k], -lr * 0.2 * np.sign(w0), rtol=1e-3, atol=1e-7)
        for other in ("dense/bias", "dense_1/kernel"):  # unregularized weights take the same step
            np.testing.assert_allclose(l2[other], plain[other], rtol=1e-6, atol=1e-7)

    def test_recurrent_and_convolution_weights_take_regularizers(self):
        d = self.tmp.name
        rng = np.random.default_rng(3)
        np.save(os.path.join(d, "tokens.npy"), rng.integers(0, 20, size=(48, 5)))
        np.save(os.path.join(d, "labels.npy"), rng.integers(0, 2, size=(48, 1)).astype(np.float32))
        spec = os.path.join(d, "seq.toml")
        with open(spec, "w") as f:
            f.write('format_version = 1\n[model]\ninput = { shape = [5], dtype = "int64" }\n'
                    '[[model.layers]]\ntype = "Embedding"\ninput_dim = 20\noutput_dim = 4\n'
                    'embeddings_regularizer = "l2"\n'
                    '[[model.layers]]\ntype = "Conv1D"\nfilters = 3\nkernel_size = 2\nkernel_regularizer = "l1"\n'
                    '[[model.layers]]\ntype = "Bidirectional"\nlayer = "LSTM"\nunits = 3\n'
                    'recurrent_regularizer = "l2(0.5)"\nbias_regularizer = "l1(0.5)"\n'
                    '[[model.layers]]\ntype = "Dense"\nunits = 1\nactivation = "sigmoid"\n'
                    '[data.train]\nx = "tokens.npy"\ny = "labels.npy"\n[train]\nloss = "binary_crossentropy"\n')
        out = os.path.join(d, "seq")
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = os.path.join(out, "last.ckpt")
        w = {k: v.astype(np.float64) for k, v in cli_util.read_checkpoint(ckpt).items()}
        sq = lambda k: (w[k] ** 2).sum()  # noqa: E731
        ab = lambda k: np.abs(w[k]).sum()  # noqa: E731
        lstm = "bidirectional/{}_lstm/".format
        penalty = (0.01 * sq("embedding/embeddings") + 0.01 * ab("conv1d/kernel") +
                   0.5 * (sq(lstm("forward") + "recurrent_kernel") + sq(lstm("backward") + "recurrent_kernel")) +
                   0.5 * (ab(lstm("forward") + "bias") + ab(lstm("backward") + "bias")))
        off = ["model.layers.0.embeddings_regularizer=None", "model.layers.1.kernel_regularizer=None",
               "model.layers.2.recurrent_regularizer=None", "model.layers.2.bias_regularizer=None"]
        self.assertAlmostEqual(self.evaluate(ckpt, "data.validation.x=tokens.npy", "data.validation.y=labels.npy") -
                               self.evaluate(ckpt, "data.validation.x=tokens.npy", "data.validation.y=labels.npy",
                                             *off), penalty, places=4)

    def test_activity_regularizers_penalize_each_sample_s_outputs(self):
        # activity_regularizer on the tanh layer's output h, and an ActivityRegularization layer after it: the
        # penalties are sums over the batch's outputs divided by the batch size (as tf.keras divides them).
        _, w, ckpt = self.fit("activity", 'activity_regularizer = "l1(0.03)"\n'
                                          '[[model.layers]]\ntype = "ActivityRegularization"\nl2 = 0.5')
        x = np.load(os.path.join(self.tmp.name, "x.npy")).astype(np.float64)
        h = np.tanh(x @ w["dense/kernel"].astype(np.float64) + w["dense/bias"].astype(np.float64))
        full = self.evaluate(ckpt)
        no_l1 = self.evaluate(ckpt, "model.layers.0.activity_regularizer=None")
        none = self.evaluate(ckpt, "model.layers.0.activity_regularizer=None", "model.layers.1.l2=0")
        self.assertAlmostEqual(full - no_l1, 0.03 * np.abs(h).sum() / len(x), places=5)
        self.assertAlmostEqual(no_l1 - none, 0.5 * (h ** 2).sum() / len(x), places=5)
        self.assertGreater(no_l1 - none, 0.01)

    def test_bad_regularizers_are_errors_at_their_place(self):
        cases = [('"l3"', 'unknown regularizer "l3"'), ('"l2(-1)"', "the factor '-1' is not a number, 0 or more"),
                 ('"l1_l2"', 'regularizer "l1_l2" needs its factors'),
                 ('"l2(l1=0.1)"', "has no factor 'l1'"), ('"l1_l2(0.1, 0.2, 0.3)"', "takes one or two factors")]
        for value, what in cases:
            with self.subTest(value=value):
                spec = os.path.join(self.tmp.name, "bad.toml")
                with open(spec, "w") as f:
                    f.write(SPEC.format(regularizers="kernel_regularizer = " + value))
                r = run(["check", spec])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn("bad.toml:8:22", r.stderr)
                self.assertIn(what, r.stderr)
        for text, where, what in (('activity_regularizer = "l3"', "bad.toml:8:24", 'unknown regularizer "l3"'),
                                  ('[[model.layers]]\ntype = "ActivityRegularization"\nl1 = -1', "bad.toml:10:6",
                                   "l1 = -1 must be 0 or more")):
            with self.subTest(text=text):
                spec = os.path.join(self.tmp.name, "bad.toml")
                with open(spec, "w") as f:
                    f.write(SPEC.format(regularizers=text))
                r = run(["check", spec])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(where, r.stderr)
                self.assertIn(what, r.stderr)


if __name__ == "__main__":
    cli_util.main()
