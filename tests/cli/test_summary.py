"""`trainer summary` of every sample: parameter counts equal to Keras's, computed here by hand from the layer
formulas, in both the table and the --json output."""

import json
import os
import subprocess
import tempfile
import unittest

import cli_util
from cli_util import run, sample


def dense(n_in, units):
    return n_in * units + units  # kernel + bias


def conv2d(kh, kw, c_in, filters):
    return kh * kw * c_in * filters + filters


def lstm(n_in, units):
    # Four gates (input, forget, cell, output), each with a kernel, a recurrent kernel and a bias.
    return 4 * (n_in * units + units * units + units)


def embedding(input_dim, output_dim):
    return input_dim * output_dim


def attention(width, heads, key_dim):
    # Query, key and value projections [width, heads, key_dim] with biases [heads, key_dim], and the output
    # projection [heads, key_dim, width] with its bias.
    return 3 * (width * heads * key_dim + heads * key_dim) + heads * key_dim * width + width


# Per sample, per layer: (name, type, output shape as Keras prints it without the batch, parameters).
EXPECTED = {
    "fashion_mnist/mlp.toml": [
        ("flatten", "Flatten", [784], 0),
        ("dense", "Dense", [1024], dense(784, 1024)),
        ("dense_1", "Dense", [512], dense(1024, 512)),
        ("dense_2", "Dense", [10], dense(512, 10)),
    ],
    "fashion_mnist/cnn.toml": [
        ("conv2d", "Conv2D", [26, 26, 32], conv2d(3, 3, 1, 32)),  # 28 - 3 + 1 = 26, padding valid
        ("max_pooling2d", "MaxPooling2D", [13, 13, 32], 0),
        ("flatten", "Flatten", [13 * 13 * 32], 0),
        ("dense", "Dense", [512], dense(13 * 13 * 32, 512)),
        ("dense_1", "Dense", [10], dense(512, 10)),
    ],
    "fashion_mnist/lstm.toml": [
        ("lstm", "LSTM", [128], lstm(28, 128)),  # 28 pixels of a row per step
        ("dense", "Dense", [16], dense(128, 16)),
        ("dense_1", "Dense", [10], dense(16, 10)),
    ],
    "cifar10/cnn.toml": [
        ("conv2d", "Conv2D", [30, 30, 32], conv2d(3, 3, 3, 32)),
        ("max_pooling2d", "MaxPooling2D", [15, 15, 32], 0),
        ("flatten", "Flatten", [15 * 15 * 32], 0),
        ("dense", "Dense", [512], dense(15 * 15 * 32, 512)),
        ("dense_1", "Dense", [10], dense(512, 10)),
    ],
    "imdb/cnn.toml": [
        ("embedding", "Embedding", [200, 32], embedding(10000, 32)),
        ("dropout", "Dropout", [200, 32], 0),
        ("conv1d", "Conv1D", [196, 64], 5 * 32 * 64 + 64),
        ("global_max_pooling1d", "GlobalMaxPooling1D", [64], 0),
        ("dense", "Dense", [32], dense(64, 32)),
        ("dense_1", "Dense", [1], dense(32, 1)),
    ],
    "imdb/transformer.toml": [
        ("embed", "TokenAndPositionEmbedding", [200, 32], embedding(10000, 32) + embedding(200, 32)),
        ("attention", "MultiHeadAttention", [200, 32], attention(32, 2, 32)),
        ("dropout", "Dropout", [200, 32], 0),
        ("residual", "Add", [200, 32], 0),
        ("norm", "LayerNormalization", [200, 32], 2 * 32),
        ("dense", "Dense", [200, 32], dense(32, 32)),
        ("dense_1", "Dense", [200, 32], dense(32, 32)),
        ("dropout_1", "Dropout", [200, 32], 0),
        ("residual_1", "Add", [200, 32], 0),
        ("layer_normalization", "LayerNormalization", [200, 32], 2 * 32),
        ("global_average_pooling1d", "GlobalAveragePooling1D", [32], 0),
        ("dropout_2", "Dropout", [32], 0),
        ("dense_2", "Dense", [20], dense(32, 20)),
        ("dropout_3", "Dropout", [20], 0),
        ("dense_3", "Dense", [1], dense(20, 1)),
    ],
    "imdb/lstm.toml": [
        ("embedding", "Embedding", [200, 16], embedding(10000, 16)),
        ("lstm", "LSTM", [128], lstm(16, 128)),
        ("dense", "Dense", [16], dense(128, 16)),
        ("dense_1", "Dense", [1], dense(16, 1)),
    ],
}
EXPECTED["imdb/lstm_text.toml"] = EXPECTED["imdb/lstm.toml"]  # the same model, on the review files
EXPECTED["flowers/cnn.toml"] = [  # TensorFlow's image classification tutorial
    ("rescaling", "Rescaling", [180, 180, 3], 0),
    ("conv2d", "Conv2D", [180, 180, 16], conv2d(3, 3, 3, 16)),
    ("max_pooling2d", "MaxPooling2D", [90, 90, 16], 0),
    ("conv2d_1", "Conv2D", [90, 90, 32], conv2d(3, 3, 16, 32)),
    ("max_pooling2d_1", "MaxPooling2D", [45, 45, 32], 0),
    ("conv2d_2", "Conv2D", [45, 45, 64], conv2d(3, 3, 32, 64)),
    ("max_pooling2d_2", "MaxPooling2D", [22, 22, 64], 0),
    ("flatten", "Flatten", [22 * 22 * 64], 0),
    ("dense", "Dense", [128], dense(22 * 22 * 64, 128)),
    ("dense_1", "Dense", [5], dense(128, 5)),
]

