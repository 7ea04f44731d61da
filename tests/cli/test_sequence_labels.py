"""Per-step and multi-label classification: a tagger whose output is [steps, classes] (LSTM with
return_sequences, then TimeDistributed(Dense)) trains on one class id per step under
sparse_categorical_crossentropy, one-hot [steps, classes] labels under categorical_crossentropy, and 0/1 labels
per step or per output under binary_crossentropy. `trainer evaluate` reports the mean over every position of
the loss Keras's formula gives on what `trainer predict` writes, accuracy counts positions, and predict writes
one class id per step."""

import io
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

STEPS, VOCAB, CLASSES = 6, 12, 3

SPEC = """format_version = 1
[model]
input = {{ shape = [{steps}], dtype = "int64" }}
[[model.layers]]
type = "Embedding"
input_dim = {vocab}
output_dim = 8
[[model.layers]]
type = "LSTM"
units = 16
return_sequences = true
[[model.layers]]
type = "TimeDistributed"
layer = "Dense"
units = {units}
activation = "{activation}"
[data.train]
x = "x.npy"
y = "{y}"
[data.validation]
x = "x.npy"
y = "{y}"
[train]
loss = "{loss}"
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 32
seed = 3
[train.optimizer]
learning_rate = 0.02
"""


class SequenceLabels(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(5)
        cls.x = rng.integers(0, VOCAB, (256, STEPS)).astype(np.int64)
        # Each step's tag is a function of its token and the one before: learnable only position by position.
        prev = np.concatenate([np.zeros((256, 1), np.int64), cls.x[:, :-1]], 1)
        cls.tags = (cls.x + prev) % CLASSES
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("tags.npy"), cls.tags)
        np.save(cls.path("onehot.npy"), np.eye(CLASSES, dtype=np.float32)[cls.tags])
        np.save(cls.path("bits.npy"), (cls.tags == 0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def fit(self, name, **fields):
        spec = self.path(f"{name}.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(steps=STEPS, vocab=VOCAB, **fields))
        out = self.path(name)
        r = run(["fit", spec, "--output-dir", out, "--log-format", "jsonl"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        ckpt = os.path.join(out, "last.ckpt")
        r = run(["evaluate", ckpt, "--data", "train"])
        self.assertEqual(r.returncode, 0, r.stderr)
        evaluated = [e for e in map(json.loads, r.stdout.splitlines()) if e.get("data") == "train"][0]
        r = run(["predict", ckpt, self.path("x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        probs = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2).reshape(256, STEPS, -1)
        return epochs, evaluated, probs, ckpt

    def test_sparse_tags_train_and_match_keras_on_every_position(self):
        epochs, ev, p, ckpt = self.fit("sparse", units=CLASSES, activation="softmax", y="tags.npy",
                                       loss="sparse_categorical_crossentropy", epochs=25)
        self.assertGreater(epochs[-1]["val_accuracy"], 0.9, epochs[-1])
        picked = np.take_along_axis(p, self.tags[..., None], 2)[..., 0]
        self.assertAlmostEqual(ev["loss"], float(np.mean(-np.log(picked))), places=4)
        self.assertAlmostEqual(ev["accuracy"], float(np.mean(p.argmax(2) == self.tags)), places=6)
        # Class ids: one row of STEPS ids per sample, as CSV and as NPY.
        r = run(["predict", ckpt, self.path("x.npy")])
        self.assertEqual(r.returncode, 0, r.stderr)
        ids = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        np.testing.assert_array_equal(ids, p.argmax(2))
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, self.path("x.npy"), "--output-format", "npy"],
                           capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_array_equal(np.load(io.BytesIO(r.stdout)), p.argmax(2))

    def test_replicas_report_what_one_device_does(self):
        # Two CPU replicas evaluate halves of the validation data; their accuracy counts positions as one
        # device's does.
        spec = self.path("replicas.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(steps=STEPS, vocab=VOCAB, units=CLASSES, activation="softmax", y="tags.npy",
                                loss="sparse_categorical_crossentropy", epochs=2))
        out = self.path("replicas")
        r = run(["fit", spec, "--device", "cpu", "--devices", "2", "--output-dir", out], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        last = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        r = run(["evaluate", os.path.join(out, "last.ckpt")])
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = json.loads(r.stdout.splitlines()[-1])
        self.assertAlmostEqual(last["val_accuracy"], ev["accuracy"], places=5)
        self.assertAlmostEqual(last["val_loss"], ev["loss"], places=4)

    def test_one_hot_tags(self):
        epochs, ev, p, _ = self.fit("onehot", units=CLASSES, activation="softmax", y="onehot.npy",
                                    loss="categorical_crossentropy", epochs=3)
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        picked = np.take_along_axis(p, self.tags[..., None], 2)[..., 0]
        self.assertAlmostEqual(ev["loss"], float(np.mean(-np.log(picked))), places=4)
        self.assertAlmostEqual(ev["accuracy"], float(np.mean(p.argmax(2) == self.tags)), places=6)

    def test_binary_per_step(self):
        epochs, ev, p, _ = self.fit("bits", units=1, activation="sigmoid", y="bits.npy",
                                    loss="binary_crossentropy", epochs=3)
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        q = np.clip(p[..., 0], 1e-7, 1 - 1e-7)
        bits = (self.tags == 0)
        self.assertAlmostEqual(ev["loss"], float(np.mean(-np.where(bits, np.log(q), np.log(1 - q)))), places=4)
        self.assertAlmostEqual(ev["accuracy"], float(np.mean((q > 0.5) == bits)), places=6)

    def test_masked_steps_do_not_count(self):
        # Sequences padded with token 0 after their length, under mask_zero: the padded steps' labels (here
        # class 2 or 1, never learned from) are left out of the loss and the accuracy, as Keras leaves them.
        rng = np.random.default_rng(7)
        lengths = rng.integers(2, STEPS + 1, 256)
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad, 0, rng.integers(1, VOCAB, (256, STEPS))).astype(np.int64)
        tags = np.where(pad, 2, x % 2)
        np.save(self.path("xm.npy"), x)
        np.save(self.path("tm.npy"), tags)
        np.save(self.path("bm.npy"), np.where(pad, 1, x % 2).astype(np.float32))
        for loss, units, activation, y in (("sparse_categorical_crossentropy", CLASSES, "softmax", "tm.npy"),
                                           ("binary_crossentropy", 1, "sigmoid", "bm.npy")):
            with self.subTest(loss=loss):
                spec = self.path(f"masked_{units}.toml")
                text = SPEC.format(steps=STEPS, vocab=VOCAB, units=units, activation=activation, y=y, loss=loss,
                                   epochs=8).replace("output_dim = 8", "output_dim = 8\nmask_zero = true")
                with open(spec, "w") as f:
                    f.write(text.replace('"x.npy"', '"xm.npy"'))
                out = self.path(f"masked_{units}")
                r = run(["fit", spec, "--output-dir", out], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                ckpt = os.path.join(out, "last.ckpt")
                r = run(["evaluate", ckpt, "--data", "train"])
                self.assertEqual(r.returncode, 0, r.stderr)
                ev = [e for e in map(json.loads, r.stdout.splitlines()) if e.get("data") == "train"][0]
                r = run(["predict", ckpt, self.path("xm.npy"), "--probabilities"])
                self.assertEqual(r.returncode, 0, r.stderr)
                p = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2).reshape(256, STEPS, -1)
                keep = ~pad
                if units == 1:
                    q = np.clip(p[..., 0], 1e-7, 1 - 1e-7)
                    bit = x % 2 == 1
                    per = -np.where(bit, np.log(q), np.log(1 - q))
                    hit = (q > 0.5) == bit
                else:
                    per = -np.log(np.take_along_axis(p, tags[..., None], 2)[..., 0])
                    hit = p.argmax(2) == tags
                self.assertAlmostEqual(ev["loss"], float(per[keep].mean()), places=4)
                self.assertAlmostEqual(ev["accuracy"], float(hit[keep].mean()), places=6)
                self.assertGreater(ev["accuracy"], 0.9)

    def test_masked_steps_of_a_regression_do_not_count(self):
        # Keras masks every loss: mse and huber over [batch, steps, 2] targets average the unmasked steps only (the
        # padded steps' targets, 100, would dominate otherwise), and so does the mae metric.
        rng = np.random.default_rng(8)
        lengths = rng.integers(2, STEPS + 1, 256)
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad, 0, rng.integers(1, VOCAB, (256, STEPS))).astype(np.int64)
        y = np.where(pad[..., None], 100.0, np.stack([x % 3, x % 2], -1) * 0.5).astype(np.float32)
        np.save(self.path("xr.npy"), x)
        np.save(self.path("yr.npy"), y)
        for loss in ("mse", "huber"):
            with self.subTest(loss=loss):
                spec = self.path(f"masked_{loss}.toml")
                text = SPEC.format(steps=STEPS, vocab=VOCAB, units=2, activation="linear", y="yr.npy", loss=loss,
                                   epochs=2).replace("output_dim = 8", "output_dim = 8\nmask_zero = true")
                with open(spec, "w") as f:
                    f.write(text.replace('"x.npy"', '"xr.npy"').replace('metrics = ["accuracy"]', 'metrics = ["mae"]'))
                out = self.path(f"masked_{loss}")
                r = run(["fit", spec, "--output-dir", out, "-q"], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                ckpt = os.path.join(out, "last.ckpt")
                r = run(["evaluate", ckpt, "--data", "train", "--batch-size", "256", "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                ev = json.loads(r.stdout)
                r = run(["predict", ckpt, self.path("xr.npy"), "--probabilities", "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                p = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2).reshape(256, STEPS, 2)
                e, keep = p - y, ~pad
                per = (e * e).mean(-1) if loss == "mse" else np.where(np.abs(e) <= 1, 0.5 * e * e,
                                                                        np.abs(e) - 0.5).mean(-1)
                self.assertAlmostEqual(ev["loss"] / float(per[keep].mean()), 1.0, places=5)
                self.assertAlmostEqual(ev["mae"] / float(np.abs(e).mean(-1)[keep].mean()), 1.0, places=5)

    def test_masked_steps_split_unevenly_among_replicas_train_as_one_device(self):
        # Each replica's rows hold a different number of unmasked steps; its loss divides by its share of the
        # whole batch's count, so 1, 2 and 4 replicas compute the global batch's masked mean alike.
        rng = np.random.default_rng(11)
        lengths = np.where(np.arange(256) % 3 == 0, STEPS, rng.integers(1, 3, 256))
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad, 0, rng.integers(1, VOCAB, (256, STEPS))).astype(np.int64)
        np.save(self.path("xu.npy"), x)
        np.save(self.path("tu.npy"), np.where(pad, 2, x % 2))
        spec = self.path("uneven.toml")
        text = SPEC.format(steps=STEPS, vocab=VOCAB, units=CLASSES, activation="softmax", y="tu.npy",
                           loss="sparse_categorical_crossentropy", epochs=2)
        with open(spec, "w") as f:
            f.write(text.replace("output_dim = 8", "output_dim = 8\nmask_zero = true").replace('"x.npy"', '"xu.npy"'))
        runs = {}
        for devices in (1, 2, 4):
            out = self.path(f"uneven_{devices}")
            r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--output-dir", out,
                     "--log-format", "jsonl", "-q"], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
            runs[devices] = epochs, cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
        # Two processes under MPI: each counts the whole batch it loads.
        mpirun = shutil.which("mpirun")
        if mpirun:
            out = self.path("uneven_mpi")
            r = subprocess.run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit",
                                spec, "--device", "cpu", "--output-dir", out, "--log-format", "jsonl", "-q"],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
            runs["mpirun -np 2"] = epochs, cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
        one_epochs, one = runs.pop(1)
        for devices in runs:
            epochs, weights = runs[devices]
            for a, b in zip(one_epochs, epochs):
                for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                    self.assertAlmostEqual(b[key], a[key], delta=1e-5, msg=f"{devices} replicas: {key}")
            for k in one:
                np.testing.assert_allclose(weights[k], one[k], rtol=0, atol=1e-5 * max(1.0, np.abs(one[k]).max()),
                                           err_msg=f"{devices} replicas: {k}")

    def test_two_outputs_of_one_masked_trunk_on_replicas(self):
        # Both heads read the LSTM's mask: counted once, divided into each head's loss.
        rng = np.random.default_rng(13)
        lengths = np.where(np.arange(128) % 3 == 0, STEPS, rng.integers(1, 3, 128))
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad, 0, rng.integers(1, VOCAB, (128, STEPS))).astype(np.int64)
        np.savez(self.path("two.npz"), x=x, a=np.where(pad, 0, x % 2), b=np.where(pad, 0, x % 3))
        spec = self.path("two.toml")
        with open(spec, "w") as f:
            f.write(f'''format_version = 1
[model]
input = {{ shape = [{STEPS}], dtype = "int64" }}
outputs = ["a", "b"]
[[model.layers]]
type = "Embedding"
input_dim = {VOCAB}
output_dim = 4
mask_zero = true
[[model.layers]]
type = "LSTM"
name = "rnn"
units = 8
return_sequences = true
[[model.layers]]
type = "TimeDistributed"
name = "a"
layer = "Dense"
units = 2
activation = "softmax"
[[model.layers]]
type = "TimeDistributed"
name = "b"
inputs = ["rnn"]
layer = "Dense"
units = 3
activation = "softmax"
[data.train]
x = "two.npz"
[data.validation]
x = "two.npz"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 16
''')
        logs = []
        for devices in (1, 2):
            r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--log-format", "jsonl", "-q",
                     "--output-dir", self.path(f"two_{devices}")], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            logs.append([e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"])
        for a, b in zip(*logs):
            for key in ("loss", "a_loss", "b_loss", "val_a_loss", "val_b_loss"):
                self.assertAlmostEqual(b[key], a[key], delta=1e-5, msg=key)

    def test_masking_layer_counts_on_replicas(self):
        # Masking as the first layer: rows of all-zero features are padding, counted from the inputs; a Masking
        # layer after a trained one makes the mask depend on the weights, which replicas cannot count.
        rng = np.random.default_rng(12)
        lengths = np.where(np.arange(128) % 4 == 0, STEPS, rng.integers(1, 3, 128))
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad[..., None], 0, rng.normal(size=(128, STEPS, 4))).astype(np.float32)
        np.save(self.path("xf.npy"), x)
        np.save(self.path("tf.npy"), np.where(pad, 2, (x[..., 0] > 0).astype(np.int64)))
        spec = self.path("masking.toml")
        layers = '''[[model.layers]]
type = "Masking"
[[model.layers]]
type = "LSTM"
units = 8
return_sequences = true
[[model.layers]]
type = "TimeDistributed"
layer = "Dense"
units = 3
activation = "softmax"
'''
        text = f'''format_version = 1
[model]
input = {{ shape = [{STEPS}, 4] }}
{{layers}}[data.train]
x = "xf.npy"
y = "tf.npy"
[data.validation]
x = "xf.npy"
y = "tf.npy"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 16
'''
        # Dropout before the Masking layer: a step whose features all drop is masked in training; the whole
        # batch's count draws what the replicas draw.
        dropped = '[[model.layers]]\ntype = "Dropout"\nrate = 0.5\n'
        for name, first in (("masking", ""), ("dropped", dropped)):
            with open(spec, "w") as f:
                f.write(text.replace("{layers}", first + layers))
            logs = []
            for devices in (1, 2):
                r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--log-format", "jsonl", "-q",
                         "--output-dir", self.path(f"{name}_{devices}")], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                logs.append([e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"])
            for a, b in zip(*logs):
                for key in ("loss", "val_loss", "val_accuracy"):
                    self.assertAlmostEqual(b[key], a[key], delta=1e-5, msg=f"{name}: {key}")
        with open(spec, "w") as f:
            f.write(text.replace("{layers}", '[[model.layers]]\ntype = "TimeDistributed"\nlayer = "Dense"\nunits = 4\n'
                                 + layers))
        cli_util.assert_input_error(
            self, run(["fit", spec, "--device", "cpu", "--devices", "2", "--output-dir", self.path("masking_w")]),
            "model: the mask of a per-step output depends on the model's weights", "train on one device")

    def test_masked_multi_label_steps(self):
        # Two 0/1 labels per step under mask_zero: a step's loss is the mean of its labels' (Keras's binary
        # cross-entropy averages the last axis), the loss the mean over the unmasked steps, and accuracy counts
        # the unmasked steps' labels.
        rng = np.random.default_rng(9)
        lengths = rng.integers(2, STEPS + 1, 256)
        pad = np.arange(STEPS)[None, :] >= lengths[:, None]
        x = np.where(pad, 0, rng.integers(1, VOCAB, (256, STEPS))).astype(np.int64)
        bits = np.stack([x % 2, x % 3 == 0], -1).astype(np.float32)
        bits[pad] = 1
        np.save(self.path("xml.npy"), x)
        np.save(self.path("bml.npy"), bits)
        spec = self.path("multi_label.toml")
        text = SPEC.format(steps=STEPS, vocab=VOCAB, units=2, activation="sigmoid", y="bml.npy",
                           loss="binary_crossentropy", epochs=2)
        with open(spec, "w") as f:
            f.write(text.replace("output_dim = 8", "output_dim = 8\nmask_zero = true").replace('"x.npy"', '"xml.npy"'))
        out = self.path("multi_label")
        r = run(["fit", spec, "--output-dir", out], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = os.path.join(out, "last.ckpt")
        r = run(["evaluate", ckpt, "--data", "train"])
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = [e for e in map(json.loads, r.stdout.splitlines()) if e.get("data") == "train"][0]
        r = run(["predict", ckpt, self.path("xml.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        q = np.clip(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2).reshape(256, STEPS, 2), 1e-7, 1 - 1e-7)
        per = -np.where(bits > 0.5, np.log(q), np.log(1 - q)).mean(-1)
        keep = ~pad
        # Keras's epoch loss: the mean of each batch's (32 samples') masked mean.
        batches = [per[i:i + 32][keep[i:i + 32]].mean() for i in range(0, 256, 32)]
        self.assertAlmostEqual(ev["loss"], float(np.mean(batches)), places=5)
        hit = (q > 0.5) == (bits > 0.5)
        self.assertAlmostEqual(ev["accuracy"], float(hit[keep].mean()), places=6)
        self.assertNotAlmostEqual(ev["accuracy"], float(hit.mean()), places=3)
        # Replicas count the masked steps alike.
        r = run(["fit", spec, "--device", "cpu", "--devices", "2", "--output-dir", self.path("multi_label_2"),
                 "--log-format", "jsonl", "-q"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        two = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        r = run(["fit", spec, "--device", "cpu", "--output-dir", self.path("multi_label_1"), "--log-format", "jsonl",
                 "-q"], timeout=300)
        one = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            self.assertAlmostEqual(two[key], one[key], delta=1e-5, msg=key)

    def test_wrong_label_shapes_name_what_fits(self):
        spec = self.path("bad.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(steps=STEPS, vocab=VOCAB, units=CLASSES, activation="softmax", y="onehot.npy",
                                loss="sparse_categorical_crossentropy", epochs=1))
        cli_util.assert_input_error(self, run(["fit", spec]), "needs 6 labels per sample", "shape [6, 3]")
        with open(spec, "w") as f:
            f.write(SPEC.format(steps=STEPS, vocab=VOCAB, units=CLASSES, activation="softmax", y="tags.npy",
                                loss="categorical_crossentropy", epochs=1))
        cli_util.assert_input_error(self, run(["fit", spec]), "output [6, 3]", "shape [6]")


if __name__ == "__main__":
    cli_util.main()
