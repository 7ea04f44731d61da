"""Keras's SparseCategoricalCrossentropy(ignore_class=N): the positions labelled N (a void class such as 255 or
-1, outside the output's classes) are left out of the loss, which is the mean over the others, and out of the
metrics. Checked per sample and per step (where an Embedding's mask_zero leaves out padding steps too) against the
formula on what `trainer predict` writes; replicas (--devices 2) train as one device does, the checkpoint keeps
the argument, and a label of N without the argument is still refused."""

import json
import os
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

DENSE = """format_version = 1
[model]
input = [6]
[[model.layers]]
type = "Dense"
units = 8
activation = "tanh"
[[model.layers]]
type = "Dense"
units = 3
activation = "softmax"
[data.train]
x = "x.npy"
y = "y.npy"
[data.validation]
x = "x.npy"
y = "y.npy"
[train]
loss = "{loss}"
metrics = {metrics}
epochs = 3
batch_size = 16
seed = 2
[train.optimizer]
learning_rate = 0.01
"""

STEPS = 6
TAGGER = """format_version = 1
[model]
input = {{ shape = [%d], dtype = "int64" }}
[[model.layers]]
type = "Embedding"
input_dim = 12
output_dim = 8
mask_zero = true
[[model.layers]]
type = "LSTM"
units = 16
return_sequences = true
[[model.layers]]
type = "TimeDistributed"
layer = "Dense"
units = 3
activation = "softmax"
[data.train]
x = "tokens.npy"
y = "tags.npy"
[data.validation]
x = "tokens.npy"
y = "tags.npy"
[train]
loss = "{loss}"
metrics = {metrics}
epochs = 3
batch_size = 32
seed = 3
[train.optimizer]
learning_rate = 0.02
""" % STEPS


TWO = """format_version = 1
[model]
input = [6]
outputs = ["bin", "cls"]
[[model.layers]]
type = "Dense"
name = "shared"
units = 8
activation = "tanh"
[[model.layers]]
type = "Dense"
name = "bin"
inputs = ["shared"]
units = 1
activation = "sigmoid"
[[model.layers]]
type = "Dense"
name = "cls"
inputs = ["shared"]
units = 3
activation = "softmax"
[data.train]
x = "x.npy"
y = {{ bin = "bin.npy", cls = "y.npy" }}
[data.validation]
x = "x.npy"
y = {{ bin = "bin.npy", cls = "y.npy" }}
[train]
loss = {{ bin = "binary_crossentropy", cls = "{loss}" }}
metrics = {{ bin = ["accuracy"], cls = {metrics} }}
epochs = 2
batch_size = 16
seed = 2
"""


