"""trainer export: the ONNX model passes onnx's full check, onnxruntime runs it at any batch size, and on the
validation data it scores the accuracy that trainer fit reported for the same weights. Bad paths exit 2."""

import gzip
import json
import os
import tempfile
import unittest

import cli_util
from cli_util import run

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError:  # reported as a skip, never as a pass
    np = onnx = ort = None

VAL = 500


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


@unittest.skipIf(ort is None, "numpy, onnx and onnxruntime are needed (tools/install-deps.sh installs them)")
@cli_util.skip_without_fashion
class Export(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.x = idx(os.path.join(cli_util.FASHION_DIR, "t10k-images-idx3-ubyte.gz"))[:VAL].astype(np.float32) / 255
        cls.y = idx(os.path.join(cli_util.FASHION_DIR, "t10k-labels-idx1-ubyte.gz"))[:VAL]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def fit_and_export(self, sample):
        out = os.path.join(self.tmp.name, sample.replace("/", "_"))
        r = run(["fit", cli_util.sample(sample), "--epochs", "1", "--set", "data.train.limit=2000",
                 "--set", f"data.validation.limit={VAL}", "--output-dir", out, "--quiet"], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        end = [json.loads(line) for line in r.stdout.splitlines()][-1]
        model = os.path.join(out, "model.onnx")
        r = run(["export", os.path.join(out, "last.ckpt"), "-o", model])
        self.assertEqual(r.returncode, 0, r.stderr)
        return end, model

    def check(self, sample, x):
        end, path = self.fit_and_export(sample)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        self.assertEqual(m.producer_name, "trainer")
        names = {i.name for i in m.graph.initializer}
        self.assertIn("dense/kernel", names)
        self.assertEqual(m.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch")
        s = ort.InferenceSession(path)
        probs = s.run(None, {"input": x})[0]
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
        # Two batch sizes give the same rows.
        np.testing.assert_allclose(s.run(None, {"input": x[:7]})[0], probs[:7], rtol=1e-5, atol=1e-6)
        accuracy = float((probs.argmax(axis=1) == self.y).mean())
        # The same weights on the same samples: the same accuracy, up to a near-tie flipping one argmax.
        self.assertAlmostEqual(accuracy, end["val_accuracy"], delta=1.5 / VAL)

    def test_mlp(self):
        self.check("fashion_mnist/mlp.toml", self.x)

    def test_cnn_takes_channels_last_images(self):
        self.check("fashion_mnist/cnn.toml", self.x[..., None])  # the spec's input is [28, 28, 1]: NHWC

    def fit_export_and_predict(self, name, model, x, opsets=(None,)):
        """Trains `model` (the TOML of [model] and its layers) briefly, exports it (at each of `opsets`; None: the
        default), and checks that onnxruntime computes on x what trainer predict does. Returns the ONNX models."""
        d = cli_util.FASHION_DIR
        spec = os.path.join(self.tmp.name, f"{name}.toml")
        with open(spec, "w") as f:
            f.write(f"""format_version = 1
{model}
[data]
scale = 0.00392156862745098
[data.train]
x = "{d}/train-images-idx3-ubyte.gz"
y = "{d}/train-labels-idx1-ubyte.gz"
limit = 1000
[train]
loss = "sparse_categorical_crossentropy"
epochs = 1
batch_size = 50
[train.optimizer]
name = "adam"
""")
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", spec, "--output-dir", out, "--quiet"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.save(os.path.join(self.tmp.name, f"{name}_x.npy"), x * 255)
        r = run(["predict", os.path.join(out, "last.ckpt"), os.path.join(self.tmp.name, f"{name}_x.npy"),
                 "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        want = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        models = []
        for opset in opsets:
            path = os.path.join(out, f"model{opset or ''}.onnx")
            r = run(["export", os.path.join(out, "last.ckpt"), "-o", path, "--quiet"] +
                    (["--opset", str(opset)] if opset else []))
            self.assertEqual(r.returncode, 0, r.stderr)
            m = onnx.load(path)
            onnx.checker.check_model(m, full_check=True)
            got = ort.InferenceSession(path).run(None, {"input": x})[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=f"opset {opset}")
            models.append(m)
        return models if len(opsets) > 1 else models[0]

    def test_every_activation_exports_and_runs_as_predict_does(self):
        activations = ["relu", "sigmoid", "tanh", "gelu", "leaky_relu", "elu", "selu", "softplus", "softsign",
                       "silu", "swish", "relu6", "hard_sigmoid", "hard_silu", "hard_swish", "mish", "exponential"]
        layers = "".join(f'[[model.layers]]\ntype = "Dense"\nunits = 16\nactivation = "{a}"\n' for a in activations)
        m = self.fit_export_and_predict("activations", f"""[model]
input = [28, 28]
[[model.layers]]
type = "Flatten"
{layers}[[model.layers]]
type = "ReLU"
max_value = 6.0
negative_slope = 0.1
[[model.layers]]
type = "LeakyReLU"
[[model.layers]]
type = "ELU"
alpha = 0.5
[[model.layers]]
type = "PReLU"
alpha_initializer = "ones"
[[model.layers]]
type = "Dense"
units = 10
[[model.layers]]
type = "Softmax"
""", self.x[:40])
        self.assertLessEqual({"Elu", "Selu", "Softplus", "Softsign", "Clip", "HardSigmoid", "HardSwish", "Exp",
                              "PRelu", "LeakyRelu"},
                             {n.op_type for n in m.graph.node})

    def test_every_opset_the_export_takes_runs_as_predict_does(self):
        # HardSwish (opset 14) and LayerNormalization (opset 17) are written by their definitions below their opsets.
        opsets = range(13, 22)
        models = self.fit_export_and_predict("opsets", """[model]
input = [28, 28]
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 16
activation = "hard_silu"
[[model.layers]]
type = "LayerNormalization"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:40], opsets)
        for opset, m in zip(opsets, models):
            ops = {n.op_type for n in m.graph.node}
            self.assertEqual(m.opset_import[0].version, opset)
            self.assertEqual("HardSwish" in ops, opset >= 14, (opset, ops))
            self.assertEqual("LayerNormalization" in ops, opset >= 17, (opset, ops))

    def test_image_layers_export_and_run_as_predict_does(self):
        # DepthwiseConv2D, SeparableConv2D, Conv2DTranspose, UpSampling2D, ZeroPadding2D and GlobalMaxPooling2D.
        m = self.fit_export_and_predict("transpose", """[model]
input = [28, 28, 1]
[[model.layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
strides = 2
padding = "same"
activation = "relu"
[[model.layers]]
type = "DepthwiseConv2D"
kernel_size = 3
depth_multiplier = 2
padding = "same"
[[model.layers]]
type = "SeparableConv2D"
filters = 4
kernel_size = 3
padding = "same"
activation = "relu"
[[model.layers]]
type = "Conv2DTranspose"
filters = 3
kernel_size = 3
strides = 2
padding = "same"
activation = "relu"
[[model.layers]]
type = "Conv2D"
filters = 3
kernel_size = 3
strides = 2
[[model.layers]]
type = "UpSampling2D"
size = 2
[[model.layers]]
type = "ZeroPadding2D"
padding = [1, 0, 2, 1]
[[model.layers]]
type = "Conv2DTranspose"
filters = 2
kernel_size = 2
strides = 3
[[model.layers]]
type = "GlobalMaxPooling2D"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30, :, :, None])
        self.assertEqual([n.op_type for n in m.graph.node].count("ConvTranspose"), 2)
        groups = [a.i for n in m.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        self.assertIn(4, groups)  # the depthwise convolution: one group per channel
        self.assertIn("Pad", {n.op_type for n in m.graph.node})

    def test_volume_layers_export_and_run_as_predict_does(self):
        # Conv3D, MaxPooling3D, ZeroPadding3D, AveragePooling3D, UpSampling3D, Cropping3D and
        # GlobalAveragePooling3D on each image seen as a 4 x 7 x 28 volume.
        m = self.fit_export_and_predict("volume", """[model]
input = [28, 28, 1]
[[model.layers]]
type = "Reshape"
target_shape = [4, 7, 28, 1]
[[model.layers]]
type = "Conv3D"
filters = 4
kernel_size = 3
padding = "same"
activation = "relu"
[[model.layers]]
type = "MaxPooling3D"
pool_size = [1, 2, 2]
[[model.layers]]
type = "ZeroPadding3D"
padding = 1
[[model.layers]]
type = "AveragePooling3D"
pool_size = 2
padding = "same"
[[model.layers]]
type = "UpSampling3D"
size = [1, 2, 1]
[[model.layers]]
type = "Cropping3D"
cropping = [0, 1, 1]
[[model.layers]]
type = "Conv3D"
filters = 3
kernel_size = 2
strides = 2
groups = 1
[[model.layers]]
type = "GlobalAveragePooling3D"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30, :, :, None])
        self.assertIn("Conv", {n.op_type for n in m.graph.node})

    def test_preprocessing_and_time_distributed_layers_export_and_run_as_predict_does(self):
        # Normalization (adapted by fit), TimeDistributed(Dense) over the rows, Discretization and
        # CategoryEncoding (count) on a second branch.
        m = self.fit_export_and_predict("preprocessing", """[model]
input = [28, 28, 1]
[[model.layers]]
type = "Normalization"
[[model.layers]]
type = "Reshape"
target_shape = [28, 28]
[[model.layers]]
type = "TimeDistributed"
layer = "Dense"
units = 4
activation = "relu"
[[model.layers]]
type = "Flatten"
name = "rows"
[[model.layers]]
type = "Reshape"
target_shape = [784]
inputs = ["input"]
name = "pixels"
[[model.layers]]
type = "Discretization"
bin_boundaries = [0.25, 0.5, 0.75]
[[model.layers]]
type = "CategoryEncoding"
num_tokens = 4
output_mode = "count"
[[model.layers]]
type = "Rescaling"
scale = 0.001
name = "histogram"
[[model.layers]]
type = "Concatenate"
inputs = ["rows", "histogram"]
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30, :, :, None])
        self.assertIn("Equal", {n.op_type for n in m.graph.node})

    def test_sequence_layers_export_and_run_as_predict_does(self):
        # Conv1D (valid, same, causal, dilated), MaxPooling1D, AveragePooling1D, Bidirectional GRU and LSTM, SimpleRNN
        # (merged by product and mean; trained with dropout and recurrent_dropout, which inference leaves out), a GRU
        # with go_backwards and global pooling, on the images' rows as 28 steps of 28 features.
        m = self.fit_export_and_predict("sequence", """[model]
input = [28, 28]
[[model.layers]]
type = "Conv1D"
filters = 8
kernel_size = 3
padding = "same"
activation = "relu"
[[model.layers]]
type = "MaxPooling1D"
[[model.layers]]
type = "Conv1D"
filters = 6
kernel_size = 3
dilation_rate = 2
padding = "causal"
activation = "relu"
[[model.layers]]
type = "AveragePooling1D"
pool_size = 3
strides = 2
padding = "same"
[[model.layers]]
type = "Conv1D"
filters = 4
kernel_size = 2
[[model.layers]]
type = "Bidirectional"
layer = "GRU"
units = 5
return_sequences = true
merge_mode = "mul"
recurrent_dropout = 0.3
[[model.layers]]
type = "Bidirectional"
layer = "LSTM"
units = 6
return_sequences = true
merge_mode = "ave"
dropout = 0.2
recurrent_dropout = 0.2
[[model.layers]]
type = "SimpleRNN"
units = 5
activation = "relu"
return_sequences = true
recurrent_dropout = 0.1
[[model.layers]]
type = "GRU"
units = 4
return_sequences = true
go_backwards = true
[[model.layers]]
type = "GlobalMaxPooling1D"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30])
        self.assertEqual([n.op_type for n in m.graph.node].count("Conv"), 3)
        directions = [a.s for n in m.graph.node if n.op_type in ("GRU", "LSTM") for a in n.attribute
                      if a.name == "direction"]
        self.assertEqual(directions, [b"bidirectional", b"bidirectional", b"reverse"])  # go_backwards: reverse
        self.assertIn("RNN", {n.op_type for n in m.graph.node})

    def test_reshaping_merge_and_dropout_layers_export_and_run_as_predict_does(self):
        # Rescaling, the augmentations (RandomCrop resizing its padded input outside training), Cropping2D,
        # SpatialDropout2D, Permute, Cropping1D, SpatialDropout1D, LSTM with dropout, RepeatVector and the
        # merges, in the graph form; the dropouts and the other augmentations train and leave nothing in the
        # export.
        m = self.fit_export_and_predict("reshaping", """[model]
input = [28, 28, 1]
[[model.layers]]
type = "Rescaling"
scale = 2.0
offset = -1.0
[[model.layers]]
type = "RandomFlip"
mode = "horizontal"
[[model.layers]]
type = "ZeroPadding2D"
padding = 2
[[model.layers]]
type = "RandomCrop"
height = 28
width = 28
[[model.layers]]
type = "RandomTranslation"
height_factor = 0.1
width_factor = [-0.1, 0.05]
[[model.layers]]
type = "RandomZoom"
height_factor = 0.2
fill_mode = "nearest"
[[model.layers]]
type = "RandomRotation"
factor = 0.05
[[model.layers]]
type = "RandomContrast"
factor = 0.3
value_range = [-1, 1]
[[model.layers]]
type = "Cropping2D"
cropping = [2, 1, 0, 3]
[[model.layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
activation = "relu"
[[model.layers]]
type = "SpatialDropout2D"
rate = 0.2
[[model.layers]]
type = "Reshape"
target_shape = [23, 92]
[[model.layers]]
type = "Permute"
dims = [2, 1]
[[model.layers]]
type = "Cropping1D"
cropping = [6, 10]
[[model.layers]]
type = "SpatialDropout1D"
rate = 0.1
[[model.layers]]
type = "LSTM"
units = 8
dropout = 0.2
name = "lstm"
[[model.layers]]
type = "Dense"
units = 8
activation = "tanh"
name = "side"
inputs = ["lstm"]
[[model.layers]]
type = "Subtract"
inputs = ["lstm", "side"]
name = "difference"
[[model.layers]]
type = "Multiply"
inputs = ["lstm", "side"]
name = "product"
[[model.layers]]
type = "Average"
inputs = ["difference", "product", "side"]
name = "mean"
[[model.layers]]
type = "Maximum"
inputs = ["mean", "lstm"]
name = "larger"
[[model.layers]]
type = "Minimum"
inputs = ["larger", "side"]
[[model.layers]]
type = "RepeatVector"
n = 2
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30, :, :, None])
        ops = {n.op_type for n in m.graph.node}
        self.assertLessEqual({"Slice", "Transpose", "Sub", "Max", "Min", "Expand"}, ops)
        self.assertNotIn("Dropout", ops)

    def test_attention_exports_and_runs_as_predict_does(self):
        # MultiHeadAttention (causal, and query/value from two layers) on the images' rows as 28 steps.
        m = self.fit_export_and_predict("attention", """[model]
input = [28, 28]
[[model.layers]]
type = "Dense"
units = 16
name = "rows"
[[model.layers]]
type = "MultiHeadAttention"
num_heads = 2
key_dim = 8
dropout = 0.1
use_causal_mask = true
name = "self"
[[model.layers]]
type = "Add"
inputs = ["rows", "self"]
[[model.layers]]
type = "LayerNormalization"
name = "norm"
[[model.layers]]
type = "MultiHeadAttention"
inputs = ["norm", "rows"]
num_heads = 1
key_dim = 4
value_dim = 6
output_shape = 12
[[model.layers]]
type = "GlobalAveragePooling1D"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30])
        ops = [n.op_type for n in m.graph.node]
        self.assertEqual(ops.count("Softmax"), 3)  # two attentions and the head
        self.assertNotIn("Dropout", ops)

    def test_score_attention_and_group_layers_export_and_run_as_predict_does(self):
        # Attention (concat scores) and AdditiveAttention, Dot, GroupNormalization, UnitNormalization,
        # UpSampling1D and ZeroPadding1D on the images' rows as 28 steps.
        m = self.fit_export_and_predict("score_attention", """[model]
input = [28, 28]
[[model.layers]]
type = "Dense"
units = 8
name = "rows"
[[model.layers]]
type = "Attention"
inputs = ["rows", "rows"]
use_scale = true
score_mode = "concat"
dropout = 0.1
name = "luong"
[[model.layers]]
type = "AdditiveAttention"
inputs = ["rows", "luong"]
name = "bahdanau"
[[model.layers]]
type = "GroupNormalization"
groups = 4
[[model.layers]]
type = "Dot"
inputs = ["group_normalization", "rows"]
axes = 2
normalize = true
[[model.layers]]
type = "UnitNormalization"
[[model.layers]]
type = "UpSampling1D"
[[model.layers]]
type = "ZeroPadding1D"
padding = [1, 2]
[[model.layers]]
type = "GlobalAveragePooling1D"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
""", self.x[:30])
        ops = [n.op_type for n in m.graph.node]
        self.assertEqual(ops.count("Softmax"), 3)  # two attentions and the head
        self.assertNotIn("Dropout", ops)

    def export_values(self, ckpt, path):
        """Exports ckpt to path (checked by onnx's full checker); returns its initializers and its Constant nodes'
        values by name, and the path."""
        r = run(["export", ckpt, "-o", path, "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        constants = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t) for n in m.graph.node
                     if n.op_type == "Constant"}
        return {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}, constants, path

    def test_fine_tuning_an_export_trains_what_the_spec_trained(self):
        # Rescaling, Normalization and a gelu Dense: fixed values go out as Constant nodes, so that fitting the
        # exported model trains the Dense weights alone (it trained the scale, the mean and gelu's constants)
        # and BatchNormalization's running statistics stay initializers that fine-tuning updates.
        d = os.path.join(self.tmp.name, "finetune")
        os.makedirs(d)
        rng = np.random.default_rng(5)
        np.save(os.path.join(d, "x.npy"), rng.standard_normal((64, 7)).astype(np.float32))
        np.save(os.path.join(d, "y.npy"), rng.standard_normal((64, 2)).astype(np.float32))
        train = '[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\nepochs = 1\nbatch_size = 16\n'
        with open(os.path.join(d, "spec.toml"), "w") as f:
            f.write('format_version = 1\n[model]\ninput = [7]\n[[model.layers]]\ntype = "Rescaling"\nscale = 0.5\n'
                    'offset = 0.1\n[[model.layers]]\ntype = "Normalization"\nmean = 0.5\nvariance = 4.0\n'
                    '[[model.layers]]\ntype = "BatchNormalization"\n[[model.layers]]\ntype = "Dense"\nunits = 2\n'
                    'activation = "gelu"\n' + train)
        with open(os.path.join(d, "train.toml"), "w") as f:
            f.write("format_version = 1\n" + train)

        def fit_export(args, name):
            r = run(["fit", *args, "--device", "cpu", "--output-dir", os.path.join(d, name), "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            return self.export_values(os.path.join(d, name, "last.ckpt"), os.path.join(d, name + ".onnx"))

        first, fixed, path = fit_export([os.path.join(d, "spec.toml")], "spec")
        self.assertEqual(sorted(first), ["batch_normalization/beta", "batch_normalization/gamma",
                                         "batch_normalization/moving_mean", "batch_normalization/moving_variance",
                                         "dense/bias", "dense/kernel"])
        self.assertLessEqual({"rescaling/scale", "rescaling/offset", "normalization/mean"}, set(fixed))
        r = run(["summary", path, "--train", os.path.join(d, "train.toml")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Total params: 44 (30 trainable, 14 non-trainable)", r.stdout)  # the spec trains 30 too
        second, fixed_again, _ = fit_export([path, "--train", os.path.join(d, "train.toml")], "tuned")
        self.assertEqual(sorted(second), sorted(first))
        for name in first:  # the weights and the running statistics moved
            self.assertFalse(np.array_equal(first[name], second[name]), name)
        for name in set(fixed) & set(fixed_again):
            np.testing.assert_array_equal(fixed[name], fixed_again[name], err_msg=name)
        self.assertIn("rescaling/scale", fixed_again)

    def test_fine_tuning_an_export_leaves_frozen_layers_as_the_spec_froze_them(self):
        # A frozen Dense's weights and a frozen BatchNormalization's weights and statistics go out as Constant
        # nodes: fitting the exported model trains the last Dense alone (it trained them all, and the frozen
        # BatchNormalization normalized with batch statistics), and its loss at a learning rate of almost 0
        # is onnxruntime's loss of the exported model (the normalization keeps its inference form).
        d = os.path.join(self.tmp.name, "frozen")
        os.makedirs(d)
        rng = np.random.default_rng(6)
        np.save(os.path.join(d, "x.npy"), rng.standard_normal((32, 4)).astype(np.float32) * 3 + 1)
        np.save(os.path.join(d, "y.npy"), rng.integers(0, 2, 32))
        train = ('[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "sparse_categorical_crossentropy"\n'
                 'epochs = 1\nbatch_size = 32\n[train.optimizer]\nname = "sgd"\n')
        with open(os.path.join(d, "spec.toml"), "w") as f:
            f.write('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "Dense"\nunits = 3\n'
                    'trainable = false\n[[model.layers]]\ntype = "BatchNormalization"\ntrainable = false\n'
                    '[[model.layers]]\ntype = "Dense"\nunits = 2\nactivation = "softmax"\n' + train)
        with open(os.path.join(d, "train.toml"), "w") as f:
            f.write("format_version = 1\n" + train.replace('"sgd"\n', '"sgd"\nlearning_rate = 1e-30\n'))

        def export(run_dir, name):
            return self.export_values(os.path.join(d, run_dir, "last.ckpt"), os.path.join(d, name + ".onnx"))

        r = run(["fit", os.path.join(d, "spec.toml"), "--device", "cpu", "--output-dir", os.path.join(d, "spec"),
                 "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        first, fixed, path = export("spec", "spec")
        self.assertEqual(sorted(first), ["dense_1/bias", "dense_1/kernel"])
        frozen = ["dense/kernel", "dense/bias", "batch_normalization/gamma", "batch_normalization/beta",
                  "batch_normalization/moving_mean", "batch_normalization/moving_variance"]
        self.assertLessEqual(set(frozen), set(fixed))
        probabilities = ort.InferenceSession(path).run(None, {"input": np.load(os.path.join(d, "x.npy"))})[0]
        evaluated = -np.mean(np.log(probabilities[np.arange(32), np.load(os.path.join(d, "y.npy"))]))
        r = run(["fit", path, "--train", os.path.join(d, "train.toml"), "--device", "cpu", "--output-dir",
                 os.path.join(d, "tuned"), "--log-format", "jsonl", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        trained = [json.loads(line) for line in r.stdout.splitlines() if '"loss"' in line][-1]["loss"]
        self.assertAlmostEqual(trained, evaluated, places=5)
        _, fixed_again, _ = export("tuned", "tuned")
        for name in frozen:
            np.testing.assert_array_equal(fixed[name], fixed_again[name], err_msg=name)

    def test_a_fine_tuned_recurrent_export_exports_again_at_opset_13(self):
        # The imported LSTM, GRU and SimpleRNN carry the schema's layout 0, which opset 13 has no attribute
        # for: the second export failed onnx's checker ("Unrecognized attribute: layout").
        d = os.path.join(self.tmp.name, "recurrent13")
        os.makedirs(d)
        rng = np.random.default_rng(7)
        np.save(os.path.join(d, "x.npy"), rng.standard_normal((16, 5, 3)).astype(np.float32))
        np.save(os.path.join(d, "y.npy"), rng.integers(0, 2, 16))
        train = ('[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "sparse_categorical_crossentropy"\n'
                 'epochs = 1\nbatch_size = 8\n')
        with open(os.path.join(d, "train.toml"), "w") as f:
            f.write("format_version = 1\n" + train)
        for layer in ("LSTM", "GRU", "SimpleRNN"):
            with open(os.path.join(d, "spec.toml"), "w") as f:
                f.write(f'format_version = 1\n[model]\ninput = [5, 3]\n[[model.layers]]\ntype = "{layer}"\n'
                        'units = 4\n[[model.layers]]\ntype = "Dense"\nunits = 2\nactivation = "softmax"\n' + train)
            x = np.load(os.path.join(d, "x.npy"))
            for name, args in (("spec", [os.path.join(d, "spec.toml")]),
                               ("tuned", [os.path.join(d, "spec.onnx"), "--train", os.path.join(d, "train.toml")])):
                out = os.path.join(d, layer + name)
                r = run(["fit", *args, "--device", "cpu", "--output-dir", out, "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                path = os.path.join(d, name + ".onnx")
                r = run(["export", os.path.join(out, "last.ckpt"), "-o", path, "--opset", "13", "-q"])
                self.assertEqual(r.returncode, 0, f"{layer} {name}: {r.stderr}")
                m = onnx.load(path)
                onnx.checker.check_model(m, full_check=True)
                self.assertEqual(m.opset_import[0].version, 13)
                r = run(["predict", os.path.join(out, "last.ckpt"), os.path.join(d, "x.npy"), "--probabilities"])
                self.assertEqual(r.returncode, 0, r.stderr)
                np.testing.assert_allclose(ort.InferenceSession(path).run(None, {"input": x})[0],
                                           np.loadtxt(r.stdout.splitlines(), delimiter=","), rtol=1e-4, atol=1e-5)

    def test_bad_paths_exit_2_and_write_nothing(self):
        missing = os.path.join(self.tmp.name, "no-such.ckpt")
        r = run(["export", missing, "-o", os.path.join(self.tmp.name, "x.onnx")])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("no-such.ckpt", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "x.onnx")))
        end, _ = self.fit_and_export("fashion_mnist/mlp.toml")
        ckpt = os.path.join(self.tmp.name, "fashion_mnist_mlp.toml", "last.ckpt")
        target = os.path.join(self.tmp.name, "no-such-dir", "m.onnx")
        r = run(["export", ckpt, "-o", target])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("no-such-dir", r.stderr)
        self.assertNotIn("internal error", r.stderr)
        # A symbolic link is written through even when its target does not exist yet (the link was replaced
        # by a file, and the target never written); one into a missing folder, or a loop of links, is refused
        # and stays.
        links = os.path.join(self.tmp.name, "links")
        os.makedirs(os.path.join(links, "exported"))
        os.symlink("exported/model.onnx", os.path.join(links, "dangling.onnx"))
        r = run(["export", ckpt, "-o", os.path.join(links, "dangling.onnx"), "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.islink(os.path.join(links, "dangling.onnx")))
        onnx.checker.check_model(onnx.load(os.path.join(links, "exported", "model.onnx")), full_check=True)
        os.symlink("missing/model.onnx", os.path.join(links, "nowhere.onnx"))
        os.symlink("loop_b", os.path.join(links, "loop_a"))
        os.symlink("loop_a", os.path.join(links, "loop_b"))
        for name, message in (("nowhere.onnx", "(where its link leads) does not exist"), ("loop_a", "loop of links")):
            r = run(["export", ckpt, "-o", os.path.join(links, name)])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(message, r.stderr)
            self.assertTrue(os.path.islink(os.path.join(links, name)), name)


if __name__ == "__main__":
    cli_util.main()
