"""trainer fit on ONNX models: `trainer fit MODEL.onnx --train TRAIN.toml` and `[model] onnx = ...` specs.

The models are built here with onnx.helper (an MLP with a residual Add and Dropout, a CNN with BatchNormalization,
a Shape -> Gather -> Unsqueeze -> Concat -> Reshape chain, an Embedding (Gather) + LSTM classifier) at opsets 11
to 21, and, where Debian's python3-torch is importable, exported from PyTorch. Each one is fine-tuned, exported
with `trainer export` and run in onnxruntime: the exported model keeps the node and initializer names, and it
computes what the original graph computes with the checkpoint's weights. Bad models (an unsupported op, opset 22,
truncated or random bytes) exit 2 naming the file and the place, before anything runs.
"""

import gzip
import json
import os
import shutil
import subprocess
import tempfile
import unittest

import cli_util
from cli_util import run

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
except ImportError:  # reported as a skip, never as a pass
    np = onnx = ort = None

TRAIN_N, VAL_N = 1500, 400


def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


# --- models -----------------------------------------------------------------------------------------------------

def weight(rng, name, shape):
    fan_in = int(np.prod(shape[1:]))
    return nh.from_array((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32), name)


def vector(name, values):
    return nh.from_array(np.asarray(values, dtype=np.float32), name)


def ints(name, values):
    return nh.from_array(np.asarray(values, dtype=np.int64), name)


def model(nodes, inputs, outputs, initializers, opset):
    g = h.make_graph(nodes, "g", inputs, outputs, initializers)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], producer_name="test_onnx_fit")
    m.ir_version = {11: 6, 12: 7, 13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10, 22: 10}[opset]
    return m


def mlp_model(opset, seed=0):
    """x [N, 784] -> Gemm -> Relu -> Dropout -> Gemm -> Add (residual) -> Relu -> Identity -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    if opset < 12:
        dropout = h.make_node("Dropout", ["a1"], ["d1"], name="dropout", ratio=0.1)  # opset 10's attribute form
        extra = []
    else:
        dropout = h.make_node("Dropout", ["a1", "dropout.ratio"], ["d1"], name="dropout")
        extra = [vector("dropout.ratio", 0.1)]
    nodes = [
        h.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["h1"], name="fc1", transB=1),
        h.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        dropout,
        h.make_node("Gemm", ["d1", "fc2.weight", "fc2.bias"], ["h2"], name="fc2", transB=1),
        h.make_node("Add", ["h2", "d1"], ["r"], name="residual"),
        h.make_node("Relu", ["r"], ["a2"], name="relu2"),
        h.make_node("Identity", ["a2"], ["a2_id"], name="identity"),
        h.make_node("Gemm", ["a2_id", "fc3.weight", "fc3.bias"], ["logits"], name="fc3", transB=1),
        h.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    inits = [weight(rng, "fc1.weight", (48, 784)), vector("fc1.bias", np.zeros(48)),
             weight(rng, "fc2.weight", (48, 48)), vector("fc2.bias", np.zeros(48)),
             weight(rng, "fc3.weight", (10, 48)), vector("fc3.bias", np.zeros(10))] + extra
    return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 784])],
                 [h.make_tensor_value_info("probs", T.FLOAT, ["N", 10])], inits, opset)


def cnn_model(opset=17, seed=1):
    """x [N, 1, 28, 28] -> Conv -> BatchNormalization (inference form) -> Relu -> MaxPool -> Conv -> Relu ->
    MaxPool -> Flatten -> Gemm: logits."""
    rng = np.random.default_rng(seed)
    nodes = [
        h.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["c1"], name="conv1", pads=[1, 1, 1, 1],
                    kernel_shape=[3, 3]),
        h.make_node("BatchNormalization", ["c1", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"],
                    ["b1"], name="bn1", epsilon=1e-5, momentum=0.9),
        h.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        h.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Conv", ["p1", "conv2.weight", "conv2.bias"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                    kernel_shape=[3, 3]),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        h.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        h.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [weight(rng, "conv1.weight", (6, 1, 3, 3)), vector("conv1.bias", np.zeros(6)),
             vector("bn1.weight", np.ones(6)), vector("bn1.bias", np.zeros(6)),
             vector("bn1.running_mean", np.full(6, 0.1)), vector("bn1.running_var", np.full(6, 0.5)),
             weight(rng, "conv2.weight", (8, 6, 3, 3)), vector("conv2.bias", np.zeros(8)),
             weight(rng, "fc.weight", (10, 8 * 7 * 7)), vector("fc.bias", np.zeros(10))]
    return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["batch", 1, 28, 28])],
                 [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])], inits, opset)


def shape_chain_model(batch_dim="N", opset=13, seed=2):
    """x.view(x.size(0), -1) as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, with Constant
    nodes and a Cast, then Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    const = lambda name, values: h.make_node(  # noqa: E731
        "Constant", [], [name], name=name + "_node", value=nh.from_array(np.asarray(values, dtype=np.int64), name))
    nodes = [
        h.make_node("Shape", ["x"], ["shape"], name="shape"),
        const("zero", 0),
        h.make_node("Gather", ["shape", "zero"], ["n"], name="gather", axis=0),
        const("axes0", [0]),
        h.make_node("Unsqueeze", ["n", "axes0"], ["n1"], name="unsqueeze"),
        const("minus_one", [-1]),
        h.make_node("Concat", ["n1", "minus_one"], ["target"], name="concat", axis=0),
        h.make_node("Cast", ["target"], ["target64"], name="cast", to=T.INT64),
        h.make_node("Reshape", ["x", "target64"], ["flat"], name="reshape"),
        h.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        h.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    inits = [weight(rng, "fc.weight", (10, 784)), vector("fc.bias", np.zeros(10))]
    return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [batch_dim, 1, 28, 28])],
                 [h.make_tensor_value_info("probs", T.FLOAT, [batch_dim, 10])], inits, opset)


VOCAB, STEPS, EMBED, HIDDEN = 20, 6, 8, 12


def lstm_model(opset=14, seed=3):
    """Token ids [N, T] -> Gather (embedding) -> Transpose -> LSTM -> Squeeze(Y_h) -> Gemm: two logits."""
    rng = np.random.default_rng(seed)
    nodes = [
        h.make_node("Gather", ["embedding.weight", "ids"], ["e"], name="embedding", axis=0),
        h.make_node("Transpose", ["e"], ["e_t"], name="time_major", perm=[1, 0, 2]),
        h.make_node("LSTM", ["e_t", "lstm.W", "lstm.R", "lstm.B"], ["", "h_last"], name="lstm", hidden_size=HIDDEN),
        h.make_node("Squeeze", ["h_last", "squeeze_axes"], ["h"], name="squeeze"),
        h.make_node("Gemm", ["h", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
    ]
    inits = [nh.from_array((rng.standard_normal((VOCAB, EMBED)) * 0.5).astype(np.float32), "embedding.weight"),
             nh.from_array((rng.standard_normal((1, 4 * HIDDEN, EMBED)) * 0.3).astype(np.float32), "lstm.W"),
             nh.from_array((rng.standard_normal((1, 4 * HIDDEN, HIDDEN)) * 0.3).astype(np.float32), "lstm.R"),
             vector("lstm.B", np.zeros((1, 8 * HIDDEN))), ints("squeeze_axes", [0]),
             weight(rng, "fc.weight", (2, HIDDEN)), vector("fc.bias", np.zeros(2))]
    return model(nodes, [h.make_tensor_value_info("ids", T.INT64, ["N", STEPS])],
                 [h.make_tensor_value_info("logits", T.FLOAT, ["N", 2])], inits, opset)


def unsupported_model():
    nodes = [h.make_node("Relu", ["x"], ["a"], name="fine"),
             # Side branches whose shapes depend on values, which a static plan cannot hold.
             h.make_node("Unique", ["a"], ["b"], name="unique_here"),
             h.make_node("Unique", ["a"], ["c"]),  # unnamed: reported by its index
             h.make_node("Softmax", ["a"], ["y"], name="softmax")]
    return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 784])],
                 [h.make_tensor_value_info("y", T.FLOAT, ["N", 784])], [], 17)


def weights_of(m):
    return {i.name: nh.to_array(i) for i in m.graph.initializer}


