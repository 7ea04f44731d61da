"""trainer fit's metrics beyond accuracy: precision, recall, F1, AUC (binary), mae and mse. Each is checked against the
same quantity computed here from the checkpoint's predictions on the validation set, and for continuity across a
resume and across replicas."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [8]
[[model.layers]]
type = "Dense"
units = 8
activation = "relu"
[[model.layers]]
type = "Dense"
units = 1
activation = "{activation}"
[data.train]
x = "x_train.npy"
y = "y_train.npy"
[data.validation]
x = "x_val.npy"
y = "y_val.npy"
[train]
loss = "{loss}"
from_logits = {from_logits}
metrics = {metrics}
epochs = 3
batch_size = 32
seed = 3
[train.optimizer]
learning_rate = 0.01
"""

BINARY = ["accuracy", "precision", "recall", "f1_score", "auc", "mae", "mse"]


def keras_auc(p, y):
    """The area under the ROC curve as Keras's AUC() computes it: 200 thresholds, trapezoids between them."""
    eps = 1e-7
    t = np.array([-eps] + [i / 199 for i in range(1, 199)] + [1 + eps], dtype=np.float32)
    pos = y > 0.5
    above = p[None, :] > t[:, None]
    tp = (above & pos).sum(1).astype(np.float64)
    fp = (above & ~pos).sum(1).astype(np.float64)
    tpr = tp / max(pos.sum(), 1)
    fpr = fp / max((~pos).sum(), 1)
    return float(np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2))


def keras_pr_auc(p, y):
    """The area under the precision-recall curve as Keras's AUC(curve="PR") computes it: over the same 200
    thresholds, true and predicted positives interpolated linearly between two (Davis & Goadrich)."""
    eps = 1e-7
    t = np.array([-eps] + [i / 199 for i in range(1, 199)] + [1 + eps], dtype=np.float32)
    pos = y > 0.5
    above = p[None, :] > t[:, None]
    tp = (above & pos).sum(1).astype(np.float64)
    fp = (above & ~pos).sum(1).astype(np.float64)
    fn = pos.sum() - tp
    dtp = tp[:-1] - tp[1:]
    pp = tp + fp
    dp = np.maximum(pp[:-1] - pp[1:], 0)
    slope = np.divide(dtp, dp, out=np.zeros_like(dtp), where=dp > 0)
    intercept = tp[1:] - slope * pp[1:]
    both = (pp[:-1] > 0) & (pp[1:] > 0)
    ratio = np.where(both, pp[:-1] / np.where(both, pp[1:], 1), 1.0)
    total = tp[1:] + fn[1:]
    return float(np.sum(np.where(total > 0, slope * (dtp + intercept * np.log(ratio)) / np.maximum(total, 1), 0)))


def average_precision(p, y):
    """The exact area: precision at each positive's rank, averaged over the positives."""
    order = np.argsort(-p, kind="stable")
    hits = (y[order] > 0.5).astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(p) + 1)
    return float((precision * hits).sum() / hits.sum())


