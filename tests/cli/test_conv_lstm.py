"""ConvLSTM2D: trainer predict equals a numpy ConvLSTM written from Keras's cell (gates i, f, c, o; the input's
convolution as the layer's padding and strides say, the state's "same" at stride 1) on the trained weights, with
"same" and "valid" padding, strides, return_sequences and go_backwards; the model learns; 1 and 2 replicas train
the same weights (dropout included); the export runs in onnxruntime as predict does; a wrong input is an
error."""

import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

try:
    import onnxruntime as ort
except ImportError:
    ort = None

N, T, H, W, C = 96, 4, 6, 5, 2

SPEC = """format_version = 1
[model]
input = [{T}, {H}, {W}, {C}]
[[model.layers]]
type = "ConvLSTM2D"
filters = 3
{args}
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "binary_crossentropy"
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 16
seed = 5
[train.optimizer]
learning_rate = 0.01
"""


def sigmoid(v):
    return 1 / (1 + np.exp(-v))


def conv(x, w, strides, pads, dilation=(1, 1)):
    """x [N, C, H, W], w [O, C, kh, kw] (ONNX's layout), pads [top, left, bottom, right]: a direct loop."""
    x = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    o, _, kh, kw = w.shape
    oh = (x.shape[2] - dilation[0] * (kh - 1) - 1) // strides[0] + 1
    ow = (x.shape[3] - dilation[1] * (kw - 1) - 1) // strides[1] + 1
    out = np.zeros((x.shape[0], o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dilation[0]:i * dilation[0] + strides[0] * (oh - 1) + 1:strides[0],
                      j * dilation[1]:j * dilation[1] + strides[1] * (ow - 1) + 1:strides[1]]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return out


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv_lstm(x, kernel, recurrent, bias, strides, same, sequences, backwards):
    """Keras's ConvLSTM2D on x [N, T, H, W, C]: the last hidden state as the model holds it, [N, F, h, w] (a
    Flatten after it keeps that order), or every step's, [N, T, h, w, F]."""
    kh, kw = kernel.shape[2:]
    if same:
        (pt, pb), (pl, pr) = same_pads(x.shape[2], kh, strides[0]), same_pads(x.shape[3], kw, strides[1])
    else:
        pt = pb = pl = pr = 0
    f = recurrent.shape[1]
    h = c = None
    outs = []
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    for t in steps:
        z = conv(x[:, t].transpose(0, 3, 1, 2), kernel, strides, (pt, pl, pb, pr)) + bias[None, :, None, None]
        if h is not None:
            z = z + conv(h, recurrent, (1, 1), ((kh - 1) // 2, (kw - 1) // 2, kh // 2, kw // 2))
        i, fg, g, o = sigmoid(z[:, :f]), sigmoid(z[:, f:2 * f]), np.tanh(z[:, 2 * f:3 * f]), sigmoid(z[:, 3 * f:])
        c = i * g if c is None else fg * c + i * g
        h = o * np.tanh(c)
        outs.append(h.transpose(0, 2, 3, 1))
    return np.stack(outs, 1) if sequences else h


class ConvLstm(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(2)
        cls.x = rng.normal(size=(N, T, H, W, C)).astype(np.float32)
        # Whether the first frame's first channel is brighter than the last's: it takes the recurrence.
        cls.y = (cls.x[:, 0, :, :, 0].mean((1, 2)) > cls.x[:, -1, :, :, 0].mean((1, 2))).astype(np.float32)
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def fit(self, name, args, epochs=3, extra=()):
        spec = self.path(f"{name}.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(T=T, H=H, W=W, C=C, args=args, epochs=epochs))
        out = self.path(name)
        r = run(["fit", spec, "--output-dir", out, "--log-format", "jsonl", "-q", *extra], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout), os.path.join(out, "last.ckpt")

    def test_predict_equals_keras_cell_in_numpy(self):
        cases = {
            "same": ('kernel_size = 3\npadding = "same"', (1, 1), True, False, False),
            "strided": ('kernel_size = [3, 2]\nstrides = 2\nreturn_sequences = true\ngo_backwards = true',
                        (2, 2), False, True, True),
        }
        for name, (args, strides, same, sequences, backwards) in cases.items():
            with self.subTest(name):
                events, ckpt = self.fit(name, args)
                wts = cli_util.read_checkpoint(ckpt)
                hidden = conv_lstm(self.x.astype(np.float64), wts["conv_lstm2d/kernel"],
                                   wts["conv_lstm2d/recurrent_kernel"], wts["conv_lstm2d/bias"], strides, same,
                                   sequences, backwards)
                want = sigmoid(hidden.reshape(N, -1) @ wts["dense/kernel"] + wts["dense/bias"])
                got = cli_util.predict_rows(self, [ckpt, self.path("x.npy"), "--probabilities"], ndmin=2)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
                # The forget gate's bias started at 1 (unit_forget_bias), the others at 0.
                self.assertGreater(wts["conv_lstm2d/bias"][3:6].mean(), 0.5)
                if ort is not None:
                    onnx_path = self.path(f"{name}.onnx")
                    r = run(["export", ckpt, "-o", onnx_path, "-q"])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
                    (out,) = sess.run(None, {sess.get_inputs()[0].name: self.x})
                    np.testing.assert_allclose(out.reshape(got.shape), got, rtol=1e-5, atol=1e-6)

    def test_it_learns_and_replicas_agree(self):
        args = 'kernel_size = 3\npadding = "same"\ndropout = 0.2\nrecurrent_dropout = 0.2'
        events, one = self.fit("learn", args, epochs=12)
        epochs = [e for e in events if e["event"] == "epoch"]
        self.assertLess(epochs[-1]["loss"], epochs[0]["loss"] - 0.1)
        self.assertGreater(epochs[-1]["accuracy"], 0.75)
        _, two = self.fit("learn_2", args, epochs=12, extra=("--device", "cpu", "--devices", "2"))
        a, b = cli_util.read_checkpoint(one), cli_util.read_checkpoint(two)
        for k in a:
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * max(1.0, np.abs(a[k]).max()), err_msg=k)

    def test_orthogonal_kernels_are_orthogonal_in_keras_layout(self):
        # The recurrent kernel's default initializer, and the input kernel's when asked: Keras's (kh kw in, 4F)
        # matrix has orthonormal columns. One SGD step at a negligible rate keeps the initial weights.
        spec = self.path("ortho.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(T=T, H=H, W=W, C=C, epochs=1,
                                args='kernel_size = 3\npadding = "same"\nkernel_initializer = "orthogonal"')
                    .replace("learning_rate = 0.01", 'name = "sgd"\nlearning_rate = 1e-12'))
        r = run(["fit", spec, "--output-dir", self.path("ortho"), "-q"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        wts = cli_util.read_checkpoint(self.path("ortho/last.ckpt"))
        for name in ("conv_lstm2d/kernel", "conv_lstm2d/recurrent_kernel"):
            k = wts[name]
            keras = k.transpose(2, 3, 1, 0).reshape(-1, k.shape[0])
            np.testing.assert_allclose(np.linalg.svd(keras, compute_uv=False), 1.0, atol=1e-4, err_msg=name)

    def test_bad_input_is_named(self):
        spec = self.path("bad.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(T=T, H=H, W=W * C, C="", args="kernel_size = 3", epochs=1)
                    .replace(f"input = [{T}, {H}, {W * C}, ]", f"input = [{T}, {H}, {W * C}]"))
        cli_util.assert_input_error(self, run(["summary", spec]), "ConvLSTM2D takes a sequence of images",
                                    "(None, 4, 6, 10)")
        with open(spec, "w") as f:
            f.write(SPEC.format(T=T, H=H, W=W, C=C, args="kernel_size = 7", epochs=1))
        cli_util.assert_input_error(self, run(["summary", spec]), "kernel_size (7, 7)", "padding = \"same\"")


if __name__ == "__main__":
    cli_util.main()
