"""Shared layers (`shares`): a layer called again on other inputs with the same weights, as a Keras layer object
called on two tensors. A Siamese model whose two inputs are the same data trains exactly as the model that adds
the one call to itself (the gradients of the two calls add up, the regularizer counts once); its weights are
named and counted at the layer that made them, on any number of replicas; the exported ONNX model runs in
onnxruntime as `trainer predict` does; sharing what cannot be shared is an exit-2 error."""

import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

INPUTS = """format_version = 1
[[model.inputs]]
name = "left"
shape = [6]
"""
RIGHT = """[[model.inputs]]
name = "right"
shape = [{width}]
"""
ENCODER = """[[model.layers]]
type = "Dense"
name = "enc"
inputs = ["left"]
units = 4
activation = "tanh"
kernel_regularizer = "l2(0.01)"
"""
SHARED = """[[model.layers]]
name = "enc_right"
shares = "enc"
inputs = ["right"]
"""
HEAD = """[[model.layers]]
type = "Add"
inputs = {add}
[[model.layers]]
type = "Dense"
name = "head"
units = 1
activation = "sigmoid"
[data.train]
x = "{data}"
{key}
[train]
loss = "binary_crossentropy"
epochs = 4
batch_size = 16
seed = 3
[train.optimizer]
learning_rate = 0.02
"""


