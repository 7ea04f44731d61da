"""Models of several inputs: a spec with [[model.inputs]] (token ids and features, or an image and features)
trains from an .npz with one array per input or from .npy files named by input, gives the same parameters
on 1 and 2 replicas and after a resume, exports an ONNX model of as many inputs that onnxruntime runs as
`trainer predict` does (one INPUT file per input, or an .npz of arrays named after the inputs); an ONNX model of two inputs (ids and an attention mask)
fine-tunes the same way. Mistakes in the inputs or their data are exit-2 errors naming them."""

import os
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

N, STEPS, VOCAB = 384, 12, 40

SPEC = """format_version = 1
[[model.inputs]]
name = "tokens"
shape = [{steps}]
dtype = "int64"

[[model.inputs]]
name = "meta"
shape = [4]

[[model.layers]]
type = "Embedding"
input_dim = {vocab}
output_dim = 8

[[model.layers]]
type = "GlobalAveragePooling1D"
name = "pooled"

[[model.layers]]
type = "Dense"
name = "meta_dense"
inputs = ["meta"]
units = 8
activation = "relu"

[[model.layers]]
type = "Concatenate"
inputs = ["pooled", "meta_dense"]

[[model.layers]]
type = "Dense"
units = 16
activation = "relu"

[[model.layers]]
type = "Dropout"
rate = 0.1

[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"

[data]
validation_split = 0.25

[data.train]
{data}

[train]
loss = "binary_crossentropy"
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 32
seed = 4

[train.optimizer]
learning_rate = 0.01
"""

NPZ = 'x = "train.npz"'
NPY = 'x = { meta = "meta.npy", tokens = "tokens.npy" }\ny = "y.npy"'


def sigmoid_bce(p, y):
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


