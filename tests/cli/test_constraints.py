"""Keras's weight constraints (kernel_constraint = "max_norm(0.5)", ...): after every update the trained
weights satisfy them (max_norm and min_max_norm bound the norms along Keras's axis, unit_norm makes them 1,
non_neg clips at 0), where an unconstrained run does not; on convolution and recurrent kernels, whose IR layouts
permute Keras's, the norms fall along Keras's axes (lists of them too); with ZeRO-1 sharding non_neg still
applies and a norm is refused; a norm on a depthwise kernel or a GRU's double bias, whose layouts are no
permutation of Keras's, and malformed constraints are errors at their place."""

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
        np.save(os.path.join(cls.tmp.name, "steps.npy"), x.reshape(192, 2, 3))

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

    def test_a_time_distributed_layer_keeps_its_constraint(self):
        spec = SPEC.replace("input = [6]", "input = [2, 3]").replace('x = "x.npy"', 'x = "steps.npy"')
        spec = spec.replace('type = "Dense"\nunits = 8', 'type = "TimeDistributed"\nlayer = "Dense"\nunits = 8', 1)
        spec = spec.replace('[[model.layers]]\ntype = "Dense"\nunits = 1',
                            '[[model.layers]]\ntype = "Flatten"\n[[model.layers]]\ntype = "Dense"\nunits = 1')
        kernels = {}
        for name, first in (("td_free", ""), ("td_non_neg", 'kernel_constraint = "non_neg"')):
            path = os.path.join(self.tmp.name, name + ".toml")
            with open(path, "w") as f:
                f.write(spec.format(first=first, second=""))
            out = os.path.join(self.tmp.name, name)
            r = run(["fit", path, "--output-dir", out, "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            kernels[name] = cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))["time_distributed/kernel"]
        self.assertLess(kernels["td_free"].min(), 0)
        self.assertGreaterEqual(kernels["td_non_neg"].min(), 0)

    def test_convolution_and_recurrent_kernels_take_keras_axes(self):
        # The IR keeps a Conv2D kernel as OIHW and an LSTM's as [1, 4 units, features]; a constraint's axes are
        # Keras's (kh, kw, in, out) and (features, 4 units), so the norms must fall on the matching IR axes.
        rng = np.random.default_rng(6)
        np.save(os.path.join(self.tmp.name, "img.npy"), rng.normal(size=(96, 6, 6, 2)).astype(np.float32))
        np.save(os.path.join(self.tmp.name, "seq.npy"), rng.normal(size=(96, 5, 3)).astype(np.float32))
        np.save(os.path.join(self.tmp.name, "cls.npy"), rng.integers(0, 2, 96).astype(np.float32))
        head = ('format_version = 1\n[model]\ninput = {shape}\n{layers}[[model.layers]]\ntype = "Flatten"\n'
                '[[model.layers]]\ntype = "Dense"\nunits = 1\nactivation = "sigmoid"\n'
                '[data.train]\nx = "{x}"\ny = "cls.npy"\n[train]\nloss = "binary_crossentropy"\nepochs = 2\n'
                'batch_size = 16\n[train.optimizer]\nlearning_rate = 0.05\n')

        def train(name, shape, x, layers):
            spec = os.path.join(self.tmp.name, name + ".toml")
            with open(spec, "w") as f:
                f.write(head.format(shape=shape, x=x, layers=layers))
            r = run(["fit", spec, "--output-dir", os.path.join(self.tmp.name, name), "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            return cli_util.read_checkpoint(os.path.join(self.tmp.name, name, "last.ckpt"))

        conv = ('[[model.layers]]\ntype = "Conv2D"\nfilters = 3\nkernel_size = 3\n'
                'kernel_constraint = "unit_norm(axis=[0, 1, 2])"\n'
                '[[model.layers]]\ntype = "Conv2D"\nfilters = 2\nkernel_size = 2\nkernel_constraint = "unit_norm"\n')
        w = train("conv", "[6, 6, 2]", "img.npy", conv)
        k1, k2 = w["conv2d/kernel"], w["conv2d_1/kernel"]
        self.assertEqual(k1.shape, (3, 2, 3, 3))  # OIHW
        # Keras's axes [0, 1, 2] (kh, kw, in): one norm per filter.
        np.testing.assert_allclose(np.sqrt((k1 ** 2).sum(axis=(1, 2, 3))), 1, rtol=1e-5)
        # Keras's default axis 0 is the kernel's height: one norm per (filter, input, column).
        np.testing.assert_allclose(np.sqrt((k2 ** 2).sum(axis=2)), 1, rtol=1e-5)
        self.assertGreater(np.abs(np.sqrt((k2 ** 2).sum(axis=(1, 2, 3))) - 1).max(), 0.1)
        lstm = ('[[model.layers]]\ntype = "LSTM"\nunits = 4\nreturn_sequences = true\n'
                'kernel_constraint = "unit_norm"\nrecurrent_constraint = "max_norm(0.5, axis=1)"\n'
                'bias_constraint = "non_neg"\n')
        w = train("lstm", "[5, 3]", "seq.npy", lstm)
        kernel, recurrent, bias = w["lstm/kernel"], w["lstm/recurrent_kernel"], w["lstm/bias"]
        self.assertEqual(kernel.shape, (1, 16, 3))
        # Keras's axis 0 of (features, 4 units): each gate unit's incoming weights.
        np.testing.assert_allclose(np.sqrt((kernel ** 2).sum(axis=2)), 1, rtol=1e-5)
        # Keras's axis 1 of (units, 4 units): each unit's outgoing weights to every gate.
        self.assertLessEqual(np.sqrt((recurrent ** 2).sum(axis=1)).max(), 0.5 + 1e-5)
        self.assertGreaterEqual(bias.min(), 0)

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
        for i, (layer, what) in enumerate([
                ('type = "DepthwiseConv2D"\nkernel_size = 3\ndepthwise_constraint = "max_norm(2)"', "is not supported"),
                ('type = "GRU"\nunits = 2\nbias_constraint = "unit_norm"', "is not supported"),
                ('type = "Conv2D"\nfilters = 2\nkernel_size = 3\nkernel_constraint = "max_norm(2, axis=[0, 4])"',
                 "axis 4 is out of range"),
                ('type = "Conv2D"\nfilters = 2\nkernel_size = 3\nkernel_constraint = "max_norm(2, axis=[1, -3])"',
                 "axis -3 is listed twice")]):
            with self.subTest(layer=layer):
                spec = os.path.join(self.tmp.name, f"layout{i}.toml")
                with open(spec, "w") as f:
                    f.write(f'format_version = 1\n[model]\ninput = [8, 8, 1]\n[[model.layers]]\n{layer}\n')
                if "GRU" in layer:
                    with open(spec, "w") as f:
                        f.write(f'format_version = 1\n[model]\ninput = [8, 3]\n[[model.layers]]\n{layer}\n')
                cli_util.assert_input_error(self, run(["check", spec]), f"layout{i}.toml:", what)


if __name__ == "__main__":
    cli_util.main()