class SharedLayers(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(2)
        a = rng.normal(size=(96, 6)).astype(np.float32)
        b = rng.normal(size=(96, 6)).astype(np.float32)
        cls.left, cls.right = a, b
        np.savez(cls.path("same.npz"), left=a, right=a, y=(a.sum(1) > 0).astype(np.float32))
        np.savez(cls.path("one.npz"), left=a, y=(a.sum(1) > 0).astype(np.float32))
        np.savez(cls.path("pairs.npz"), left=a, right=b, y=((a - b).sum(1) > 0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def siamese(self, name, data, width=6, shared=SHARED):
        return self.write(name, INPUTS + RIGHT.format(width=width) + ENCODER + shared +
                          HEAD.format(add='["enc", "enc_right"]', data=data, key=""))

    def fit(self, args):
        r = run(["fit", *args, "--device", "cpu", "--log-format", "jsonl", "-q"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout)

    def test_two_calls_on_the_same_data_train_as_one_call_added_to_itself(self):
        shared = self.siamese("shared.toml", "same.npz")
        single = self.write("single.toml", INPUTS + ENCODER +
                            HEAD.format(add='["enc", "enc"]', data="one.npz", key='x_key = "left"'))
        a = self.fit([shared, "--output-dir", self.path("shared")])
        b = self.fit([single, "--output-dir", self.path("single")])
        self.assertEqual([e["loss"] for e in a], [e["loss"] for e in b])
        self.assertLess(a[-2]["loss"], a[0]["loss"], "it trains")
        pa = cli_util.read_checkpoint(self.path("shared/last.ckpt"))
        pb = cli_util.read_checkpoint(self.path("single/last.ckpt"))
        weights = sorted(n for n in pa if n.endswith(("kernel", "bias")))
        self.assertEqual(weights, ["enc/bias", "enc/kernel", "head/bias", "head/kernel"])
        self.assertEqual(weights, sorted(n for n in pb if n.endswith(("kernel", "bias"))))
        for n in weights:
            np.testing.assert_allclose(pa[n], pb[n], rtol=1e-6, atol=1e-7, err_msg=n)
        # Two replicas reduce the summed gradients as one does.
        two = self.fit([shared, "--devices", "2", "--output-dir", self.path("two")])
        np.testing.assert_allclose([e["loss"] for e in two], [e["loss"] for e in a], rtol=1e-5)

    def test_summary_counts_the_weights_at_the_layer_that_made_them(self):
        r = run(["summary", self.siamese("count.toml", "pairs.npz")])
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = {line.split()[0]: line.split() for line in r.stdout.splitlines() if line.startswith(("enc", "head"))}
        self.assertEqual(rows["enc"][3], "28")
        self.assertEqual(rows["enc_right"][1:4], ["Dense", "(4)", "0"])
        self.assertIn("Total params: 33 (33 trainable", r.stdout)

    def test_export_runs_in_onnxruntime_as_predict_does(self):
        import onnxruntime as ort
        self.fit([self.siamese("pairs.toml", "pairs.npz"), "--output-dir", self.path("pairs")])
        onnx_path = self.path("pairs.onnx")
        r = run(["export", self.path("pairs/last.ckpt"), "-o", onnx_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        left, right = self.left[:20], self.right[:20]
        want = sess.run(None, {"left": left, "right": right})[0].ravel()
        np.save(self.path("p_left.npy"), left)
        np.save(self.path("p_right.npy"), right)
        got = cli_util.predict_rows(self, [self.path("pairs/last.ckpt"), self.path("p_left.npy"),
                                           self.path("p_right.npy")])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The model is antisymmetric in its two inputs only through the shared weights: swapping them changes the
        # encoder's inputs, not its weights.
        enc = cli_util.read_checkpoint(self.path("pairs/last.ckpt"))
        kernel, bias = enc["enc/kernel"], enc["enc/bias"]
        head_k, head_b = enc["head/kernel"], enc["head/bias"]
        z = np.tanh(left @ kernel + bias) + np.tanh(right @ kernel + bias)
        np.testing.assert_allclose(want, (1 / (1 + np.exp(-(z @ head_k + head_b)))).ravel(), rtol=1e-5, atol=1e-6)

    def test_on_an_onnx_model_the_renamed_layer_is_the_one_shared(self):
        # The base's weights are dense/kernel and dense/bias: the layer on top generated as 'dense' becomes
        # dense_1, and the layer that shares it shares dense_1, never the base's weights of the old name.
        base = self.write("base.toml", 'format_version = 1\n[model]\ninput = [6]\n[[model.layers]]\ntype = "Dense"\n'
                          'units = 6\nactivation = "tanh"\n[data.train]\nx = "x6.npy"\ny = "x6.npy"\n'
                          '[train]\nloss = "mse"\n')
        np.save(self.path("x6.npy"), self.left)
        np.save(self.path("y6.npy"), (self.left.sum(1) > 0).astype(np.float32))
        self.fit([base, "--output-dir", self.path("base")])
        r = run(["export", self.path("base/last.ckpt"), "-o", self.path("base.onnx")])
        self.assertEqual(r.returncode, 0, r.stderr)
        top = self.write("top.toml", 'format_version = 1\n[model]\nonnx = "base.onnx"\n'
                         '[[model.layers]]\ntype = "Dense"\nunits = 6\nactivation = "tanh"\ninputs = ["onnx"]\n'
                         '[[model.layers]]\nname = "again"\nshares = "dense"\ninputs = ["dense"]\n'
                         '[[model.layers]]\ntype = "Dense"\nname = "head"\nunits = 1\nactivation = "sigmoid"\n'
                         '[data.train]\nx = "x6.npy"\ny = "y6.npy"\n[train]\nloss = "binary_crossentropy"\n')
        self.fit([top, "--output-dir", self.path("top")])
        w = cli_util.read_checkpoint(self.path("top/last.ckpt"))
        self.assertFalse(any(n.startswith("again/") for n in w))
        np.save(self.path("p6.npy"), self.left[:10])
        got = cli_util.predict_rows(self, [self.path("top/last.ckpt"), self.path("p6.npy")]).ravel()
        h = np.tanh(self.left[:10] @ w["dense/kernel"] + w["dense/bias"])
        for _ in range(2):  # dense_1, then again: the same weights
            h = np.tanh(h @ w["dense_1/kernel"] + w["dense_1/bias"])
        want = 1 / (1 + np.exp(-(h @ w["head/kernel"] + w["head/bias"]).ravel()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_what_cannot_be_shared_is_an_input_error(self):
        narrow = self.siamese("narrow.toml", "pairs.npz", width=5)
        cli_util.assert_input_error(self, run(["check", narrow]), "it shares the weights of 'enc'",
                                    "'kernel' of shape [5, 4] where 'enc' has [6, 4]")
        norm = self.write("norm.toml", INPUTS + RIGHT.format(width=6) + ENCODER + SHARED +
                          '[[model.layers]]\ntype = "BatchNormalization"\nname = "bn"\ninputs = ["enc"]\n'
                          '[[model.layers]]\nname = "bn_right"\nshares = "bn"\ninputs = ["enc_right"]\n' +
                          HEAD.format(add='["bn", "bn_right"]', data="pairs.npz", key=""))
        cli_util.assert_input_error(self, run(["check", norm]), "a shared layer with state is not supported")
        extra = self.siamese("extra.toml", "pairs.npz", shared=SHARED + "units = 5\n")
        cli_util.assert_input_error(self, run(["check", extra]), "'units' cannot be set here")


if __name__ == "__main__":
    cli_util.main()
