"""ONNX models as exporters write them, imported by trainer: each is built here with onnx.helper, then predicted
by `trainer predict` and by onnxruntime, which must agree; fine-tuned where the import decides what trains.

Covered: opset-11 Hardmax and Softmax over every dimension from their axis (their graphs hold at any batch size, so
a fine-tuned model exports at a newer opset); shape arithmetic through ops the importer rewrites (ReduceProd,
ReduceMin, Split, Max of three, Tile of shapes) folded to constants; a float initializer read only by shape
arithmetic (tf2onnx's Cast(Shape) * 2.0 for a Resize's sizes) kept a constant, not trained; a Range without a
finite length refused; ArgMax, ArgMin, ReduceMax and TopK over NaN and infinities.
"""

import os
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


def ints(name, values):
    return nh.from_array(np.array(values, np.int64), name)


def model(nodes, x_shape, y_shape, initializers, opset):
    m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
                                  [h.make_tensor_value_info("y", T.FLOAT, y_shape)], initializers),
                     opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 7 if opset < 15 else 8
    onnx.checker.check_model(m, full_check=True)
    return m


def run_onnx(path, x):
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@unittest.skipIf(ort is None, "needs numpy, onnx and onnxruntime")
class OnnxImport(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def save(self, m, name):
        onnx.save(m, self.path(name))
        return self.path(name)

    def predict(self, model_path, x):
        np.save(self.path("x.npy"), x)
        with open(self.path("p.npy"), "wb") as out:
            r = subprocess.run([cli_util.TRAINER, "predict", model_path, self.path("x.npy"), "--probabilities",
                                "--output-format", "npy", "--device", "cpu"], stdout=out, stderr=subprocess.PIPE,
                               text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return np.load(self.path("p.npy"))

    def assert_predicts_as_onnxruntime(self, m, name, x):
        path = self.save(m, name)
        want = run_onnx(path, x)
        got = self.predict(path, x)
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)
        return want

    def test_opset_11_hardmax_takes_every_dimension_from_its_axis(self):
        # Before opset 13 Hardmax flattens [N, 3, 4] from axis (default 1) on: one 1 per sample of 12 values.
        x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
        for attrs, ones in (({}, 1), ({"axis": 1}, 1), ({"axis": 2}, 3), ({"axis": -1}, 3)):
            with self.subTest(attrs=attrs):
                m = model([h.make_node("Hardmax", ["x"], ["y"], **attrs)], ["N", 3, 4], ["N", 3, 4], [], 11)
                want = self.assert_predicts_as_onnxruntime(m, "hardmax.onnx", x)
                self.assertTrue((want.reshape(5, -1).sum(axis=1) == ones).all())

    def test_mish_of_opset_18_predicts_as_onnxruntime(self):
        # PyTorch 2's export of nn.Mish: x tanh(softplus(x)), over large values of either sign too.
        x = np.concatenate([np.random.default_rng(2).standard_normal((4, 6)) * 3,
                            [[-100, -20, 0, 20, 100, 1e-3]]]).astype(np.float32)
        m = model([h.make_node("Mish", ["x"], ["y"])], ["N", 6], ["N", 6], [], 18)
        want = self.assert_predicts_as_onnxruntime(m, "mish.onnx", x)
        np.testing.assert_allclose(want, x * np.tanh(np.log1p(np.exp(x.astype(np.float64)))), rtol=1e-5, atol=1e-6)

    def test_an_opset_11_softmax_over_several_axes_fine_tunes_and_exports_at_a_newer_opset(self):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((16, 3, 4)).astype(np.float32)
        np.save(self.path("x.npy"), x)
        np.save(self.path("y.npy"), np.abs(rng.standard_normal((16, 3, 4))).astype(np.float32) / 12)
        m = model([h.make_node("MatMul", ["x", "w"], ["z"]), h.make_node("Softmax", ["z"], ["y"], axis=1)],
                  ["N", 3, 4], ["N", 3, 4], [nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")], 11)
        self.assert_predicts_as_onnxruntime(m, "softmax11.onnx", x)
        with open(self.path("train.toml"), "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\n'
                    'epochs = 1\nbatch_size = 4\n')
        r = run(["fit", self.path("softmax11.onnx"), "--train", self.path("train.toml"), "--output-dir",
                 self.path("run"), "--device", "cpu"])
        self.assertEqual(r.returncode, 0, r.stderr)
        # The graph's Reshape back reads -1 for the batch, so the model exports at opset 13 and runs at batch 5.
        out = self.path("out13.onnx")
        r = run(["export", self.path("run/last.ckpt"), "-o", out, "--opset", "13"])
        self.assertEqual(r.returncode, 0, r.stderr)
        want = run_onnx(out, x[:5])
        np.testing.assert_allclose(want.reshape(5, -1).sum(axis=1), 1, rtol=1e-5)
        got = self.predict(self.path("run/last.ckpt"), x[:5])
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)

    def test_shape_arithmetic_through_rewritten_ops_folds(self):
        # x [N, 3, 4] reshaped to [N, 12], the 12 computed from x's shape as exporters do.
        x = np.random.default_rng(2).standard_normal((2, 3, 4)).astype(np.float32)
        shape = h.make_node("Shape", ["x"], ["s"])
        rest = h.make_node("Slice", ["s", "one", "three"], ["rest"])
        reshape = [h.make_node("Concat", ["zero", "n"], ["shape"], axis=0), h.make_node("Reshape", ["x", "shape"], ["y"])]
        consts = [ints("one", [1]), ints("three", [3]), ints("zero", [0])]
        cases = {
            "ReduceProd": [shape, rest, h.make_node("ReduceProd", ["rest"], ["n"], keepdims=1)],
            # 12 as a minimum: min(3 * 4, 12, 13)
            "ReduceMin": [shape, rest, h.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
                          h.make_node("Concat", ["p", "twelve", "thirteen"], ["three_of"], axis=0),
                          h.make_node("ReduceMin", ["three_of"], ["n"], keepdims=1)],
            "Split": [shape, h.make_node("Split", ["s", "ones"], ["a", "b", "c"]), h.make_node("Mul", ["b", "c"], ["n"])],
            "Max of three": [shape, rest, h.make_node("ReduceProd", ["rest"], ["p"], keepdims=1),
                             h.make_node("Max", ["p", "twelve", "one"], ["n"])],
            # Tile of [12] once: [12]
            "Tile": [h.make_node("Tile", ["twelve", "one"], ["n"])],
        }
        for name, nodes in cases.items():
            with self.subTest(op=name):
                m = model(nodes + reshape, ["N", 3, 4], ["N", 12],
                          consts + [ints("ones", [1, 1, 1]), ints("twelve", [12]), ints("thirteen", [13])], 13)
                self.assert_predicts_as_onnxruntime(m, "fold.onnx", x)

    def test_a_float_initializer_of_shape_arithmetic_stays_a_constant(self):
        # tf2onnx's 2x upsampling: sizes = Concat(shape[:2], Cast(Cast(shape[2:], float) * 2.0)), 2.0 an
        # initializer; then a 1x1 convolution that trains.
        rng = np.random.default_rng(3)
        x = rng.standard_normal((8, 3, 5, 7)).astype(np.float32)
        nodes = [h.make_node("Shape", ["x"], ["s"]), h.make_node("Slice", ["s", "a0", "a2"], ["nc"]),
                 h.make_node("Slice", ["s", "a2", "a4"], ["hw"]), h.make_node("Cast", ["hw"], ["hwf"], to=T.FLOAT),
                 h.make_node("Mul", ["hwf", "two"], ["hw2f"]), h.make_node("Cast", ["hw2f"], ["hw2"], to=T.INT64),
                 h.make_node("Concat", ["nc", "hw2"], ["sizes"], axis=0),
                 h.make_node("Resize", ["x", "", "", "sizes"], ["up"], mode="nearest"),
                 h.make_node("Conv", ["up", "w"], ["y"])]
        m = model(nodes, ["N", 3, 5, 7], ["N", 2, 10, 14],
                  [ints("a0", [0]), ints("a2", [2]), ints("a4", [4]), nh.from_array(np.array(2.0, np.float32), "two"),
                   nh.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w")], 13)
        self.assert_predicts_as_onnxruntime(m, "upsample.onnx", x[:2])
        np.save(self.path("x.npy"), x)
        np.save(self.path("y.npy"), rng.standard_normal((8, 2, 10, 14)).astype(np.float32))
        with open(self.path("train.toml"), "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\n'
                    'epochs = 1\nbatch_size = 4\n[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
        r = run(["fit", self.path("upsample.onnx"), "--train", self.path("train.toml"), "--output-dir",
                 self.path("run"), "--device", "cpu"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["export", self.path("run/last.ckpt"), "-o", self.path("out.onnx")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(1 tensor from the checkpoint)", r.stderr)  # w alone
        weights = {t.name: nh.to_array(t) for t in onnx.load(self.path("out.onnx")).graph.initializer}
        self.assertEqual(float(weights.get("two", 2.0)), 2.0)
        self.assertFalse(np.array_equal(weights["w"], nh.to_array(m.graph.initializer[-1])), "w trains")
        want = run_onnx(self.path("out.onnx"), x[:3])
        self.assertEqual(want.shape, (3, 2, 10, 14))
        got = self.predict(self.path("run/last.ckpt"), x[:3])
        np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-6)

    def test_what_an_if_branch_reads_without_a_gradient_stays_a_constant(self):
        # MatMul(x, W) -> If(true): Clip(h, lo, hi), else h. W trains; Clip's bounds take no gradient and stay
        # constants, as in the main graph.
        rng = np.random.default_rng(4)

        def branch(nodes, name):
            return h.make_graph(nodes, name, [], [h.make_tensor_value_info("out", T.FLOAT, None)])

        nodes = [h.make_node("MatMul", ["x", "W"], ["h"]),
                 h.make_node("If", ["cond"], ["y"],
                             then_branch=branch([h.make_node("Clip", ["h", "lo", "hi"], ["out"])], "clipped"),
                             else_branch=branch([h.make_node("Identity", ["h"], ["out"])], "plain"))]
        m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                                      [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])],
                                      [nh.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W"),
                                       nh.from_array(np.array(True), "cond"), nh.from_array(np.array(-1.0, np.float32), "lo"),
                                       nh.from_array(np.array(1.0, np.float32), "hi")]),
                         opset_imports=[h.make_opsetid("", 17)])
        np.save(self.path("x.npy"), rng.standard_normal((16, 4)).astype(np.float32))
        np.save(self.path("y.npy"), rng.standard_normal((16, 4)).astype(np.float32))
        with open(self.path("train.toml"), "w") as f:
            f.write('format_version = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\nepochs = 2\n'
                    'batch_size = 8\n[train.optimizer]\nname = "adamw"\nweight_decay = 0.5\nlearning_rate = 0.1\n')
        r = run(["fit", self.save(m, "if.onnx"), "--train", self.path("train.toml"), "--output-dir", self.path("run"),
                 "--device", "cpu"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["export", self.path("run/last.ckpt"), "-o", self.path("out.onnx")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("(1 tensor from the checkpoint)", r.stderr)
        weights = {t.name: nh.to_array(t) for t in onnx.load(self.path("out.onnx")).graph.initializer}
        self.assertEqual((float(weights["lo"]), float(weights["hi"])), (-1.0, 1.0))

    def test_arg_extremes_reduce_max_and_top_k_over_nan_and_infinity_follow_onnx(self):
        # ONNX's reference (numpy) propagates NaN through ReduceMax/ReduceMin and takes a NaN as the extreme in
        # ArgMax/ArgMin (and Hardmax); TopK ranks NaN above every number (last when smallest), as onnxruntime does. An input's
        # -inf is taken once by TopK (a second pick of an element already taken gave repeated indices).
        from onnx.reference import ReferenceEvaluator
        x = np.array([[1, -np.inf, 2, 0], [np.nan, 3, np.nan, -1], [5, 5, -np.inf, -np.inf],
                      [-1, np.nan, 7, -8]], np.float32)
        for largest in (1, 0):
            nodes = [h.make_node("ArgMax", ["x"], ["a"], axis=1), h.make_node("ArgMin", ["x"], ["b"], axis=1),
                     h.make_node("ArgMax", ["x"], ["c"], axis=1, select_last_index=1),
                     h.make_node("ReduceMax", ["x"], ["m"], axes=[1]),
                     h.make_node("ReduceMin", ["x"], ["n"], axes=[1]),
                     h.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=largest),
                     h.make_node("Hardmax", ["x"], ["o"], axis=1)]
            nodes += [h.make_node("Cast", [n], [n + "f"], to=T.FLOAT) for n in "abci"]
            nodes.append(h.make_node("Concat", ["af", "bf", "cf", "m", "n", "v", "if", "o"], ["y"], axis=1))
            m = model(nodes, ["N", 4], ["N", 17], [ints("k", [4])], 13)
            path = self.save(m, "extremes.onnx")
            want = ReferenceEvaluator(m).run(None, {"x": x})[0]
            got = self.predict(path, x).reshape(want.shape)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got[:, 5:13], run_onnx(path, x)[:, 5:13])

    def test_a_range_without_a_finite_length_is_an_error(self):
        for limit in (float("inf"), float("nan"), 1e30):
            with self.subTest(limit=limit):
                m = model([h.make_node("Range", ["start", "limit", "delta"], ["r"]),
                           h.make_node("ReduceSum", ["r"], ["total"], keepdims=1),
                           h.make_node("Add", ["x", "total"], ["y"])], ["N", 3], ["N", 3],
                          [nh.from_array(np.array(v, np.float32), n)
                           for n, v in (("start", 0.0), ("limit", limit), ("delta", 1.0))], 13)
                np.save(self.path("x.npy"), np.zeros((2, 3), np.float32))
                r = run(["predict", self.save(m, "range.onnx"), self.path("x.npy"), "--device", "cpu"])
                cli_util.assert_input_error(self, r, "range.onnx", "Range", "no finite number of elements")

    def test_arithmetic_in_float16_is_an_error_naming_the_node(self):
        m = model([h.make_node("Cast", ["x"], ["half"], to=T.FLOAT16), h.make_node("Mul", ["half", "k"], ["m"], name="scale"),
                   h.make_node("Cast", ["m"], ["y"], to=T.FLOAT)], ["N", 4], ["N", 4],
                  [nh.from_array(np.array(1.5, np.float16), "k")], 17)
        np.save(self.path("x.npy"), np.ones((2, 4), np.float32))
        r = run(["predict", self.save(m, "half.onnx"), self.path("x.npy"), "--device", "cpu"])
        err = cli_util.assert_input_error(self, r, "node 'scale' (Mul)", "does not support f16")
        self.assertIn("hint: give the model float32 tensors", err)

    def test_a_constant_larger_than_memory_is_an_error_before_it_is_made(self):
        # ConstantOfShape [100000, 100000, 4]: 149 GiB of float, under a 3 GiB address-space limit (it was "out of
        # memory", exit 1, or the out-of-memory killer).
        import resource

        def limited():
            resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

        nodes = [h.make_node("ConstantOfShape", ["s"], ["c"]), h.make_node("ReduceSum", ["c"], ["t"], keepdims=0),
                 h.make_node("Add", ["x", "t"], ["y"])]
        m = model(nodes, ["N", 4], ["N", 4], [ints("s", [100000, 100000, 4])], 17)
        np.save(self.path("x.npy"), np.ones((2, 4), np.float32))
        r = subprocess.run([cli_util.TRAINER, "predict", self.save(m, "big.onnx"), self.path("x.npy"), "--device", "cpu"],
                           capture_output=True, text=True, timeout=120, preexec_fn=limited)
        cli_util.assert_input_error(self, r, "big.onnx", "ConstantOfShape", "[100000, 100000, 4]",
                                    "GiB, more than the", "of memory this process may use")

if __name__ == "__main__":
    cli_util.main()