def with_weights(m, values):
    """A copy of model m whose initializers take the values of the same names."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    for init in m2.graph.initializer:
        if init.name in values:
            init.CopyFrom(nh.from_array(np.asarray(values[init.name], dtype=nh.to_array(init).dtype), init.name))
    return m2


def untied(m, exported):
    """A copy of model m as trainer read it: the Identities of initializers (PyTorch's merge of equal
    initializers) whose outputs the export of its training holds as initializers of their own."""
    m2 = onnx.ModelProto()
    m2.CopyFrom(m)
    g = m2.graph
    inits = {i.name: i for i in g.initializer}
    apart = {i.name for i in exported.graph.initializer}
    kept = []
    for n in g.node:
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] in apart:
            copy = g.initializer.add()
            copy.CopyFrom(inits[n.input[0]])
            copy.name = n.output[0]
            inits[copy.name] = copy
        else:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return m2


def cross_entropy(out, labels, logits):
    if logits:
        out = out - out.max(axis=1, keepdims=True)
        logp = out - np.log(np.exp(out).sum(axis=1, keepdims=True))
    else:
        logp = np.log(np.maximum(out, 1e-30))
    return float(-logp[np.arange(len(labels)), labels].mean())


def run_onnx(m, feeds):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


@unittest.skipIf(ort is None, "numpy, onnx and onnxruntime are needed (tools/install-deps.sh installs them)")
class OnnxFit(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        if cli_util.have_fashion():
            d = cli_util.FASHION_DIR
            cls.val_x = idx(os.path.join(d, "t10k-images-idx3-ubyte.gz"))[:VAL_N].astype(np.float32) / 255
            cls.val_y = idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))[:VAL_N].astype(np.int64)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def save(self, m, name):
        onnx.checker.check_model(m, full_check=True)
        p = self.path(name)
        onnx.save(m, p)
        return p

    def fashion_toml(self, name, from_logits=False, epochs=2, extra=""):
        d = cli_util.FASHION_DIR
        text = f"""format_version = 1
{extra}
[data]
scale = 0.00392156862745098
[data.train]
x = "{d}/train-images-idx3-ubyte.gz"
y = "{d}/train-labels-idx1-ubyte.gz"
limit = {TRAIN_N}
[data.validation]
x = "{d}/t10k-images-idx3-ubyte.gz"
y = "{d}/t10k-labels-idx1-ubyte.gz"
limit = {VAL_N}
[train]
loss = "sparse_categorical_crossentropy"
from_logits = {"true" if from_logits else "false"}
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 64
[train.optimizer]
name = "adam"
learning_rate = 0.002
"""
        p = self.path(name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def fit(self, args, out, timeout=300):
        r = run(["fit"] + args + ["--output-dir", out, "--log-format", "jsonl", "--quiet"], timeout=timeout)
        self.assertEqual(r.returncode, 0, r.stderr)
        events = cli_util.json_lines(self, r.stdout)
        return [e for e in events if e.get("event") == "epoch"], os.path.join(out, "last.ckpt")

    def export(self, ckpt, name):
        p = self.path(name)
        r = run(["export", ckpt, "-o", p, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        m = onnx.load(p)
        onnx.checker.check_model(m, full_check=True)
        return m

    def check_round_trip(self, original, exported, ckpt, feeds_exported, feeds_original):
        """Node and initializer names survive; the export computes what the original graph computes with the
        checkpoint's weights and running statistics."""
        original = untied(original, exported)
        # Import folds shape arithmetic: Constant and Shape nodes, and nodes that read only values folded so far
        # or integer initializers.
        constant = {i.name for i in original.graph.initializer if i.data_type in (T.INT64, T.INT32)}
        kept_nodes = set()
        for n in original.graph.node:
            if n.op_type in ("Constant", "Shape") or all(i in constant for i in n.input if i):
                constant.update(n.output)
            else:
                kept_nodes.add(n.name)
        self.assertLessEqual(kept_nodes, {n.name for n in exported.graph.node})
        exported_inits = weights_of(exported)
        # (but a Dropout's training_mode, which the inference form does not read)
        used = {i for n in original.graph.node for i in (n.input[:2] if n.op_type == "Dropout" else n.input)}
        self.assertLessEqual({i.name for i in original.graph.initializer if i.name in used}, set(exported_inits))
        trained = cli_util.read_checkpoint(ckpt)
        for name, value in weights_of(original).items():
            if name in trained:
                np.testing.assert_array_equal(exported_inits[name], trained[name], err_msg=name)
        want = run_onnx(with_weights(original, trained), feeds_original)
        got = run_onnx(exported, feeds_exported)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        return trained

    # --- training ------------------------------------------------------------------------------------------------

    @cli_util.skip_without_fashion
    def test_mlp_with_residual_fine_tunes_exports_and_round_trips(self):
        for opset in (11, 21):
            with self.subTest(opset=opset):
                original = mlp_model(opset)
                path = self.save(original, f"mlp{opset}.onnx")
                before = cross_entropy(run_onnx(original, {"x": self.val_x.reshape(VAL_N, 784)}), self.val_y, False)
                epochs, ckpt = self.fit([path, "--train", self.fashion_toml(f"mlp{opset}.toml")],
                                        self.path(f"run_mlp{opset}"))
                self.assertEqual(len(epochs), 2)
                # Fine-tuning lowers the loss: on the validation data, below the model's own before training.
                self.assertLess(epochs[-1]["val_loss"], before)
                self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
                exported = self.export(ckpt, f"mlp{opset}_out.onnx")
                x = self.val_x[:50].reshape(50, 784)
                trained = self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})
                self.assertFalse(np.array_equal(trained["fc1.weight"], nh.to_array(original.graph.initializer[0])))
                # Dropout's ratio is read where no gradient flows: a constant, not a trained weight.
                self.assertNotIn("dropout.ratio", trained)

    @cli_util.skip_without_fashion
    def test_an_onnx_model_trains_alike_on_one_and_several_replicas_and_exports(self):
        # ONNX in, trained on 2 replicas (and 2 with the optimizer state sharded), ONNX out: what one replica
        # trains, dropout masks included, and an export that computes what the checkpoint's weights do.
        original = mlp_model(21)
        path = self.save(original, "mlp_replicas.onnx")
        spec = [path, "--train", self.fashion_toml("mlp_replicas.toml"), "--device", "cpu"]
        runs = {}
        for name, extra in (("one", []), ("two", ["--devices", "2"]),
                            ("two_sharded", ["--devices", "2", "--set", "parallel.shard_optimizer=true"])):
            epochs, ckpt = self.fit(spec + extra, self.path(f"run_replicas_{name}"))
            runs[name] = (epochs, ckpt, cli_util.read_checkpoint(ckpt))
        one_epochs, _, one = runs["one"]
        for name in ("two", "two_sharded"):
            epochs, _, got = runs[name]
            for key, want in one.items():
                if want.dtype.kind != "f":
                    continue
                scale = max(float(np.abs(want).max()), 1e-30)
                self.assertLessEqual(float(np.abs(want.astype(np.float64) - got[key]).max()) / scale, 1e-5,
                                     f"{name}: {key}")
            for a, b in zip(one_epochs, epochs):
                self.assertAlmostEqual(a["val_loss"], b["val_loss"], delta=1e-5)
        exported = self.export(runs["two"][1], "mlp_replicas_out.onnx")
        x = self.val_x[:50].reshape(50, 784)
        self.check_round_trip(original, exported, runs["two"][1], {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_cnn_batch_norm_trains_on_batch_statistics_and_updates_running_ones(self):
        original = cnn_model()
        path = self.save(original, "cnn.onnx")
        spec = self.path("cnn_spec.toml")
        self.fashion_toml("cnn_spec.toml", from_logits=True, epochs=1, extra='[model]\nonnx = "cnn.onnx"\n')
        epochs, ckpt = self.fit([spec], self.path("run_cnn"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "cnn_out.onnx")
        x = self.val_x[:40, None]
        trained = self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})
        # The running statistics are state: trained from the batches, saved, and exported.
        self.assertIn("bn1.running_mean", trained)
        self.assertFalse(np.allclose(trained["bn1.running_mean"], 0.1))
        self.assertFalse(np.allclose(trained["bn1.running_var"], 0.5))
        bn = [n for n in exported.graph.node if n.op_type == "BatchNormalization"]
        self.assertEqual([len(n.output) for n in bn], [1])  # inference form

    @cli_util.skip_without_fashion
    def test_frozen_initializers_stay_fixed(self):
        original = cnn_model(seed=4)
        self.save(original, "frozen.onnx")
        extra = '[model]\nonnx = "frozen.onnx"\nfreeze = ["conv1.*", "bn1.*"]\n'
        spec = self.fashion_toml("frozen.toml", from_logits=True, epochs=1, extra=extra)
        _, ckpt = self.fit([spec], self.path("run_frozen"))
        trained = cli_util.read_checkpoint(ckpt)
        # Frozen ones are constants: not in the checkpoint, so the export takes them from the model file.
        for name in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.running_mean"):
            self.assertNotIn(name, trained)
        self.assertFalse(np.array_equal(trained["conv2.weight"], weights_of(original)["conv2.weight"]))
        exported = self.export(ckpt, "frozen_out.onnx")
        for name in ("conv1.weight", "bn1.running_var"):
            np.testing.assert_array_equal(weights_of(exported)[name], weights_of(original)[name])
        # A pattern that matches nothing is a mistake, reported at its place.
        bad = self.fashion_toml("frozen_bad.toml", from_logits=True, epochs=1,
                                extra='[model]\nonnx = "frozen.onnx"\nfreeze = ["conv1.*", "conv9.*"]\n')
        r = run(["fit", bad])
        cli_util.assert_input_error(self, r, "frozen_bad.toml:4:", "conv9.*", "matches no initializer")
        # One running statistic frozen, the other not: neither form does that (it ran in the inference form,
        # the unfrozen variance never updated).
        half = self.fashion_toml("frozen_half.toml", from_logits=True, epochs=1,
                                 extra='[model]\nonnx = "frozen.onnx"\nfreeze = ["bn1.running_mean"]\n')
        r = run(["fit", half])
        cli_util.assert_input_error(self, r, "running mean 'bn1.running_mean' is frozen and its running variance "
                                    "'bn1.running_var' is not", "freeze both running statistics")

    def test_an_initializer_holding_minus_infinity_is_a_constant_mask(self):
        # A mask kept in a float buffer (PyTorch's causal attn_mask: 0 and -inf) reaches the gradient; trained,
        # its -inf entries would turn NaN. It stays as it is, and the finite weights train.
        rng = np.random.default_rng(7)
        mask = np.array([-np.inf, 0.1, 0.2, -np.inf], np.float32)
        m = model([h.make_node("Add", ["input", "mask"], ["a"]), h.make_node("Relu", ["a"], ["r"]),
                   h.make_node("MatMul", ["r", "W"], ["output"])],
                  [h.make_tensor_value_info("input", T.FLOAT, ["N", 4])],
                  [h.make_tensor_value_info("output", T.FLOAT, ["N", 2])],
                  [nh.from_array(mask, "mask"), weight(rng, "W", (4, 2))], 17)
        self.save(m, "masked.onnx")
        np.save(self.path("masked_x.npy"), rng.normal(size=(8, 4)).astype(np.float32))
        np.save(self.path("masked_y.npy"), rng.normal(size=(8, 2)).astype(np.float32))
        spec = self.path("masked.toml")
        with open(spec, "w") as f:
            f.write('format_version = 1\n[model]\nonnx = "masked.onnx"\n[data.train]\nx = "masked_x.npy"\n'
                    'y = "masked_y.npy"\n[train]\nloss = "mse"\nepochs = 3\nbatch_size = 8\n'
                    '[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
        _, ckpt = self.fit([spec], self.path("run_masked"))
        trained = cli_util.read_checkpoint(ckpt)
        self.assertNotIn("mask", trained)
        self.assertFalse(np.array_equal(trained["W"], weights_of(m)["W"]))
        np.testing.assert_array_equal(weights_of(self.export(ckpt, "masked_out.onnx"))["mask"], mask)
        s = json.loads(run(["summary", spec, "--json"]).stdout)
        self.assertEqual((s["trainable_params"], s["total_params"]), (8, 12))

    @cli_util.skip_without_fashion
    def test_shape_chain_folds_and_the_export_takes_any_batch(self):
        for batch_dim in ("N", 1):  # symbolic, and fixed at 1 as exports without dynamic axes have it
            with self.subTest(batch_dim=batch_dim):
                original = shape_chain_model(batch_dim)
                path = self.save(original, f"chain_{batch_dim}.onnx")
                epochs, ckpt = self.fit([path, "--train", self.fashion_toml(f"chain_{batch_dim}.toml", epochs=1)],
                                        self.path(f"run_chain_{batch_dim}"))
                self.assertGreater(epochs[-1]["val_accuracy"], 0.5)
                exported = self.export(ckpt, f"chain_{batch_dim}_out.onnx")
                self.assertNotIn("Shape", {n.op_type for n in exported.graph.node})
                x = self.val_x[:1, None]
                self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})
                # The folded [batch, -1] reads the batch from the input: other batch sizes run too.
                s = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
                self.assertEqual(s.run(None, {"x": self.val_x[:7, None]})[0].shape, (7, 10))

    def test_a_graph_written_back_keeps_no_unused_training_mode(self):
        # A batch-dependent reshape ([N, 3, 4] -> [3N, 4] -> Gemm -> [N, 6]) is exported as the imported graph with
        # its trained values; its Dropout's training_mode input, a constant the inference form does not read, goes
        # with its initializer (onnxruntime warned of the unused one), unless an If's branch still reads it.
        rng = np.random.default_rng(0)
        np.save(self.path("wb_x.npy"), rng.standard_normal((32, 3, 4)).astype(np.float32))
        np.save(self.path("wb_y.npy"), rng.standard_normal((32, 6)).astype(np.float32))
        train = self.path("written_back.toml")
        with open(train, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "wb_x.npy"\ny = "wb_y.npy"\n[train]\nloss = "mse"\n'
                    'epochs = 1\nbatch_size = 8\n')
        for branch in (False, True):
            with self.subTest(if_branch_reads_it=branch):
                nodes = [h.make_node("Shape", ["x"], ["shape"]), h.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                         h.make_node("Mul", ["n", "three"], ["n3"]), h.make_node("Unsqueeze", ["n3", "axis0"], ["n3u"]),
                         h.make_node("Concat", ["n3u", "four"], ["rows"], axis=0),
                         h.make_node("Reshape", ["x", "rows"], ["x2"]),
                         h.make_node("Dropout", ["x2", "ratio", "training_mode"], ["d"]),
                         h.make_node("Gemm", ["d", "w", "b"], ["g"], transB=1),
                         h.make_node("Unsqueeze", ["n", "axis0"], ["nu"]),
                         h.make_node("Concat", ["nu", "minus1"], ["out"], axis=0),
                         h.make_node("Reshape", ["g", "out"], ["y0" if branch else "y"])]
                inits = [ints("zero", 0), ints("three", 3), ints("axis0", [0]), ints("four", [4]), ints("minus1", [-1]),
                         vector("ratio", 0.3), nh.from_array(np.array(False), "training_mode"),
                         weight(rng, "w", (2, 4)), vector("b", np.zeros(2))]
                if branch:
                    then = h.make_graph([h.make_node("Cast", ["training_mode"], ["t"], to=T.FLOAT)], "then", [],
                                        [h.make_tensor_value_info("t", T.FLOAT, [])])
                    other = h.make_graph([h.make_node("Constant", [], ["e"], value=vector("zero_f", 0.0))], "else",
                                         [], [h.make_tensor_value_info("e", T.FLOAT, [])])
                    nodes += [h.make_node("If", ["cond"], ["flag"], then_branch=then, else_branch=other),
                              h.make_node("Add", ["y0", "flag"], ["y"])]
                    inits.append(nh.from_array(np.array(True), "cond"))
                original = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4])],
                                 [h.make_tensor_value_info("y", T.FLOAT, ["N", 6])], inits, 15)
                path = self.save(original, f"written_back_{branch}.onnx")
                epochs, ckpt = self.fit([path, "--train", train], self.path(f"run_written_back_{branch}"))
                exported = self.export(ckpt, f"written_back_{branch}_out.onnx")
                read = {i for n in exported.graph.node for i in n.input}
                unread = [i.name for i in exported.graph.initializer if i.name not in read]
                self.assertEqual(unread, ["training_mode"] if branch else [])
                x = np.load(self.path("wb_x.npy"))[:5]
                self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})  # onnxruntime runs it

    def test_embedding_lstm_classifier_learns(self):
        rng = np.random.default_rng(5)
        x = rng.integers(0, VOCAB, size=(1200, STEPS)).astype(np.int64)
        y = (x[:, -1] < VOCAB // 2).astype(np.int64)  # the class is decided by the last token
        for name, a in (("ids.npy", x[:1000]), ("labels.npy", y[:1000]), ("val_ids.npy", x[1000:]),
                        ("val_labels.npy", y[1000:])):
            np.save(self.path(name), a)
        original = lstm_model()
        self.save(original, "lstm.onnx")
        spec = self.path("lstm.toml")
        with open(spec, "w") as f:
            f.write(f"""format_version = 1
[model]
onnx = "lstm.onnx"
[data.train]
x = "ids.npy"
y = "labels.npy"
[data.validation]
x = "val_ids.npy"
y = "val_labels.npy"
[train]
loss = "sparse_categorical_crossentropy"
from_logits = true
metrics = ["accuracy"]
epochs = 6
batch_size = 32
[train.optimizer]
learning_rate = 0.01
""")
        epochs, ckpt = self.fit([spec], self.path("run_lstm"))
        self.assertGreater(epochs[-1]["val_accuracy"], 0.9)
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        exported = self.export(ckpt, "lstm_out.onnx")
        ids = x[1000:1020]
        self.check_round_trip(original, exported, ckpt, {"ids": ids}, {"ids": ids})
        # Token ids outside the embedding table are bad data, named by sample.
        bad = x[:1000].copy()
        bad[7, 2] = VOCAB
        np.save(self.path("ids.npy"), bad)
        r = run(["fit", spec, "--epochs", "1"])
        cli_util.assert_input_error(self, r, "sample 7")

    def torch_export(self, module_source, sample, input_name, path, opset=13):
        """Runs torch.onnx.export (Debian's python3-torch, TorchScript exporter) on the class Net that
        module_source defines, with a symbolic batch."""
        torch_python = "/usr/bin/python3"
        probe = subprocess.run([torch_python, "-c", "import torch"], capture_output=True) if os.path.exists(
            torch_python) else None
        if probe is None or probe.returncode != 0:
            self.skipTest("Debian's python3-torch is not importable by /usr/bin/python3")
        script = f"""
import inspect, torch
torch.manual_seed(0)
{module_source}
kw = dict(input_names=[{input_name!r}], output_names=["y"], dynamic_axes={{{input_name!r}: {{0: "batch"}}, "y": {{0: "batch"}}}},
          opset_version={opset})
if "dynamo" in inspect.signature(torch.onnx.export).parameters:
    kw["dynamo"] = False
torch.onnx.export(Net().eval(), {sample}, {path!r}, **kw)
"""
        r = subprocess.run([torch_python, "-c", script], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return onnx.load(path)

    @cli_util.skip_without_fashion
    def test_pytorch_exported_mlp_with_residual_add_fine_tunes(self):
        path = self.path("torch_res.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(64, 64)
        self.out = torch.nn.Linear(64, 10)
    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.out(h + torch.relu(self.fc2(h)))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertIn("Add", {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("torch_res.toml", from_logits=True, epochs=1)],
                                self.path("run_torch_res"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_res_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    def test_pytorch_exported_embedding_lstm_fine_tunes(self):
        # PyTorch writes the initial states as ConstantOfShape of the batch size: zeros, which import drops.
        path = self.path("torch_lstm.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 8)
        self.lstm = torch.nn.LSTM(8, 16, batch_first=True)
        self.fc = torch.nn.Linear(16, 1)
    def forward(self, ids):
        _, (h, _) = self.lstm(self.emb(ids))
        return torch.sigmoid(self.fc(h[-1]))
""", "torch.zeros(2, 10, dtype=torch.long)", "ids", path)
        self.assertIn("ConstantOfShape", {n.op_type for n in original.graph.node})
        rng = np.random.default_rng(11)
        ids = rng.integers(0, 50, (512, 10)).astype(np.int64)
        y = (ids[:, -1] < 25).astype(np.float32)  # the last token decides
        np.save(self.path("tl_x.npy"), ids)
        np.save(self.path("tl_y.npy"), y)
        t = self.path("torch_lstm.toml")
        with open(t, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "tl_x.npy"\ny = "tl_y.npy"\n[data.validation]\n'
                    'x = "tl_x.npy"\ny = "tl_y.npy"\n[train]\nloss = "binary_crossentropy"\n'
                    'metrics = ["accuracy"]\nepochs = 6\nbatch_size = 32\n'
                    '[train.optimizer]\nname = "adam"\nlearning_rate = 0.01\n')
        epochs, ckpt = self.fit([path, "--train", t], self.path("run_torch_lstm"))
        p = run_onnx(original, {"ids": ids}).ravel()
        before = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        self.assertLess(epochs[-1]["val_loss"], before)
        self.assertGreater(epochs[-1]["val_accuracy"], 0.9)
        exported = self.export(ckpt, "torch_lstm_out.onnx")
        self.check_round_trip(original, exported, ckpt, {"ids": ids[:20]}, {"ids": ids[:20]})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_cnn_fine_tunes(self):
        path = self.path("torch_cnn.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(6)
        self.conv2 = torch.nn.Conv2d(6, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8 * 7 * 7, 10)
    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.view(x.size(0), -1))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("torch.toml", from_logits=True, epochs=1)],
                                self.path("run_torch"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_mobile_cnn_fine_tunes(self):
        # ReLU6 (Clip), a depthwise convolution, HardSwish, SiLU, PReLU with a slope per channel, softsign and
        # adaptive max pooling (PyTorch writes these two with Abs, Div and MaxPool).
        path = self.path("torch_mobile.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = torch.nn.Conv2d(8, 16, 1)
        self.prelu = torch.nn.PReLU(16)
        self.fc = torch.nn.Linear(32, 10)
    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.stem(x)))
        x = torch.nn.functional.hardswish(self.dw(x))
        x = self.prelu(torch.nn.functional.silu(self.pw(x)))
        pooled = torch.cat([x.mean((2, 3)), torch.nn.functional.adaptive_max_pool2d(x, 1).flatten(1)], 1)
        return self.fc(torch.nn.functional.softsign(pooled))
""", "torch.zeros(2, 1, 28, 28)", "x", path, opset=14)
        self.assertLessEqual({"Clip", "HardSwish", "PRelu", "Abs"}, {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("mobile.toml", from_logits=True, epochs=2)],
                                self.path("run_mobile"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_mobile_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_encoder_decoder_with_conv_transpose_fine_tunes(self):
        # A U-Net-like block: strided convolutions down; ConvTranspose (with output_padding, and grouped),
        # nearest-neighbour and bilinear upsampling (Resize) up; a skip connection; group and instance
        # normalization (both InstanceNormalization in the export); reflection padding.
        path = self.path("torch_unet.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.up = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = torch.nn.ConvTranspose2d(4, 4, 3, padding=1, groups=2, bias=False)
        self.head = torch.nn.Conv2d(15, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 10)
        self.instance = torch.nn.InstanceNorm2d(8, affine=True)
        self.group = torch.nn.GroupNorm(2, 4)
    def forward(self, x):
        d = torch.relu(self.instance(self.down(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect"))))
        h = torch.relu(self.up2(torch.relu(self.group(self.up(d)))))
        u = torch.nn.functional.interpolate(d, scale_factor=2, mode="nearest")
        b = torch.nn.functional.interpolate(d[:, :2], scale_factor=2, mode="bilinear", align_corners=False)
        h = torch.relu(self.head(torch.cat([h, x, u, b], 1)))
        return self.fc(h.mean((2, 3)))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertLessEqual({"ConvTranspose", "Resize", "InstanceNormalization", "Pad"},
                             {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("unet.toml", from_logits=True, epochs=2)],
                                self.path("run_unet"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_unet_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})
        # trainer predict computes what onnxruntime computes with the export.
        np.save(self.path("unet_x.npy"), x * 255)
        r = run(["predict", ckpt, self.path("unet_x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        ours = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        np.testing.assert_allclose(ours, run_onnx(exported, {"x": x}), rtol=1e-4, atol=1e-4)

    @cli_util.skip_without_fashion
    def test_pytorch_exported_elementwise_ops_fine_tune(self):
        # Softplus, Elu, Selu, HardSigmoid, Abs, Max, Min, clamp (Clip with one bound), split (Split), repeat
        # (Tile) and the exact GELU (Erf).
        path = self.path("torch_elementwise.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(64, 10)
    def forward(self, x):
        h = self.fc1(x.flatten(1))
        a, b = h.split([32, 32], 1)
        a = torch.maximum(torch.nn.functional.softplus(a), torch.nn.functional.elu(b))
        a = a + a[:, :16].repeat(1, 2)
        b = torch.minimum(torch.nn.functional.selu(b), torch.abs(a)) + torch.nn.functional.hardsigmoid(b)
        h = torch.cat([a, torch.clamp(b, max=2.0)], 1)
        return self.fc2(torch.nn.functional.gelu(h))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        ops = {n.op_type for n in original.graph.node}
        self.assertLessEqual({"Softplus", "Elu", "Selu", "HardSigmoid", "Abs", "Max", "Min", "Clip", "Split",
                              "Erf", "Tile"}, ops)
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("elementwise.toml", from_logits=True,
                                                                    epochs=1)],
                                self.path("run_elementwise"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_elementwise_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_lrn_3d_pooling_and_inverse_trigonometry_fine_tune(self):
        # LocalResponseNorm exports as Pad, a 3-D AveragePool and an If (squeeze of an axis that may be 1) on a
        # condition the shapes decide; AvgPool3d and MaxPool3d (padding, ceil_mode); Atan, Asin, Acos, Mod.
        path = self.path("torch_lrn.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, stride=2)
        self.lrn = torch.nn.LocalResponseNorm(3)
        self.avg3 = torch.nn.AvgPool3d(2, stride=(2, 1, 1), padding=(0, 1, 1), count_include_pad=False)
        self.max3 = torch.nn.MaxPool3d(2, ceil_mode=True)
        self.fc = torch.nn.Linear(4 * 14 * 14 + 4 * 7 * 7, 10)
    def forward(self, x):
        h = self.lrn(torch.relu(self.conv(x))).unsqueeze(1)
        a = torch.atan(self.avg3(h).flatten(1))
        b = self.max3(h).flatten(1)
        b = torch.fmod(b, 0.5) + torch.asin(torch.tanh(b)) + torch.acos(torch.tanh(b))
        return self.fc(torch.cat([a, b], 1))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        ops = {n.op_type for n in original.graph.node}
        self.assertLessEqual({"If", "AveragePool", "MaxPool", "Atan", "Asin", "Acos", "Mod"}, ops)
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("lrn.toml", from_logits=True, epochs=1)],
                                self.path("run_lrn"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_lrn_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_einsums_fine_tune(self):
        # Einsum: a projection to heads (a weight of three indices), attention-like batched products, a diagonal,
        # a sum over an index one operand has alone, and an implicit output.
        path = self.path("torch_einsum.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(28, 4, 8) * 0.1)
        self.d = torch.nn.Parameter(torch.randn(8, 8) * 0.1)
        self.fc = torch.nn.Linear(4 * 28 * 8 + 8, 10)
    def forward(self, x):
        rows = x.flatten(1, 2)  # [N, 28, 28]: 28 rows of 28 pixels
        h = torch.einsum("nti,ihd->nhtd", rows, self.w)
        a = torch.einsum("nhtd,nhsd->nhts", h, h).softmax(-1)
        h = torch.einsum("nhts,nhsd->nhtd", a, h)
        diag = torch.einsum("ii->i", self.d) + torch.einsum("nhtd->nd", h)
        pooled = torch.einsum("ahtd,de", h, self.d)  # implicit output: a, e, h, t
        return self.fc(torch.cat([pooled.flatten(1), diag], 1))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertEqual([n.op_type for n in original.graph.node].count("Einsum"), 6)
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("einsum.toml", from_logits=True, epochs=1)],
                                self.path("run_einsum"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_einsum_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_pixel_shuffle_fine_tunes(self):
        # PixelShuffle (DepthToSpace in CRD mode), CELU and a lower triangle (Trilu).
        path = self.path("torch_shuffle.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 16, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 28 * 28, 10)
    def forward(self, x):
        h = torch.nn.functional.pixel_unshuffle(x, 2)      # [N, 4, 14, 14]
        h = torch.nn.functional.pixel_shuffle(self.conv(h), 2)  # [N, 4, 28, 28]
        h = torch.tril(torch.nn.functional.celu(h, 0.5))
        return self.fc(h.flatten(1))
""", "torch.zeros(2, 1, 28, 28)", "x", path, opset=14)
        ops = {n.op_type for n in original.graph.node}
        self.assertLessEqual({"DepthToSpace", "Celu", "Trilu"}, ops)  # pixel_unshuffle exports as Reshape, Transpose
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("shuffle.toml", from_logits=True, epochs=1)],
                                self.path("run_shuffle"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_shuffle_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_topk_pooling_fine_tunes(self):
        # The 8 largest of 64 features (TopK: the gradient reaches the chosen ones) and a cumulative sum.
        path = self.path("torch_topk.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(16, 10)
    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        top = h.topk(8, dim=1).values
        return self.fc2(torch.cat([top, top.cumsum(1)], 1))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertLessEqual({"TopK", "CumSum"}, {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("topk.toml", from_logits=True, epochs=1)],
                                self.path("run_topk"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_topk_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_gather_fine_tunes(self):
        # torch.gather (GatherElements) picking features in a fixed scrambled order: the gradient reaches the
        # gathered data.
        path = self.path("torch_gather.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(32, 10)
        self.register_buffer("order", (torch.arange(32) * 7 % 64).unsqueeze(0))
    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(torch.gather(h, 1, self.order.expand(h.shape[0], -1)))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertIn("GatherElements", {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("gather.toml", from_logits=True, epochs=1)],
                                self.path("run_gather"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_gather_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    def test_a_scatter_index_outside_its_axis_is_an_error(self):
        # ScatterElements along axis 1 of [N, 4] and ScatterND into [N, 4]: an index in [-4, 4) writes that
        # column of row 0, as onnxruntime does; 4 or -5 would be another row's element in the flat table, and is
        # an error naming the node instead.
        x = np.arange(12, dtype=np.float32).reshape(3, 4)
        np.save(self.path("scatter_x.npy"), x)
        for op in ("ScatterElements", "ScatterND"):
            for index in (3, -1, 4, -5):
                with self.subTest(op=op, index=index):
                    shape = [1, 1] if op == "ScatterElements" else [1, 2]
                    value = [[index]] if op == "ScatterElements" else [[0, index]]
                    attrs = {"axis": 1} if op == "ScatterElements" else {}
                    m = model([h.make_node(op, ["x", "i", "u"], ["y"], name="scatter", **attrs)],
                              [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                              [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
                              [ints("i", np.array(value).reshape(shape)),
                               vector("u", np.full([1, 1] if op == "ScatterElements" else [1], 42.0))], 16)
                    path = self.save(m, f"scatter_{op}_{index}.onnx")
                    r = run(["predict", path, self.path("scatter_x.npy"), "--probabilities", "--device", "cpu"])
                    if -4 <= index < 4:
                        self.assertEqual(r.returncode, 0, r.stderr)
                        want = run_onnx(m, {"x": x})
                        np.testing.assert_array_equal(np.loadtxt(r.stdout.splitlines(), delimiter=","), want)
                        self.assertEqual(want[0, index], 42)
                    else:
                        # Found when the constant indices are folded at import.
                        cli_util.assert_input_error(self, r, "scatter", f"index {index}", "out of range",
                                                    "of size 4")
        # Constant indices into the batch (axis 0): trainer builds the model at batch 1 too, where index 1 does not
        # exist. The error names the ONNX node and says why, not an internal node of its lowering.
        np.save(self.path("scatter_y.npy"), x)
        train = self.path("scatter_batch.toml")
        with open(train, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "scatter_x.npy"\ny = "scatter_y.npy"\n[train]\n'
                    'loss = "mse"\nepochs = 1\nbatch_size = 3\n')
        m = model([h.make_node("ScatterND", ["x", "i", "u"], ["y"], name="rows", reduction="add")],
                  [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])], [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
                  [ints("i", np.array([[0], [1]])), nh.from_array(np.ones((2, 4), np.float32), "u")], 16)
        err = cli_util.assert_input_error(self, run(["fit", self.save(m, "scatter_batch.onnx"), "--train", train]),
                                          "node 'rows' (ScatterND): index 1 is out of range for axis 0 of size 1",
                                          "hint: axis 0 is the batch")
        self.assertNotIn("wrapped", err)

    @cli_util.skip_without_fashion
    def test_pytorch_exported_scatters_fine_tune(self):
        # Tensor.scatter (ScatterElements) permuting features and a slice assignment (ScatterND): the gradient
        # reaches the scattered values, and not the overwritten ones.
        path = self.path("torch_scatter.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(784, 32)
        self.fc2 = torch.nn.Linear(32, 10)
        self.register_buffer("perm", (torch.arange(32) * 5 % 32).unsqueeze(0))
    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        s = torch.zeros_like(h).scatter(1, self.perm.expand(h.shape[0], -1), h)
        s[:, 0:4] = s[:, 4:8] * 2
        return self.fc2(s)
""", "torch.zeros(2, 1, 28, 28)", "x", path, opset=16)
        self.assertLessEqual({"ScatterElements", "ScatterND"}, {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("scatter.toml", from_logits=True, epochs=1)],
                                self.path("run_scatter"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        exported = self.export(ckpt, "torch_scatter_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_spatial_transformer_fine_tunes(self):
        # A spatial transformer: a linear localization net (identity at the start) predicts an affine map whose
        # grid warps the image through GridSample; the gradient reaches the localization net through the grid.
        path = self.path("torch_stn.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Linear(784, 6)
        torch.nn.init.zeros_(self.loc.weight)
        with torch.no_grad():
            self.loc.bias.copy_(torch.tensor([1.0, 0, 0, 0, 1, 0]))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
        self.register_buffer("base", torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, 784, 3))
        self.fc1 = torch.nn.Linear(784, 64)
        self.fc2 = torch.nn.Linear(64, 10)
    def forward(self, x):
        theta = self.loc(x.flatten(1)).view(-1, 2, 3)
        grid = torch.matmul(self.base, theta.transpose(1, 2)).view(-1, 28, 28, 2)
        warped = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                                 align_corners=True)
        return self.fc2(torch.relu(self.fc1(warped.flatten(1))))
""", "torch.zeros(2, 1, 28, 28)", "x", path, opset=16)
        self.assertIn("GridSample", {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("stn.toml", from_logits=True, epochs=1)],
                                self.path("run_stn"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        trained = cli_util.read_checkpoint(ckpt)
        self.assertGreater(np.abs(trained["loc.weight"]).max(), 1e-4)  # it started at zero
        exported = self.export(ckpt, "torch_stn_out.onnx")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})

    @cli_util.skip_without_fashion
    def test_pytorch_exported_reparameterization_trains_with_its_random_draws(self):
        # A variational bottleneck: z = mu + randn_like(mu) * exp(logvar / 2) (RandomNormalLike), trained through
        # the draw: the gradient reaches mu and logvar, and the draw changes every step.
        path = self.path("torch_vae.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(784, 64)
        self.mu = torch.nn.Linear(64, 16)
        self.logvar = torch.nn.Linear(64, 16)
        self.out = torch.nn.Linear(16, 10)
    def forward(self, x):
        h = torch.relu(self.fc(x.flatten(1)))
        mu = self.mu(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * self.logvar(h))
        return self.out(z)
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertIn("RandomNormalLike", {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("vae.toml", from_logits=True, epochs=2)],
                                self.path("run_vae"))
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"])
        self.assertLess(epochs[-1]["val_loss"], 1.5)  # far below chance's 2.3
        # The noise's scale trained: logvar's weights moved, which only the path through the draw reaches.
        start = {t.name: nh.to_array(t) for t in original.graph.initializer}
        trained = cli_util.read_checkpoint(ckpt)
        self.assertGreater(np.abs(trained["logvar.weight"] - start["logvar.weight"]).max(), 1e-3)

    @cli_util.skip_without_fashion
    def test_pytorch_exported_transformer_fine_tunes_and_exports_its_own_graph(self):
        # PyTorch's attention reshapes to [seq, batch * heads, dim]: the folded shape holds the batch, so the
        # export gives back the imported graph with the trained weights.
        path = self.path("torch_transformer.onnx")
        original = self.torch_export("""
class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Linear(28, 32)
        self.encoder = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.1, batch_first=True,
                                                        activation="gelu")
        self.fc = torch.nn.Linear(32, 10)
    def forward(self, x):
        h = self.encoder(self.embed(x.reshape(x.shape[0], 28, 28)))
        return self.fc(h.mean(1))
""", "torch.zeros(2, 1, 28, 28)", "x", path)
        self.assertIn("Erf", {n.op_type for n in original.graph.node})
        epochs, ckpt = self.fit([path, "--train", self.fashion_toml("transformer.toml", from_logits=True,
                                                                    epochs=2)],
                                self.path("run_transformer"))
        before = cross_entropy(run_onnx(original, {"x": self.val_x[:, None]}), self.val_y, True)
        self.assertLess(epochs[-1]["val_loss"], before)
        out = self.path("torch_transformer_out.onnx")
        r = run(["export", ckpt, "-o", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("the imported graph with its trained values", r.stderr)
        exported = onnx.load(out)
        onnx.checker.check_model(exported, full_check=True)
        # PyTorch's Identity nodes of merged initializers read apart come back as the initializers they name (an
        # untrained layer's zero biases and LayerNorm scales, here).
        inits = {i.name for i in original.graph.initializer}
        apart = {i.name for i in exported.graph.initializer}
        merged = [n for n in original.graph.node
                  if n.op_type == "Identity" and n.input[0] in inits and n.output[0] in apart]
        self.assertTrue(merged)
        self.assertEqual([n.name for n in exported.graph.node],
                         [n.name for n in original.graph.node if n not in merged])
        self.assertEqual(exported.producer_name, "trainer")
        x = self.val_x[:20, None]
        self.check_round_trip(original, exported, ckpt, {"x": x}, {"x": x})
        # trainer predict computes what onnxruntime computes with the export, at another batch size too.
        np.save(self.path("tx_x.npy"), self.val_x[:7, None] * 255)
        r = run(["predict", ckpt, self.path("tx_x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        ours = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        np.testing.assert_allclose(ours, run_onnx(exported, {"x": self.val_x[:7, None]}), rtol=1e-4, atol=1e-4)
        # --opset cannot apply to the imported graph.
        r = run(["export", ckpt, "-o", self.path("tx_opset.onnx"), "--opset", "19"])
        cli_util.assert_input_error(self, r, "depends on the batch size", "--opset")
        first = r.stderr.splitlines()[0]  # "trainer: error: NODE: node 'NODE' ...", the place said once
        where = first.split(": ")[2]
        self.assertNotIn(where + ": " + where, first)
        self.assertFalse(os.path.exists(self.path("tx_opset.onnx")))

    @cli_util.skip_without_fashion
    def test_logits_with_probability_loss_is_refused(self):
        self.save(cnn_model(), "logits.onnx")
        r = run(["fit", self.path("logits.onnx"), "--train", self.fashion_toml("probs.toml", from_logits=False)])
        cli_util.assert_input_error(self, r, "probs.toml:", "from_logits", "'fc'")

    @cli_util.skip_without_fashion
    def test_summary_and_check_take_an_onnx_spec(self):
        self.save(cnn_model(), "summary.onnx")
        spec = self.fashion_toml("summary.toml", from_logits=True, extra='[model]\nonnx = "summary.onnx"\n')
        r = run(["summary", spec, "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        s = json.loads(r.stdout)
        self.assertEqual([l["name"] for l in s["layers"]][:2], ["conv1", "bn1"])
        self.assertEqual(s["total_params"], sum(v.size for v in weights_of(cnn_model()).values()))
        self.assertEqual(s["trainable_params"], s["total_params"] - 12)  # the running statistics are state
        r = run(["check", spec, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        # The ONNX file itself: alone, summary lists its layers (no training plan); with --train, summary and
        # check take it as fit does.
        onnx_path = self.path("summary.onnx")
        r = run(["summary", onnx_path, "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        alone = json.loads(r.stdout)
        self.assertEqual(alone["layers"], s["layers"])
        self.assertIsNone(alone["planned_bytes"])
        train = self.fashion_toml("summary_train.toml", from_logits=True)
        r = run(["summary", onnx_path, "--train", train, "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["planned_bytes"], s["planned_bytes"])
        r = run(["check", onnx_path, "--train", train])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"{onnx_path} with {train}: ok", r.stderr)
        r = run(["check", onnx_path])
        cli_util.assert_input_error(self, r, onnx_path, "needs --train TOML", f"trainer check {onnx_path} --train")
        r = run(["check", spec, "--train", train])
        cli_util.assert_input_error(self, r, "--train goes with an ONNX model")

    # --- bad input -----------------------------------------------------------------------------------------------

    def write_train_toml(self, name="plain.toml"):
        p = self.path(name)
        with open(p, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\n')
        np.save(self.path("x.npy"), np.zeros((8, 784), np.float32))
        np.save(self.path("y.npy"), np.zeros((8, 784), np.float32))
        return p

    def assert_nothing_ran(self, r, out):
        self.assertEqual(r.stdout, "")
        self.assertFalse(os.path.exists(out) and os.listdir(out), "the run left files behind")

    def test_unsupported_ops_are_reported_once_before_anything_runs(self):
        path = self.save(unsupported_model(), "unsupported.onnx")
        out = self.path("run_unsupported")
        r = run(["fit", path, "--train", self.write_train_toml(), "--output-dir", out])
        err = cli_util.assert_input_error(self, r, path, "graph.node[1] 'unique_here' (Unique)",
                                          "graph.node[2] '#2' (Unique)")
        self.assertEqual(err.count("trainer: error"), 1)
        self.assertNotIn("'fine'", err)
        self.assert_nothing_ran(r, out)

    def test_opset_newer_than_supported(self):
        m = mlp_model(21)
        m.opset_import[0].version = 22
        path = self.path("opset22.onnx")
        onnx.save(m, path)
        out = self.path("run_opset22")
        r = run(["fit", path, "--train", self.write_train_toml(), "--output-dir", out])
        cli_util.assert_input_error(self, r, path, "opset 22", "opset_import")
        self.assert_nothing_ran(r, out)

    def test_truncated_and_random_bytes(self):
        good = mlp_model(17).SerializeToString()
        cases = {"truncated.onnx": good[:len(good) // 2],
                 "random.onnx": np.random.default_rng(6).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
                 "empty.onnx": b""}
        for name, data in cases.items():
            with self.subTest(name):
                path = self.path(name)
                with open(path, "wb") as f:
                    f.write(data)
                out = self.path("run_" + name)
                r = run(["fit", path, "--train", self.write_train_toml(), "--output-dir", out])
                needles = [path, "byte "] if data else [path, "empty"]
                err = cli_util.assert_input_error(self, r, *needles)
                if name == "truncated.onnx":
                    self.assertIn("graph.initializer[", err)
                    self.assertIn("truncated", err)
                self.assert_nothing_ran(r, out)

    def test_spec_schema_for_onnx_models(self):
        self.save(mlp_model(17), "schema.onnx")
        cases = {
            # onnx with layers: the file defines them.
            "both.toml": ('[model]\nonnx = "schema.onnx"\ninput = [784]\n', ["both.toml:4:", "model.input",
                                                                              "does not go with model.onnx"]),
            "freeze_alone.toml": ('[model]\ninput = [784]\nfreeze = ["a"]\n[[model.layers]]\ntype = "Dense"\n'
                                  'units = 2\n', ["freeze_alone.toml:4:", "applies to ONNX models"]),
            "missing.toml": ('[model]\nonnx = "nope.onnx"\n', ["missing.toml:3:", "nope.onnx", "does not exist"]),
        }
        for name, (model_text, needles) in cases.items():
            with self.subTest(name):
                p = self.path(name)
                with open(p, "w") as f:
                    f.write("format_version = 1\n" + model_text + '[train]\nloss = "mse"\n')
                cli_util.assert_input_error(self, run(["check", p]), *needles)
        # --train's file may not define the model; an ONNX model needs --train; --train needs an ONNX model.
        t = self.write_train_toml("with_model.toml")
        with open(t, "a") as f:
            f.write('[model]\ninput = [784]\n')
        cli_util.assert_input_error(self, run(["fit", self.path("schema.onnx"), "--train", t]), "with_model.toml:",
                                    "model.input", "schema.onnx")
        cli_util.assert_input_error(self, run(["fit", self.path("schema.onnx")]), "--train")
        cli_util.assert_input_error(self, run(["fit", self.path("both.toml"), "--train", t]), "--train")

    def test_spec_with_onnx_round_trips_through_to_toml(self):
        # A checkpoint embeds the resolved spec; --resume with the same model and TOML agrees with it.
        self.save(mlp_model(17), "rt.onnx")
        t = self.path("rt.toml")
        with open(t, "w") as f:
            f.write('format_version = 1\n[model]\nfreeze = ["fc1.*"]\n[data.train]\nx = "rt_x.npy"\ny = "rt_y.npy"\n'
                    '[train]\nloss = "sparse_categorical_crossentropy"\nepochs = 1\nbatch_size = 5\n')
        np.save(self.path("rt_x.npy"), np.random.default_rng(7).random((12, 784), dtype=np.float32))
        np.save(self.path("rt_y.npy"), np.arange(12, dtype=np.int64) % 10)
        out = self.path("run_rt")
        _, ckpt = self.fit([self.path("rt.onnx"), "--train", t], out)
        with open(ckpt, "rb") as f:
            data = f.read()
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        self.assertIn('onnx = "rt.onnx"', meta["spec"])
        self.assertIn('freeze = ["fc1.*"]', meta["spec"])
        r = run(["fit", "--resume", ckpt, self.path("rt.onnx"), "--train", t, "--epochs", "2", "--output-dir", out,
                 "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(t) as f:
            changed = f.read().replace('"fc1.*"', '"fc2.*"')
        t2 = self.path("rt2.toml")
        with open(t2, "w") as f:
            f.write(changed)
        r = run(["fit", "--resume", ckpt, self.path("rt.onnx"), "--train", t2])
        cli_util.assert_input_error(self, r, "does not match the checkpoint", "fc2.*")

    def test_checkpoint_embeds_the_onnx_model(self):
        # The checkpoint carries the model file's bytes: it resumes, exports and predicts with the file gone.
        model_path = self.save(mlp_model(17), "gone.onnx")
        with open(model_path, "rb") as f:
            model_bytes = f.read()
        t = self.path("gone.toml")
        with open(t, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "gone_x.npy"\ny = "gone_y.npy"\n'
                    '[train]\nloss = "sparse_categorical_crossentropy"\nepochs = 1\nbatch_size = 4\n')
        x = np.random.default_rng(8).random((8, 784), dtype=np.float32)
        np.save(self.path("gone_x.npy"), x)
        np.save(self.path("gone_y.npy"), np.arange(8, dtype=np.int64) % 10)
        out = self.path("run_gone")
        _, ckpt = self.fit([model_path, "--train", t], out)
        self.assertEqual(cli_util.read_checkpoint(ckpt, blobs=True)["@model.onnx"].tobytes(), model_bytes)
        os.remove(model_path)
        r = run(["fit", "--resume", ckpt, "--epochs", "2", "--output-dir", out, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = self.export(ckpt, "gone_out.onnx")
        r = run(["predict", ckpt, self.path("gone_x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        np.testing.assert_allclose(got, run_onnx(exported, {"x": x}), rtol=1e-5, atol=1e-6)

    def test_initializers_merged_by_an_identity_train_apart(self):
        # PyTorch's eval export of an untrained model keeps one of several equal initializers and names the others
        # by an Identity of it (here: the second layer deep-copied from the first, as nn.TransformerEncoder
        # does). They are the model's own parameters: one SGD step must update each with its own gradient.
        rng = np.random.default_rng(7)
        w = rng.standard_normal((4, 4)).astype(np.float32)
        b = np.zeros(4, np.float32)
        nodes = [h.make_node("Identity", ["l1.weight"], ["l2.weight"]),
                 h.make_node("Identity", ["l1.bias"], ["l2.bias"]),
                 h.make_node("Gemm", ["x", "l1.weight", "l1.bias"], ["z"], transB=1, name="/l1/Gemm"),
                 h.make_node("Relu", ["z"], ["a"], name="/Relu"),
                 h.make_node("Gemm", ["a", "l2.weight", "l2.bias"], ["y"], transB=1, name="/l2/Gemm")]
        m = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
                  [nh.from_array(w, "l1.weight"), nh.from_array(b, "l1.bias")], 17)
        path = self.save(m, "merged.onnx")
        x = rng.standard_normal((8, 4)).astype(np.float32)
        t = rng.standard_normal((8, 4)).astype(np.float32)
        np.save(self.path("merged_x.npy"), x)
        np.save(self.path("merged_y.npy"), t)
        toml = self.path("merged.toml")
        with open(toml, "w") as f:
            f.write('format_version = 1\n[data]\nshuffle = false\n[data.train]\nx = "merged_x.npy"\n'
                    'y = "merged_y.npy"\n[train]\nloss = "mse"\nepochs = 1\nbatch_size = 8\n'
                    '[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
        r = run(["summary", path, "--train", toml])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Total params: 40 ", r.stdout + r.stderr)
        _, ckpt = self.fit([path, "--train", toml], self.path("run_merged"))
        exported = self.export(ckpt, "merged_out.onnx")
        got = weights_of(exported)
        # The step by hand: mse over all 8 x 4 values.
        z = x @ w.T + b
        a = np.maximum(z, 0)
        dy = 2 * (a @ w.T + b - t) / t.size
        dz = (dy @ w) * (z > 0)
        want = {"l1.weight": w - 0.1 * dz.T @ x, "l1.bias": b - 0.1 * dz.sum(0),
                "l2.weight": w - 0.1 * dy.T @ a, "l2.bias": b - 0.1 * dy.sum(0)}
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        self.assertNotIn("Identity", {n.op_type for n in exported.graph.node})
        # A checkpoint of the merged group as one tensor (as earlier versions trained it: no 'l2.*' values) reads
        # each copy from the tensor the Identity reads: it predicts what the file computes with those weights.
        def without(prefix, name):
            with open(ckpt, "rb") as f:
                data = f.read()
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            payload = bytearray()
            for key in [k for k in header if k != "__metadata__"]:
                if key.startswith(prefix):
                    del header[key]
                    continue
                b, e = header[key]["data_offsets"]
                header[key]["data_offsets"] = [len(payload), len(payload) + e - b]
                payload += data[8 + n + b:8 + n + e]
            with open(self.path(name), "wb") as f:
                f.write(cli_util.signed_checkpoint(header, payload))
            return self.path(name)
        earlier = without("l2.", "merged_earlier.ckpt")
        self.assertNotIn("l2.weight", cli_util.read_checkpoint(earlier))
        r = run(["predict", earlier, self.path("merged_x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        tied = with_weights(m, {k: v for k, v in got.items() if k.startswith("l1.")})
        np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2),
                                   run_onnx(tied, {"x": x}), rtol=1e-5, atol=1e-6)
        r = run(["fit", "--resume", earlier, "--epochs", "2", "--output-dir", self.path("merged_resumed"), "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        # A checkpoint that lacks a weight (and the tensor it could copy) resumes nothing: that weight would
        # start over from its initial value.
        r = run(["fit", "--resume", without("l1.bias", "merged_lacking.ckpt"), "--epochs", "2", "--output-dir",
                 self.path("merged_lacking")])
        cli_util.assert_input_error(self, r, "the checkpoint has no 'l1.bias'", "the spec the checkpoint")
        # Inference is what the file computes.
        r = run(["predict", path, self.path("merged_x.npy"), "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2),
                                   run_onnx(m, {"x": x}), rtol=1e-5, atol=1e-6)
        # An anonymous copy (an exporter's folded constant, "onnx::...") of a weight the model shares stays one
        # tensor: a module called twice (PyTorch names its second call /l_1), or readers of other kinds (an
        # embedding's Gemm and a head's MatMul); a copy with a parameter's own name (b_copy) is its own.
        # The same ops in other modules are a copied layer's, read apart (blk_1 and blk_2 are two modules: no
        # /blk calls them).
        for first, second, params in (("/l/Gemm", "/l_1/Gemm", 16 + 4 + 4), ("/emb/Gemm", "/head/MatMul", 16 + 4),
                                      ("/enc/layers.0/Gemm", "/enc/layers.1/Gemm", 2 * (16 + 4)),
                                      ("/blk_1/Gemm", "/blk_2/Gemm", 2 * (16 + 4))):
            with self.subTest(readers=(first, second)):
                op = second.rsplit("/", 1)[1]
                nodes = [h.make_node("Identity", ["onnx::w"], ["onnx::w_copy"]),
                         h.make_node("Identity", ["b"], ["b_copy"]),
                         h.make_node("Gemm", ["x", "onnx::w", "b"], ["z"], transB=1, name=first),
                         h.make_node("Relu", ["z"], ["a"], name="/Relu"),
                         h.make_node("Gemm", ["a", "onnx::w_copy", "b_copy"], ["y"], transB=1, name=second)
                         if op == "Gemm" else h.make_node("MatMul", ["a", "onnx::w_copy"], ["y"], name=second)]
                inits = [nh.from_array(w, "onnx::w"), nh.from_array(b, "b")]
                shared = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                               [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])], inits, 17)
                if op == "MatMul":
                    del shared.graph.node[1]  # (no second bias)
                r = run(["summary", self.save(shared, "shared.onnx"), "--train", toml])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(f"Total params: {params} ", r.stdout)

    def test_initializers_merged_by_torch_export_train_apart(self):
        # PyTorch's torch.export (dynamo=True) merges equal initializers with no Identity: the second layer's
        # Gemm reads l1.weight and l1.bias directly, and only its metadata says it was made from l2's. One SGD
        # step must update each with its own gradient; the exporter's scalar (val_3, a scale) is no parameter.
        rng = np.random.default_rng(8)
        w = rng.standard_normal((4, 4)).astype(np.float32)
        b = np.zeros(4, np.float32)

        def made_of(node, fx, scopes):
            for key, value in (("pkg.torch.onnx.fx_node", fx), ("pkg.torch.onnx.name_scopes", scopes)):
                entry = node.metadata_props.add()
                entry.key, entry.value = key, value
            return node

        def exported(second_params, scale):
            nodes = [made_of(h.make_node("Gemm", ["x", "l1.weight", "l1.bias"], ["z"], transB=1, name="node_linear"),
                             "%linear : [num_users=1] = call_function[target=torch.ops.aten.linear.default](args = "
                             "(%x, %p_l1_weight, %p_l1_bias), kwargs = {})", "['', 'l1', 'linear']"),
                     h.make_node("Relu", ["z"], ["a"], name="node_relu"),
                     made_of(h.make_node("Gemm", ["a", "l1.weight", "l1.bias"], ["g"], transB=1, name="node_linear_1"),
                             "%linear_1 : [num_users=1] = call_function[target=torch.ops.aten.linear.default](args = "
                             f"(%relu, %p_{second_params}_weight, %p_{second_params}_bias), kwargs = {{}})",
                             f"['', '{second_params}', 'linear_1']"),
                     made_of(h.make_node("Mul", ["g", "val_3"], ["y"], name="node_mul"),
                             "%mul : [num_users=1] = call_function[target=torch.ops.aten.mul.Tensor](args = "
                             "(%linear_1, 0.5), kwargs = {})", "['', 'mul']")]
            return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
                         [nh.from_array(w, "l1.weight"), nh.from_array(b, "l1.bias"),
                          nh.from_array(np.array(scale, np.float32), "val_3")], 21)
        x = rng.standard_normal((8, 4)).astype(np.float32)
        t = rng.standard_normal((8, 4)).astype(np.float32)
        np.save(self.path("exported_x.npy"), x)
        np.save(self.path("exported_y.npy"), t)
        toml = self.path("exported.toml")
        with open(toml, "w") as f:
            f.write('format_version = 1\n[data]\nshuffle = false\n[data.train]\nx = "exported_x.npy"\n'
                    'y = "exported_y.npy"\n[train]\nloss = "mse"\nepochs = 1\nbatch_size = 8\n'
                    '[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
        path = self.save(exported("l2", 0.5), "exported.onnx")
        r = run(["summary", path, "--train", toml])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Total params: 41 (40 trainable, 1 non-trainable)", r.stdout + r.stderr)
        r = run(["fit", path, "--train", toml, "--output-dir", self.path("run_exported"), "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["fit", path, "--train", toml, "--output-dir", self.path("run_exported_says")])
        self.assertIn("2 parameters of the ONNX model are merged into another by PyTorch's export (equal initial "
                      "values), read apart to train as their own: l2.weight of l1.weight, l2.bias of l1.bias.",
                      r.stderr)
        got = weights_of(self.export(os.path.join(self.path("run_exported"), "last.ckpt"), "exported_out.onnx"))
        # The step by hand: y = 0.5 (relu(x W' + b) W' + b), mse over all 8 x 4 values.
        z = x @ w.T + b
        a = np.maximum(z, 0)
        dg = 0.5 * 2 * (0.5 * (a @ w.T + b) - t) / t.size
        dz = (dg @ w) * (z > 0)
        want = {"l1.weight": w - 0.1 * dz.T @ x, "l1.bias": b - 0.1 * dz.sum(0),
                "l2.weight": w - 0.1 * dg.T @ a, "l2.bias": b - 0.1 * dg.sum(0), "val_3": np.float32(0.5)}
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
        # A weight the model ties (both nodes made from l1's) is one tensor; without the metadata nothing is read
        # apart either.
        for name, m in (("tied", exported("l1", 0.5)), ("plain", exported("l2", 0.5))):
            if name == "plain":
                for node in m.graph.node:
                    del node.metadata_props[:]
            r = run(["summary", self.save(m, f"exported_{name}.onnx"), "--train", toml])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("Total params: 21 ", r.stdout)

    def test_external_data_joins_the_checkpoint(self):
        # Weights in a file beside the model (PyTorch's dynamo exports write NAME.onnx.data) are read with it,
        # and the checkpoint holds them: it exports and predicts with that file gone.
        rng = np.random.default_rng(9)
        w, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(3).astype(np.float32)
        m = model([h.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)],
                  [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])], [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
                  [nh.from_array(w, "fc.weight"), nh.from_array(b, "fc.bias")], 17)
        folder = self.path("external")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "fc.onnx")
        onnx.save(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location="fc.onnx.data",
                  size_threshold=0)
        self.assertEqual(onnx.load(path, load_external_data=False).graph.initializer[0].data_location,
                         onnx.TensorProto.EXTERNAL)
        x = rng.standard_normal((8, 4)).astype(np.float32)
        np.save(self.path("external_x.npy"), x)
        np.save(self.path("external_y.npy"), (np.arange(8) % 3).astype(np.int64))
        toml = self.path("external.toml")
        with open(toml, "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "external_x.npy"\ny = "external_y.npy"\n[train]\n'
                    'loss = "sparse_categorical_crossentropy"\nfrom_logits = true\nepochs = 2\nbatch_size = 4\n')
        _, ckpt = self.fit([path, "--train", toml], self.path("run_external"))
        os.remove(os.path.join(folder, "fc.onnx.data"))
        elsewhere = tempfile.mkdtemp(dir=self.path("."))
        r = subprocess.run([cli_util.TRAINER, "export", ckpt, "-o", self.path("external_out.onnx"), "-q"],
                           capture_output=True, text=True, cwd=elsewhere, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = onnx.load(self.path("external_out.onnx"))
        trained = weights_of(exported)
        self.assertGreater(np.abs(trained["fc.weight"] - w).max(), 1e-4)  # it trained
        r = subprocess.run([cli_util.TRAINER, "predict", ckpt, self.path("external_x.npy"), "--probabilities"],
                           capture_output=True, text=True, cwd=elsewhere, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2),
                                   run_onnx(exported, {"x": x}), rtol=1e-5, atol=1e-6)


@unittest.skipIf(ort is None, "numpy, onnx and onnxruntime are needed (tools/install-deps.sh installs them)")
class ModelFileForms(unittest.TestCase):
    """ONNX files as exporters write them: a batch dimension fixed and held in a shape constant, several outputs,
    BatchNormalization in training mode or with running statistics shared with another tensor, and an ONNX file
    where a checkpoint is expected."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        rng = np.random.default_rng(4)
        cls.x = rng.standard_normal((9, 4)).astype(np.float32)
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("y.npy"), (np.arange(9) % 3).astype(np.int64))
        with open(cls.path("train.toml"), "w") as f:
            # 8 of the 9 samples: such a graph has no partial batch of 1.
            f.write('format_version = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\nlimit = 8\n[train]\n'
                    'loss = "sparse_categorical_crossentropy"\nfrom_logits = true\nepochs = 2\nbatch_size = 2\n'
                    '[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.dir, name)

    def save(self, m, name):
        onnx.checker.check_model(m, full_check=True)
        onnx.save(m, self.path(name))
        return self.path(name)

    def fixed_batch_model(self, batch=2):
        # y = x W + b expanded to [2, 3]: the batch of 2 is in a shape constant, as in PyTorch's exports without
        # dynamic_axes (an LSTM's initial state), so the graph builds at batch 2 (and 1) only. At batch 1 the
        # batch is held by a Reshape of x W to [1, 3], as a batch-1 export's flattening.
        rng = np.random.default_rng(5)
        nodes = [h.make_node("MatMul", ["x", "W"], ["xw"]),
                 h.make_node("Reshape" if batch == 1 else "Expand", ["xw" if batch == 1 else "b", "shape"],
                             ["xr" if batch == 1 else "bb"]),
                 h.make_node("Add", ["xr", "b"] if batch == 1 else ["xw", "bb"], ["y"])]
        return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [batch, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [batch, 3])],
                     [nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                      vector("b", [[0.1, -0.2, 0.3]]), ints("shape", [batch, 3])], 17)

    def test_a_missing_model_file_is_named_with_where_its_path_starts(self):
        r = run(["fit", self.path("nothere.onnx"), "--train", self.path("train.toml")])
        cli_util.assert_input_error(self, r, "nothere.onnx does not exist",
                                    "a model on the command line is relative to the working directory")
        spec = self.path("missing_model.toml")
        with open(self.path("train.toml")) as f, open(spec, "w") as g:
            g.write(f.read().replace("format_version = 1\n", 'format_version = 1\n[model]\nonnx = "gone.onnx"\n'))
        cli_util.assert_input_error(self, run(["fit", spec]), "missing_model.toml:3:", "gone.onnx does not exist",
                                    "[model] onnx is relative to the spec's folder")

    def test_a_fixed_batch_model_is_summarized_trained_and_predicted_at_its_batch(self):
        def onnx_weights(m):
            return {t.name: nh.to_array(t) for t in m.graph.initializer}
        path = self.save(self.fixed_batch_model(), "fixed.onnx")
        r = run(["summary", path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("MatMul", r.stdout)
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--output-dir",
                 self.path("fixed_run")], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = self.path("fixed_run/last.ckpt")
        # All 9 samples: the last batch of 1 cannot be built, and the error says why.
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--set",
                 "data.train.limit=9"], timeout=120)
        cli_util.assert_input_error(self, r, "fixes its batch at 2", "dynamic_axes={'x': {0: 'batch'}}",
                                    "multiple of 2 samples")
        # The checkpoint predicts at the batch it trained at, the last of 9 samples padded.
        r = run(["predict", ckpt, self.path("x.npy"), "--device", "cpu", "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        got = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        w = cli_util.read_checkpoint(ckpt)
        self.assertGreater(np.abs(w["W"] - onnx_weights(self.fixed_batch_model())["W"]).max(), 1e-4)  # trained
        np.testing.assert_allclose(got, self.x @ w["W"] + w["b"], rtol=1e-5, atol=1e-6)
        # Fixed at 1 (a batch-1 export): trained at batch 1, its checkpoint predicts one sample at a time.
        path = self.save(self.fixed_batch_model(1), "fixed1.onnx")
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--batch-size", "1",
                 "--output-dir", self.path("fixed1_run")], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = self.path("fixed1_run/last.ckpt")
        r = run(["predict", ckpt, self.path("x.npy"), "--device", "cpu", "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        w = cli_util.read_checkpoint(ckpt)
        np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2),
                                   self.x @ w["W"] + w["b"], rtol=1e-5, atol=1e-6)
        # At another batch its Reshape cannot build: the error names the batches, not only the node.
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--batch-size", "2"],
                timeout=120)
        cli_util.assert_input_error(self, r, "fixes its batch at 1", "this run's batch_size is 2", "node 'Reshape'",
                                    "dynamic_axes={'x': {0: 'batch'}}", "batch_size = 1")

    def test_image_arrays_channels_first_or_last_train_alike(self):
        # x [N, 3, 4, 5] -> Flatten -> Gemm: every value has its own weight, so a scrambled sample trains
        # another model. The same images saved NCHW (PyTorch's order) and NHWC (Keras's) train the same
        # weights, with per-channel mean and std taken per channel either way, and predict the same.
        rng = np.random.default_rng(7)
        nodes = [h.make_node("Flatten", ["x"], ["f"], axis=1),
                 h.make_node("Gemm", ["f", "W", "b"], ["logits"], transB=1)]
        m = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4, 5])],
                  [h.make_tensor_value_info("logits", T.FLOAT, ["N", 2])],
                  [nh.from_array((rng.standard_normal((2, 60)) * 0.1).astype(np.float32), "W"),
                   vector("b", [0.0, 0.0])], 17)
        path = self.save(m, "image.onnx")
        x = rng.standard_normal((16, 3, 4, 5)).astype(np.float32) * [[[1.0]], [[2.0]], [[3.0]]] + 5
        np.save(self.path("nchw.npy"), x)
        np.save(self.path("nhwc.npy"), np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        np.save(self.path("image_y.npy"), (x[:, 0, 1, 2] > 5).astype(np.int64))
        weights, predictions = {}, {}
        for layout in ("nchw", "nhwc"):
            with open(self.path(layout + ".toml"), "w") as f:
                f.write(f'format_version = 1\n[data]\nshuffle = false\nmean = [5.0, 5.0, 5.0]\n'
                        f'std = [1.0, 2.0, 3.0]\n[data.train]\nx = "{layout}.npy"\ny = "image_y.npy"\n'
                        '[train]\nloss = "sparse_categorical_crossentropy"\nfrom_logits = true\nepochs = 2\n'
                        'batch_size = 4\n[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
            out = self.path(layout + "_run")
            r = run(["fit", path, "--train", self.path(layout + ".toml"), "--device", "cpu", "-q",
                     "--output-dir", out], timeout=120)
            self.assertEqual(r.returncode, 0, r.stderr)
            weights[layout] = cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
            r = run(["predict", os.path.join(out, "last.ckpt"), self.path(layout + ".npy"), "--device", "cpu",
                     "--probabilities"])
            self.assertEqual(r.returncode, 0, r.stderr)
            predictions[layout] = np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2)
        self.assertGreater(np.abs(weights["nchw"]["W"] - weights_of(m)["W"]).max(), 1e-3)  # trained
        np.testing.assert_allclose(weights["nchw"]["W"], weights["nhwc"]["W"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(predictions["nchw"], predictions["nhwc"], rtol=1e-5, atol=1e-6)
        # What the weights compute on the standardized NCHW images, as onnxruntime runs the model.
        z = (x - 5) / np.array([1.0, 2.0, 3.0], dtype=np.float32)[:, None, None]
        want = run_onnx(with_weights(m, weights["nchw"]), {"x": z.astype(np.float32)})
        np.testing.assert_allclose(predictions["nchw"], want, rtol=1e-4, atol=1e-5)

    def test_log_probabilities_and_double_softmax_are_refused(self):
        # A model ending in LogSoftmax (PyTorch's pairing with NLLLoss) gives log-probabilities: a loss that
        # takes probabilities trains nothing on them. One ending in Softmax gives probabilities: from_logits
        # would apply a second softmax.
        rng = np.random.default_rng(8)
        for op, from_logits, said in (("LogSoftmax", "false", "log-probabilities"),
                                      ("Softmax", "true", "probabilities")):
            m = model([h.make_node("MatMul", ["x", "W"], ["z"]), h.make_node(op, ["z"], ["y"], name="head")],
                      [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                      [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
                      [nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")], 17)
            path = self.save(m, op + ".onnx")
            r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q",
                     "--set", f"train.from_logits={from_logits}", "--output-dir", self.path(op + "_run")])
            cli_util.assert_input_error(self, r, f"comes from a {op} node ('head'): it gives {said}",
                                        "from_logits")
            self.assertFalse(os.path.exists(self.path(op + "_run/last.ckpt")))
            r = run(["check", path, "--train", self.path("train.toml"), "--set", f"train.from_logits={from_logits}"])
            cli_util.assert_input_error(self, r, f"comes from a {op} node ('head'): it gives {said}")
        # As logits, log-probabilities train: softmax recovers the probabilities.
        r = run(["fit", self.path("LogSoftmax.onnx"), "--train", self.path("train.toml"), "--device", "cpu",
                 "-q", "--output-dir", self.path("logsoftmax_logits")])
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_an_integer_product_of_shape_dimensions_trains_and_predicts(self):
        # x.mean(dim) as some exporters write it: the sum over the steps divided by the steps' count, which a
        # ReduceProd over an int64 slice of the shape computes (as x.std(dim) does in PyTorch's exports).
        rng = np.random.default_rng(9)
        nodes = [h.make_node("Shape", ["x"], ["shape"]),
                 h.make_node("Gather", ["shape", "step_axis"], ["steps"], axis=0),
                 h.make_node("ReduceProd", ["steps"], ["count"], keepdims=0),
                 h.make_node("Cast", ["count"], ["count_f"], to=T.FLOAT),
                 h.make_node("ReduceSum", ["x", "sum_axes"], ["total"], keepdims=0),
                 h.make_node("Div", ["total", "count_f"], ["mean"]),
                 h.make_node("MatMul", ["mean", "W"], ["y"])]
        m = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 8, 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
                  [ints("step_axis", [1]), ints("sum_axes", [1]),
                   nh.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")], 17)
        path = self.save(m, "count.onnx")
        x = rng.standard_normal((8, 8, 4)).astype(np.float32)
        np.save(self.path("count_x.npy"), x)
        r = run(["predict", path, self.path("count_x.npy"), "--device", "cpu", "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=",", ndmin=2),
                                   run_onnx(m, {"x": x}), rtol=1e-5, atol=1e-6)
        np.save(self.path("count_y.npy"), (np.arange(8) % 3).astype(np.int64))
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--set",
                 f"data.train.x={self.path('count_x.npy')}", "--set", f"data.train.y={self.path('count_y.npy')}",
                 "--output-dir", self.path("count_run")], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_an_opset_18_pad_of_some_axes_exports_at_opset_17(self):
        # Pad's axes input came in opset 18: an export for 17 spreads the pads over every axis.
        rng = np.random.default_rng(10)
        nodes = [h.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad"),
                 h.make_node("Flatten", ["p"], ["f"]),
                 h.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
        m = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4, 6])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])],
                  [ints("pads", [1, 2]), ints("axes", [-1]),
                   nh.from_array((rng.standard_normal((3, 36)) * 0.1).astype(np.float32), "W"),
                   vector("b", [0.0, 0.0, 0.0])], 18)
        path = self.save(m, "pad18.onnx")
        x = rng.standard_normal((8, 4, 6)).astype(np.float32)
        np.save(self.path("pad_x.npy"), x)
        np.save(self.path("pad_y.npy"), (np.arange(8) % 3).astype(np.int64))
        out = self.path("pad_run")
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--set",
                 f"data.train.x={self.path('pad_x.npy')}", "--set", f"data.train.y={self.path('pad_y.npy')}",
                 "--output-dir", out], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        exported = self.path("pad17.onnx")
        r = run(["export", os.path.join(out, "last.ckpt"), "-o", exported])
        self.assertEqual(r.returncode, 0, r.stderr)
        e = onnx.load(exported)
        onnx.checker.check_model(e, full_check=True)
        self.assertEqual([o.version for o in e.opset_import if o.domain in ("", "ai.onnx")], [17])
        self.assertEqual(sorted(i.name for i in e.graph.initializer if i.name in ("pads", "axes")), [])
        r = run(["predict", os.path.join(out, "last.ckpt"), self.path("pad_x.npy"), "--device", "cpu",
                 "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(run_onnx(e, {"x": x}), np.loadtxt(r.stdout.splitlines(), delimiter=","),
                                   rtol=1e-5, atol=1e-6)

    def test_a_model_of_two_outputs_is_summarized_alone(self):
        nodes = [h.make_node("MatMul", ["x", "W"], ["y"]), h.make_node("Relu", ["y"], ["z"])]
        m = model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                  [h.make_tensor_value_info("y", T.FLOAT, ["N", 3]), h.make_tensor_value_info("z", T.FLOAT, ["N", 3])],
                  [vector("W", np.ones((4, 3)))], 17)
        r = run(["summary", self.save(m, "two.onnx")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Relu", r.stdout)

    def batch_norm_model(self, training_mode, shared):
        # x [N, 2, 1, 1] -> BatchNormalization -> Flatten -> Gemm. `shared`: the running mean is an Identity of
        # the Gemm's bias, as PyTorch writes an untrained model whose equal initializers it merged; "direct":
        # the bias initializer itself, as a graph optimizer merges them.
        mean = {True: "gb_copy", "direct": "gb", False: "mean"}[shared]
        nodes = ([h.make_node("Identity", ["gb"], ["gb_copy"])] if shared is True else []) + [
            h.make_node("BatchNormalization", ["x", "scale", "bias", mean, "var"], ["n", "rm", "rv"],
                        training_mode=training_mode) if training_mode else
            h.make_node("BatchNormalization", ["x", "scale", "bias", mean, "var"], ["n"]),
            h.make_node("Flatten", ["n"], ["f"]), h.make_node("Gemm", ["f", "gw", "gb2"], ["y"])]
        inits = [vector("scale", [1, 1]), vector("bias", [0, 0]), vector("var", [1, 1]), vector("gw", np.ones((2, 3))),
                 vector("gb2", [0, 0, 0]), vector("gb", [0, 0])] + ([] if shared else [vector("mean", [0, 0])])
        if shared == "direct":  # the running mean is also the Gemm's bias input (a 2-unit Gemm)
            nodes = [h.make_node("BatchNormalization", ["x", "scale", "bias", "gb", "var"], ["n"]),
                     h.make_node("Flatten", ["n"], ["f"]), h.make_node("Gemm", ["f", "gw2", "gb"], ["y"])]
            inits = [vector("scale", [1, 1]), vector("bias", [0, 0]), vector("var", [1, 1]),
                     vector("gw2", np.ones((2, 2))), vector("gb", [0, 0])]
            return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 2, 1, 1])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 2])], inits, 17)
        return model(nodes, [h.make_tensor_value_info("x", T.FLOAT, ["N", 2, 1, 1])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["N", 3])], inits, 17)

    def test_a_training_mode_batch_norm_is_predicted_on_its_running_statistics_and_says_so(self):
        path = self.save(self.batch_norm_model(1, False), "bn_train.onnx")
        np.save(self.path("bn_x.npy"), np.arange(8, dtype=np.float32).reshape(4, 2, 1, 1))
        r = run(["predict", path, self.path("bn_x.npy"), "--device", "cpu", "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("training_mode = 1; predict normalizes with the running statistics", r.stderr)
        r = run(["predict", self.save(self.batch_norm_model(0, False), "bn_eval.onnx"), self.path("bn_x.npy"),
                 "--device", "cpu", "--probabilities"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("training_mode", r.stderr)

    def test_running_statistics_shared_with_a_trainable_tensor_are_refused_for_training(self):
        path = self.save(self.batch_norm_model(0, True), "bn_shared.onnx")
        np.save(self.path("bn_x.npy"), np.arange(8, dtype=np.float32).reshape(4, 2, 1, 1))
        np.save(self.path("bn_y.npy"), np.arange(4, dtype=np.int64) % 3)
        with open(self.path("bn.toml"), "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "bn_x.npy"\ny = "bn_y.npy"\n[train]\n'
                    'loss = "sparse_categorical_crossentropy"\nfrom_logits = true\nepochs = 1\nbatch_size = 2\n')
        # PyTorch's merge (the running mean an Identity of a zero bias): the copy is an initializer of its own, the
        # running mean, which training updates.
        r = run(["fit", path, "--train", self.path("bn.toml"), "--device", "cpu", "-q", "--output-dir",
                 self.path("bn_copy_run")])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["export", self.path("bn_copy_run/last.ckpt"), "-o", self.path("bn_copy_out.onnx"), "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        trained = weights_of(onnx.load(self.path("bn_copy_out.onnx")))
        # The batches' channel means are 1 and 2, 5 and 6: the running mean moved off 0.
        self.assertGreater(float(np.abs(trained["gb_copy"]).min()), 0.01)
        # The same initializer as the running mean and another node's input (a graph optimizer's merge).
        path = self.save(self.batch_norm_model(0, "direct"), "bn_direct.onnx")
        r = run(["fit", path, "--train", self.path("bn.toml"), "--device", "cpu"])
        cli_util.assert_input_error(self, r, "BatchNormalization", "running mean 'gb'",
                                    "an initializer that other inputs read too")

    def test_an_onnx_model_given_as_a_checkpoint_is_named_as_such(self):
        path = self.save(self.fixed_batch_model(), "not_a_checkpoint.onnx")
        plain = self.path("renamed_model")
        shutil.copy(path, plain)
        for given in (path, plain):
            for args in (["export", given, "-o", self.path("out.onnx")], ["fit", "--resume", given],
                         ["evaluate", given]):
                r = run(args)
                cli_util.assert_input_error(self, r, given, "ONNX model")
        self.assertFalse(os.path.exists(self.path("out.onnx")))
        # A checkpoint is one by its bytes, whatever its name.
        r = run(["fit", path, "--train", self.path("train.toml"), "--device", "cpu", "-q", "--output-dir",
                 self.path("named_run")], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        named = self.path("checkpoint_named.onnx")
        shutil.copy(self.path("named_run/last.ckpt"), named)
        r = run(["export", named, "-o", self.path("from_named.onnx"), "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    cli_util.main()
