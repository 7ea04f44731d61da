"""Keras's masking (Embedding mask_zero): padded reviews train alike on 1 and 2 CPU replicas, where the padding
sits changes nothing a masked model computes, and the export (compaction, sequence_lens) runs in onnxruntime as
trainer predict does, all-padding rows included. BatchNormalization passes the mask on and, in training, takes
the moments of the kept steps only (Keras's masked moments), synchronized across replicas too."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

try:
    import onnxruntime as ort
except ImportError:
    ort = None

SPEC = """format_version = 1
[model]
input = {{ shape = [{steps}], dtype = "int32" }}
[[model.layers]]
type = "Embedding"
input_dim = 50
output_dim = 8
mask_zero = true
[[model.layers]]
type = "Bidirectional"
layer = "LSTM"
units = 6
return_sequences = true
[[model.layers]]
type = "GRU"
units = 5
return_sequences = true
[[model.layers]]
type = "GlobalAveragePooling1D"
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
metrics = ["accuracy"]
epochs = 3
batch_size = 32
seed = 3
[train.optimizer]
name = "adam"
learning_rate = 0.01
"""


def reviews(rng, n, steps):
    """Token ids 1..49 of random lengths, pre-padded with 0 as Keras's pad_sequences does; the label is whether
    token 7 occurs."""
    x = np.zeros((n, steps), dtype=np.int32)
    for i in range(n):
        length = rng.integers(0, steps + 1)
        if length:
            x[i, steps - length:] = rng.integers(1, 50, size=length)
    return x, np.isin(x, [7]).any(axis=1).astype(np.float32)


class Masking(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(8)
        cls.x, cls.y = reviews(rng, 128, 12)
        cls.x[:3] = 0  # all padding
        np.save(os.path.join(cls.tmp.name, "x.npy"), cls.x)
        np.save(os.path.join(cls.tmp.name, "y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit(self, name, devices=1, steps=12, text=SPEC):
        spec = os.path.join(self.tmp.name, name + ".toml")
        with open(spec, "w") as f:
            f.write(text.format(steps=steps))
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", spec, "--device", "cpu", "--devices", str(devices), "--log-format", "jsonl", "-q",
                 "--output-dir", out], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        return epochs, os.path.join(out, "last.ckpt")

    def predict(self, ckpt, x):
        path = os.path.join(self.tmp.name, "predict_x.npy")
        np.save(path, x)
        r = run(["predict", ckpt, path, "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        return np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)

    def test_one_and_two_replicas_train_alike(self):
        one_epochs, one = self.fit("one")
        two_epochs, two = self.fit("two", devices=2)
        self.assertLess(one_epochs[-1]["loss"], one_epochs[0]["loss"])
        a, b = cli_util.read_checkpoint(one), cli_util.read_checkpoint(two)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, np.abs(a[k]).max()), err_msg=k)
        self.assertAlmostEqual(one_epochs[-1]["val_loss"], two_epochs[-1]["val_loss"], delta=1e-5)

    def post_padded(self):
        post = np.zeros_like(self.x)
        for i, row in enumerate(self.x):
            kept = row[row != 0]
            post[i, :len(kept)] = kept
        self.assertFalse(np.array_equal(post, self.x))
        return post

    def test_where_the_padding_sits_changes_nothing(self):
        # The same tokens in order, pre-padded or post-padded, predict the same: the padded steps are skipped.
        _, ckpt = self.fit("padding")
        np.testing.assert_allclose(self.predict(ckpt, self.post_padded()), self.predict(ckpt, self.x), rtol=1e-5,
                                   atol=1e-6)

    BN_SPEC = """format_version = 1
