"""Keras's Normalization layer: with mean and variance given it computes (x - mean) / sqrt(variance); without
them, trainer fit computes them from the training data (Keras's adapt) per feature of the layer's axis and
writes them into the spec, so that the checkpoint, predict and export carry them; a Normalization that does
not take the model's input needs them given."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = {input}
[[model.layers]]
type = "Normalization"
{norm}
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 1
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "mse"
epochs = 1
batch_size = 32
[train.optimizer]
name = "sgd"
learning_rate = 0.001
"""


class Normalization(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def fit(self, x, norm, input_shape):
        np.save(self.path("x.npy"), x)
        np.save(self.path("y.npy"), np.zeros((len(x), 1), np.float32))
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(input=input_shape, norm=norm))
        out = self.path("run")
        r = run(["fit", spec, "--output-dir", out])
        return r, os.path.join(out, "last.ckpt")

    def test_images_stored_channels_first_adapt_per_channel(self):
        # Images of an input of [4, 5, 3] stored channels first (N, 3, 4, 5), as PyTorch keeps them: taken as
        # they are, so the channels' statistics are those of the first axis.
        rng = np.random.default_rng(4)
        x = rng.normal([[[1.0]], [[20.0]], [[-5.0]]], [[[0.5]], [[2.0]], [[1.0]]], (200, 3, 4, 5))
        r, ckpt = self.fit(x.astype(np.float32), "", "[4, 5, 3]")
        self.assertEqual(r.returncode, 0, r.stderr)
        tensors = cli_util.read_checkpoint(ckpt)
        np.testing.assert_allclose(tensors["normalization/mean"].ravel(), x.mean((0, 2, 3)), rtol=1e-4)
        np.testing.assert_allclose(tensors["normalization/variance"].ravel(), x.var((0, 2, 3)), rtol=1e-3)

    def test_adapt_per_feature_and_per_channel(self):
        rng = np.random.default_rng(3)
        # Features on very different scales, then images whose three channels differ.
        for x, shape, axes in ((rng.normal([5, -200, 0.01], [2, 30, 0.001], (500, 3)).astype(np.float32),
                                "[3]", (0,)),
                               (rng.normal([1, 2, 3], [0.5, 1, 2], (200, 4, 5, 3)).astype(np.float32),
                                "[4, 5, 3]", (0, 1, 2))):
            with self.subTest(shape=shape):
                r, ckpt = self.fit(x, "", shape)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(f"Normalization layer 'normalization': mean and variance from the {len(x)} "
                              "training samples (adapt)", r.stderr)
                tensors = cli_util.read_checkpoint(ckpt)
                mean = x.reshape(-1, 3).mean(0, dtype=np.float64)
                var = x.reshape(-1, 3).var(0, dtype=np.float64)
                np.testing.assert_allclose(tensors["normalization/mean"].ravel(), mean, rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(tensors["normalization/variance"].ravel(), var, rtol=1e-4)
                # predict applies them: with the Dense kernel known, the output is its product with the
                # normalized sample.
                r = run(["predict", ckpt, self.path("x.npy"), "--probabilities"])
                self.assertEqual(r.returncode, 0, r.stderr)
                got = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)[:, 0]
                z = (x - mean) / np.sqrt(var)
                if len(axes) == 3:  # Flatten after the normalization reads the IR's CHW order
                    z = z.transpose(0, 3, 1, 2)
                want = z.reshape(len(x), -1) @ tensors["dense/kernel"].reshape(-1) + tensors["dense/bias"][0]
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    def test_a_run_with_adapted_statistics_resumes_from_its_spec_file(self):
        x = np.random.default_rng(4).normal(3, 2, (64, 3)).astype(np.float32)
        np.save(self.path("x.npy"), x)
        np.save(self.path("y.npy"), np.zeros((64, 1), np.float32))
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(input="[3]", norm="").replace("epochs = 1", "epochs = 2")
                    + "[train.checkpoint]\nevery_epochs = 1\n")
        out = self.path("run")
        r = run(["fit", spec, "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        first = os.path.join(out, "epoch-1.ckpt")
        self.assertTrue(os.path.exists(first), os.listdir(out))
        r = run(["fit", spec, "--resume", first, "--output-dir", self.path("resumed")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("(adapt)", r.stderr)  # the checkpoint's statistics, not new ones
        # A spec that changed is still told apart.
        with open(spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text.replace("batch_size = 32", "batch_size = 16"))
        r = run(["fit", spec, "--resume", first, "--output-dir", self.path("other")])
        cli_util.assert_input_error(self, r, "does not match the checkpoint")

    def test_given_mean_and_variance_and_invert(self):
        x = np.array([[1, 2], [3, 6]], np.float32)
        r, ckpt = self.fit(x, "mean = [1, 2]\nvariance = [4, 16]", "[2]")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("(adapt)", r.stderr)
        tensors = cli_util.read_checkpoint(ckpt)
        np.testing.assert_array_equal(tensors["normalization/mean"].ravel(), [1, 2])
        r = run(["predict", ckpt, self.path("x.npy"), "--probabilities"])
        got = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)[:, 0]
        z = (x - [1, 2]) / [2, 4]
        np.testing.assert_allclose(got, z @ tensors["dense/kernel"].reshape(-1) + tensors["dense/bias"][0],
                                   rtol=1e-5, atol=1e-6)
        r, ckpt = self.fit(x, "mean = [1, 2]\nvariance = [4, 16]\ninvert = true", "[2]")
        self.assertEqual(r.returncode, 0, r.stderr)
        tensors = cli_util.read_checkpoint(ckpt)
        r = run(["predict", ckpt, self.path("x.npy"), "--probabilities"])
        got = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)[:, 0]
        z = x * [2, 4] + [1, 2]
        np.testing.assert_allclose(got, z @ tensors["dense/kernel"].reshape(-1) + tensors["dense/bias"][0],
                                   rtol=1e-5, atol=1e-5)
        r, _ = self.fit(x, "mean = [1, 2]", "[2]")
        cli_util.assert_input_error(self, r, "mean and variance go together")
        r, _ = self.fit(x, "mean = [1, 2, 3]\nvariance = 1", "[2]")
        cli_util.assert_input_error(self, r, "mean has 3 values for the 2 features")

    def test_a_normalization_inside_the_model_needs_its_statistics(self):
        x = np.ones((8, 2), np.float32)
        np.save(self.path("x.npy"), x)
        np.save(self.path("y.npy"), np.zeros((8, 1), np.float32))
        spec = self.path("inner.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(input="[2]", norm="").replace(
                '[[model.layers]]\ntype = "Normalization"',
                '[[model.layers]]\ntype = "Dense"\nunits = 2\n[[model.layers]]\ntype = "Normalization"'))
        cli_util.assert_input_error(self, run(["fit", spec]), "does not take a model input",
                                    "mean = [...]")
        # check and summary read such a spec as it is.
        r = run(["check", spec])
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    cli_util.main()