class MultiInput(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(11)
        cls.tokens = rng.integers(1, VOCAB, (N, STEPS)).astype(np.int64)
        cls.meta = rng.normal(size=(N, 4)).astype(np.float32)
        # The label needs both inputs: whether token 7 occurs, flipped where the first feature is positive.
        cls.y = ((cls.tokens == 7).any(1) ^ (cls.meta[:, 0] > 0)).astype(np.float32)
        np.savez(cls.path("train.npz"), tokens=cls.tokens, meta=cls.meta, y=cls.y)
        np.save(cls.path("tokens.npy"), cls.tokens)
        np.save(cls.path("meta.npy"), cls.meta)
        np.save(cls.path("y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def spec(self, name, data=NPZ, epochs=25, text=None):
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text if text is not None else SPEC.format(steps=STEPS, vocab=VOCAB, data=data, epochs=epochs))
        return p

    def fit(self, args):
        r = run(["fit"] + args, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout)

    def test_trains_on_both_inputs_from_npz_or_npy(self):
        events = self.fit([self.spec("npz.toml")])
        last = events[-1]
        # Neither input alone predicts the label (each leaves it at chance); together they do.
        self.assertGreater(last["val_accuracy"], 0.75, last)
        self.assertLess(last["val_loss"], 0.5, last)
        # The same arrays given as .npy files by input name train the same run.
        same = self.fit([self.spec("npy.toml", NPY)])[-1]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            self.assertEqual(same[key], last[key], key)

    def test_replicas_and_resume_give_the_same_parameters(self):
        spec = self.spec("dist.toml", text=SPEC.format(steps=STEPS, vocab=VOCAB, data=NPZ, epochs=4) +
                         "\n[train.checkpoint]\nevery_epochs = 1\n")
        self.fit([spec, "--output-dir", self.path("one")])
        self.fit([spec, "--device", "cpu", "--devices", "2", "--output-dir", self.path("two")])
        self.fit(["--resume", self.path("one/epoch-2.ckpt"), "--output-dir", self.path("resumed")])
        one = cli_util.read_checkpoint(self.path("one/last.ckpt"))
        names = [n for n in one if n.endswith(("kernel", "bias", "embeddings"))]
        self.assertGreaterEqual(len(names), 7, sorted(one))
        for other in ("two", "resumed"):
            got = cli_util.read_checkpoint(self.path(f"{other}/last.ckpt"))
            for n in names:
                np.testing.assert_allclose(got[n], one[n], rtol=1e-5, atol=1e-6, err_msg=f"{other}: {n}")

    def test_export_runs_in_onnxruntime_as_predict_does(self):
        import onnxruntime as ort
        self.fit([self.spec("export.toml", epochs=3), "--output-dir", self.path("exp")])
        onnx_path = self.path("two_inputs.onnx")
        r = run(["export", self.path("exp/last.ckpt"), "-o", onnx_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("inputs 'tokens', 'meta'", r.stderr)
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        self.assertEqual([i.name for i in sess.get_inputs()], ["tokens", "meta"])
        tok, meta = self.tokens[:50], self.meta[:50]
        np.save(self.path("p_tokens.npy"), tok)
        np.save(self.path("p_meta.npy"), meta)
        want = sess.run(None, {"tokens": tok, "meta": meta})[0].ravel()
        for model in (self.path("exp/last.ckpt"), onnx_path):
            got = cli_util.predict_rows(self, [model, self.path("p_tokens.npy"), self.path("p_meta.npy")])
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            ids = run(["predict", model, self.path("p_tokens.npy"), self.path("p_meta.npy")])
            self.assertEqual([int(v) for v in ids.stdout.split()], [int(p > 0.5) for p in want])
        # An .npz of arrays named after the inputs (deflated here) is read the same way.
        np.savez_compressed(self.path("p.npz"), meta=meta, tokens=tok)
        got = cli_util.predict_rows(self, [onnx_path, self.path("p.npz")])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        np.savez(self.path("misnamed.npz"), tokens=tok, features=meta)
        cli_util.assert_input_error(self, run(["predict", onnx_path, self.path("misnamed.npz")]),
                                    "no array 'meta'", "name the arrays after the inputs: tokens, meta")
        # One input from stdin: the features piped in, the token ids from a file.
        with open(self.path("p_meta.npy"), "rb") as f:
            got = cli_util.predict_rows(self, [onnx_path, self.path("p_tokens.npy"), "-"], stdin=f)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # One file per input, of equal lengths.
        ckpt = self.path("exp/last.ckpt")
        cli_util.assert_input_error(self, run(["predict", ckpt, self.path("p_tokens.npy")]),
                                    "2 inputs (tokens, meta)", "1 INPUT is given", "tokens.npy meta.npy")
        np.save(self.path("short.npy"), meta[:20])
        cli_util.assert_input_error(self, run(["predict", ckpt, self.path("p_tokens.npy"), self.path("short.npy")]),
                                    "holds 20 samples for input 'meta'")
        cli_util.assert_input_error(self, run(["predict", ckpt, self.path("p_meta.npy"), self.path("p_tokens.npy")]),
                                    "input 'tokens'")
        # NPY output needs every input's length before the first row: a CSV input (here a short one, which left
        # the array short of its header's 50 rows) is refused, whichever input it is.
        np.savetxt(self.path("short.csv"), meta[:20], delimiter=",")
        r = run(["predict", ckpt, self.path("p_tokens.npy"), self.path("short.csv"), "--output-format", "npy"])
        cli_util.assert_input_error(self, r, "short.csv", "NPY output needs the number of samples",
                                    "hint: use --output-format csv")
        self.assertEqual(r.stdout, "")

    def test_an_image_and_features(self):
        # The image input comes second: it is converted from channels-last per input, and exported as NHWC;
        # the third input's Normalization adapts to its own array.
        rng = np.random.default_rng(2)
        img = rng.random((160, 8, 8, 3), dtype=np.float32)
        feat = rng.normal(size=(160, 3)).astype(np.float32)
        y = ((img[:, :4, :, 0].mean((1, 2)) > 0.5) ^ (feat[:, 1] > 0)).astype(np.int64)
        stats = rng.normal(3, 2, size=(160, 2)).astype(np.float32)
        np.savez(self.path("img.npz"), features=feat, pixels=img, stats=stats, labels=y)
        spec = self.spec("img.toml", text="""format_version = 1
[[model.inputs]]
name = "features"
shape = [3]
[[model.inputs]]
name = "pixels"
shape = [8, 8, 3]
[[model.inputs]]
name = "stats"
shape = [2]
[[model.layers]]
type = "Conv2D"
inputs = ["pixels"]
filters = 4
kernel_size = 3
activation = "relu"
[[model.layers]]
type = "Flatten"
name = "flat"
[[model.layers]]
type = "Normalization"
name = "norm"
inputs = ["stats"]
[[model.layers]]
type = "Concatenate"
inputs = ["features", "flat", "norm"]
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data.train]
x = "img.npz"
y_key = "labels"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 32
""")
        self.fit([spec, "--output-dir", self.path("img")])
        ckpt = cli_util.read_checkpoint(self.path("img/last.ckpt"))
        # Normalization adapted on its input, the second of the data's arrays.
        norm = [k for k in ckpt if k.startswith("norm/")]
        means = [ckpt[k] for k in norm if "mean" in k]
        self.assertTrue(means, sorted(ckpt))
        np.testing.assert_allclose(means[0].ravel(), stats.mean(0), rtol=1e-4, atol=1e-5)
        import onnxruntime as ort
        onnx_path = self.path("img.onnx")
        r = run(["export", self.path("img/last.ckpt"), "-o", onnx_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("'pixels' (NHWC)", r.stderr)
        want = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
            None, {"features": feat[:30], "pixels": img[:30], "stats": stats[:30]})[0]
        np.save(self.path("f.npy"), feat[:30])
        np.save(self.path("p.npy"), img[:30])
        np.save(self.path("s.npy"), stats[:30])
        got = cli_util.predict_rows(self, [self.path("img/last.ckpt"), self.path("f.npy"), self.path("p.npy"),
                                           self.path("s.npy")])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_an_onnx_model_of_ids_and_attention_mask_fine_tunes(self):
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
        rng = np.random.default_rng(8)
        emb = numpy_helper.from_array(rng.normal(0, 0.3, (VOCAB, 8)).astype(np.float32), "emb")
        w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 1)).astype(np.float32), "w")
        b = numpy_helper.from_array(np.zeros(1, np.float32), "b")
        one = numpy_helper.from_array(np.array([2], np.int64), "axis2")
        ax1 = numpy_helper.from_array(np.array([1], np.int64), "axis1")
        # Mean of the embeddings where the mask is 1 (padding excluded), then a logistic regression.
        nodes = [
            helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
            helper.make_node("Unsqueeze", ["attention_mask", "axis2"], ["m3"]),
            helper.make_node("Mul", ["e", "m3"], ["em"]),
            helper.make_node("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
            helper.make_node("ReduceSum", ["m3", "axis1"], ["c"], keepdims=0),
            helper.make_node("Div", ["s", "c"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "w"], ["z"]),
            helper.make_node("Add", ["z", "b"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], ["prob"]),
        ]
        graph = helper.make_graph(
            nodes, "masked_pool",
            [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", STEPS]),
             helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["batch", STEPS])],
            [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1])], [emb, w, b, one, ax1])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        onnx_path = self.path("masked.onnx")
        onnx.save(model, onnx_path)
        lengths = rng.integers(3, STEPS + 1, N)
        mask = (np.arange(STEPS)[None, :] < lengths[:, None]).astype(np.float32)
        ids = np.where(mask > 0, self.tokens, 0)
        # The label: whether token 7 occurs in the unpadded part.
        y = ((ids == 7) & (mask > 0)).any(1).astype(np.float32)
        np.savez(self.path("masked.npz"), input_ids=ids, attention_mask=mask, y=y)
        train = self.spec("masked_train.toml", text="""format_version = 1
[data.train]
x = "masked.npz"
[train]
loss = "binary_crossentropy"
metrics = ["accuracy"]
epochs = 15
batch_size = 32
[train.optimizer]
learning_rate = 0.05
""")
        before = sigmoid_bce(ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids, "attention_mask": mask})[0].ravel(), y)
        events = self.fit([onnx_path, "--train", train, "--output-dir", self.path("masked")])
        self.assertLess(events[-1]["loss"], before * 0.8, (before, events[-1]))
        out = self.path("masked_out.onnx")
        r = run(["export", self.path("masked/last.ckpt"), "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        want = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(
            None, {"input_ids": ids[:40], "attention_mask": mask[:40]})[0].ravel()
        self.assertLess(sigmoid_bce(want, y[:40]), before)
        np.save(self.path("ids.npy"), ids[:40])
        np.save(self.path("mask.npy"), mask[:40])
        got = cli_util.predict_rows(self, [self.path("masked/last.ckpt"), self.path("ids.npy"), self.path("mask.npy")])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # The loader's scaling is for a model of one input.
        r = run(["fit", onnx_path, "--train", train, "--set", "data.scale=0.5"])
        cli_util.assert_input_error(self, r, "apply to a model of one input", "input_ids, attention_mask")
        # The data must give each of the model's inputs.
        np.savez(self.path("no_mask.npz"), input_ids=ids, y=y)
        r = run(["fit", onnx_path, "--train", train, "--set", "data.train.x=no_mask.npz"])
        cli_util.assert_input_error(self, r, "attention_mask")

    def test_a_vector_merges_with_every_step_of_a_sequence(self):
        # As Keras's merges: (None, 3) takes 1s after the batch axis, (None, 1, 3), and scales each step's features
        # of (None, 5, 3); a Dense of ones then sums them, which numpy checks (the labels are those sums: the loss
        # is 0 from the start, and training leaves the weights as they are).
        rng = np.random.default_rng(3)
        seq, vec = rng.normal(size=(16, 5, 3)).astype(np.float32), rng.normal(size=(16, 3)).astype(np.float32)
        want = (seq * vec[:, None, :]).sum(axis=(1, 2))
        np.savez(self.path("merge.npz"), seq=seq, vec=vec, y=want[:, None])
        spec = self.spec("merge.toml", text=f"""format_version = 1
[[model.inputs]]
name = "seq"
shape = [5, 3]
[[model.inputs]]
name = "vec"
shape = [3]
[[model.layers]]
type = "Multiply"
inputs = ["seq", "vec"]
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 1
kernel_initializer = "ones"
[data.train]
x = "{self.path("merge.npz")}"
[train]
loss = "mse"
epochs = 1
batch_size = 8
[train.optimizer]
name = "sgd"
learning_rate = 0.01
""")
        self.fit([spec, "--device", "cpu", "-q", "--output-dir", self.path("merge")])
        np.save(self.path("m_seq.npy"), seq)
        np.save(self.path("m_vec.npy"), vec)
        got = cli_util.predict_rows(self, [self.path("merge/last.ckpt"), self.path("m_seq.npy"), self.path("m_vec.npy")])
        np.testing.assert_allclose(got.ravel(), want, rtol=1e-5, atol=1e-5)

    def test_inputs_may_take_the_names_the_loss_uses(self):
        # "labels" and "sample_weight" are names of the loss graph's own inputs too.
        text = SPEC.format(steps=STEPS, vocab=VOCAB, data=NPZ, epochs=1).replace('"meta"', '"labels"')
        np.savez(self.path("labels.npz"), tokens=self.tokens, labels=self.meta, y=self.y)
        self.fit([self.spec("labels.toml", text=text.replace('"train.npz"', '"labels.npz"'))])

    def test_mistakes_are_named(self):
        base = SPEC.format(steps=STEPS, vocab=VOCAB, data=NPZ, epochs=1)
        cases = [
            # An input that no layer takes.
            (base.replace('inputs = ["meta"]\n', ""), ["input 'meta' is not used"]),
            # A layer named like an input.
            (base.replace('name = "pooled"', 'name = "meta"').replace('"pooled", "meta_dense"', '"meta", "meta_dense"'),
             ["'meta' is the name of a model input"]),
            # x naming an input the model lacks, or missing one.
            (base.replace(NPZ, 'x = { tokens = "tokens.npy", metta = "meta.npy" }\ny = "y.npy"'),
             ["x names 'metta'", "did you mean 'meta'? the model's inputs: tokens, meta"]),
            (base.replace(NPZ, 'x = { tokens = "tokens.npy" }\ny = "y.npy"'), ["no files for the model's input 'meta'"]),
            # One .npy for a model of two inputs.
            (base.replace(NPZ, 'x = "tokens.npy"\ny = "y.npy"'), ["2 inputs (tokens, meta)", "x = { tokens ="]),
            # An array the .npz lacks.
            (base.replace(NPZ, 'x = "train.npz"\nx_key = { meta = "features" }'), ["features"]),
            # The loader's scaling is for one input.
            (base.replace("[data]\n", "[data]\nscale = 0.5\n"), ["data.scale applies to a model of one input"]),
            # Both forms of the input.
            (base.replace("[[model.inputs]]\nname = \"tokens\"", "[model]\ninput = [3]\n\n[[model.inputs]]\nname = \"tokens\"", 1),
             ["model.input and [[model.inputs]]"]),
            # A named input without a name.
            (base.replace('name = "tokens"\n', ""), ["model.inputs[0] has no name"]),
            # Samples of the wrong shape for an input.
            (base.replace("shape = [4]", "shape = [5]"), ["input 'meta' is [5]"]),
        ]
        for i, (text, needles) in enumerate(cases):
            with self.subTest(case=i):
                cli_util.assert_input_error(self, run(["fit", self.spec(f"bad{i}.toml", text=text)]), *needles)


if __name__ == "__main__":
    cli_util.main()