[model]
input = {{ shape = [{steps}], dtype = "int32" }}
[[model.layers]]
type = "Embedding"
input_dim = 50
output_dim = 8
mask_zero = true
trainable = false
[[model.layers]]
type = "BatchNormalization"
momentum = 0.0
synchronized = true
[[model.layers]]
type = "LSTM"
units = 4
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "binary_crossentropy"
epochs = 1
batch_size = 128
seed = 3
"""

    def test_batch_normalization_takes_masked_moments_and_passes_the_mask_on(self):
        # One step over the whole data with momentum 0: the moving statistics are that batch's moments. The
        # embedding is frozen, so the normalized values are its initial vectors, and the moments are numpy's
        # over the tokens that are not padding.
        _, ckpt = self.fit("bn_one", text=self.BN_SPEC)
        w = cli_util.read_checkpoint(ckpt)
        vectors = w["embedding/embeddings"].astype(np.float64)[self.x[self.x != 0]]
        np.testing.assert_allclose(w["batch_normalization/moving_mean"], vectors.mean(axis=0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(w["batch_normalization/moving_variance"], vectors.var(axis=0), rtol=1e-5,
                                   atol=1e-7)
        # The padded steps' moments would differ: padding is embedded as row 0.
        everything = w["embedding/embeddings"].astype(np.float64)[self.x.ravel()]
        self.assertGreater(np.abs(everything.mean(axis=0) - vectors.mean(axis=0)).max(), 1e-3)
        # The LSTM after it still skips the padding.
        np.testing.assert_allclose(self.predict(ckpt, self.post_padded()), self.predict(ckpt, self.x), rtol=1e-5,
                                   atol=1e-6)
        # Synchronized across 2 replicas: the masked sums of the global batch, so the same moments.
        _, two = self.fit("bn_two", devices=2, text=self.BN_SPEC)
        b = cli_util.read_checkpoint(two)
        for k in w:
            np.testing.assert_allclose(b[k], w[k], rtol=0, atol=1e-5 * max(1.0, np.abs(w[k]).max()), err_msg=k)

    def test_go_backwards_runs_the_kept_steps_in_reverse(self):
        # A GRU with go_backwards (its final state) under the mask: the kept steps last to first, wherever the
        # padding sits; reversing each row's kept tokens changes the prediction; the export runs in
        # onnxruntime as predict does.
        text = SPEC.replace("units = 5\nreturn_sequences = true", "units = 5\ngo_backwards = true").replace(
            '[[model.layers]]\ntype = "GlobalAveragePooling1D"\n', "")
        _, ckpt = self.fit("backwards", text=text)
        got = self.predict(ckpt, self.x)
        np.testing.assert_allclose(self.predict(ckpt, self.post_padded()), got, rtol=1e-5, atol=1e-6)
        flipped = self.x.copy()
        for row in flipped:
            row[row != 0] = row[row != 0][::-1]
        self.assertGreater(np.abs(self.predict(ckpt, flipped) - got).max(), 1e-4)
        if ort is not None:
            model = os.path.join(self.tmp.name, "backwards.onnx")
            r = run(["export", ckpt, "-o", model, "--quiet"])
            self.assertEqual(r.returncode, 0, r.stderr)
            want = ort.InferenceSession(model).run(None, {"input": self.x[:40]})[0]
            np.testing.assert_allclose(want, got[:40], rtol=1e-4, atol=1e-5)

    @unittest.skipIf(ort is None, "onnxruntime is needed (tools/install-deps.sh installs it)")
    def test_export_runs_in_onnxruntime_as_predict_does(self):
        _, ckpt = self.fit("export")
        model = os.path.join(self.tmp.name, "masked.onnx")
        r = run(["export", ckpt, "-o", model, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = ort.InferenceSession(model).run(None, {"input": self.x[:40]})[0]
        np.testing.assert_allclose(got, self.predict(ckpt, self.x[:40]), rtol=1e-4, atol=1e-5)
        # Token ids outside the Embedding's table are bad data for the exported model too (its Gather reads the
        # ids after a Cast), not wrapped into the table.
        bad = self.x[:4].copy()
        bad[2, 5] = 50
        path = os.path.join(self.tmp.name, "bad_ids.npy")
        np.save(path, bad)
        for m in (ckpt, model):
            cli_util.assert_input_error(self, run(["predict", m, path]), "sample 2", "out of range for 50 tokens")


if __name__ == "__main__":
    cli_util.main()
