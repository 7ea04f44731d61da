"""Keras's class_weight: a class weighing k trains as if each of its samples were there k times, with the loss
averaged over the batch's real samples; validation stays unweighted. Bad weights are errors at their place."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [5]
[[model.layers]]
type = "Dense"
units = 6
activation = "tanh"
[[model.layers]]
type = "Dense"
units = {units}
activation = "{activation}"
[data]
shuffle = false
[data.train]
x = "{x}"
y = "{y}"
[data.validation]
x = "x_val.npy"
y = "y_val.npy"
[train]
loss = "{loss}"
epochs = 1
batch_size = {batch}
seed = 4
{extra}
[train.optimizer]
name = "sgd"
learning_rate = {lr}
"""


class ClassWeight(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def data(self, name, x, y):
        np.save(os.path.join(self.tmp.name, f"x_{name}.npy"), x)
        np.save(os.path.join(self.tmp.name, f"y_{name}.npy"), y)
        return f"x_{name}.npy", f"y_{name}.npy"

    def fit(self, name, **fields):
        path = os.path.join(self.tmp.name, name + ".toml")
        with open(path, "w") as f:
            f.write(SPEC.format(**fields))
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", path, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        epoch = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        return epoch, os.path.join(out, "last.ckpt")

    def weights(self, ckpt):
        r = run(["export", ckpt, "-o", ckpt + ".onnx", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        import onnx
        from onnx import numpy_helper
        return {t.name: numpy_helper.to_array(t) for t in onnx.load(ckpt + ".onnx").graph.initializer}

    def check(self, loss, units, activation, x, y, heavy, k, class_weight):
        # One SGD step on the whole set: weighted, against the heavy class's samples repeated k times. The
        # weighted loss is the repeated set's loss times (n + (k - 1) m) / n, and so is its gradient: the
        # repeated run's learning rate is scaled up to match.
        n, m = len(x), int(heavy.sum())
        scale = (n + (k - 1) * m) / n
        xv, yv = self.data("val", x[:50], y[:50])
        xw, yw = self.data(f"{loss}_plain", x, y)
        rep = np.concatenate([np.arange(n)] + [np.nonzero(heavy)[0]] * (k - 1))
        xr, yr = self.data(f"{loss}_rep", x[rep], y[rep])
        common = dict(units=units, activation=activation, loss=loss)
        # Weighted metrics count the class weights in training (as Keras, which turns them into sample
        # weights), and not in validation.
        a, ca = self.fit(f"{loss}_weighted", x=xw, y=yw, batch=n, lr=0.5,
                         extra=f'class_weight = {class_weight}\nmetrics = ["accuracy"]\nweighted_metrics = ["accuracy"]',
                         **common)
        b, cb = self.fit(f"{loss}_repeated", x=xr, y=yr, batch=len(rep), lr=0.5 * scale,
                         extra='metrics = ["accuracy"]', **common)
        self.assertAlmostEqual(a["loss"], b["loss"] * scale, places=5)
        self.assertAlmostEqual(a["weighted_accuracy"], b["accuracy"], places=6)
        self.assertAlmostEqual(a["val_weighted_accuracy"], a["val_accuracy"], places=6)
        self.assertAlmostEqual(a["val_loss"], b["val_loss"], places=5)  # the same model, evaluated unweighted
        wa, wb = self.weights(ca), self.weights(cb)
        for name in wa:
            np.testing.assert_allclose(wa[name], wb[name], rtol=1e-4, atol=1e-6, err_msg=name)
        c, _ = self.fit(f"{loss}_unweighted", x=xw, y=yw, batch=n, lr=0.5, extra="", **common)
        self.assertNotAlmostEqual(a["loss"], c["loss"], places=3)

    def test_binary_crossentropy(self):
        rng = np.random.default_rng(1)
        x = rng.normal(size=(120, 5)).astype(np.float32)
        y = (x[:, :1] + 0.3 * x[:, 1:2] > 0.4).astype(np.float32)
        self.check("binary_crossentropy", 1, "sigmoid", x, y, y[:, 0] > 0.5, 3, "[1.0, 3.0]")

    def test_sparse_categorical_crossentropy(self):
        rng = np.random.default_rng(2)
        x = rng.normal(size=(90, 5)).astype(np.float32)
        y = np.argmax(x[:, :3], 1).astype(np.int64)
        self.check("sparse_categorical_crossentropy", 3, "softmax", x, y, y == 2, 4, '{ "2" = 4.0 }')

    def test_categorical_crossentropy(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(90, 5)).astype(np.float32)
        y = np.eye(3, dtype=np.float32)[np.argmax(x[:, :3], 1)]
        self.check("categorical_crossentropy", 3, "softmax", x, y, y[:, 0] > 0.5, 2, "[2, 1, 1]")

    def test_a_checkpoint_resumes_with_its_weights_as_it_trained(self):
        # A checkpoint's spec holds the weights as the run took them: an array of fewer weights than classes (as
        # checkpoints of keyed weights were once written, [1.0, 5.0] for { "1" = 5.0 }) weighs the rest 1.
        rng = np.random.default_rng(5)
        x = rng.normal(size=(12, 5)).astype(np.float32)
        xw, yw = self.data("resume", x, np.argmax(x[:, :3], 1).astype(np.int64))
        self.data("val", x[:4], np.argmax(x[:4, :3], 1).astype(np.int64))
        _, ckpt = self.fit("keyed", x=xw, y=yw, batch=4, lr=0.1, units=3, activation="softmax",
                           loss="sparse_categorical_crossentropy", extra='class_weight = { "1" = 5.0 }')
        out = os.path.join(self.tmp.name, "resumed")
        r = run(["fit", "--resume", ckpt, "--epochs", "2", "--set", "train.class_weight=[1.0, 5.0]", "--output-dir",
                 out, "--device", "cpu", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_bad_weights_are_errors_at_their_place(self):
        self.data("val", np.zeros((4, 5), np.float32), np.zeros((4, 1), np.float32))
        cases = [("mse", 1, "[1.0, 2.0]", "the loss mse has none"),
                 ("binary_crossentropy", 1, "[1.0, 2.0, 3.0]", "binary_crossentropy has 2 classes"),
                 ("sparse_categorical_crossentropy", 3, "[1, 1, 1, 1]", "the model has 3 classes"),
                 # An array has a weight for every class; a table keys classes the output has.
                 ("sparse_categorical_crossentropy", 3, "[1, 2]", "has 2 weights, and the model has 3 classes"),
                 ("binary_crossentropy", 1, "[5.0]", "has 1 weights, and the model has 2 classes"),
                 ("sparse_categorical_crossentropy", 3, '{ "7" = 2.0 }', "keys class 7, and the model has 3 classes"),
                 ("binary_crossentropy", 1, '{ "2" = 2.0 }', "keys class 2, and binary_crossentropy has 2"),
                 ("binary_crossentropy", 1, "[1.0, -2.0]", "weights must be 0 or more"),
                 ("binary_crossentropy", 1, '{ "one" = 2.0 }', "'one', which is not a class id"),
                 ("binary_crossentropy", 1, '"heavy"', "must be an array or a table")]
        for loss, units, weights, what in cases:
            with self.subTest(weights=weights):
                path = os.path.join(self.tmp.name, "bad.toml")
                with open(path, "w") as f:
                    f.write(SPEC.format(units=units, activation="sigmoid", loss=loss, x="x_val.npy", y="y_val.npy",
                                        batch=4, lr=0.1, extra=f"class_weight = {weights}"))
                r = run(["fit", path, "--device", "cpu", "-q"])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(what, r.stderr)
                self.assertIn("bad.toml:25:", r.stderr)  # the class_weight line
                self.assertNotIn("Traceback", r.stderr)


if __name__ == "__main__":
    cli_util.main()