class IgnoreClass(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        rng = np.random.default_rng(1)
        x = rng.normal(size=(96, 6)).astype(np.float32)
        y = np.argmax(x[:, :3], 1).astype(np.int64)
        y[rng.random(96) < 0.3] = 255  # void samples, unevenly spread over the batches
        np.save(os.path.join(d, "x.npy"), x)
        np.save(os.path.join(d, "y.npy"), y)
        np.save(os.path.join(d, "bin.npy"), (x[:, 3] > 0).astype(np.float32))
        np.save(os.path.join(d, "y_plain.npy"), np.argmax(x[:, :3], 1).astype(np.int64))
        cls.x, cls.y = x, y
        # Token sequences padded with 0 at the end (masked by mask_zero), and tags of -1 here and there among the
        # real steps (ignored by the loss).
        tokens = rng.integers(1, 12, size=(80, STEPS))
        lengths = rng.integers(2, STEPS + 1, size=80)
        for i, n in enumerate(lengths):
            tokens[i, n:] = 0
        tags = (tokens % 3).astype(np.int64)
        tags[(rng.random((80, STEPS)) < 0.25) & (tokens > 0)] = -1
        tags[tokens == 0] = 2  # a padding step's label: any class, as the mask leaves it out
        np.save(os.path.join(d, "tokens.npy"), tokens.astype(np.int64))
        np.save(os.path.join(d, "tags.npy"), tags)
        cls.tokens, cls.tags = tokens, tags

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, template, loss, name, *args, metrics='["accuracy"]'):
        d = self.tmp.name
        spec = os.path.join(d, f"{name}.toml")
        with open(spec, "w") as f:
            f.write(template.format(loss=loss, metrics=metrics))
        out = os.path.join(d, f"run_{name}")
        r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out, *args])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        return epochs, os.path.join(out, "last.ckpt")

    def evaluate_and_predict(self, ckpt, x_file, rows):
        r = run(["evaluate", ckpt, "--device", "cpu", "-q", "--batch-size", str(rows)])
        self.assertEqual(r.returncode, 0, r.stderr)
        reported = json.loads(r.stdout)
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, os.path.join(self.tmp.name, x_file),
                            "--probabilities", "--device", "cpu", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        p = np.loadtxt(r.stdout.decode().splitlines(), delimiter=",", ndmin=2, dtype=np.float64)
        return reported, p

    def test_per_sample_void_class_is_left_out_of_the_loss_and_the_metrics(self):
        # MeanIoU's own ignore_class may say what the loss's says.
        epochs, ckpt = self.fit(DENSE, "SparseCategoricalCrossentropy(ignore_class=255)", "dense",
                                metrics='["accuracy", "MeanIoU(num_classes=3, ignore_class=255)"]')
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"], "it trains")
        reported, p = self.evaluate_and_predict(ckpt, "x.npy", 96)
        keep = self.y != 255
        self.assertAlmostEqual(reported["loss"], float(-np.log(p[keep, self.y[keep]]).mean()), places=5)
        predicted, y = p[keep].argmax(1), self.y[keep]
        self.assertAlmostEqual(reported["accuracy"], float((predicted == y).mean()), places=6)
        ious = [((predicted == c) & (y == c)).sum() / ((predicted == c) | (y == c)).sum()
                for c in range(3) if ((predicted == c) | (y == c)).any()]
        self.assertAlmostEqual(reported["mean_iou"], float(np.mean(ious)), places=6)
        # evaluate reads the loss from the checkpoint's spec, which keeps the argument (without it, label 255
        # would be refused). The spec as the checkpoint holds it says so.
        with open(ckpt, "rb") as f:
            head = f.read(int.from_bytes(f.read(8), "little"))
        self.assertIn(b"ignore_class=255", head)

    def test_per_step_ignored_tags_and_masked_padding_are_both_left_out(self):
        epochs, ckpt = self.fit(TAGGER, "sparse_categorical_crossentropy(ignore_class=-1)", "tagger")
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"], "it trains")
        reported, p = self.evaluate_and_predict(ckpt, "tokens.npy", 80)
        p = p.reshape(80, STEPS, 3)
        keep = (self.tags != -1) & (self.tokens != 0)
        t = np.where(keep, self.tags, 0)
        per = -np.log(np.take_along_axis(p, t[..., None], 2)[..., 0])
        self.assertAlmostEqual(reported["loss"], float(per[keep].mean()), places=5)
        self.assertAlmostEqual(reported["accuracy"], float((p.argmax(2) == self.tags)[keep].mean()), places=6)

    def test_replicas_train_as_one_device(self):
        # 16 rows per step split 8 and 8, the void samples falling unevenly between the halves: the replicas
        # divide by the whole batch's count, so the run equals the one-device run.
        one, _ = self.fit(DENSE, "SparseCategoricalCrossentropy(ignore_class=255)", "one")
        two, _ = self.fit(DENSE, "SparseCategoricalCrossentropy(ignore_class=255)", "two", "--devices", "2")
        for a, b in zip(one, two):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                self.assertAlmostEqual(a[key], b[key], delta=1e-5 * max(1.0, abs(a[key])), msg=key)
        one, _ = self.fit(TAGGER, "sparse_categorical_crossentropy(ignore_class=-1)", "tagger_one")
        two, _ = self.fit(TAGGER, "sparse_categorical_crossentropy(ignore_class=-1)", "tagger_two", "--devices", "2")
        for a, b in zip(one, two):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                self.assertAlmostEqual(a[key], b[key], delta=1e-5 * max(1.0, abs(a[key])), msg=key)

    def test_mean_iou_leaves_out_its_own_ignore_class(self):
        # MeanIoU(ignore_class=0) under a loss without one: the positions labelled 0 (a class of the output) are
        # left out of the IoU alone, as Keras's; the loss and accuracy count them. The checkpoint keeps it.
        plain = DENSE.replace('"y.npy"', '"y_plain.npy"')
        _, ckpt = self.fit(plain, "sparse_categorical_crossentropy", "iou_ignore",
                           metrics='["accuracy", "MeanIoU(num_classes=3, ignore_class=0)"]')
        reported, p = self.evaluate_and_predict(ckpt, "x.npy", 96)
        y = np.load(os.path.join(self.tmp.name, "y_plain.npy"))
        predicted = p.argmax(1)
        self.assertAlmostEqual(reported["accuracy"], float((predicted == y).mean()), places=6)
        keep = y != 0
        pk, yk = predicted[keep], y[keep]
        ious = [((pk == c) & (yk == c)).sum() / ((pk == c) | (yk == c)).sum()
                for c in range(3) if ((pk == c) | (yk == c)).any()]
        self.assertAlmostEqual(reported["mean_iou"], float(np.mean(ious)), places=6)
        every = [((predicted == c) & (y == c)).sum() / ((predicted == c) | (y == c)).sum() for c in range(3)]
        self.assertNotAlmostEqual(reported["mean_iou"], float(np.mean(every)), places=3)

    def test_the_second_output_of_a_model_of_two(self):
        # The further output's labels come in as an input: their void class is allowed and masks that output's
        # loss, alone, on one device and on two.
        one, ckpt = self.fit(TWO, "SparseCategoricalCrossentropy(ignore_class=255)", "two_outputs")
        two, _ = self.fit(TWO, "SparseCategoricalCrossentropy(ignore_class=255)", "two_outputs_2", "--devices", "2")
        for a, b in zip(one, two):
            for key in ("loss", "cls_loss", "cls_accuracy", "val_cls_loss", "bin_loss"):
                self.assertAlmostEqual(a[key], b[key], delta=1e-5 * max(1.0, abs(a[key])), msg=key)
        r = run(["evaluate", ckpt, "--device", "cpu", "-q", "--batch-size", "96"])
        self.assertEqual(r.returncode, 0, r.stderr)
        reported = json.loads(r.stdout)
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, os.path.join(self.tmp.name, "x.npy"), "--output",
                            "cls", "--probabilities", "--device", "cpu", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        p = np.loadtxt(r.stdout.decode().splitlines(), delimiter=",", ndmin=2, dtype=np.float64)
        keep = self.y != 255
        self.assertAlmostEqual(reported["cls_loss"], float(-np.log(p[keep, self.y[keep]]).mean()), places=5)
        self.assertAlmostEqual(reported["cls_accuracy"], float((p[keep].argmax(1) == self.y[keep]).mean()),
                               places=6)

    def test_a_void_label_without_the_argument_or_a_bad_argument_is_an_input_error(self):
        d = self.tmp.name
        spec = os.path.join(d, "plain.toml")
        with open(spec, "w") as f:
            f.write(DENSE.format(loss="sparse_categorical_crossentropy", metrics="[]"))
        r = run(["fit", spec, "--device", "cpu", "-q"])
        cli_util.assert_input_error(self, r, "label 255 is out of range for 3 classes", "ignore_class=255")
        for loss, metrics, said in (
                ("SparseCategoricalCrossentropy(ignore_class=1.5)", "[]", "must be a whole number"),
                ("CategoricalCrossentropy(ignore_class=255)", "[]", "has no argument 'ignore_class'"),
                ("sparse_categorical_crossentropy", '["MeanIoU(num_classes=3, ignore_class=0.5)"]',
                 "ignore_class = 0.5 is not supported"),
                ("sparse_categorical_crossentropy",  # (the metrics line, then weighted_metrics)
                 '["MeanIoU(num_classes=3, ignore_class=0)"]\n'
                 'weighted_metrics = ["MeanIoU(num_classes=3, ignore_class=1)"]',
                 "say ignore_class=0 and ignore_class=1")):
            with self.subTest(loss=loss, metrics=metrics):
                with open(spec, "w") as f:
                    f.write(DENSE.format(loss=loss, metrics=metrics))
                cli_util.assert_input_error(self, run(["check", spec]), said)


if __name__ == "__main__":
    cli_util.main()
