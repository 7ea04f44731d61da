"""Keras's sample_weight: weights from .npy files (sample_weight) or from an array of the .npz (sample_weight_key)
weigh each sample's loss, in training and in evaluation (trainer evaluate's loss is the weighted mean that numpy
computes from trainer predict's outputs, for the cross-entropies, mse and huber); a source without weights weighs
every sample 1; samples that weigh 0 do not train the model; 1 and 2 replicas train the same parameters; bad
weights are exit-2 errors naming the file and sample."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

N = 320

SPEC = """format_version = 1
[model]
input = [5]
[[model.layers]]
type = "Dense"
units = 8
activation = "relu"
[[model.layers]]
type = "Dense"
{head}
[data.train]
x = "d.npz"
{train_weights}
[data.validation]
x = "d.npz"
sample_weight = "w.npy"
[data.test]
x = "d.npz"
[train]
loss = "{loss}"
epochs = {epochs}
batch_size = 32
seed = 2
[train.optimizer]
name = "sgd"
learning_rate = 0.1
"""

HEADS = {
    "sparse_categorical_crossentropy": 'units = 3\nactivation = "softmax"',
    "binary_crossentropy": 'units = 1\nactivation = "sigmoid"',
    "mse": "units = 1",
    "huber": "units = 1",
}


# A tagger of 6 token steps whose per-step head is `head`, trained on `data` (an npz with x, y and the weights w).
STEPS_SPEC = """format_version = 1
[model]
input = {{ shape = [6], dtype = "int64" }}
[[model.layers]]
type = "Embedding"
input_dim = 10
output_dim = 4
[[model.layers]]
type = "LSTM"
units = 8
return_sequences = true
[[model.layers]]
type = "TimeDistributed"
layer = "Dense"
{head}
[data.train]
x = "{data}"
sample_weight_key = "w"
[train]
{train}
"""

TAGS_HEAD = 'units = 3\nactivation = "softmax"'
TAGS_TRAIN = 'loss = "sparse_categorical_crossentropy"\nepochs = 3\nbatch_size = 32\n[train.optimizer]\nlearning_rate = 0.02'


def per_sample_loss(loss, p, y):
    if loss == "sparse_categorical_crossentropy":
        return -np.log(np.clip(p[np.arange(len(y)), y.astype(int)], 1e-7, 1))
    p = p.reshape(len(y))
    if loss == "binary_crossentropy":
        q = np.clip(p, 1e-7, 1 - 1e-7)
        return -(y * np.log(q) + (1 - y) * np.log(1 - q))
    e = p - y
    if loss == "mse":
        return e * e
    a = np.abs(e)
    return np.where(a <= 1, 0.5 * e * e, a - 0.5)


class SampleWeight(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(3)
        cls.x = rng.normal(size=(N, 5)).astype(np.float32)
        cls.w = rng.uniform(0, 2, N).astype(np.float32)
        cls.w[::7] = 0

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.tmp.name, name)

    def labels(self, loss):
        score = self.x[:, 0] + 0.5 * self.x[:, 1]
        if loss == "sparse_categorical_crossentropy":
            return np.digitize(score, [-0.5, 0.5]).astype(np.int64)
        if loss == "binary_crossentropy":
            return (score > 0).astype(np.float32)
        return score.astype(np.float32)

    def spec(self, name, loss, y, epochs=2, train_weights='sample_weight_key = "w"', w=None):
        np.savez(self.path(f"{name}.npz"), x=self.x, y=y, w=self.w if w is None else w)
        np.save(self.path("w.npy"), self.w)
        p = self.path(f"{name}.toml")
        with open(p, "w") as f:
            f.write(SPEC.format(head=HEADS[loss], loss=loss, epochs=epochs, train_weights=train_weights)
                    .replace('"d.npz"', f'"{name}.npz"'))
        return p

    def fit(self, args):
        r = run(["fit"] + args, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout)

    def test_the_loss_is_the_weighted_mean_of_the_samples_losses(self):
        for loss in HEADS:
            with self.subTest(loss=loss):
                y = self.labels(loss)
                spec = self.spec(loss, loss, y)
                out = self.path(f"run_{loss}")
                events = self.fit([spec, "--output-dir", out])
                ckpt = os.path.join(out, "last.ckpt")
                p = cli_util.predict_rows(self, [ckpt, self.path(f"{loss}.npz")], ndmin=2)
                per = per_sample_loss(loss, p, y)
                weighted, plain = float(np.mean(self.w * per)), float(np.mean(per))
                self.assertGreater(abs(weighted - plain), 1e-3)  # the weights matter here
                # Validation (weights from w.npy) after the last epoch, and trainer evaluate alike.
                self.assertAlmostEqual(events[-1]["val_loss"], weighted, delta=2e-5 * max(1, weighted))
                for data, want in (("validation", weighted), ("test", plain)):
                    r = run(["evaluate", ckpt, "--data", data])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    got = json.loads(r.stdout.splitlines()[-1])["loss"]
                    self.assertAlmostEqual(got, want, delta=2e-5 * max(1, want), msg=data)

    def test_samples_that_weigh_nothing_do_not_train(self):
        loss = "sparse_categorical_crossentropy"
        y = self.labels(loss)
        zero = self.w == 0
        other = y.copy()
        other[zero] = (y[zero] + 1) % 3
        a = self.spec("zero_a", loss, y, epochs=3)
        b = self.spec("zero_b", loss, other, epochs=3)
        self.fit([a, "--output-dir", self.path("za")])
        self.fit([b, "--output-dir", self.path("zb")])
        pa = cli_util.read_checkpoint(self.path("za/last.ckpt"))
        pb = cli_util.read_checkpoint(self.path("zb/last.ckpt"))
        for n in ("dense/kernel", "dense_1/kernel", "dense_1/bias"):
            np.testing.assert_array_equal(pa[n], pb[n], err_msg=n)
        # Without the weights the changed labels do change the model.
        c = self.spec("zero_c", loss, other, epochs=3, train_weights="")
        self.fit([c, "--output-dir", self.path("zc")])
        self.assertFalse(np.array_equal(pa["dense_1/kernel"],
                                        cli_util.read_checkpoint(self.path("zc/last.ckpt"))["dense_1/kernel"]))

    def test_replicas_train_the_same_parameters(self):
        loss = "binary_crossentropy"
        spec = self.spec("dist", loss, self.labels(loss), epochs=2)
        self.fit([spec, "--output-dir", self.path("d1")])
        self.fit([spec, "--device", "cpu", "--devices", "2", "--output-dir", self.path("d2")])
        p1 = cli_util.read_checkpoint(self.path("d1/last.ckpt"))
        p2 = cli_util.read_checkpoint(self.path("d2/last.ckpt"))
        for n in ("dense/kernel", "dense_1/kernel"):
            np.testing.assert_allclose(p2[n], p1[n], rtol=1e-5, atol=1e-6, err_msg=n)

    def test_temporal_weights_weigh_each_step(self):
        # Keras's temporal sample weights ([N, steps]) on a per-step classification: the loss is the mean over
        # every step of each step's loss times its weight, and the steps that weigh 0 do not train.
        rng = np.random.default_rng(4)
        steps = 6
        tokens = rng.integers(1, 10, (N, steps)).astype(np.int64)
        tags = (tokens % 3).astype(np.int64)
        w = rng.uniform(0, 2, (N, steps)).astype(np.float32)
        w[rng.random((N, steps)) < 0.25] = 0
        runs = []
        for name, y in (("tags", tags), ("changed", np.where(w == 0, (tags + 1) % 3, tags))):
            np.savez(self.path(f"{name}.npz"), x=tokens, y=y, w=w)
            spec = self.path(f"{name}.toml")
            with open(spec, "w") as f:
                f.write(STEPS_SPEC.format(head=TAGS_HEAD, data=f"{name}.npz", train=TAGS_TRAIN))
            self.fit([spec, "--output-dir", self.path(name)])
            runs.append(cli_util.read_checkpoint(self.path(f"{name}/last.ckpt")))
        for n in runs[0]:
            if n.endswith(("kernel", "bias", "embeddings")):
                np.testing.assert_array_equal(runs[0][n], runs[1][n], err_msg=n)
        r = run(["evaluate", self.path("tags/last.ckpt"), "--data", "train"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout.splitlines()[-1])["loss"]
        p = cli_util.predict_rows(self, [self.path("tags/last.ckpt"), self.path("tags.npz")], ndmin=2)
        p = p.reshape(N, steps, 3)
        ce = -np.log(np.clip(np.take_along_axis(p, tags[..., None], 2)[..., 0], 1e-7, 1))
        self.assertAlmostEqual(got, float(np.mean(w * ce)), delta=2e-5)
        self.assertGreater(abs(float(np.mean(w * ce)) - float(np.mean(ce))), 1e-3)
        # Weighted metrics weigh each step by its own weight.
        spec = self.path("tags_weighted.toml")
        with open(spec, "w") as f:
            f.write(STEPS_SPEC.format(head=TAGS_HEAD, data="tags.npz", train=TAGS_TRAIN)
                    .replace("epochs = 3", 'epochs = 1\nweighted_metrics = ["accuracy"]'))
        self.fit([spec, "--output-dir", self.path("tags_weighted")])
        r = run(["evaluate", self.path("tags_weighted/last.ckpt"), "--data", "train"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout.splitlines()[-1])["accuracy"]
        p = cli_util.predict_rows(self, [self.path("tags_weighted/last.ckpt"), self.path("tags.npz")], ndmin=2)
        hit = p.reshape(N, steps, 3).argmax(2) == tags
        self.assertAlmostEqual(got, float((w * hit).sum() / w.sum()), delta=1e-6)
        self.assertGreater(abs(float(hit.mean()) - float((w * hit).sum() / w.sum())), 1e-4)
        # Weights of another number of steps than the output's.
        np.savez(self.path("bad_steps.npz"), x=tokens, y=tags, w=w[:, :4])
        spec = self.path("bad_steps.toml")
        with open(spec, "w") as f:
            f.write(STEPS_SPEC.format(head=TAGS_HEAD, data="bad_steps.npz", train=TAGS_TRAIN))
        cli_util.assert_input_error(self, run(["fit", spec]), "holds 4 sample weights per sample",
                                    "one per step of an output of steps")

    def test_weighted_metrics_count_the_weights(self):
        # Keras's weighted_metrics: the weighted mean over the samples (validation weights from w.npy), next to
        # the unweighted metrics; a name both lists give is reported as weighted_NAME, and early stopping may
        # monitor it.
        for loss, metrics, weighted in (("binary_crossentropy", '["accuracy"]', '["accuracy", "auc", "precision"]'),
                                        ("sparse_categorical_crossentropy", '[]', '["accuracy"]'),
                                        ("mse", '["mae"]', '["mae", "mse", "r2_score"]')):
            with self.subTest(loss=loss):
                y = self.labels(loss)
                spec = self.spec(f"wm_{loss}", loss, y)
                with open(spec) as f:
                    text = f.read()
                with open(spec, "w") as f:
                    f.write(text.replace("epochs = 2", f"epochs = 2\nmetrics = {metrics}\nweighted_metrics = {weighted}"))
                out = self.path(f"wm_{loss}")
                last = self.fit([spec, "--output-dir", out])[-1]
                ckpt = os.path.join(out, "last.ckpt")
                p = cli_util.predict_rows(self, [ckpt, self.path(f"wm_{loss}.npz")], ndmin=2)
                w = self.w.astype(np.float64)
                if loss == "binary_crossentropy":
                    hit = (p[:, 0] > 0.5) == (y > 0.5)
                    self.assertAlmostEqual(last["val_accuracy"], float(hit.mean()), delta=1e-6)
                    self.assertAlmostEqual(last["val_weighted_accuracy"], float((w * hit).sum() / w.sum()),
                                           delta=1e-6)
                    predicted, positive = p[:, 0] > 0.5, y > 0.5
                    tp, fp = (w * (predicted & positive)).sum(), (w * (predicted & ~positive)).sum()
                    self.assertAlmostEqual(last["val_precision"], float(tp / (tp + fp)), delta=1e-6)
                    self.assertIn("val_auc", last)
                    self.assertNotIn("val_weighted_auc", last)
                elif loss == "sparse_categorical_crossentropy":
                    hit = p.argmax(1) == y
                    self.assertAlmostEqual(last["val_accuracy"], float((w * hit).sum() / w.sum()), delta=1e-6)
                    self.assertGreater(abs(float(hit.mean()) - float((w * hit).sum() / w.sum())), 1e-4)
                else:
                    e = p[:, 0] - y
                    self.assertAlmostEqual(last["val_mae"], float(np.abs(e).mean()), delta=1e-5)
                    self.assertAlmostEqual(last["val_weighted_mae"], float((w * np.abs(e)).sum() / w.sum()),
                                           delta=1e-5)
                    self.assertAlmostEqual(last["val_mse"], float((w * e * e).sum() / w.sum()), delta=1e-5)
                    mean = (w * y).sum() / w.sum()
                    r2 = 1 - (w * e * e).sum() / (w * (y - mean) ** 2).sum()
                    self.assertAlmostEqual(last["val_r2_score"], float(r2), delta=1e-5)
                # trainer evaluate reports them too, with the data's weights.
                r = run(["evaluate", ckpt, "--data", "validation"])
                self.assertEqual(r.returncode, 0, r.stderr)
                ev = json.loads(r.stdout.splitlines()[-1])
                for k, v in last.items():
                    if k.startswith("val_") and k != "val_loss":
                        self.assertAlmostEqual(ev[k[4:]], v, delta=1e-6, msg=k)
        # The weighted name is a reported quantity: early stopping monitors it (maximized, as accuracy).
        spec = self.spec("wm_monitor", "binary_crossentropy", self.labels("binary_crossentropy"))
        with open(spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text.replace("epochs = 2", 'epochs = 2\nmetrics = ["accuracy"]\nweighted_metrics = ["accuracy"]')
                    + '[train.early_stopping]\nmonitor = "val_weighted_accuracy"\npatience = 1\n')
        self.fit([spec, "--output-dir", self.path("wm_monitor")])
        with open(spec, "w") as f:
            f.write(text.replace("epochs = 2", 'epochs = 2\nweighted_metrics = ["acuracy"]'))
        cli_util.assert_input_error(self, run(["fit", spec]), "unknown metric 'acuracy'", "accuracy")

    def test_a_steps_weight_weighs_each_of_its_labels(self):
        # Temporal weights on a per-step multi-label output ([steps, 2] sigmoid): each step's weight counts for
        # both of its labels in the weighted accuracy, as Keras broadcasts it.
        rng = np.random.default_rng(6)
        x = rng.integers(1, 10, (64, 6)).astype(np.int64)
        y = np.stack([x % 2, x % 3 == 0], -1).astype(np.float32)
        w = rng.uniform(0, 2, (64, 6)).astype(np.float32)
        np.savez(self.path("multi_label.npz"), x=x, y=y, w=w)
        spec = self.path("multi_label.toml")
        with open(spec, "w") as f:
            f.write(STEPS_SPEC.format(head='units = 2\nactivation = "sigmoid"', data="multi_label.npz",
                                      train='loss = "binary_crossentropy"\nweighted_metrics = ["accuracy"]\n'
                                            'batch_size = 16'))
        self.fit([spec, "--output-dir", self.path("multi_label")])
        ckpt = self.path("multi_label/last.ckpt")
        r = run(["evaluate", ckpt, "--data", "train"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = json.loads(r.stdout.splitlines()[-1])["accuracy"]
        p = cli_util.predict_rows(self, [ckpt, self.path("multi_label.npz"), "--probabilities"], ndmin=2)
        hit = (p.reshape(64, 6, 2) > 0.5) == (y > 0.5)
        ww = np.broadcast_to(w[..., None], hit.shape)
        self.assertAlmostEqual(got, float((ww * hit).sum() / ww.sum()), delta=1e-6)

    def test_weighted_metrics_of_a_per_step_regression_need_one_weight_per_sample(self):
        rng = np.random.default_rng(5)
        np.savez(self.path("steps_reg.npz"), x=rng.integers(1, 10, (64, 6)),
                 y=rng.normal(size=(64, 6, 1)).astype(np.float32), w=rng.uniform(0, 1, (64, 6)).astype(np.float32))
        spec = self.path("steps_reg.toml")
        def text(metrics):
            return STEPS_SPEC.format(head="units = 1", data="steps_reg.npz", train=f'loss = "mse"\n{metrics}')
        with open(spec, "w") as f:
            f.write(text('weighted_metrics = ["mae"]'))
        cli_util.assert_input_error(self, run(["fit", spec, "--output-dir", self.path("steps_reg")]),
                                    "steps_reg.toml:21:20: the weighted metrics of a mse output weigh whole samples",
                                    "6 per sample", "train.metrics")
        self.assertFalse(os.path.exists(self.path("steps_reg/last.ckpt")))
        with open(spec, "w") as f:
            f.write(text('metrics = ["mae"]'))
        self.fit([spec, "--output-dir", self.path("steps_reg")])

    def test_weights_of_shape_n_by_1_are_one_per_sample(self):
        loss = "binary_crossentropy"
        a = self.fit([self.spec("flat", loss, self.labels(loss))])[-1]
        b = self.fit([self.spec("column", loss, self.labels(loss), w=self.w.reshape(N, 1))])[-1]
        self.assertEqual(a["loss"], b["loss"])

    def test_bad_weights_are_named(self):
        loss = "mse"
        y = self.labels(loss)
        negative = self.w.copy()
        negative[11] = -1
        cases = [
            (dict(w=negative), ["sample 11 weighs -1"]),
            (dict(w=self.w[:-3]), ["317 sample weights for 320 samples"]),
            (dict(w=np.stack([self.w, self.w], 1)), ["2 sample weights per sample", "the model's output is [1]"]),
            (dict(w=self.w.reshape(N, 1, 1)), ["a sample has one weight, or one per step"]),
            (dict(train_weights='sample_weight_key = "weights"'), ["no array 'weights'"]),
            (dict(train_weights='sample_weight = "w.npy"\nsample_weight_key = "w"'), ["both give the sample weights"]),
        ]
        for i, (kw, needles) in enumerate(cases):
            with self.subTest(case=i):
                spec = self.spec(f"bad{i}", loss, y, **kw)
                cli_util.assert_input_error(self, run(["fit", spec]), *needles)


if __name__ == "__main__":
    cli_util.main()