# The totals written out, as Keras's model.summary() prints them.
TOTALS = {
    "fashion_mnist/mlp.toml": 1_333_770,
    "fashion_mnist/cnn.toml": 2_774_858,
    "fashion_mnist/lstm.toml": 82_618,
    "cifar10/cnn.toml": 3_692_938,
    "imdb/lstm.toml": 236_321,  # 160,000 + 74,240 + 2,064 + 17
    "imdb/lstm_text.toml": 236_321,
    "flowers/cnn.toml": 3_989_285,  # as the tutorial's model.summary() counts
    "imdb/cnn.toml": 332_417,  # 320,000 + 10,304 + 2,080 + 33
    "imdb/transformer.toml": 337_737,  # 326,400 + 8,416 + 2 x 64 + 2 x 1,056 + 660 + 21, as Keras's example counts
}


class Summary(unittest.TestCase):
    def test_every_sample_is_covered(self):
        self.assertEqual(sorted(EXPECTED), sorted(cli_util.SAMPLE_SPECS))

    def test_totals_by_formula(self):
        for spec, layers in EXPECTED.items():
            self.assertEqual(sum(p for *_, p in layers), TOTALS[spec], spec)

    def test_json(self):
        for spec, layers in EXPECTED.items():
            with self.subTest(spec=spec):
                r = run(["summary", sample(spec), "--json"])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(len(r.stdout.splitlines()), 1, "one JSON object on one line")
                s = json.loads(r.stdout)
                got = [(l["name"], l["type"], l["output_shape"], l["params"]) for l in s["layers"]]
                self.assertEqual(got, layers)
                self.assertEqual(s["total_params"], TOTALS[spec])
                self.assertEqual(s["trainable_params"], TOTALS[spec])
                self.assertEqual(s["batch_size"], 32 if spec in ("imdb/transformer.toml", "flowers/cnn.toml") else 64)  # the specs
                self.assertGreater(s["planned_bytes"], 0)
                self.assertEqual(s["flops_per_sample"], sum(l["flops_per_sample"] for l in s["layers"]))

    def test_table(self):
        for spec in EXPECTED:
            with self.subTest(spec=spec):
                r = run(["summary", sample(spec)])
                self.assertEqual(r.returncode, 0, r.stderr)
                total = TOTALS[spec]
                self.assertIn(f"Total params: {total:,} ({total:,} trainable, 0 non-trainable)", r.stdout)
                for name, typ, shape, params in EXPECTED[spec]:
                    row = [line.split() for line in r.stdout.splitlines() if line.startswith(name + " ")]
                    self.assertEqual(len(row), 1, f"one row for {name}:\n{r.stdout}")
                    self.assertEqual(row[0][1], typ)
                    self.assertEqual(row[0][-2], f"{params:,}")

    def test_mlp_flops(self):
        # A Dense layer does one multiply and one add per kernel weight and sample.
        r = run(["summary", sample("fashion_mnist/mlp.toml"), "--json"])
        s = json.loads(r.stdout)
        self.assertEqual(s["flops_per_sample"], 2 * (784 * 1024 + 1024 * 512 + 512 * 10))

    def test_layers_built_of_matrix_products_count_them(self):
        # Dot, Resizing and the resampling augmentations are matrix products inside; their FLOPs are those of
        # the products, as bench counts them op by op (they were 0).
        spec = """format_version = 1
[model]
outputs = ["dot", "dot_1", "resizing", "random_zoom"]
[[model.inputs]]
name = "a"
shape = [5, 3]
[[model.inputs]]
name = "b"
shape = [5, 4]
[[model.inputs]]
name = "img"
shape = [8, 6, 2]
[[model.layers]]
type = "Dot"
axes = 1
inputs = ["a", "b"]
[[model.layers]]
type = "Dot"
axes = [2, 2]
inputs = ["a", "a"]
[[model.layers]]
type = "Resizing"
height = 16
width = 12
inputs = ["img"]
[[model.layers]]
type = "RandomZoom"
height_factor = 0.2
inputs = ["img"]
[train]
loss = "mse"
batch_size = 4
"""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "spec.toml")
            with open(path, "w") as f:
                f.write(spec)
            s = json.loads(run(["summary", path, "--json"]).stdout)
            rows = {l["name"]: l["flops_per_sample"] for l in s["layers"]}
            # [3, 5] . [5, 4]; [5, 3] . [3, 5]; rows [16, 8] by [8, 6], then [16, 6] by [6, 12], per channel;
            # the zoom builds [8, 24] x [24, 8] and [6, 18] x [18, 6], then applies both.
            expected = {"dot": 2 * 3 * 5 * 4, "dot_1": 2 * 5 * 3 * 5,
                        "resizing": 2 * 2 * (16 * 8 * 6 + 16 * 6 * 12),
                        "random_zoom": 2 * 3 * (8 ** 3 + 6 ** 3) + 2 * 2 * 8 * 6 * (8 + 6)}
            self.assertEqual({k: rows[k] for k in expected}, expected)
            bench = json.loads(run(["bench", path, "--device", "cpu", "--steps", "1", "--warmup", "0", "-q"]).stdout)
            by_layer = {}
            for o in bench["ops"]:
                if o["phase"] == "forward" and o["op"] == "MatMul":
                    layer = o["node"].split("/")[0]
                    by_layer[layer] = by_layer.get(layer, 0) + o["flops"]
            self.assertEqual({k: v // 4 for k, v in by_layer.items()}, expected)

    def test_keras_spellings_read_as_keras_reads_them(self):
        # Keras's other names of a class (MaxPool2D, GlobalAvgPool2D, Convolution2D, AvgPool1D, ...) are that class;
        # LeakyReLU takes Keras 2's alpha; RNNs take seed and implementation; a squeeze-and-excitation Multiply
        # broadcasts (None, 1, 1, C) against (None, H, W, C). Each was an error.
        spec = """format_version = 1
[model]
input = [8, 8, 3]
[[model.layers]]
type = "Convolution2D"
filters = 4
kernel_size = 3
padding = "same"
name = "c"
[[model.layers]]
type = "LeakyReLU"
alpha = 0.2
[[model.layers]]
type = "GlobalAvgPool2D"
keepdims = true
[[model.layers]]
type = "Dense"
units = 4
activation = "sigmoid"
name = "se"
[[model.layers]]
type = "Multiply"
inputs = ["c", "se"]
[[model.layers]]
type = "MaxPool2D"
[[model.layers]]
type = "Reshape"
target_shape = [16, 4]
[[model.layers]]
type = "AvgPool1D"
[[model.layers]]
type = "GRU"
units = 3
seed = 7
implementation = 2
dropout = 0.1
[[model.layers]]
type = "Dense"
units = 1
"""
        with tempfile.TemporaryDirectory() as t:
            path = os.path.join(t, "keras.toml")
            with open(path, "w") as f:
                f.write(spec)
            r = run(["summary", path, "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            s = json.loads(r.stdout)
            got = [(l["type"], l["output_shape"], l["params"]) for l in s["layers"]]
            self.assertEqual(got, [("Conv2D", [8, 8, 4], conv2d(3, 3, 3, 4)),
                                   ("LeakyReLU", [8, 8, 4], 0),
                                   ("GlobalAveragePooling2D", [1, 1, 4], 0),
                                   ("Dense", [1, 1, 4], dense(4, 4)),
                                   ("Multiply", [8, 8, 4], 0),
                                   ("MaxPooling2D", [4, 4, 4], 0),
                                   ("Reshape", [16, 4], 0),
                                   ("AveragePooling1D", [8, 4], 0),
                                   ("GRU", [3], 3 * (4 * 3 + 3 * 3 + 2 * 3)),  # reset_after: two biases
                                   ("Dense", [1], dense(3, 1))])
            # As Keras's merges, an input of a lower rank aligns with the others' last axes: (None, 4) scales every
            # pixel's channels as (None, 1, 1, 4) does.
            with open(path, "w") as f:
                f.write(spec.replace("keepdims = true", "keepdims = false"))
            r = run(["summary", path, "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            got = [(l["type"], l["output_shape"]) for l in json.loads(r.stdout)["layers"][2:5]]
            self.assertEqual(got, [("GlobalAveragePooling2D", [4]), ("Dense", [4]), ("Multiply", [8, 8, 4])])
            # Shapes that do not broadcast are still refused, saying why.
            with open(path, "w") as f:
                f.write(spec.replace("keepdims = true", "keepdims = false").replace("units = 4\nactivation",
                                                                                     "units = 3\nactivation"))
            r = run(["summary", path])
            cli_util.assert_input_error(self, r, "shapes that broadcast", "(None, 8, 8, 4)", "(None, 3)")

    def test_a_large_model_is_summarized_from_its_shapes(self):
        # 262 million parameters (1 GiB of weights, 3 GiB with Adam's moments): summary and check need their shapes
        # alone, so neither draws nor holds them. The peak memory of each run is read off its own rusage.
        with tempfile.TemporaryDirectory() as tmp:
            spec = os.path.join(tmp, "large.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = { shape = [64], dtype = "int32" }\n'
                        '[[model.layers]]\ntype = "Embedding"\ninput_dim = 250000\noutput_dim = 512\n'
                        '[[model.layers]]\ntype = "Flatten"\n[[model.layers]]\ntype = "Dense"\nunits = 4096\n'
                        '[[model.layers]]\ntype = "Dense"\nunits = 10\nactivation = "softmax"\n'
                        '[train]\nloss = "sparse_categorical_crossentropy"\nbatch_size = 32\n')
            params = embedding(250000, 512) + dense(64 * 512, 4096) + dense(4096, 10)
            for command in (["summary", spec, "--json"], ["check", spec]):
                with self.subTest(command=command[0]):
                    with open(os.path.join(tmp, "out"), "w+") as out, open(os.path.join(tmp, "err"), "w+") as err:
                        p = subprocess.Popen([cli_util.TRAINER] + command, stdout=out, stderr=err)
                        _, status, usage = os.wait4(p.pid, 0)  # this run's own peak memory
                        out.seek(0)
                        err.seek(0)
                        out, err = out.read(), err.read()
                    self.assertEqual(os.waitstatus_to_exitcode(status), 0, err)
                    peak_mib = usage.ru_maxrss / 1024
                    self.assertLess(peak_mib, 400, f"{command[0]} held {peak_mib:.0f} MiB")
                    if command[0] == "summary":
                        self.assertEqual(json.loads(out)["total_params"], params)
                    else:
                        self.assertIn(f"{params} parameters", err)

    def test_batch_size_changes_the_plan(self):
        small = json.loads(run(["summary", sample("fashion_mnist/cnn.toml"), "--json", "--batch-size", "8"]).stdout)
        large = json.loads(run(["summary", sample("fashion_mnist/cnn.toml"), "--json", "--batch-size", "256"]).stdout)
        self.assertEqual((small["batch_size"], large["batch_size"]), (8, 256))
        self.assertLess(small["planned_bytes"], large["planned_bytes"])
        self.assertEqual(small["total_params"], large["total_params"])

    def test_a_model_without_training_settings(self):
        # Like Keras's model.summary() before compile: the layers, with no plan of a training step; check and
        # fit refuse the spec, naming the missing section.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.toml")
            with open(path, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "Dense"\nunits = 3\n')
            r = run(["summary", path, "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            s = json.loads(r.stdout)
            self.assertEqual(s["total_params"], dense(4, 3))
            self.assertIsNone(s["planned_bytes"])
            self.assertIsNone(s["optimizer_state_bytes"])
            r = run(["summary", path])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("Planned memory: the spec has no [train] section", r.stdout)
            for command in (["check", path], ["fit", path, "--output-dir", os.path.join(d, "run")],
                            ["bench", path]):
                with self.subTest(command=command[0]):
                    r = run(command)
                    cli_util.assert_input_error(self, r, "model.toml", "no [train] section")
            self.assertFalse(os.path.exists(os.path.join(d, "run")))

    def test_a_checkpoint_shows_the_model_it_holds(self):
        # summary, check and bench take a checkpoint for its spec (the file read as TOML: "invalid utf-8");
        # fit refuses one with the --resume hint.
        with tempfile.TemporaryDirectory() as d:
            spec = sample("fashion_mnist/mlp.toml")
            r = run(["fit", spec, "--device", "cpu", "--epochs", "1", "--set", "data.train.limit=128", "--set",
                     "data.validation.limit=64", "--output-dir", d, "-q"], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            ckpt = os.path.join(d, "last.ckpt")
            want = run(["summary", spec, "--json", "--set", "model.layers.1.units=32"])
            got = run(["summary", ckpt, "--json", "--set", "model.layers.1.units=32"])
            self.assertEqual(got.returncode, 0, got.stderr)
            self.assertEqual(json.loads(got.stdout), json.loads(want.stdout))
            self.assertEqual(json.loads(got.stdout)["layers"][1]["params"], dense(784, 32))
            r = run(["check", ckpt])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"{ckpt}: ok", r.stderr)
            r = run(["fit", ckpt, "--output-dir", os.path.join(d, "again")])
            cli_util.assert_input_error(self, r, "last.ckpt", "is a checkpoint, not a model spec")
            self.assertIn(f"trainer fit --resume {ckpt}", r.stderr)
            # A spec whose ninth byte is '{' (as a checkpoint's is, after its header's length) is still a spec.
            with open(spec) as f:
                text = f.read()
            brace = os.path.join(d, "brace")
            with open(brace, "w") as f:
                f.write("# model {a comment}\n" + text)
            r = run(["check", brace])
            self.assertEqual(r.returncode, 0, r.stderr)
            # A checkpoint cut short inside its header is still one, for its reader to say so (not a TOML error).
            with open(ckpt, "rb") as f:
                head = f.read(1000)
            cut = os.path.join(d, "cut.ckpt")
            with open(cut, "wb") as f:
                f.write(head)
            r = run(["summary", cut])
            cli_util.assert_input_error(self, r, "cut.ckpt", "runs past the end of the file")
            # So is a .ckpt whose header's length is damaged (not TOML with a parse error at 1:1).
            damaged = os.path.join(d, "damaged.ckpt")
            with open(damaged, "wb") as f:
                f.write(head[:7] + b"\x10" + head[8:])
            for command in ("summary", "check"):
                r = run([command, damaged])
                cli_util.assert_input_error(self, r, "damaged.ckpt", "byte 0: the header length")
            # A spec named .ckpt (text that sets format_version) is read as the spec it is.
            named = os.path.join(d, "spec.ckpt")
            with open(named, "w") as f:
                f.write(text)
            r = run(["summary", named, "--json", "--set", "model.layers.1.units=32"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout), json.loads(want.stdout))
            r = run(["check", named])
            self.assertEqual(r.returncode, 0, r.stderr)

    def test_an_onnx_lstm_read_by_its_last_state(self):
        # An LSTM whose Y output is absent (only Y_h is read, as trainer's and Keras's exports do) still counts its
        # gate products, and integer initializers (a Reshape's shape) are no parameters.
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        steps, feats, units = 5, 3, 4
        rng = np.random.default_rng(0)
        inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
                 for name, shape in (("W", [1, 4 * units, feats]), ("R", [1, 4 * units, units]),
                                     ("B", [1, 8 * units]))]
        inits.append(numpy_helper.from_array(np.array([-1, units], np.int64), "shape"))
        nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
                 helper.make_node("LSTM", ["xt", "W", "R", "B"], ["", "yh"], hidden_size=units),
                 helper.make_node("Reshape", ["yh", "shape"], ["y"])]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, feats])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", units])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "lstm.onnx")
            onnx.save(model, path)
            r = run(["summary", path, "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            s = json.loads(r.stdout)
            self.assertEqual(s["total_params"], lstm(feats, units) + 4 * units)  # ONNX's B holds two biases
            rows = {l["type"]: l for l in s["layers"]}
            self.assertEqual(rows["LSTM"]["flops_per_sample"], 2 * steps * 4 * units * (feats + units))
            self.assertEqual(rows["Reshape"]["params"], 0)
            # The batch axis where it is not first: null in JSON, N in the table.
            self.assertEqual(rows["LSTM"]["output_shape"], [1, None, units])
            self.assertEqual(rows["Transpose"]["output_shape"], [steps, None, feats])
            self.assertEqual(rows["Reshape"]["output_shape"], [units])
            r = run(["summary", path])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, rf"\bLSTM +\(1, N, {units}\) ")

    def test_a_keras_head_keeps_its_shapes_beside_onnx_nodes_of_its_names(self):
        # The ONNX model's last node is named softmax, as the head's Softmax layer is by default.
        import numpy as np
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 3, 3, 3)).astype(np.float32), "W")
        nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                 helper.make_node("Softmax", ["c"], ["y"], axis=1, name="softmax")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 4, 5])], [w])
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "convsm.onnx")
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
            head = os.path.join(d, "head.toml")
            with open(head, "w") as f:
                f.write('format_version = 1\n[model]\n[[model.layers]]\ntype = "Flatten"\n[[model.layers]]\n'
                        'type = "Dense"\nunits = 2\n[[model.layers]]\ntype = "Softmax"\n[train]\n'
                        'loss = "categorical_crossentropy"\nbatch_size = 4\n')
            r = run(["summary", path, "--train", head, "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            rows = [(l["name"], l["type"], l["output_shape"]) for l in json.loads(r.stdout)["layers"]]
            self.assertEqual(rows[1], ("softmax", "Softmax", [8, 4, 5]))  # the ONNX node
            self.assertEqual(rows[-1], ("softmax", "Softmax", [2]))  # the head's layer


if __name__ == "__main__":
    cli_util.main()
