"""Keras's weight constraints (kernel_constraint = "max_norm(0.5)", ...): after every update the trained
weights satisfy them (max_norm and min_max_norm bound the norms along Keras's axis, unit_norm makes them 1,
non_neg clips at 0), where an unconstrained run does not; with ZeRO-1 sharding non_neg still applies and a norm
is refused; a norm on a convolution kernel, whose layout is not Keras's, and malformed constraints are errors
at their place."""

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
units = 8
activation = "tanh"
{first}
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
{second}
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "binary_crossentropy"
epochs = 3
batch_size = 16
[train.optimizer]
learning_rate = 0.05
"""


class Constraints(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(4)
        x = (3 * rng.normal(size=(192, 6))).astype(np.float32)
        np.save(os.path.join(cls.tmp.name, "x.npy"), x)
        np.save(os.path.join(cls.tmp.name, "y.npy"), (x[:, :1] - x[:, 1:2] > 0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, name, first="", second="", extra=()):
        spec = os.path.join(self.tmp.name, name + ".toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(first=first, second=second))
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", spec, "--output-dir", out, "-q", *extra])
        return r, os.path.join(out, "last.ckpt")

    def weights(self, name, first="", second="", extra=()):
        r, ckpt = self.fit(name, first, second, extra)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(ckpt)

    def test_trained_weights_satisfy_their_constraints(self):
        free = self.weights("free")
        w = self.weights("constrained", 'kernel_constraint = "max_norm(0.5)"\nbias_constraint = "non_neg"',
                         'kernel_constraint = "unit_norm"')
        # Without constraints the norms and signs go where training takes them.
        self.assertGreater(np.linalg.norm(free["dense/kernel"], axis=0).max(), 0.6)
        self.assertLess(free["dense/bias"].min(), 0)
        # max_norm along axis 0: each unit's incoming weights (a column of the [in, units] kernel).
        self.assertLessEqual(np.linalg.norm(w["dense/kernel"], axis=0).max(), 0.5 + 1e-5)
        self.assertGreaterEqual(w["dense/bias"].min(), 0)
        np.testing.assert_allclose(np.linalg.norm(w["dense_1/kernel"], axis=0), 1, rtol=1e-5)
        # min_max_norm along axis 1 (each input's outgoing weights), in Keras's class-name spelling.
        m = self.weights("minmax", 'kernel_constraint = "MinMaxNorm(min_value=0.8, max_value=0.9, axis=1)"')
        n = np.linalg.norm(m["dense/kernel"], axis=1)
        self.assertTrue(np.all((n >= 0.8 - 1e-5) & (n <= 0.9 + 1e-5)), n)

    def test_sharded_updates_take_non_neg_and_refuse_norms(self):
        sharded = ["--device", "cpu", "--devices", "2", "--set", "parallel.shard_optimizer=true"]
        w = self.weights("sharded", 'kernel_constraint = "non_neg"', extra=sharded)
        self.assertGreaterEqual(w["dense/kernel"].min(), 0)
        self.assertGreater(w["dense/kernel"].max(), 0)
        r, _ = self.fit("sharded_norm", 'kernel_constraint = "max_norm(1)"', extra=sharded)
        cli_util.assert_input_error(self, r, "max_norm constraint of 'dense/kernel' needs the whole weight")

    def test_mistakes_are_named(self):
        cases = [('kernel_constraint = "max_nrom(2)"', 'unknown constraint "max_nrom(2)"'),
                 ('kernel_constraint = "max_norm(axis=2)"', "axis 2 is out of range"),
                 ('kernel_constraint = "min_max_norm(min_value=2, max_value=1)"', "min_value 2 is above max_value 1"),
                 ('kernel_constraint = "unit_norm(axis=0.5)"', "axis '0.5' is not an integer")]
        for text, what in cases:
            with self.subTest(text=text):
                r, _ = self.fit("bad", text)
                cli_util.assert_input_error(self, r, "bad.toml:8:21", what)
        spec = os.path.join(self.tmp.name, "conv.toml")
        with open(spec, "w") as f:
            f.write('format_version = 1\n[model]\ninput = [8, 8, 1]\n[[model.layers]]\ntype = "Conv2D"\n'
                    'filters = 2\nkernel_size = 3\nkernel_constraint = "max_norm(2)"\n')
        cli_util.assert_input_error(self, run(["check", spec]), "conv.toml:8:21", "is not supported",
                                    "non_neg")


if __name__ == "__main__":
    cli_util.main()
