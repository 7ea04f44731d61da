"""Keras's regression, distribution, margin and focal losses (huber, log_cosh, poisson, kl_divergence, hinge,
squared_hinge, categorical_hinge, cosine_similarity, binary_focal_crossentropy, categorical_focal_crossentropy): each model trains, and
`trainer evaluate` reports the loss that Keras's formula gives on the outputs `trainer predict` writes for the same
checkpoint. The cross-entropies' forms: a final softmax or sigmoid gives the exact logits form in training,
validation and evaluate alike; other probabilities are clipped and renormalized; class weights follow the label's
rounded or largest class; r2_score of a constant label column."""

import json
import os
import subprocess
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
[[model.layers]]
type = "Dense"
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
epochs = 3
batch_size = 16
seed = 2
[train.optimizer]
learning_rate = 0.01
"""


def keras(loss, p, y, delta=1.0, gamma=2.0, alpha=0.25, balance=False):
    """Keras's loss per sample, averaged over the samples; the keyword arguments are its loss classes'."""
    e = p - y
    if loss == "huber":
        a = np.abs(e)
        per = np.where(a <= delta, 0.5 * e * e, delta * a - 0.5 * delta * delta).mean(-1)
    elif loss == "log_cosh":
        per = np.log(np.cosh(e)).mean(-1)
    elif loss in ("msle", "mean_squared_logarithmic_error"):
        per = ((np.log1p(np.maximum(p, 1e-7)) - np.log1p(np.maximum(y, 1e-7))) ** 2).mean(-1)
    elif loss == "mape":
        per = (100 * np.abs(y - p) / np.maximum(np.abs(y), 1e-7)).mean(-1)
    elif loss == "poisson":
        per = (p - y * np.log(p + 1e-7)).mean(-1)
    elif loss == "kl_divergence":
        yc, pc = np.clip(y, 1e-7, 1), np.clip(p, 1e-7, 1)
        per = (yc * np.log(yc / pc)).sum(-1)
    elif loss in ("hinge", "squared_hinge"):
        m = np.maximum(1 - np.where(y > 0, 1.0, -1.0) * p, 0)
        per = (m * m if loss == "squared_hinge" else m).mean(-1)
    elif loss == "categorical_hinge":
        per = np.maximum(0, 1 + ((1 - y) * p).max(-1) - (y * p).sum(-1))
    elif loss == "categorical_crossentropy":
        pc = np.clip(p, 1e-7, 1 - 1e-7)
        per = -(y * np.log(pc)).sum(-1)
    elif loss == "binary_crossentropy":
        pc = np.clip(p, 1e-7, 1 - 1e-7)
        per = -(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean(-1)
    elif loss == "binary_focal_crossentropy":
        pc = np.clip(p, 1e-7, 1 - 1e-7)
        bce = -(y * np.log(pc) + (1 - y) * np.log(1 - pc))
        p_t = y * p + (1 - y) * (1 - p)
        per = (1 - p_t) ** gamma * bce
        if balance:
            per = per * (alpha * y + (1 - alpha) * (1 - y))
        per = per.mean(-1)
    elif loss == "categorical_focal_crossentropy":
        pc = np.clip(p / p.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
        per = (alpha * (1 - pc) ** gamma * -(y * np.log(pc))).sum(-1)
    else:  # cosine_similarity
        def unit(v):
            return v / np.sqrt(np.maximum((v * v).sum(-1, keepdims=True), 1e-12))
        per = -(unit(y) * unit(p)).sum(-1)
    return float(per.mean())


class Losses(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        d = cls.tmp.name
        rng = np.random.default_rng(5)
        x = rng.normal(size=(96, 6)).astype(np.float32)
        np.save(os.path.join(d, "x.npy"), x)
        w = rng.normal(size=(6, 3))
        np.save(os.path.join(d, "real.npy"), (x @ w).astype(np.float32))                       # 3 real targets
        np.save(os.path.join(d, "counts.npy"), rng.poisson(np.exp(0.3 * x[:, :3])).astype(np.float32))
        logits = x @ w
        dist = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        np.save(os.path.join(d, "dist.npy"), dist.astype(np.float32))                           # distributions
        np.save(os.path.join(d, "binary.npy"), (x[:, :1] > 0).astype(np.float32))               # 0/1 labels
        np.save(os.path.join(d, "signs.npy"), np.where(x[:, :1] > 0, 1.0, -1.0).astype(np.float32))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def check(self, loss, units, activation, labels, smoothing=0.0, call=None, **options):
        """`call`: the loss as the spec gives it (Keras's call of its class), `options` its arguments for the
        reference; a call's label_smoothing is given as `smoothing` too, and not written beside it."""
        d = self.tmp.name
        spec = os.path.join(d, f"{loss}_{labels}.toml")
        with open(spec, "w") as f:
            text = SPEC.format(units=units, activation=activation, loss=call or loss, y=labels)
            if smoothing and not call:
                text = text.replace(f'loss = "{loss}"\n', f'loss = "{loss}"\nlabel_smoothing = {smoothing}\n')
            f.write(text)
        out = os.path.join(d, f"run_{loss}_{labels}")
        r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"], "it trains")
        ckpt = os.path.join(out, "last.ckpt")
        r = run(["evaluate", ckpt, "--device", "cpu", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        reported = json.loads(r.stdout)["loss"]
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, os.path.join(d, "x.npy"), "--probabilities",
                            "--output-format", "npy", "--device", "cpu", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        path = os.path.join(d, f"p_{loss}.npy")
        with open(path, "wb") as f:
            f.write(r.stdout)
        p = np.load(path).astype(np.float64).reshape(96, units)
        y = np.load(os.path.join(d, labels)).astype(np.float64).reshape(96, units)
        if smoothing:  # Keras's smoothing of the labels, in evaluation too
            y = y * (1 - smoothing) + smoothing / (2 if units == 1 else units)
        self.assertAlmostEqual(reported, keras(loss, p, y, **options), places=5)

    def test_msle_and_mape(self):
        self.check("msle", 3, "softplus", "counts.npy")
        self.check("mean_squared_logarithmic_error", 3, "relu", "counts.npy")
        self.check("mape", 3, "linear", "real.npy")

    def test_huber(self):
        self.check("huber", 3, "linear", "real.npy")

    def test_log_cosh(self):
        self.check("log_cosh", 3, "linear", "real.npy")

    def test_poisson(self):
        self.check("poisson", 3, "exponential", "counts.npy")

    def test_kl_divergence(self):
        self.check("kl_divergence", 3, "softmax", "dist.npy")

    def test_hinge_on_zero_one_and_signed_labels(self):
        self.check("hinge", 1, "tanh", "binary.npy")
        self.check("hinge", 1, "tanh", "signs.npy")

    def test_squared_hinge(self):
        self.check("squared_hinge", 1, "tanh", "binary.npy")

    def test_categorical_hinge(self):
        np.save(os.path.join(self.tmp.name, "onehot3.npy"),
                np.eye(3, dtype=np.float32)[np.argmax(np.load(os.path.join(self.tmp.name, "dist.npy")), 1)])
        self.check("categorical_hinge", 3, "linear", "onehot3.npy")
        self.check("categorical_hinge", 3, "softmax", "onehot3.npy")

    def test_label_smoothing(self):
        np.save(os.path.join(self.tmp.name, "onehot.npy"),
                np.eye(3, dtype=np.float32)[np.argmax(np.load(os.path.join(self.tmp.name, "dist.npy")), 1)])
        self.check("categorical_crossentropy", 3, "softmax", "onehot.npy", smoothing=0.2)
        self.check("binary_crossentropy", 1, "sigmoid", "binary.npy", smoothing=0.1)
        r = run(["check", os.path.join(self.tmp.name, "categorical_crossentropy_onehot.npy.toml"), "--set",
                 "train.loss=huber"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("label_smoothing applies to the categorical and binary cross-entropies", r.stderr)

    def test_focal_losses(self):
        np.save(os.path.join(self.tmp.name, "onehot3.npy"),
                np.eye(3, dtype=np.float32)[np.argmax(np.load(os.path.join(self.tmp.name, "dist.npy")), 1)])
        self.check("binary_focal_crossentropy", 1, "sigmoid", "binary.npy")
        self.check("binary_focal_crossentropy", 1, "sigmoid", "binary.npy", smoothing=0.1)
        self.check("categorical_focal_crossentropy", 3, "softmax", "onehot3.npy")
        self.check("categorical_focal_crossentropy", 3, "softmax", "onehot3.npy", smoothing=0.2)

    def test_loss_calls_take_their_classes_arguments(self):
        np.save(os.path.join(self.tmp.name, "onehot3.npy"),
                np.eye(3, dtype=np.float32)[np.argmax(np.load(os.path.join(self.tmp.name, "dist.npy")), 1)])
        self.check("huber", 3, "linear", "real.npy", call="keras.losses.Huber(delta=0.5)", delta=0.5)
        self.check("binary_focal_crossentropy", 1, "sigmoid", "binary.npy",
                   call="BinaryFocalCrossentropy(apply_class_balancing=True, alpha=0.4, gamma=3.0)",
                   gamma=3.0, alpha=0.4, balance=True)
        self.check("binary_focal_crossentropy", 1, "sigmoid", "binary.npy", smoothing=0.1,
                   call="binary_focal_crossentropy(gamma=1.5, label_smoothing=0.1)", gamma=1.5)
        self.check("categorical_focal_crossentropy", 3, "softmax", "onehot3.npy",
                   call="CategoricalFocalCrossentropy(alpha=0.5, gamma=1.0, reduction='sum_over_batch_size')",
                   alpha=0.5, gamma=1.0)
        self.check("categorical_crossentropy", 3, "softmax", "onehot3.npy", smoothing=0.2,
                   call="CategoricalCrossentropy(label_smoothing=0.2)")
        # What the checkpoint holds is the call, so a resumed run trains on the same loss.
        spec = os.path.join(self.tmp.name, "huber_real.npy.toml")
        self.check("huber", 3, "linear", "real.npy", call="Huber(delta=0.5)", delta=0.5)
        out = os.path.join(self.tmp.name, "run_huber_real.npy")
        r = run(["check", os.path.join(out, "last.ckpt")])
        self.assertEqual(r.returncode, 0, r.stderr)
        # The argument given twice, one the loss does not take, and a value out of range: each refused.
        for override, message in [
                ('train.loss="Huber(delta=-1)"', "huber's argument delta = -1 must be a positive number"),
                ('train.loss="Huber(gamma=2)"', "huber has no argument 'gamma' here"),
                ('train.loss="Huber(2.0, delta=2.0)"', "its argument 'delta' is given twice (by position and by name)"),
                ('train.loss="Huber(1, 2, 3, 4)"', "it gives 4 arguments without names, and Huber takes at most 3"),
                ('train.loss="BinaryCrossentropy(from_logits=True)"', None)]:
            r = run(["check", spec, "--set", override] + (["--set", "train.from_logits=false"] if not message else []))
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(message or "train.from_logits is false, and the loss's call says from_logits=True",
                          r.stderr)

    def test_focal_gamma_below_one_trains_where_the_sigmoid_saturates(self):
        # (1 - p_t)^gamma of a confident sigmoid: 0 to a power below 1, whose slope there is infinite.
        d = self.tmp.name
        np.save(os.path.join(d, "x100.npy"), (100 * np.load(os.path.join(d, "x.npy"))).astype(np.float32))
        spec = os.path.join(d, "saturated.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(units=1, activation="sigmoid", loss="BinaryFocalCrossentropy(gamma=0.5)",
                                y="binary.npy").replace('"x.npy"', '"x100.npy"')
                    .replace('activation = "tanh"', 'activation = "linear"\nkernel_initializer = "ones"'))
        r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        losses = [e["loss"] for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        self.assertTrue(all(np.isfinite(losses)), losses)

    def test_losses_as_metrics_are_kerass(self):
        d = self.tmp.name
        dist = np.load(os.path.join(d, "dist.npy"))
        np.save(os.path.join(d, "onehot_m.npy"), np.eye(3, dtype=np.float32)[np.argmax(dist, 1)])
        np.save(os.path.join(d, "ids.npy"), np.argmax(dist, 1).astype(np.int64))
        cases = [("mse", 3, "linear", "real.npy", ["LogCoshError", "CosineSimilarity", "kl_divergence"]),
                 ("categorical_crossentropy", 3, "softmax", "onehot_m.npy",
                  ["categorical_crossentropy", "kl_divergence", "poisson", "categorical_hinge"]),
                 ("binary_crossentropy", 1, "sigmoid", "binary.npy", ["binary_crossentropy", "hinge", "squared_hinge"]),
                 ("sparse_categorical_crossentropy", 3, "softmax", "ids.npy", ["SparseCategoricalCrossentropy"])]
        for loss, units, activation, labels, metrics in cases:
            spec = os.path.join(d, f"metrics_{loss}.toml")
            with open(spec, "w") as f:  # the metrics in [train], at the default learning rate
                f.write(SPEC.format(units=units, activation=activation, loss=loss, y=labels).replace(
                    "[train.optimizer]\nlearning_rate = 0.01\n", f"metrics = {json.dumps(metrics)}\n"))
            out = os.path.join(d, f"metrics_run_{loss}")
            r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out])
            self.assertEqual(r.returncode, 0, r.stderr)
            last = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
            r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(out, "last.ckpt"), os.path.join(d, "x.npy"),
                                "--probabilities", "--output-format", "npy", "--device", "cpu", "-q"],
                               capture_output=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            path = os.path.join(d, f"pm_{loss}.npy")
            with open(path, "wb") as f:
                f.write(r.stdout)
            p = np.load(path).astype(np.float64).reshape(96, units)
            y = np.load(os.path.join(d, labels))
            for m in metrics:
                name = {"LogCoshError": "logcosh", "CosineSimilarity": "cosine_similarity",
                        "SparseCategoricalCrossentropy": "sparse_categorical_crossentropy"}.get(m, m)
                if name == "sparse_categorical_crossentropy":
                    want = float(-np.log(np.clip(p[np.arange(96), y], 1e-7, 1 - 1e-7)).mean())
                elif name == "cosine_similarity":  # the metric is the cosine itself, the loss its negative
                    want = -keras(name, p, y.astype(np.float64).reshape(96, units))
                else:
                    want = keras({"logcosh": "log_cosh"}.get(name, name), p, y.astype(np.float64).reshape(96, units))
                self.assertAlmostEqual(last["val_" + name], want, places=5, msg=f"{loss}: {name}")
        r = run(["check", os.path.join(d, "metrics_sparse_categorical_crossentropy.toml"), "--set",
                 'train.metrics=["categorical_crossentropy"]'])
        cli_util.assert_input_error(self, r, "metric 'categorical_crossentropy' reads labels of the output's shape")
        # A multi-label output's labels are judged one by one: a metric of the whole last axis is refused.
        np.save(os.path.join(d, "multi.npy"), (np.load(os.path.join(d, "real.npy")) > 0).astype(np.float32))
        spec = os.path.join(d, "multi.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(units=3, activation="sigmoid", loss="binary_crossentropy", y="multi.npy").replace(
                "[train.optimizer]\nlearning_rate = 0.01\n", 'metrics = ["binary_crossentropy", "cosine_similarity"]\n'))
        r = run(["fit", spec, "--device", "cpu", "-q"])
        cli_util.assert_input_error(self, r, "metric 'cosine_similarity' reduces the last axis of each output",
                                    "judged label by label")

    def test_cosine_similarity(self):
        self.check("cosine_similarity", 3, "linear", "real.npy")


# The identity model: input -> Dense of zeros -> Add(input, it) -> Activation, trained at a learning rate that
# moves nothing, so its outputs are activation(x) exactly and every loss can be computed here.
IDENTITY = """format_version = 1
[model]
input = [{k}]
[[model.layers]]
type = "Dense"
name = "z"
units = {k}
kernel_initializer = "zeros"
[[model.layers]]
type = "Add"
name = "add"
inputs = ["input", "z"]
[[model.layers]]
type = "Activation"
activation = "{activation}"
[data]
shuffle = false
[data.train]
x = "x.npy"
y = "y.npy"
[data.validation]
x = "x.npy"
y = "y.npy"
[train]
loss = "{loss}"
metrics = {metrics}
epochs = 1
batch_size = {batch}
{extra}
[train.optimizer]
name = "sgd"
learning_rate = 1e-30
"""


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


class ProbabilityForms(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def fit(self, x, y, loss, activation, metrics=(), extra=""):
        """Fits the identity model on (x, y), validated on the same data; returns the epoch line and evaluate's."""
        d = self.tmp.name
        np.save(os.path.join(d, "x.npy"), x.astype(np.float32))
        np.save(os.path.join(d, "y.npy"), y)
        spec = os.path.join(d, "s.toml")
        with open(spec, "w") as f:
            f.write(IDENTITY.format(k=x.shape[1], activation=activation, loss=loss, metrics=json.dumps(list(metrics)),
                                    batch=len(x), extra=extra))
        out = os.path.join(d, "run")
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", out], cwd=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        epoch = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][0]
        r = run(["evaluate", os.path.join(out, "last.ckpt"), "--device", "cpu", "-q"], cwd=d)
        self.assertEqual(r.returncode, 0, r.stderr)
        return epoch, json.loads(r.stdout)

    def same_everywhere(self, epoch, evaluated, want):
        # Training, validation and evaluate compute one function: Keras's, here.
        for name, got in (("loss", epoch["loss"]), ("val_loss", epoch["val_loss"]), ("evaluate", evaluated["loss"])):
            self.assertIsNotNone(got, name)
            self.assertAlmostEqual(got / want, 1.0, places=5, msg=f"{name}: {got} vs {want}")

    def test_a_final_softmax_or_sigmoid_gives_the_exact_logits_form(self):
        # Logits whose softmax rounds to 0 and 1 in float32: the probability form gives inf or NaN (or, clamped, a
        # loss far from the true one); the logits form is exact.
        z = np.array([[0, -200, 0], [50, -50, 0], [3, 1, -2], [-90, 0, 90]], np.float64)
        ids = np.array([1, 1, 0, 0])
        want = -log_softmax(z)[np.arange(4), ids].mean()
        self.same_everywhere(*self.fit(z, np.eye(3, dtype=np.float32)[ids], "categorical_crossentropy", "softmax"),
                             want)
        self.same_everywhere(*self.fit(z, ids.astype(np.int64), "sparse_categorical_crossentropy", "softmax"), want)
        t = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 1]], np.float32)
        bce = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
        self.same_everywhere(*self.fit(z, t, "binary_crossentropy", "sigmoid"), bce.mean())

    def test_other_probabilities_are_clipped_and_renormalized(self):
        # Sigmoid outputs under a categorical cross-entropy: Keras divides them by their sum first; ReLU outputs
        # with zeros: clipped to 1e-7 rather than log 0.
        x = np.array([[0.5, -1.0, 2.0], [1.5, 0.2, -0.7], [-2.0, 3.0, 0.1]], np.float64)
        ids = np.array([0, 1, 2])
        p = 1 / (1 + np.exp(-x))
        pc = np.clip(p / p.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)
        want = -np.log(pc[np.arange(3), ids]).mean()
        self.same_everywhere(*self.fit(x, np.eye(3, dtype=np.float32)[ids], "categorical_crossentropy", "sigmoid"),
                             want)
        self.same_everywhere(*self.fit(x, ids.astype(np.int64), "sparse_categorical_crossentropy", "sigmoid"), want)
        r = np.clip(np.maximum(x, 0), 1e-7, 1 - 1e-7)
        want = -np.log(r[np.arange(3), ids] / r.sum(-1)).mean()
        self.same_everywhere(*self.fit(x, ids.astype(np.int64), "sparse_categorical_crossentropy", "relu"), want)

    def test_class_weights_follow_the_rounded_or_largest_label(self):
        # Keras turns class_weight into sample weights by the label's class: a binary label rounded, a soft
        # categorical label's largest entry.
        x = np.array([[2.0], [-1.0], [0.5], [-3.0], [1.0]], np.float64)
        t = np.array([[0.7], [0.2], [0.9], [0.6], [0.4]], np.float32)
        w = np.where(t > 0.5, 5.0, 1.0)
        bce = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
        epoch, _ = self.fit(x, t, "binary_crossentropy", "sigmoid", extra="class_weight = [1, 5]")
        self.assertAlmostEqual(epoch["loss"] / (w * bce).mean(), 1.0, places=5)
        z = np.array([[1.0, 0.0, -1.0], [0.3, 2.0, 0.1], [0.0, 0.0, 1.0]], np.float64)
        y = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3]], np.float32)
        cw = np.array([2.0, 3.0, 7.0])
        per = -(y * log_softmax(z)).sum(-1) * cw[y.argmax(-1)]
        epoch, _ = self.fit(z, y, "categorical_crossentropy", "softmax", extra="class_weight = [2, 3, 7]")
        self.assertAlmostEqual(epoch["loss"] / per.mean(), 1.0, places=5)

    def test_r2_score_of_a_constant_label_column_is_zero_for_it(self):
        # Column 1's labels are all 3.3: its R2 is 0 (no variance to explain), not the ratio to rounding noise.
        x = np.array([[1.0, 2.0], [2.0, 3.0], [0.5, 3.5], [4.0, 2.5], [-1.0, 3.0], [3.0, 1.0], [2.5, 4.0]])
        y = np.stack([x[:, 0] * 0.5 + 1, np.full(7, 3.3)], 1).astype(np.float32)
        epoch, _ = self.fit(x, y, "mse", "linear", metrics=["r2_score"])
        col0 = 1 - ((y[:, 0] - x[:, 0]) ** 2).sum() / ((y[:, 0] - y[:, 0].mean()) ** 2).sum()
        self.assertAlmostEqual(epoch["r2_score"], (col0 + 0) / 2, places=5)


if __name__ == "__main__":
    cli_util.main()
