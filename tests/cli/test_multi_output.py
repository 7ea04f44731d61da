"""Models of several outputs: `[model] outputs` names the output layers, and [train]'s loss, metrics,
from_logits, label_smoothing and loss_weights are tables by output name, as Keras's compile takes dicts. The run
reports loss (the weighted sum), NAME_loss and NAME_METRIC as Keras does, from labels in an .npz (arrays named
after the outputs) or .npy files by output; evaluate's numbers are numpy's on predict's outputs; 1 and 2
replicas and a resume give the same parameters; export writes one ONNX output per output, which onnxruntime
runs as `trainer predict --output NAME` does. Mistakes are exit-2 errors naming the output."""

import os
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

N = 480

SPEC = """format_version = 1
[model]
input = [8]
outputs = ["digit", "parity", "level"]

[[model.layers]]
type = "Dense"
name = "shared"
units = 32
activation = "relu"

[[model.layers]]
type = "Dense"
name = "digit"
inputs = ["shared"]
units = 4
activation = "softmax"

[[model.layers]]
type = "Dense"
name = "parity"
inputs = ["shared"]
units = 1
{parity_activation}

[[model.layers]]
type = "Dense"
name = "level"
inputs = ["shared"]
units = 2

[data]
validation_split = 0.25

[data.train]
{data}

[train]
loss = {{ digit = "sparse_categorical_crossentropy", parity = "binary_crossentropy", level = "mse" }}
{from_logits}metrics = {{ digit = ["accuracy"], parity = ["accuracy", "auc"], level = ["mae", "r2_score"] }}
loss_weights = {{ digit = 1.0, parity = {parity_weight}, level = 0.25 }}
epochs = {epochs}
batch_size = 40
seed = 3

[train.optimizer]
learning_rate = 0.01
"""

NPZ = 'x = "train.npz"'
NPY = 'x = "x.npy"\ny = { level = "level.npy", digit = "digit.npy", parity = "parity.npy" }'


def sparse_ce(p, y):
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