def rank_auc(p, y):
    """The exact AUC: the chance that a positive sample scores above a negative one (ties count half)."""
    pos, neg = p[y > 0.5], p[y <= 0.5]
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) /
                 (len(pos) * len(neg)))


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(7)
        w = rng.normal(size=8)
        for name, n in (("train", 320), ("val", 200)):
            x = rng.normal(size=(n, 8)).astype(np.float32)
            # A noisy linear rule with more negatives than positives, so precision and recall differ.
            y = (x @ w + rng.normal(scale=1.5, size=n) > 0.8).astype(np.float32).reshape(n, 1)
            np.save(os.path.join(cls.tmp.name, f"x_{name}.npy"), x)
            np.save(os.path.join(cls.tmp.name, f"y_{name}.npy"), y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def spec(self, name, loss="binary_crossentropy", activation="sigmoid", from_logits=False, metrics=BINARY,
             extra=""):
        path = os.path.join(self.tmp.name, name)
        with open(path, "w") as f:
            f.write(SPEC.format(loss=loss, activation=activation, from_logits=str(from_logits).lower(),
                                metrics=json.dumps(metrics)) + extra)
        return path

    def fit(self, spec, out, *args):
        r = run(["fit", spec, "--log-format", "jsonl", "--quiet", "--device", "cpu",
                 "--output-dir", os.path.join(self.tmp.name, out)] + list(args), timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]

    def predictions(self, out):
        """The model's outputs on the validation set, from the run's last checkpoint."""
        path = os.path.join(self.tmp.name, out + ".npy")
        r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(self.tmp.name, out, "last.ckpt"),
                            os.path.join(self.tmp.name, "x_val.npy"), "--probabilities", "--output-format", "npy",
                            "--device", "cpu", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(path, "wb") as f:
            f.write(r.stdout)
        return np.load(path).reshape(-1).astype(np.float64)

    def check_binary(self, last, p, y):
        predicted, positive = p > 0.5, y > 0.5
        tp = float((predicted & positive).sum())
        self.assertAlmostEqual(last["val_accuracy"], float((predicted == positive).mean()), places=6)
        self.assertAlmostEqual(last["val_precision"], tp / predicted.sum(), places=6)
        self.assertAlmostEqual(last["val_recall"], tp / positive.sum(), places=6)
        if "val_f1_score" in last:  # the positive class's F1 at 0.5
            self.assertAlmostEqual(last["val_f1_score"], 2 * tp / (predicted.sum() + positive.sum()), places=6)
        self.assertAlmostEqual(last["val_auc"], keras_auc(p.astype(np.float32), y), places=5)
        # 200 thresholds put Keras's AUC within a few thousandths of the exact one.
        self.assertAlmostEqual(last["val_auc"], rank_auc(p, y), delta=0.01)
        self.assertNotAlmostEqual(last["val_precision"], last["val_recall"], places=3)

    def test_pr_auc_is_kerass_auc_of_the_pr_curve(self):
        metrics = ["AUC(curve='PR')", "auc"]
        last = self.fit(self.spec("pr.toml", metrics=metrics), "pr")[-1]
        self.assertIn("val_pr_auc", last)
        p = self.predictions("pr")
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1)
        self.assertAlmostEqual(last["val_pr_auc"], keras_pr_auc(p.astype(np.float32), y), places=5)
        self.assertAlmostEqual(last["val_pr_auc"], average_precision(p, y), delta=0.03)
        self.assertNotAlmostEqual(last["val_pr_auc"], last["val_auc"], places=2)
        self.assertAlmostEqual(last["val_auc"], keras_auc(p.astype(np.float32), y), places=5)

    def test_binary_metrics_are_those_of_the_predictions(self):
        epochs = self.fit(self.spec("binary.toml"), "binary")
        last = epochs[-1]
        self.assertEqual([k for k in last if k in BINARY], BINARY)  # in the spec's order
        p = self.predictions("binary")
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1)
        self.check_binary(last, p, y)
        self.assertAlmostEqual(last["val_mae"], float(np.abs(p - y).mean()), places=5)
        self.assertAlmostEqual(last["val_mse"], float(((p - y) ** 2).mean()), places=5)
        self.assertGreater(last["val_auc"], 0.75)  # the rule is learnable

    def test_confusion_counts_are_those_of_the_predictions(self):
        # Keras's TruePositives, FalsePositives, TrueNegatives and FalseNegatives at 0.5, by class name or
        # Keras's snake name, on one device and two; weighted, the sums of the sample weights.
        metrics = ["TruePositives", "false_positives", "TrueNegatives(thresholds=0.5)", "false_negatives"]
        names = ["true_positives", "false_positives", "true_negatives", "false_negatives"]
        p_y = None
        for devices in ("1", "2"):
            with self.subTest(devices=devices):
                last = self.fit(self.spec(f"counts{devices}.toml", metrics=metrics), f"counts{devices}",
                                "--devices", devices)[-1]
                self.assertEqual([k for k in last if k in names], names)  # in the spec's order
                if p_y is None:
                    p = self.predictions(f"counts{devices}") > 0.5
                    y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1) > 0.5
                    p_y = [(p & y).sum(), (p & ~y).sum(), (~p & ~y).sum(), (~p & y).sum()]
                    self.assertTrue(all(c > 0 for c in p_y), p_y)
                self.assertEqual([last["val_" + n] for n in names], p_y)
                self.assertEqual(sum(last[n] for n in names), 320)  # every training sample, once
        r = run(["check", self.spec("counts_sparse.toml", loss="mse", metrics=["true_positives"])])
        cli_util.assert_input_error(self, r, "'true_positives' is a binary classification metric")

    def test_a_binary_outputs_threshold_is_its_metrics_calls(self):
        # Keras's BinaryAccuracy(threshold), Precision(thresholds), Recall, the counts and F1Score(threshold):
        # a probability above 0.3 is positive; evaluate reads it back from the checkpoint's spec.
        metrics = ["BinaryAccuracy(threshold=0.3)", "Precision(thresholds=0.3)", "Recall(0.3)",
                   "F1Score(threshold=0.3)", "TruePositives(thresholds=0.3)", "auc"]
        last = self.fit(self.spec("threshold.toml", metrics=metrics), "threshold")[-1]
        p = self.predictions("threshold")
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1) > 0.5
        predicted = p.astype(np.float32) > np.float32(0.3)
        tp = float((predicted & y).sum())
        self.assertNotEqual(tp, float(((p > 0.5) & y).sum()))  # the threshold changes the counts
        want = {"binary_accuracy": float((predicted == y).mean()), "precision": tp / predicted.sum(),
                "recall": tp / y.sum(), "f1_score": 2 * tp / (predicted.sum() + y.sum()), "true_positives": tp}
        for name, value in want.items():
            self.assertAlmostEqual(last["val_" + name], value, places=6, msg=name)
        r = run(["evaluate", os.path.join(self.tmp.name, "threshold", "last.ckpt"), "--device", "cpu", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        again = json.loads(r.stdout)
        for name, value in want.items():
            self.assertAlmostEqual(again[name], value, places=6, msg=name)
        # One threshold per output, a probability.
        for wrong, needles in (
                (["accuracy", "Precision(thresholds=0.3)"],
                 ["one binary metric of this output says threshold=0.3, and another says nothing"]),
                (["BinaryAccuracy(threshold=0.3)", "Recall(thresholds=0.4)"],
                 ["say threshold=0.3 and threshold=0.4"]),
                (["Precision(thresholds=1.5)"], ["thresholds = 1.5 is not a valid value", "from 0 to 1"]),
                (["F1Score(threshold=0)"], ["threshold = 0 is not a valid value", "in (0, 1]"]),
                (["Precision(thresholds=[0.3, 0.5])"], ["not supported by trainer"])):
            with self.subTest(metrics=wrong):
                r = run(["check", self.spec("threshold_wrong.toml", metrics=wrong)])
                cli_util.assert_input_error(self, r, *needles)
        # Under from_logits a threshold a call gives is a logit's, as in Keras (BinaryAccuracy(threshold=0.0) is
        # the probability's 0.5); the counts change with it, and a mid-epoch resume with another is refused.
        spec = self.spec("logit_threshold.toml", activation="linear", from_logits=True,
                         metrics=["BinaryAccuracy(threshold=-0.5)", "Precision(thresholds=-0.5)"],
                         extra="[train.checkpoint]\nevery_steps = 3\n")
        last = self.fit(spec, "logit_threshold")[-1]
        z = self.predictions("logit_threshold").astype(np.float32)
        predicted = z > np.float32(-0.5)
        self.assertNotEqual(int(predicted.sum()), int((z > 0).sum()))
        self.assertAlmostEqual(last["val_binary_accuracy"], float((predicted == y).mean()), places=6)
        self.assertAlmostEqual(last["val_precision"], float((predicted & y).sum() / predicted.sum()), places=6)
        r = run(["fit", "--resume", os.path.join(self.tmp.name, "logit_threshold", "step-27.ckpt"), "--device", "cpu",
                 "-q", "--output-dir", os.path.join(self.tmp.name, "logit_resumed"), "--set",
                 'train.metrics=["BinaryAccuracy(threshold=0.5)", "Precision(thresholds=0.5)"]'])
        cli_util.assert_input_error(self, r, "threshold -0.5 of output 1")

    def test_constrained_metrics_binary_iou_and_f_beta_are_kerass(self):
        # PrecisionAtRecall and its kin over Keras's 200 thresholds 0, 1/199, ..., 1; BinaryIoU at its own
        # threshold; FBetaScore at 0.5 with Keras's epsilon. On one device and on two, which add their counts.
        metrics = ["PrecisionAtRecall(0.6)", "RecallAtPrecision(precision=0.7)", "SensitivityAtSpecificity(0.8)",
                   "SpecificityAtSensitivity(sensitivity=0.5)", "BinaryIoU(target_class_ids=[0, 1], threshold=0.4)",
                   "FBetaScore(beta=2.0)"]
        names = ["precision_at_recall", "recall_at_precision", "sensitivity_at_specificity",
                 "specificity_at_sensitivity", "binary_iou", "fbeta_score"]
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1)
        for devices in ("1", "2"):
            with self.subTest(devices=devices):
                out = f"constrained{devices}"
                last = self.fit(self.spec(out + ".toml", metrics=metrics), out, "--devices", devices)[-1]
                self.assertEqual([k for k in last if k in names], names)  # in the spec's order
                p = self.predictions(out).astype(np.float32)
                t = np.array([0.0] + [(i + 1) / 199 for i in range(198)] + [1.0], dtype=np.float32)
                pos = y > 0.5
                above = p[None, :] > t[:, None]
                tp, fp = (above & pos).sum(1).astype(float), (above & ~pos).sum(1).astype(float)
                fn, tn = pos.sum() - tp, (~pos).sum() - fp
                precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0)
                recall, specificity = tp / (tp + fn), tn / (tn + fp)
                for name, constrained, dependent, value in (
                        ("precision_at_recall", recall, precision, 0.6),
                        ("recall_at_precision", precision, recall, 0.7),
                        ("sensitivity_at_specificity", specificity, recall, 0.8),
                        ("specificity_at_sensitivity", recall, specificity, 0.5)):
                    want = float(np.max(np.where(constrained >= value, dependent, 0.0), initial=0.0))
                    self.assertAlmostEqual(last["val_" + name], want, places=6, msg=name)
                    self.assertGreater(want, 0.2, name)  # the constraint is met somewhere
                predicted = p >= 0.4
                ious = [((predicted == c) & (pos == c)).sum() / ((predicted == c) | (pos == c)).sum() for c in (0, 1)]
                self.assertAlmostEqual(last["val_binary_iou"], float(np.mean(ious)), places=6)
                e, b2 = 1e-7, 4.0
                k = [float(((p > 0.5) & pos).sum()), float(((p > 0.5) & ~pos).sum()), float(((p <= 0.5) & pos).sum())]
                pr, rc = k[0] / (k[0] + k[1] + e), k[0] / (k[0] + k[2] + e)
                self.assertAlmostEqual(last["val_fbeta_score"], (1 + b2) * pr * rc / (b2 * pr + rc + e), places=6)
                self.assertNotAlmostEqual(last["val_precision_at_recall"], last["val_recall_at_precision"], places=3)
        # Outputs that are not probabilities (a linear output, from_logits off): values at or below 0 are above
        # none of the thresholds 0, 1/199, ..., and one of exactly 0 is above none either (it is above AUC's
        # lowest, -1e-7). The model outputs its input: +0.5 for positives, -0.5 for negatives, 0 for both.
        d = os.path.join(self.tmp.name, "identity")
        os.makedirs(d, exist_ok=True)
        x = np.array([0.5] * 6 + [-0.5] * 8 + [0.0] * 4, np.float32).reshape(-1, 1)
        np.save(os.path.join(d, "x.npy"), x)
        y = (x > 0).astype(np.float32)
        y[-2:] = 1  # two positives at exactly 0: above no threshold, so no threshold has a recall of 1
        np.save(os.path.join(d, "y.npy"), y)
        spec = os.path.join(d, "identity.toml")
        with open(spec, "w") as f:
            f.write('format_version = 1\n[model]\ninput = [1]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                    'kernel_initializer = "ones"\nuse_bias = false\n[data.train]\nx = "x.npy"\ny = "y.npy"\n'
                    '[data.validation]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "binary_crossentropy"\n'
                    'metrics = ["SpecificityAtSensitivity(0.0)", "PrecisionAtRecall(1.0)", "AUC"]\n'
                    'epochs = 1\nbatch_size = 18\n[train.optimizer]\nname = "sgd"\nlearning_rate = 1e-30\n')
        last = self.fit(spec, "identity_out")[-1]
        # Keras's: from the threshold 0 on, no negative is predicted positive, nor are the positives at 0; AUC's
        # lowest threshold counts the zeros.
        self.assertEqual((last["val_specificity_at_sensitivity"], last["val_precision_at_recall"]), (1.0, 0.0))
        self.assertAlmostEqual(last["val_auc"], keras_auc(x.ravel(), y.ravel()), places=6)
        # The constraint is the call's: a bare name is refused with the call to write.
        r = run(["check", self.spec("bare.toml", metrics=["sensitivity_at_specificity"])])
        cli_util.assert_input_error(self, r, "needs the specificity it is computed at",
                                    "sensitivity_at_specificity(specificity=0.8)")

    def test_f_scores_and_auc_of_a_multi_label_output_average_its_labels(self):
        # Three sigmoid labels per sample: F1Score and FBetaScore with an average score each label at 0.5 and
        # average them as Keras's do (macro, weighted by each label's positives, or micro of the summed counts);
        # AUC(multi_label=True) averages each label's area.
        rng = np.random.default_rng(11)
        for name, n in (("train", 320), ("val", 200)):
            x = np.load(os.path.join(self.tmp.name, f"x_{name}.npy"))
            y = np.stack([x[:, 0] > 0.3, x[:, 1] + x[:, 2] > 1.0, rng.random(n) < 0.5], 1).astype(np.float32)
            np.save(os.path.join(self.tmp.name, f"y3_{name}.npy"), y)
        y = np.load(os.path.join(self.tmp.name, "y3_val.npy")) > 0.5
        e = 1e-7

        def f_beta(tp, fp, fn, b):
            p, r = tp / (tp + fp + e), tp / (tp + fn + e)
            return (1 + b * b) * p * r / (b * b * p + r + e)
        scores = set()
        for average in ("macro", "micro", "weighted"):
            with self.subTest(average=average):
                out = f"labels_{average}"
                path = self.spec(out + ".toml", metrics=[f"F1Score(average='{average}')",
                                                         f"FBetaScore(average='{average}', beta=2.0)",
                                                         "AUC(multi_label=True, num_labels=3)",
                                                         "AUC(curve='PR', multi_label=True)"])
                with open(path) as f:
                    text = f.read()
                with open(path, "w") as f:
                    f.write(text.replace("units = 1\n", "units = 3\n").replace('"y_train.npy"', '"y3_train.npy"')
                            .replace('"y_val.npy"', '"y3_val.npy"'))
                last = self.fit(path, out)[-1]
                p = self.predictions(out).reshape(-1, 3) > 0.5
                tp, fp, fn = ((p & y).sum(0).astype(float), (p & ~y).sum(0).astype(float),
                              (~p & y).sum(0).astype(float))
                for metric, b in (("f1_score", 1.0), ("fbeta_score", 2.0)):
                    want = (f_beta(tp, fp, fn, b).mean() if average == "macro" else
                            f_beta(tp.sum(), fp.sum(), fn.sum(), b) if average == "micro" else
                            (f_beta(tp, fp, fn, b) * (tp + fn)).sum() / (tp + fn).sum())
                    self.assertAlmostEqual(last["val_" + metric], float(want), places=6, msg=metric)
                scores.add(round(last["val_f1_score"], 6))
                # AUC(multi_label=True): each label's area, averaged.
                probs = self.predictions(out).reshape(-1, 3).astype(np.float32)
                labels = y.astype(np.float32)
                self.assertAlmostEqual(last["val_auc"], np.mean([keras_auc(probs[:, c], labels[:, c])
                                                                 for c in range(3)]), places=6)
                self.assertAlmostEqual(last["val_pr_auc"], np.mean([keras_pr_auc(probs[:, c], labels[:, c])
                                                                    for c in range(3)]), places=6)
                self.assertNotAlmostEqual(last["val_auc"], keras_auc(probs.ravel(), labels.ravel()), places=3)
        self.assertEqual(len(scores), 3, scores)

    def test_with_logits_the_metrics_judge_probabilities(self):
        self.fit(self.spec("logits.toml", activation="linear", from_logits=True,
                           metrics=["accuracy", "precision", "recall", "auc"]), "logits")
        with open(os.path.join(self.tmp.name, "logits", "history.jsonl")) as f:
            last = [e for e in map(json.loads, f) if e["event"] == "epoch"][-1]
        z = self.predictions("logits")
        self.assertTrue((z < 0).any() and (z > 0).any(), "the model's outputs are logits")
        self.check_binary(last, 1 / (1 + np.exp(-z)), np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1))

    def test_regression_metrics_and_keras_accuracy(self):
        last = self.fit(self.spec("mse.toml", loss="mse", activation="linear",
                                  metrics=["mae", "mse", "accuracy", "root_mean_squared_error",
                                           "mean_absolute_percentage_error"]), "mse")[-1]
        p = self.predictions("mse")
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1)
        self.assertAlmostEqual(last["val_mae"], float(np.abs(p - y).mean()), places=5)
        self.assertAlmostEqual(last["val_mse"], float(((p - y) ** 2).mean()), places=5)
        self.assertAlmostEqual(last["val_mse"], last["val_loss"], places=5)  # mse is the loss itself
        self.assertAlmostEqual(last["val_root_mean_squared_error"], float(np.sqrt(((p - y) ** 2).mean())), places=5)
        # Keras's MAPE: 100 |y - p| / max(|y|, 1e-7); labels of 0 make it large, and count all the same.
        self.assertAlmostEqual(last["val_mape"] / (100 * np.mean(np.abs(y - p) / np.maximum(np.abs(y), 1e-7))), 1.0,
                               places=5)
        # One output: Keras's binary accuracy, at 0.5.
        self.assertAlmostEqual(last["val_accuracy"], float(((p > 0.5) == (y > 0.5)).mean()), places=6)

    def test_r2_score_and_msle(self):
        last = self.fit(self.spec("r2.toml", loss="mse", activation="linear",
                                  metrics=["r2_score", "mean_squared_logarithmic_error"]), "r2")[-1]
        p = self.predictions("r2")
        y = np.load(os.path.join(self.tmp.name, "y_val.npy")).reshape(-1)
        # Keras's R2Score: 1 - SS_res / SS_tot.
        self.assertAlmostEqual(last["val_r2_score"], float(1 - ((y - p) ** 2).sum() / ((y - y.mean()) ** 2).sum()),
                               places=5)
        msle = np.mean((np.log1p(np.maximum(p, 1e-7)) - np.log1p(np.maximum(y, 1e-7))) ** 2)
        self.assertAlmostEqual(last["val_msle"], float(msle), places=5)

    def test_a_resume_in_the_middle_of_an_epoch_continues_the_counts(self):
        spec = self.spec("resume.toml", extra="[train.checkpoint]\nevery_steps = 3\nkeep_last = 0\n")
        straight = self.fit(spec, "straight")
        # 10 steps per epoch: step-15 is the middle of the second.
        r = run(["fit", "--resume", os.path.join(self.tmp.name, "straight", "step-15.ckpt"), "--log-format", "jsonl",
                 "--quiet", "--device", "cpu", "--output-dir", os.path.join(self.tmp.name, "resumed")], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        resumed = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"]
        # The second epoch's training metrics count its first 5 steps from the checkpoint.
        self.assertEqual([e["epoch"] for e in resumed], [2, 3])
        for key in BINARY + ["val_" + m for m in BINARY]:
            self.assertEqual(straight[1][key], resumed[0][key], key)

    def test_replicas_report_the_metrics_of_the_whole_batch(self):
        one = self.fit(self.spec("one.toml"), "one")[-1]
        two = self.fit(self.spec("two.toml"), "two", "--devices", "2")[-1]
        for key in BINARY + ["val_" + m for m in BINARY]:
            self.assertAlmostEqual(one[key], two[key], delta=1e-4, msg=key)

    def test_keras_accuracy_names_are_reported_as_written(self):
        epochs = self.fit(self.spec("names.toml", metrics=["binary_accuracy", "acc", "accuracy"]), "names")
        for e in epochs:
            self.assertEqual(e["val_binary_accuracy"], e["val_accuracy"])
            self.assertEqual(e["acc"], e["accuracy"])

    @cli_util.skip_without_fashion
    def test_sparse_accuracy_names_on_the_fashion_mlp(self):
        spec = cli_util.sample("fashion_mnist/mlp.toml")
        small = ["--set", "data.train.limit=512", "--set", "data.validation.limit=256", "--set", "train.epochs=1",
                 "--log-format", "jsonl", "-q", "--device", "cpu"]
        runs = []
        for metrics in ('["accuracy", "top_k_accuracy"]',
                        '["sparse_categorical_accuracy", "sparse_top_k_categorical_accuracy"]'):
            r = run(["fit", spec, "--set", f"train.metrics={metrics}", "--set", "train.top_k=2"] + small, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            runs.append([e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1])
        a, b = runs
        self.assertEqual(a["val_accuracy"], b["val_sparse_categorical_accuracy"])
        self.assertEqual(a["val_top_k_accuracy"], b["val_sparse_top_k_categorical_accuracy"])
        self.assertGreater(a["val_top_k_accuracy"], a["val_accuracy"])  # k = 2 counts more
        r = run(["check", spec, "--set", 'train.metrics=["categorical_accuracy"]'])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("reads the labels of categorical_crossentropy, and the loss is sparse_categorical_crossentropy",
                      r.stderr)

    def test_mpi_ranks_report_the_metrics_of_the_whole_batch(self):
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        one = self.fit(self.spec("mpi1.toml"), "mpi1")[-1]
        r = subprocess.run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit",
                            self.spec("mpi2.toml"), "--device", "cpu", "--log-format", "jsonl", "--quiet"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        two = [e for e in map(json.loads, r.stdout.splitlines()) if e["event"] == "epoch"][-1]
        for key in BINARY + ["val_" + m for m in BINARY]:
            self.assertAlmostEqual(one[key], two[key], delta=1e-4, msg=key)


SEGMENTATION = """format_version = 1
[model]
input = [6, 6, 2]
[[model.layers]]
type = "Conv2D"
filters = 3
kernel_size = 3
padding = "same"
activation = "softmax"
[data.train]
x = "seg_x.npy"
y = "seg_y.npy"
[data.validation]
x = "seg_x.npy"
y = "seg_y.npy"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["MeanIoU(num_classes=3, sparse_y_pred=False)", "accuracy"]
epochs = 3
batch_size = 16
"""


def keras_mean_iou(pred, label, classes):
    """Keras's MeanIoU from class ids: per class TP / (TP + FP + FN), over the classes with a denominator."""
    cm = np.zeros((classes, classes))
    np.add.at(cm, (label.ravel(), pred.ravel()), 1)
    tp = np.diag(cm)
    denominator = cm.sum(0) + cm.sum(1) - tp
    return float((tp[denominator > 0] / denominator[denominator > 0]).mean())


class MeanIoU(unittest.TestCase):
    @staticmethod
    def segmentation(d, seed, high):
        """The per-pixel model's spec and data in d: 3 classes, 2 where channel 0 is above `high`."""
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(40, 6, 6, 2)).astype(np.float32)
        label = np.where(x[..., 0] > high, 2, np.where(x[..., 1] > 0, 1, 0)).astype(np.int64)
        np.save(os.path.join(d, "seg_x.npy"), x)
        np.save(os.path.join(d, "seg_y.npy"), label)
        spec = os.path.join(d, "seg.toml")
        with open(spec, "w") as f:
            f.write(SEGMENTATION)
        return spec, label

    def fit_and_count(self, spec, d, out, label, args):
        """Fits the per-pixel model into `out` with `args`; returns its last epoch and, from the checkpoint's
        predicted classes, the true positives, false positives and false negatives of each class."""
        r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir", out] + args,
                timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        last = cli_util.json_lines(self, r.stdout)[-2]
        r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(out, "last.ckpt"), os.path.join(d, "seg_x.npy"),
                            "--device", "cpu", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        pred = np.loadtxt(r.stdout.decode().splitlines(), delimiter=",", dtype=np.int64).reshape(-1)
        y = label.reshape(-1)
        return last, [np.array([f(c).sum() for c in range(3)], float)
                      for f in (lambda c: (pred == c) & (y == c), lambda c: (pred == c) & (y != c),
                                lambda c: (pred != c) & (y == c))]

    def test_mean_iou_is_kerass_from_the_predicted_classes(self):
        with tempfile.TemporaryDirectory() as d:
            spec, label = self.segmentation(d, 3, 0.5)
            r = run(["fit", spec, "--device", "cpu", "--log-format", "jsonl", "-q", "--output-dir",
                     os.path.join(d, "out")], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            last = cli_util.json_lines(self, r.stdout)[-2]
            r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(d, "out", "last.ckpt"),
                                os.path.join(d, "seg_x.npy"), "--probabilities", "--output-format", "npy",
                                "--device", "cpu", "-q"], capture_output=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "p.npy"), "wb") as f:
                f.write(r.stdout)
            pred = np.load(os.path.join(d, "p.npy")).reshape(40, 6, 6, 3).argmax(-1)
            want = keras_mean_iou(pred, label, 3)
            self.assertAlmostEqual(last["val_mean_iou"], want, places=6)
            self.assertNotAlmostEqual(last["val_mean_iou"], last["val_accuracy"], places=3)
            # num_classes must be the output's classes; a binary model has no classes to count.
            r = run(["fit", spec, "--device", "cpu", "-q", "--set",
                     'train.metrics=["MeanIoU(num_classes=4)"]'], timeout=300)
            cli_util.assert_input_error(self, r,
                                        "the IoU metric's num_classes=4 counts 4 classes, and the output has 3")
            # check finds it too, at its place in the spec.
            with open(spec) as f:
                text = f.read()
            with open(os.path.join(d, "seg4.toml"), "w") as f:
                f.write(text.replace("num_classes=3", "num_classes=4"))
            r = run(["check", os.path.join(d, "seg4.toml")])
            cli_util.assert_input_error(self, r, "seg4.toml:18:11: the IoU metric's num_classes=4 counts 4 classes")
            r = run(["check", spec, "--set", "train.loss=binary_crossentropy", "--set", 'train.metrics=["mean_iou"]'])
            cli_util.assert_input_error(self, r, "metric 'mean_iou' counts the classes of a categorical output")

    def test_iou_of_target_classes_and_one_hot_labels(self):
        # IoU averages its target_class_ids alone; OneHotIoU and OneHotMeanIoU read one-hot labels, and
        # FBetaScore(average=...) weighs recall beta times as much.
        with tempfile.TemporaryDirectory() as d:
            spec, label = self.segmentation(d, 5, 0.6)
            np.save(os.path.join(d, "seg_onehot.npy"), np.eye(3, dtype=np.float32)[label])
            runs = {"sparse": ["--set", "train.metrics=[\"IoU(3, [0, 2])\", \"MeanIoU(3)\", "
                               "\"FBetaScore('macro', beta=2.0)\"]"],
                    "onehot": ["--set", "train.loss=categorical_crossentropy", "--set",
                               "data.train.y=seg_onehot.npy", "--set", "data.validation.y=seg_onehot.npy", "--set",
                               "train.metrics=[\"OneHotIoU(num_classes=3, target_class_ids=[1])\", "
                               "\"OneHotMeanIoU(3)\"]"]}
            for labels, args in runs.items():
                with self.subTest(labels=labels):
                    out = os.path.join(d, labels)
                    last, (tp, fp, fn) = self.fit_and_count(spec, d, out, label, args)
                    iou = tp / (tp + fp + fn)
                    if labels == "sparse":
                        self.assertAlmostEqual(last["val_iou"], float(iou[[0, 2]].mean()), places=6)
                        self.assertAlmostEqual(last["val_mean_iou"], float(iou.mean()), places=6)
                        self.assertNotAlmostEqual(last["val_iou"], last["val_mean_iou"], places=3)
                        e = 1e-7
                        p, rc = tp / (tp + fp + e), tp / (tp + fn + e)
                        self.assertAlmostEqual(last["val_fbeta_score"], float((5 * p * rc / (4 * p + rc + e)).mean()),
                                               places=6)
                    else:
                        self.assertAlmostEqual(last["val_one_hot_iou"], float(iou[1]), places=6)
                        self.assertAlmostEqual(last["val_one_hot_mean_iou"], float(iou.mean()), places=6)
            # A one-hot row of zeros names no class: the F-scores count only the prediction's false positive.
            void = np.eye(3, dtype=np.float32)[label]
            void[:4] = 0
            np.save(os.path.join(d, "seg_void.npy"), void)
            none = label.copy()
            none[:4] = -1  # counted as no class's label below
            last, (tp, fp, fn) = self.fit_and_count(
                spec, d, os.path.join(d, "void"), none,
                ["--set", "train.loss=categorical_crossentropy", "--set", "data.train.y=seg_void.npy", "--set",
                 "data.validation.y=seg_void.npy", "--set", "train.metrics=[\"F1Score(average='macro')\"]"])
            e = 1e-7
            p, rc = tp / (tp + fp + e), tp / (tp + fn + e)
            self.assertAlmostEqual(last["val_f1_score"], float((2 * p * rc / (p + rc + e)).mean()), places=6)
            # A target class the output lacks is an input error naming it.
            r = run(["check", spec, "--set", 'train.metrics=["IoU(3, [3])"]'])
            cli_util.assert_input_error(self, r, "target_class_ids name class 3, and the output has 3 classes")
            r = run(["check", spec, "--set", 'train.weighted_metrics=["IoU(3, [3])"]'])
            cli_util.assert_input_error(self, r, '--set train.weighted_metrics=["IoU(3, [3])"]: the IoU metric')
            # A per-pixel binary output has no rows of labels for an F-score to average.
            with open(spec) as f:
                text = f.read()
            with open(os.path.join(d, "segb.toml"), "w") as f:
                f.write(text.replace("filters = 3", "filters = 1").replace('"softmax"', '"sigmoid"')
                        .replace('"seg_y.npy"', '"seg_b.npy"').replace('"sparse_categorical_crossentropy"',
                                                                       '"binary_crossentropy"')
                        .replace('"MeanIoU(num_classes=3, sparse_y_pred=False)"', '"F1Score(average=\'macro\')"'))
            np.save(os.path.join(d, "seg_b.npy"), (label == 2).astype(np.float32)[..., None])
            r = run(["check", os.path.join(d, "segb.toml")])
            cli_util.assert_input_error(self, r, "an F-score averaged over labels needs rows of labels")

    def test_f1_score_of_the_classes_is_kerass_average(self):
        # F1Score(average=...) of a categorical (per-pixel) output: Keras's FBetaScore at beta 1 on the predicted
        # classes (threshold=None), per class with its epsilon, averaged as asked.
        with tempfile.TemporaryDirectory() as d:
            spec, label = self.segmentation(d, 4, 0.8)
            e = 1e-7

            def f1(tp, fp, fn):
                p, r = tp / (tp + fp + e), tp / (tp + fn + e)
                return 2 * p * r / (p + r + e)
            scores = {}
            for average in ("macro", "micro", "weighted"):
                with self.subTest(average=average):
                    out = os.path.join(d, average)
                    last, (tp, fp, fn) = self.fit_and_count(
                        spec, d, out, label, ["--set", f"train.metrics=[\"accuracy\", \"F1Score(average='{average}')\"]"])
                    want = (f1(tp, fp, fn).mean() if average == "macro" else
                            f1(tp.sum(), fp.sum(), fn.sum()) if average == "micro" else
                            (f1(tp, fp, fn) * (tp + fn)).sum() / (tp + fn).sum())
                    self.assertAlmostEqual(last["val_f1_score"], float(want), places=6)
                    scores[average] = last["val_f1_score"]
                    # evaluate reads the average from the checkpoint's spec.
                    r = run(["evaluate", os.path.join(out, "last.ckpt"), "--device", "cpu", "-q"])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertAlmostEqual(json.loads(r.stdout)["f1_score"], last["val_f1_score"], places=6)
            self.assertEqual(len(set(round(v, 6) for v in scores.values())), 3, scores)
            # Without an average (Keras's None: one score per class) it is refused, with the averages named.
            r = run(["check", spec, "--set", 'train.metrics=["F1Score"]'])
            cli_util.assert_input_error(self, r, "the F1 score of a categorical output is one per class",
                                        "average='macro'")

    def test_precision_and_recall_of_a_categorical_output_are_kerass(self):
        # Keras's Precision and Recall of a softmax output count each class entry of the one-hot labels as a
        # binary prediction (above 0.5, or a threshold; among the top_k largest; of class_id alone); sparse
        # labels count as their one-hot rows. Per pixel here: 40 x 36 positions of 3 classes.
        def keras_pr(p, onehot, class_id=None, top_k=None, threshold=None):
            p, positive = p.reshape(-1, 3), onehot.reshape(-1, 3) > 0.5
            predicted = p > (0.5 if threshold is None else threshold)
            if top_k is not None:
                rank = np.argsort(np.argsort(-p, axis=1, kind="stable"), axis=1)
                predicted = (rank < top_k) & (p > threshold if threshold is not None else True)
            if class_id is not None:
                predicted, positive = predicted[:, class_id], positive[:, class_id]
            tp = float((predicted & positive).sum())
            return tp / float(predicted.sum()), tp / float(positive.sum())
        with tempfile.TemporaryDirectory() as d:
            spec, label = self.segmentation(d, 6, 0.7)
            onehot = np.eye(3, dtype=np.float32)[label]
            np.save(os.path.join(d, "seg_onehot.npy"), onehot)
            out = os.path.join(d, "out")
            r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", out, "--set", "train.epochs=6"], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(out, "last.ckpt"), os.path.join(d, "seg_x.npy"),
                                "--probabilities", "--output-format", "npy", "--device", "cpu", "-q"],
                               capture_output=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "p.npy"), "wb") as f:
                f.write(r.stdout)
            p = np.load(os.path.join(d, "p.npy")).astype(np.float32)
            one_hot_labels = ["--set", "train.loss=categorical_crossentropy", "--set", "data.validation.y=seg_onehot.npy"]
            seen = set()
            for args, kw in (("", {}), ("class_id=2", dict(class_id=2)), ("top_k=2", dict(top_k=2)),
                             ("top_k=1, class_id=0", dict(top_k=1, class_id=0)), ("thresholds=0.4", dict(threshold=0.4)),
                             ("thresholds=0.3, top_k=1", dict(threshold=0.3, top_k=1))):
                want = keras_pr(p, onehot, **kw)
                seen.add(tuple(round(v, 6) for v in want))
                for labels, extra in (("sparse", []), ("one-hot", one_hot_labels)):
                    with self.subTest(args=args, labels=labels):
                        metrics = json.dumps([f"Precision({args})", f"Recall({args})"])
                        r = run(["evaluate", os.path.join(out, "last.ckpt"), "--device", "cpu", "-q", "--set",
                                 f"train.metrics={metrics}"] + extra)
                        self.assertEqual(r.returncode, 0, r.stderr)
                        got = json.loads(r.stdout)
                        self.assertAlmostEqual(got["precision"], want[0], places=6)
                        self.assertAlmostEqual(got["recall"], want[1], places=6)
            self.assertEqual(len(seen), 6)  # every setting counts something else
            # Logits: without a threshold, the softmax's probabilities above 0.5.
            with open(spec) as f:
                text = f.read()
            logits_spec = os.path.join(d, "logits.toml")
            with open(logits_spec, "w") as f:
                f.write(text.replace('activation = "softmax"', 'activation = "linear"')
                        .replace('loss = "sparse_categorical_crossentropy"',
                                 'loss = "sparse_categorical_crossentropy"\nfrom_logits = true')
                        .replace('metrics = ["MeanIoU(num_classes=3, sparse_y_pred=False)", "accuracy"]',
                                 'metrics = ["precision", "recall"]'))
            r = run(["fit", logits_spec, "--device", "cpu", "-q", "--output-dir", os.path.join(d, "logits")],
                    timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            r = subprocess.run([cli_util.TRAINER, "predict", os.path.join(d, "logits", "last.ckpt"),
                                os.path.join(d, "seg_x.npy"), "--probabilities", "--output-format", "npy", "--device",
                                "cpu", "-q"], capture_output=True, timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "q.npy"), "wb") as f:
                f.write(r.stdout)
            logits = np.load(os.path.join(d, "q.npy")).reshape(-1, 3).astype(np.float64)  # the output rows
            q = np.exp(logits - logits.max(1, keepdims=True))
            q /= q.sum(1, keepdims=True)
            r = run(["evaluate", os.path.join(d, "logits", "last.ckpt"), "--device", "cpu", "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            got, want = json.loads(r.stdout), keras_pr(q, onehot)
            self.assertAlmostEqual(got["precision"], want[0], places=5)
            self.assertAlmostEqual(got["recall"], want[1], places=5)
            # A class the output lacks, or more classes than it has, is an input error.
            r = run(["fit", spec, "--device", "cpu", "-q", "--set", 'train.metrics=["Precision(class_id=3)"]'])
            cli_util.assert_input_error(self, r, "class_id=3 names class 3, and the output has 3 classes (0 to 2)")
            r = run(["fit", spec, "--device", "cpu", "-q", "--set", 'train.metrics=["Recall(top_k=4)"]'])
            cli_util.assert_input_error(self, r, "top_k=4 ranks more classes than the output has (3)")


if __name__ == "__main__":
    cli_util.main()
