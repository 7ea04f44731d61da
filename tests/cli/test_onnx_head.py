"""Layers in Keras's vocabulary on top of an ONNX model: a new head on a pretrained network. A frozen
convolutional backbone (channels-first feature maps) under GlobalAveragePooling2D and Dense trains its head
only and exports as one ONNX model that onnxruntime runs as `trainer predict` does; model.output cuts a
classifier at its hidden features (or picks one of its outputs); `trainer fit MODEL.onnx
--train FILE` takes the head from FILE, on features that keep training, the same on 1 and 2 replicas; layer
names that would collide with the ONNX model's values, and an input beside onnx, are errors."""

import os
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

try:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - install-deps installs them
    onnx = None


@unittest.skipIf(onnx is None, "onnx and onnxruntime are not installed")
class OnnxHead(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(5)
        cls.img = rng.random((256, 8, 8, 3), dtype=np.float32)  # stored channels last
        cls.y = (cls.img[..., 0].mean((1, 2)) > cls.img[..., 1].mean((1, 2))).astype(np.int64)
        np.savez(cls.path("images.npz"), x=cls.img, y=cls.y)
        # A convolutional backbone whose output is the feature map [N, 6, 8, 8].
        cls.conv_w = rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Conv", ["pixels", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1]),
                 helper.make_node("Relu", ["c"], ["features"])]
        cls.save_model("conv.onnx", nodes, [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                          ["batch", 3, 8, 8])],
                       helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 6, 8, 8]),
                       [numpy_helper.from_array(cls.conv_w, "conv.weight"),
                        numpy_helper.from_array(np.zeros(6, np.float32), "conv.bias")])
        # A feature extractor [N, 10] -> [N, 16] whose weights carry a trainer-style name.
        cls.x = rng.normal(size=(256, 10)).astype(np.float32)
        cls.t = (cls.x[:, 0] * cls.x[:, 1] > 0).astype(np.float32)
        np.savez(cls.path("vectors.npz"), x=cls.x, y=cls.t)
        nodes = [helper.make_node("Gemm", ["x", "dense/kernel", "dense/bias"], ["h"]),
                 helper.make_node("Tanh", ["h"], ["embedding"])]
        cls.save_model("mlp.onnx", nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
                       helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 16]),
                       [numpy_helper.from_array(rng.normal(0, 0.4, (10, 16)).astype(np.float32), "dense/kernel"),
                        numpy_helper.from_array(np.zeros(16, np.float32), "dense/bias")])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    @classmethod
    def save_model(cls, name, nodes, inputs, output, initializers):
        model = helper.make_model(helper.make_graph(nodes, name, inputs, [output], initializers),
                                  opset_imports=[helper.make_opsetid("", 13)])
        onnx.checker.check_model(model)
        onnx.save(model, cls.path(name))

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def fit(self, args):
        r = run(["fit"] + args, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"]

    def test_a_head_on_a_frozen_convolutional_backbone(self):
        spec = self.write("head.toml", """format_version = 1
[model]
onnx = "conv.onnx"
freeze = ["conv.*"]
[[model.layers]]
type = "GlobalAveragePooling2D"
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data.train]
x = "images.npz"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 15
batch_size = 32
[train.optimizer]
learning_rate = 0.05
""")
        r = run(["summary", spec])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("GlobalAveragePooling2D", r.stdout)
        self.assertIn("14 trainable, 168 non-trainable", r.stdout)
        epochs = self.fit([spec, "--output-dir", self.path("conv_run")])
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"] - 0.02, [e["loss"] for e in epochs])
        ckpt = self.path("conv_run/last.ckpt")
        trained = cli_util.read_checkpoint(ckpt)
        self.assertIn("dense/kernel", trained)
        self.assertNotIn("conv.weight", trained)  # frozen: a constant of the model
        out = self.path("conv_full.onnx")
        r = run(["export", ckpt, "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = onnx.load(out)
        inits = {i.name: numpy_helper.to_array(i) for i in exported.graph.initializer}
        np.testing.assert_array_equal(inits["conv.weight"], self.conv_w)
        np.testing.assert_array_equal(inits["dense/kernel"], trained["dense/kernel"])
        sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
        self.assertEqual([o.name for o in sess.get_outputs()], ["output"])
        x = np.ascontiguousarray(self.img[:40].transpose(0, 3, 1, 2))  # the ONNX model takes NCHW
        want = sess.run(None, {"pixels": x})[0]
        np.save(self.path("nchw.npy"), x)
        np.testing.assert_allclose(cli_util.predict_rows(self, [ckpt, self.path("nchw.npy")]), want, rtol=1e-5,
                                   atol=1e-6)

    def test_fit_model_onnx_takes_the_head_from_the_training_file(self):
        train = self.write("mlp_head.toml", """format_version = 1
[[model.layers]]
type = "Dense"
inputs = ["onnx"]
units = 1
activation = "sigmoid"
[data.train]
x = "vectors.npz"
[train]
loss = "binary_crossentropy"
epochs = 3
batch_size = 32
seed = 1
""")
        model = self.path("mlp.onnx")
        self.fit([model, "--train", train, "--output-dir", self.path("mlp1")])
        self.fit([model, "--train", train, "--device", "cpu", "--devices", "2", "--output-dir", self.path("mlp2")])
        one = cli_util.read_checkpoint(self.path("mlp1/last.ckpt"))
        two = cli_util.read_checkpoint(self.path("mlp2/last.ckpt"))
        # The ONNX model's own dense/kernel trains too; the head, named after the free name dense_1, beside it.
        self.assertIn("dense_1/kernel", one)
        original = {i.name: numpy_helper.to_array(i) for i in onnx.load(model).graph.initializer}
        self.assertGreater(np.abs(one["dense/kernel"] - original["dense/kernel"]).max(), 1e-4)
        for n in ("dense/kernel", "dense_1/kernel", "dense_1/bias"):
            np.testing.assert_allclose(two[n], one[n], rtol=1e-5, atol=1e-6, err_msg=n)

    def test_a_classifier_cut_at_its_hidden_features_takes_a_new_head(self):
        # A two-output classifier (probabilities and logits); model.output picks a value to end at.
        rng = np.random.default_rng(9)
        w1, w2 = rng.normal(0, 0.4, (10, 16)).astype(np.float32), rng.normal(0, 0.4, (16, 5)).astype(np.float32)
        nodes = [helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"]),
                 helper.make_node("Relu", ["h1"], ["hidden"]),
                 helper.make_node("Gemm", ["hidden", "fc2.weight", "fc2.bias"], ["logits"]),
                 helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
        graph = helper.make_graph(
            nodes, "clf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 5]),
             helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])],
            [numpy_helper.from_array(w1, "fc1.weight"), numpy_helper.from_array(np.zeros(16, np.float32), "fc1.bias"),
             numpy_helper.from_array(w2, "fc2.weight"), numpy_helper.from_array(np.zeros(5, np.float32), "fc2.bias")])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), self.path("clf.onnx"))
        head = """format_version = 1
[model]
onnx = "clf.onnx"
output = "{output}"
freeze = ["fc1.*"]
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
x = "vectors.npz"
[train]
loss = "binary_crossentropy"
epochs = 20
[train.optimizer]
learning_rate = 0.02
"""
        spec = self.write("cut.toml", head.format(output="hidden"))
        r = run(["summary", spec])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("17 trainable, 176 non-trainable", r.stdout)  # fc2 and the softmax are gone
        epochs = self.fit([spec, "--output-dir", self.path("cut")])
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        out = self.path("cut.onnx")
        r = run(["export", self.path("cut/last.ckpt"), "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = onnx.load(out)
        self.assertEqual(sorted(i.name for i in exported.graph.initializer),
                         ["dense/bias", "dense/kernel", "fc1.bias", "fc1.weight"])
        want = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"x": self.x[:30]})[0]
        np.save(self.path("x30.npy"), self.x[:30])
        got = cli_util.predict_rows(self, [self.path("cut/last.ckpt"), self.path("x30.npy")])
        np.testing.assert_allclose(got, want.ravel(), rtol=1e-5, atol=1e-6)
        # One of the graph outputs, for the loss itself; without model.output two outputs are an error.
        np.savez(self.path("five.npz"), x=self.x, y=(self.x[:, 0] > 0).astype(np.int64))
        logits = self.write("logits.toml", 'format_version = 1\n[model]\nonnx = "clf.onnx"\noutput = "logits"\n'
                            '[data.train]\nx = "five.npz"\n[train]\nloss = "sparse_categorical_crossentropy"\n'
                            'from_logits = true\n')
        self.fit([logits])
        both = self.write("both.toml", 'format_version = 1\n[model]\nonnx = "clf.onnx"\n[data.train]\n'
                          'x = "five.npz"\n[train]\nloss = "sparse_categorical_crossentropy"\n')
        cli_util.assert_input_error(self, run(["fit", both]), "2 graph outputs")
        cli_util.assert_input_error(self, run(["check", self.write("typo.toml", head.format(output="hiden"))]),
                                    "no value or node named 'hiden'", "did you mean 'hidden'")

    def test_a_pytorch_cnn_cut_before_its_classifier(self):
        # torch.onnx.export of a CNN whose classifier is a Linear over pooled features; the spec ends the model
        # at the node before the classifier (a name `trainer summary` lists) and trains a new head.
        torch_python = "/usr/bin/python3"
        probe = subprocess.run([torch_python, "-c", "import torch"], capture_output=True) if os.path.exists(
            torch_python) else None
        if probe is None or probe.returncode != 0:
            self.skipTest("Debian's python3-torch is not importable by /usr/bin/python3")
        path = self.path("torch_cnn.onnx")
        script = f"""
import inspect, torch
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                          torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
kw = dict(input_names=["pixels"], output_names=["logits"], opset_version=13,
          dynamic_axes={{"pixels": {{0: "batch"}}, "logits": {{0: "batch"}}}})
if "dynamo" in inspect.signature(torch.onnx.export).parameters:
    kw["dynamo"] = False
torch.onnx.export(net.eval(), torch.zeros(2, 3, 8, 8), {path!r}, **kw)
"""
        r = subprocess.run([torch_python, "-c", script], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        model = onnx.load(path)
        gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
        before = next(n for n in model.graph.node if gemm.input[0] in n.output)
        cut = before.name or gemm.input[0]
        spec = self.write("torch_head.toml", f"""format_version = 1
[model]
onnx = "torch_cnn.onnx"
output = "{cut}"
freeze = ["*"]
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data.train]
x = "images.npz"
[train]
loss = "sparse_categorical_crossentropy"
epochs = 10
[train.optimizer]
learning_rate = 0.05
""")
        epochs = self.fit([spec, "--output-dir", self.path("torch_head")])
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        out = self.path("torch_head.onnx")
        r = run(["export", self.path("torch_head/last.ckpt"), "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = onnx.load(out)
        self.assertNotIn("Gemm", [n.op_type for n in exported.graph.node])  # the old classifier is gone
        x = np.ascontiguousarray(self.img[:25].transpose(0, 3, 1, 2))
        want = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        np.save(self.path("torch_x.npy"), x)
        got = cli_util.predict_rows(self, [self.path("torch_head/last.ckpt"), self.path("torch_x.npy")])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_mistakes_are_named(self):
        base = 'format_version = 1\n[model]\nonnx = "mlp.onnx"\n'
        cases = [
            (base + '[[model.layers]]\ntype = "Dense"\nname = "dense"\nunits = 1\n',
             ["layer name 'dense' names values of the ONNX model already"]),
            (base + 'input = [10]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n',
             ["model.input does not go with model.onnx"]),
            (base + '[[model.layers]]\ntype = "Dense"\ninputs = ["features"]\nunits = 1\n',
             ["takes 'features', which is not a layer before it", "onnx"]),
            (base + '[[model.layers]]\ntype = "Conv2D"\nfilters = 2\nkernel_size = 3\n', ["Conv2D"]),
        ]
        for i, (text, needles) in enumerate(cases):
            with self.subTest(case=i):
                cli_util.assert_input_error(self, run(["check", self.write(f"bad{i}.toml", text)]), *needles)


if __name__ == "__main__":
    cli_util.main()