class MultiOutput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(5)
        cls.x = rng.normal(size=(N, 8)).astype(np.float32)
        cls.digit = np.argmax(cls.x[:, :4], axis=1).astype(np.int64)
        cls.parity = (cls.x[:, 4] + cls.x[:, 5] > 0).astype(np.float32)
        cls.level = np.stack([cls.x[:, 6] - cls.x[:, 7], 0.5 * cls.x[:, 6]], axis=1).astype(np.float32)
        cls.save_npz("train.npz")
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("digit.npy"), cls.digit)
        np.save(cls.path("parity.npy"), cls.parity)
        np.save(cls.path("level.npy"), cls.level)

    @classmethod
    def save_npz(cls, name, **changes):
        arrays = dict(x=cls.x, digit=cls.digit, parity=cls.parity, level=cls.level)
        arrays.update(changes)
        np.savez(cls.path(name), **arrays)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def text(self, data=NPZ, epochs=20, parity_weight="0.5", logits=False):
        return SPEC.format(data=data, epochs=epochs, parity_weight=parity_weight,
                           parity_activation="" if logits else 'activation = "sigmoid"',
                           from_logits="from_logits = { parity = true }\n" if logits else "")

    def spec(self, name, text=None, **kw):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text if text is not None else self.text(**kw))
        return p

    def fit(self, args):
        r = run(["fit"] + args, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout)

    def test_each_output_trains_and_is_reported_by_name(self):
        events = self.fit([self.spec("npz.toml")])
        last = events[-1]
        for prefix in ("", "val_"):
            for key in ("loss", "digit_loss", "parity_loss", "level_loss", "digit_accuracy", "parity_accuracy",
                        "parity_auc", "level_mae"):
                cli_util.assert_finite_number(self, last, prefix + key)
            # The loss that trains is the weighted sum of the outputs' losses.
            want = last[prefix + "digit_loss"] + 0.5 * last[prefix + "parity_loss"] + 0.25 * last[prefix + "level_loss"]
            self.assertAlmostEqual(last[prefix + "loss"], want, delta=1e-5 * want)
        self.assertNotIn("accuracy", last)
        self.assertGreater(last["val_digit_accuracy"], 0.8, last)
        self.assertGreater(last["val_parity_accuracy"], 0.8, last)
        self.assertLess(last["val_level_mae"], 0.3, last)
        # The same arrays as .npy files by output train the same run.
        same = self.fit([self.spec("npy.toml", data=NPY)])[-1]
        for key in ("loss", "digit_loss", "parity_auc", "val_level_mae"):
            self.assertEqual(same[key], last[key], key)
        # Keras's lists in the outputs' order (model.compile(loss=[...], metrics=[[...], ...])) are the same run.
        text = self.text()
        text = text.replace('loss = { digit = "sparse_categorical_crossentropy", parity = "binary_crossentropy", '
                            'level = "mse" }', 'loss = ["sparse_categorical_crossentropy", "binary_crossentropy", "mse"]')
        text = text.replace('metrics = { digit = ["accuracy"], parity = ["accuracy", "auc"], level = ["mae", "r2_score"] }',
                            'metrics = [["accuracy"], ["accuracy", "auc"], ["mae", "r2_score"]]')
        self.assertNotIn("digit =", text.split("[train]")[1].split("loss_weights")[0])
        # label_smoothing of 0 is every loss's, so a list gives it to the outputs whose loss takes none.
        text = text.replace("[train]\n", "[train]\nlabel_smoothing = [0.0, 0.0, 0.0]\n")
        listed = self.fit([self.spec("lists.toml", text=text)])[-1]
        for key in ("loss", "digit_loss", "parity_auc", "val_level_mae"):
            self.assertEqual(listed[key], last[key], key)

    def test_evaluate_is_numpy_on_predicts_outputs(self):
        self.fit([self.spec("eval.toml", epochs=3), "--output-dir", self.path("eval")])
        ckpt = self.path("eval/last.ckpt")
        r = run(["evaluate", ckpt])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = cli_util.json_lines(self, r.stdout)[-1]
        held = slice(N - N // 4, N)  # validation_split's samples
        np.save(self.path("val_x.npy"), self.x[held])
        rows = {name: cli_util.predict_rows(self, [ckpt, self.path("val_x.npy"), "--output", name], ndmin=2)
                for name in ("digit", "parity", "level")}
        digit = sparse_ce(rows["digit"], self.digit[held])
        parity = bce(rows["parity"].ravel(), self.parity[held])
        level = float(np.mean((rows["level"] - self.level[held]) ** 2))
        for key, want in (("digit_loss", digit), ("parity_loss", parity), ("level_loss", level),
                          ("loss", digit + 0.5 * parity + 0.25 * level)):
            self.assertAlmostEqual(got[key], want, delta=2e-5 * max(1, want), msg=key)
        acc = float(np.mean(rows["digit"].argmax(1) == self.digit[held]))
        self.assertAlmostEqual(got["digit_accuracy"], acc, places=6)
        # Keras's R2Score averages the columns' scores (uniform_average).
        yl = self.level[held]
        r2 = 1 - ((yl - rows["level"]) ** 2).sum(0) / ((yl - yl.mean(0)) ** 2).sum(0)
        self.assertAlmostEqual(got["level_r2_score"], float(r2.mean()), places=5)
        self.assertNotAlmostEqual(r2[0], r2[1], places=3)
        # Without --output, predict writes the first output's class ids.
        ids = run(["predict", ckpt, self.path("val_x.npy")])
        self.assertEqual(ids.returncode, 0, ids.stderr)
        self.assertIn("its output 'digit' of digit, parity, level", ids.stderr)
        self.assertEqual([int(v) for v in ids.stdout.split()], list(rows["digit"].argmax(1)))

    def test_replicas_and_resume_give_the_same_parameters(self):
        spec = self.spec("dist.toml", text=self.text(epochs=4, logits=True) + "\n[train.checkpoint]\nevery_epochs = 1\n")
        one = self.fit([spec, "--output-dir", self.path("one")])[-1]
        two = self.fit([spec, "--device", "cpu", "--devices", "2", "--output-dir", self.path("two")])[-1]
        self.fit(["--resume", self.path("one/epoch-2.ckpt"), "--output-dir", self.path("resumed")])
        for key in ("val_digit_loss", "val_parity_auc", "val_level_mae"):
            self.assertAlmostEqual(two[key], one[key], delta=1e-5 * max(1, abs(one[key])), msg=key)
        want = cli_util.read_checkpoint(self.path("one/last.ckpt"))
        names = [n for n in want if n.endswith(("kernel", "bias"))]
        self.assertEqual(len(names), 8, sorted(want))
        for other in ("two", "resumed"):
            got = cli_util.read_checkpoint(self.path(f"{other}/last.ckpt"))
            for n in names:
                np.testing.assert_allclose(got[n], want[n], rtol=1e-5, atol=1e-6, err_msg=f"{other}: {n}")

    def test_sample_weights_by_output_weigh_only_their_output(self):
        # Keras's sample_weight by output name: parity's loss weighs each sample, digit's and level's do not.
        rng = np.random.default_rng(9)
        w = np.where(rng.random(N) < 0.3, 0.0, rng.uniform(0.5, 2.0, N)).astype(np.float32)
        self.save_npz("weighted.npz", w_parity=w)
        spec = self.spec("weighted.toml", data='x = "weighted.npz"\nsample_weight_key = { parity = "w_parity" }',
                         epochs=3)
        self.fit([spec, "--output-dir", self.path("weighted")])
        ckpt = self.path("weighted/last.ckpt")
        r = run(["evaluate", ckpt])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = cli_util.json_lines(self, r.stdout)[-1]
        held = slice(N - N // 4, N)
        np.save(self.path("w_x.npy"), self.x[held])
        rows = {name: cli_util.predict_rows(self, [ckpt, self.path("w_x.npy"), "--output", name], ndmin=2)
                for name in ("digit", "parity")}
        p = np.clip(rows["parity"].ravel(), 1e-7, 1 - 1e-7)
        y = self.parity[held]
        parity = float(np.mean(w[held] * -(y * np.log(p) + (1 - y) * np.log(1 - p))))
        self.assertAlmostEqual(got["parity_loss"], parity, delta=2e-5)
        self.assertAlmostEqual(got["digit_loss"], sparse_ce(rows["digit"], self.digit[held]), delta=2e-5)
        # Samples of parity weight 0 train nothing through parity: flipping their parity labels changes no
        # parameter.
        flipped = np.where(w == 0, 1 - self.parity, self.parity)
        self.save_npz("weighted_flipped.npz", w_parity=w, parity=flipped)
        spec = self.spec("weighted_flipped.toml",
                         data='x = "weighted_flipped.npz"\nsample_weight_key = { parity = "w_parity" }', epochs=3)
        self.fit([spec, "--output-dir", self.path("weighted_flipped")])
        a = cli_util.read_checkpoint(ckpt)
        b = cli_util.read_checkpoint(self.path("weighted_flipped/last.ckpt"))
        for n in a:
            if n.endswith(("kernel", "bias")):
                np.testing.assert_array_equal(a[n], b[n], err_msg=n)
        # Files by output name, and names that are not outputs.
        np.save(self.path("w_parity.npy"), w)
        same = self.fit([self.spec("weighted_npy.toml", data=NPY + '\nsample_weight = { parity = "w_parity.npy" }',
                                   epochs=3)])[-1]
        self.assertIn("parity_loss", same)
        bad = self.spec("weighted_bad.toml", data=NPY + '\nsample_weight = { parityy = "w_parity.npy" }')
        cli_util.assert_input_error(self, run(["fit", bad]), "sample_weight names 'parityy'", "did you mean 'parity'")
        one = self.spec("weighted_one.toml", text=self.text().replace('outputs = ["digit", "parity", "level"]', "")
                        .replace("[data.train]\nx", "[data.train]\nsample_weight = { parity = \"w_parity.npy\" }\nx"))
        cli_util.assert_input_error(self, run(["fit", one]), "sample weights by output name are for a model of several")

    def test_a_zero_loss_weight_makes_the_outputs_labels_irrelevant(self):
        # With parity's weight 0 its labels change nothing that trains (its own layer keeps its initial weights
        # under Adam), so flipping them leaves every parameter bit-identical; its loss is still reported.
        self.save_npz("flipped.npz", parity=1 - self.parity)
        runs = []
        for data in ("train.npz", "flipped.npz"):
            out = self.path(f"zero_{data}")
            events = self.fit([self.spec(f"zero_{data}.toml", data=f'x = "{data}"', epochs=2, parity_weight="0"),
                               "--output-dir", out])
            runs.append((events[-1], cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))))
        (a, pa), (b, pb) = runs
        self.assertNotEqual(a["parity_loss"], b["parity_loss"])
        self.assertEqual(a["loss"], b["loss"])
        for n in pa:
            if n.endswith(("kernel", "bias")):
                np.testing.assert_array_equal(pa[n], pb[n], err_msg=n)

    def test_export_has_one_onnx_output_per_output(self):
        import onnxruntime as ort
        self.fit([self.spec("export.toml", epochs=2, logits=True), "--output-dir", self.path("exp")])
        ckpt, onnx_path = self.path("exp/last.ckpt"), self.path("three.onnx")
        r = run(["export", ckpt, "-o", onnx_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.assertEqual([o.name for o in sess.get_outputs()], ["digit", "parity", "level"])
        x = self.x[:50]
        np.save(self.path("p_x.npy"), x)
        want = dict(zip(["digit", "parity", "level"], sess.run(None, {"input": x})))
        for model in (ckpt, onnx_path):
            for name in ("digit", "parity", "level"):
                got = cli_util.predict_rows(self, [model, self.path("p_x.npy"), "--output", name], ndmin=2)
                np.testing.assert_allclose(got, want[name].reshape(got.shape), rtol=1e-5, atol=1e-6,
                                           err_msg=f"{model}: {name}")
        # --output all: every output's values side by side in each row, as CSV or NPY, or their class ids.
        both = np.concatenate([want[n].reshape(50, -1) for n in ("digit", "parity", "level")], axis=1)
        for model in (ckpt, onnx_path):
            np.testing.assert_allclose(cli_util.predict_rows(self, [model, self.path("p_x.npy"), "--output", "all"]),
                                       both, rtol=1e-5, atol=1e-6, err_msg=model)
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, self.path("p_x.npy"), "--output", "all",
                            "--probabilities", "--output-format", "npy", "-q"], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(self.path("all.npy"), "wb") as f:
            f.write(r.stdout)
        np.testing.assert_allclose(np.load(self.path("all.npy")), both, rtol=1e-5, atol=1e-6)
        # Class ids of the classifications beside the values of the regression (level, trained with mse: its
        # argmax was written as a class id).
        ids = run(["predict", ckpt, self.path("p_x.npy"), "--output", "all"])
        self.assertIn("its outputs digit, parity, level, side by side", ids.stderr)
        self.assertIn("output 'level' was trained with mse (a regression): writing its output values", ids.stderr)
        got = np.loadtxt(ids.stdout.splitlines(), delimiter=",", dtype=np.float64)
        self.assertEqual(got.shape, (50, 4))
        np.testing.assert_array_equal(got[:, 0], want["digit"].argmax(1))
        np.testing.assert_array_equal(got[:, 1], (want["parity"].ravel() > 0).astype(np.int64))
        np.testing.assert_allclose(got[:, 2:], want["level"].reshape(50, 2), rtol=1e-5, atol=1e-6)
        self.assertNotIn(".", ids.stdout.split(",")[0])  # an id reads as an integer
        # A model trained on parity's logits decides at 0.
        ids = run(["predict", ckpt, self.path("p_x.npy"), "--output", "parity"])
        self.assertEqual([int(v) for v in ids.stdout.split()], [int(v > 0) for v in want["parity"].ravel()])
        cli_util.assert_input_error(self, run(["predict", ckpt, self.path("p_x.npy"), "--output", "parit"]),
                                    "no output 'parit'", "digit, parity, level", "did you mean 'parity'")
        r = run(["summary", self.spec("summary.toml"), "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        outputs = cli_util.json_lines(self, r.stdout)[0]["outputs"]
        self.assertEqual(outputs, [{"name": "digit", "shape": [4]}, {"name": "parity", "shape": [1]},
                                   {"name": "level", "shape": [2]}])

    def test_monitors_take_the_outputs_names(self):
        text = self.text(epochs=30) + "\n[train.early_stopping]\nmonitor = \"val_digit_accuracy\"\npatience = 0\n"
        events = self.fit([self.spec("stop.toml", text=text)])
        self.assertTrue(events[-1]["stopped_early"], events[-1])
        # An output's AUC is maximized, its loss minimized (mode auto looks past the output's name).
        text = self.text(epochs=6) + "\n[train.checkpoint]\nsave_best = \"val_parity_auc\"\n"
        events = [e for e in self.fit([self.spec("best.toml", text=text), "--output-dir", self.path("best")])
                  if e.get("event") == "epoch"]
        aucs = [e["val_parity_auc"] for e in events]
        self.assertNotEqual(max(aucs), min(aucs), aucs)
        r = run(["evaluate", self.path("best/best.ckpt")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertAlmostEqual(cli_util.json_lines(self, r.stdout)[-1]["parity_auc"], max(aucs), places=6)
        bad = self.text() + "\n[train.early_stopping]\nmonitor = \"val_accuracy\"\n"
        cli_util.assert_input_error(self, run(["fit", self.spec("stop_bad.toml", text=bad)]),
                                    "'val_accuracy' is not a reported quantity")

    def test_an_onnx_model_of_two_outputs_trains_both(self):
        try:
            import onnx
            import onnxruntime as ort
            from onnx import TensorProto, helper, numpy_helper
        except ImportError:  # pragma: no cover - install-deps installs them
            self.skipTest("onnx and onnxruntime are not installed")
        rng = np.random.default_rng(8)
        init = [numpy_helper.from_array(rng.normal(0, 0.4, (8, 16)).astype(np.float32), "trunk.weight"),
                numpy_helper.from_array(np.zeros(16, np.float32), "trunk.bias"),
                numpy_helper.from_array(rng.normal(0, 0.4, (16, 4)).astype(np.float32), "cls.weight"),
                numpy_helper.from_array(np.zeros(4, np.float32), "cls.bias"),
                numpy_helper.from_array(rng.normal(0, 0.4, (16, 1)).astype(np.float32), "score.weight"),
                numpy_helper.from_array(np.zeros(1, np.float32), "score.bias")]
        nodes = [helper.make_node("Gemm", ["x", "trunk.weight", "trunk.bias"], ["h"]),
                 helper.make_node("Relu", ["h"], ["trunk"]),
                 helper.make_node("Gemm", ["trunk", "cls.weight", "cls.bias"], ["class_logits"]),
                 helper.make_node("Gemm", ["trunk", "score.weight", "score.bias"], ["s"]),
                 helper.make_node("Sigmoid", ["s"], ["score"]),
                 helper.make_node("Squeeze", ["score", "one"], ["score_flat"])]
        init.append(numpy_helper.from_array(np.array([1], np.int64), "one"))
        outputs = [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["batch", 4]),
                   helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])]
        model = helper.make_model(
            helper.make_graph(nodes, "two_heads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              outputs, init), opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        onnx_path = self.path("two_heads.onnx")
        onnx.save(model, onnx_path)
        np.savez(self.path("heads.npz"), x=self.x, class_logits=self.digit, score=self.parity)
        train = """format_version = 1
[model]
outputs = ["class_logits", "score"]
[data]
validation_split = 0.25
[data.train]
x = "heads.npz"
[train]
loss = { class_logits = "sparse_categorical_crossentropy", score = "binary_crossentropy" }
%smetrics = { class_logits = ["accuracy"], score = ["auc"] }
epochs = 15
batch_size = 40
[train.optimizer]
learning_rate = 0.01
"""
        # Cross-entropy on the logits output needs from_logits for that output.
        cli_util.assert_input_error(self, run(["fit", onnx_path, "--train", self.spec("heads_bad.toml", text=train % "")]),
                                    "'class_logits' comes from a Gemm node", "from_logits = { class_logits = true }")
        one = self.spec("heads_one.toml", text=(
            "format_version = 1\n[data.train]\nx = \"heads.npz\"\ny_key = \"score\"\n"
            "[train]\nloss = \"binary_crossentropy\"\n"))
        cli_util.assert_input_error(self, run(["fit", onnx_path, "--train", one]),
                                    "2 graph outputs ('class_logits', 'score')", "[model] outputs")
        spec = self.spec("heads.toml", text=train % "from_logits = { class_logits = true }\n")
        last = self.fit([onnx_path, "--train", spec, "--output-dir", self.path("heads")])[-1]
        self.assertGreater(last["val_class_logits_accuracy"], 0.8, last)
        self.assertGreater(last["val_score_auc"], 0.9, last)
        # A further output whose shape does not fit its loss is named.
        flat = self.spec("heads_flat.toml", text=(train % "from_logits = { class_logits = true }\n")
                         .replace('"score"]', '"score_flat"]').replace("score = ", "score_flat = ")
                         .replace('score_flat = "binary_crossentropy"', 'score_flat = "sparse_categorical_crossentropy"')
                         .replace("score_flat = [\"auc\"]", "score_flat = [\"accuracy\"]"))
        np.savez(self.path("heads_flat.npz"), x=self.x, class_logits=self.digit, score_flat=self.digit)
        with open(flat) as f:
            text = f.read().replace('"heads.npz"', '"heads_flat.npz"')
        with open(flat, "w") as f:
            f.write(text)
        cli_util.assert_input_error(self, run(["fit", onnx_path, "--train", flat]),
                                    "sparse_categorical_crossentropy needs an output of [batch, classes]",
                                    "(the output 'score_flat')", "heads_flat.toml:9:")
        # Keras layers of two outputs on the ONNX model's trunk.
        head = ('format_version = 1\n[model]\noutput = "trunk"\noutputs = ["a", "b"]\n'
                '[[model.layers]]\ntype = "Dense"\nname = "a"\nunits = 4\nactivation = "softmax"\ninputs = ["onnx"]\n'
                '[[model.layers]]\ntype = "Dense"\nname = "b"\nunits = 1\nactivation = "sigmoid"\ninputs = ["onnx"]\n'
                '[data.train]\nx = "heads_ab.npz"\n[train]\nloss = { a = "sparse_categorical_crossentropy", '
                'b = "binary_crossentropy" }\nmetrics = { a = ["accuracy"], b = ["accuracy"] }\nepochs = 10\n'
                'batch_size = 40\n[train.optimizer]\nlearning_rate = 0.01\n')
        np.savez(self.path("heads_ab.npz"), x=self.x, a=self.digit, b=self.parity)
        last = self.fit([onnx_path, "--train", self.spec("heads_ab.toml", text=head)])[-1]
        self.assertGreater(last["a_accuracy"], 0.8, last)
        self.assertGreater(last["b_accuracy"], 0.8, last)
        exported = self.path("heads_trained.onnx")
        r = run(["export", self.path("heads/last.ckpt"), "-o", exported])
        self.assertEqual(r.returncode, 0, r.stderr)
        sess = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
        self.assertEqual([o.name for o in sess.get_outputs()], ["class_logits", "score"])
        np.save(self.path("heads_x.npy"), self.x[:40])
        want = sess.run(None, {"x": self.x[:40]})
        for k, name in enumerate(("class_logits", "score")):
            got = cli_util.predict_rows(self, [self.path("heads/last.ckpt"), self.path("heads_x.npy"), "--output", name],
                                        ndmin=2)
            np.testing.assert_allclose(got, want[k].reshape(got.shape), rtol=1e-5, atol=1e-6, err_msg=name)

    def test_mistakes_are_named(self):
        base = self.text(epochs=1)
        np.savez(self.path("no_parity.npz"), x=self.x, digit=self.digit, level=self.level)
        self.save_npz("bad_digit.npz", digit=np.where(np.arange(N) == 7, 9, self.digit))
        self.save_npz("bad_level.npz", level=self.level[:, :1])
        cases = [
            # An output that is not a layer; an unused layer not listed as an output.
            (base.replace('name = "level"', 'name = "lvl"'), ["model.outputs names 'level', which is not a layer"]),
            (base.replace('"parity", "level"]', '"parity", "levels"]'),
             ["train.loss names 'level', which model.outputs does not list (digit, parity, levels)",
              "did you mean 'levels'"]),
            (base.replace('outputs = ["digit", "parity", "level"]', 'outputs = ["digit", "parity"]')
                 .replace(', level = "mse"', "").replace(', level = ["mae", "r2_score"]', "").replace(", level = 0.25", ""),
             ["the output of layer 'level' is not used", "[model] outputs"]),
            # A loss table that misses an output, or names one the model lacks.
            (base.replace(', level = "mse"', ""), ["train.loss gives no loss for the output 'level'"]),
            (base.replace('level = "mse"', 'level = "mse", levle = "mae"'), ["train.loss names 'levle'"]),
            # A metric that does not fit its output's loss.
            (base.replace('digit = ["accuracy"]', 'digit = ["auc"]'), ["metric 'auc' is a binary"]),
            (base.replace("loss_weights = { digit = 1.0, parity = 0.5, level = 0.25 }", "loss_weights = [1.0, 0.5]"),
             ["train.loss_weights has 2 weights, and the model has 3 outputs"]),
            (base.replace("[train]\n", "[train]\nclass_weight = [1.0, 2.0]\n"), ["class_weight weighs the classes of a model of one output"]),
            # Tables by output name in a model of one output.
            (base.replace('outputs = ["digit", "parity", "level"]\n', ""), ["[model] outputs lists none"]),
            # Labels: y naming one set of .npy files, an output without labels, labels out of range.
            (base.replace(NPZ, 'x = "x.npy"\ny = "digit.npy"'), ["3 outputs (digit, parity, level)", "y = { digit ="]),
            (base.replace(NPZ, 'x = "x.npy"\ny = { digit = "digit.npy", level = "level.npy" }'),
             ["no label files for the model's output 'parity'"]),
            (base.replace(NPZ, 'x = "no_parity.npz"'), ["parity", "the labels of the model's output 'parity'"]),
            (base.replace(NPZ, 'x = "bad_digit.npz"'), ["label 9 is out of range for 4 classes"]),
            (base.replace("validation_split = 0.25", "[data.validation]\nx = \"bad_level.npz\""),
             ["mse (the output 'level') compares the output [2] with a label of the same shape"]),
            (base.replace(NPZ, 'x = "train.npz"\ny_key = "digit"'), ["y_key names one array, 'digit'"]),
            (base.replace('"parity", "level"]', '"parity", "val_level"]'), ["model.outputs names 'val_level'"]),
            (base.replace(NPZ, 'x = "train.npz"\ny_key = { parity = "level" }'),
             ["binary_crossentropy (the output 'parity') needs one label per sample"]),
            # Keras's lists by output: one value per output, every element checked as the table's would be.
            (base.replace('loss = { digit = "sparse_categorical_crossentropy", parity = "binary_crossentropy", '
                          'level = "mse" }', 'loss = ["sparse_categorical_crossentropy", "mse"]'),
             ["train.loss lists 2 values for the 3 outputs (digit, parity, level)", "hint: give one per output"]),
            (base.replace('loss = { digit = "sparse_categorical_crossentropy", parity = "binary_crossentropy", '
                          'level = "mse" }', 'loss = ["sparse_categorical_crossentropy", { x = 1 }, "mse"]'),
             ["train.loss.parity must be a string, not a table"]),
            (base.replace('metrics = { digit = ["accuracy"], parity = ["accuracy", "auc"], level = ["mae", "r2_score"] }',
                          'metrics = [["accuracy"], "accuracy", ["mae"]]'),
             ["train.metrics mixes lists by output with names"]),
        ]
        for i, (text, needles) in enumerate(cases):
            with self.subTest(case=i):
                cli_util.assert_input_error(self, run(["fit", self.spec(f"bad{i}.toml", text=text)]), *needles)


if __name__ == "__main__":
    cli_util.main()
