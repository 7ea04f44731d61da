"""ConvLSTM1D, 2D and 3D: trainer predict equals a numpy ConvLSTM written from Keras's cell (gates i, f, c, o; the input's
convolution as the layer's padding and strides say, the state's "same" at stride 1) on the trained weights, with
"same" and "valid" padding, strides, return_sequences and go_backwards; the model learns; 1 and 2 replicas train
the same weights (dropout included); the export runs in onnxruntime as predict does; a wrong input is an
error."""

import itertools
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


def conv(x, w, strides, pads, dilation=None):
    """x [N, C, S...], w [O, C, k...] (ONNX's layout), pads (every axis's start, then every axis's end): a direct
    loop over the kernel's offsets, for 1 to 3 spatial axes."""
    r = w.ndim - 2
    dilation = dilation or (1,) * r
    x = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + r]) for i in range(r)])
    k = w.shape[2:]
    size = [(x.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // strides[i] + 1 for i in range(r)]
    out = np.zeros((x.shape[0], w.shape[0], *size))
    for offset in itertools.product(*[range(n) for n in k]):
        window = tuple(slice(offset[i] * dilation[i], offset[i] * dilation[i] + strides[i] * (size[i] - 1) + 1,
                             strides[i]) for i in range(r))
        out += np.einsum("nc...,oc->no...", x[(slice(None), slice(None)) + window], w[(slice(None), slice(None)) + offset])
    return out


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def conv_lstm(x, kernel, recurrent, bias, strides, same, sequences, backwards):
    """Keras's ConvLSTM on x [N, T, S..., C]: the last hidden state as the model holds it, [N, F, s...] (a
    Flatten after it keeps that order), or every step's, [N, T, s..., F]."""
    k = kernel.shape[2:]
    r = len(k)
    if same:
        ends = [same_pads(x.shape[2 + i], k[i], strides[i]) for i in range(r)]
        pads = [e[0] for e in ends] + [e[1] for e in ends]
    else:
        pads = [0] * (2 * r)
    recurrent_pads = [(n - 1) // 2 for n in k] + [n // 2 for n in k]
    f = recurrent.shape[1]
    h = c = None
    outs = []
    to_first = (0, r + 1) + tuple(range(1, r + 1))
    to_last = (0,) + tuple(range(2, r + 2)) + (1,)
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    for t in steps:
        z = conv(x[:, t].transpose(to_first), kernel, strides, pads) + bias.reshape((1, -1) + (1,) * r)
        if h is not None:
            z = z + conv(h, recurrent, (1,) * r, recurrent_pads)
        i, fg, g, o = sigmoid(z[:, :f]), sigmoid(z[:, f:2 * f]), np.tanh(z[:, 2 * f:3 * f]), sigmoid(z[:, 3 * f:])
        c = i * g if c is None else fg * c + i * g
        h = o * np.tanh(c)
        outs.append(h.transpose(to_last))
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

    def test_one_and_three_spatial_axes(self):
        # ConvLSTM1D over sequences of sequences and ConvLSTM3D over sequences of volumes, against the same
        # numpy cell.
        rng = np.random.default_rng(4)
        cases = {
            "ConvLSTM1D": ((N, 4, 6, 2), 'kernel_size = 3\npadding = "same"\nreturn_sequences = true', (1,), True,
                           True, False),
            "ConvLSTM3D": ((N, 3, 3, 4, 3, 2), 'kernel_size = [2, 3, 2]\nstrides = [1, 2, 1]\ngo_backwards = true',
                           (1, 2, 1), False, False, True),
        }
        for layer, (shape, args, strides, same, sequences, backwards) in cases.items():
            with self.subTest(layer):
                x = rng.normal(size=shape).astype(np.float32)
                np.save(self.path(f"x_{layer}.npy"), x)
                spec = self.path(f"{layer}.toml")
                with open(spec, "w") as f:
                    f.write(SPEC.format(T=T, H=H, W=W, C=C, args=args, epochs=2)
                            .replace(f"input = [{T}, {H}, {W}, {C}]", f"input = {list(shape[1:])}")
                            .replace('type = "ConvLSTM2D"', f'type = "{layer}"')
                            .replace('x = "x.npy"', f'x = "x_{layer}.npy"'))
                out = self.path(layer)
                r = run(["fit", spec, "--output-dir", out, "-q"], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                ckpt = os.path.join(out, "last.ckpt")
                wts = cli_util.read_checkpoint(ckpt)
                name = layer.replace("ConvLSTM", "conv_lstm").lower()
                self.assertEqual(wts[f"{name}/kernel"].ndim, len(shape) - 1)
                hidden = conv_lstm(x.astype(np.float64), wts[f"{name}/kernel"], wts[f"{name}/recurrent_kernel"],
                                   wts[f"{name}/bias"], strides, same, sequences, backwards)
                want = sigmoid(hidden.reshape(N, -1) @ wts["dense/kernel"] + wts["dense/bias"])
                got = cli_util.predict_rows(self, [ckpt, self.path(f"x_{layer}.npy"), "--probabilities"], ndmin=2)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
                if ort is not None:
                    r = run(["export", ckpt, "-o", self.path(f"{layer}.onnx"), "-q"])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    sess = ort.InferenceSession(self.path(f"{layer}.onnx"), providers=["CPUExecutionProvider"])
                    (onnx_out,) = sess.run(None, {sess.get_inputs()[0].name: x})
                    np.testing.assert_allclose(onnx_out.reshape(got.shape), got, rtol=1e-5, atol=1e-6)

    def test_bidirectional(self):
        # Keras's Bidirectional(ConvLSTM2D): a forward and a backward layer, the backward one's steps flipped back
        # into the input's order, merged on the channels.
        for merge, sequences in (("concat", True), ("sum", False)):
            with self.subTest(merge=merge):
                name = f"bi_{merge}"
                spec = self.path(f"{name}.toml")
                args = f'kernel_size = 3\npadding = "same"\nmerge_mode = "{merge}"\nreturn_sequences = {str(sequences).lower()}'
                with open(spec, "w") as f:
                    f.write(SPEC.format(T=T, H=H, W=W, C=C, args=args, epochs=2)
                            .replace('type = "ConvLSTM2D"', 'type = "Bidirectional"\nlayer = "ConvLSTM2D"'))
                out = self.path(name)
                r = run(["fit", spec, "--output-dir", out, "-q"], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                ckpt = os.path.join(out, "last.ckpt")
                wts = cli_util.read_checkpoint(ckpt)
                x = self.x.astype(np.float64)

                def direction(d, backwards):
                    p = f"bidirectional/{d}_conv_lstm2d/"
                    return conv_lstm(x, wts[p + "kernel"], wts[p + "recurrent_kernel"], wts[p + "bias"], (1, 1), True,
                                     sequences, backwards)
                forward, backward = direction("forward", False), direction("backward", True)
                if sequences:
                    merged = np.concatenate([forward, backward[:, ::-1]], -1)
                else:
                    merged = forward + backward
                want = sigmoid(merged.reshape(N, -1) @ wts["dense/kernel"] + wts["dense/bias"])
                got = cli_util.predict_rows(self, [ckpt, self.path("x.npy"), "--probabilities"], ndmin=2)
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        spec = self.path("bi_bad.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(T=T, H=H, W=W, C=C, args="units = 3", epochs=1)
                    .replace('type = "ConvLSTM2D"', 'type = "Bidirectional"\nlayer = "ConvLSTM2D"'))
        cli_util.assert_input_error(self, run(["summary", spec]), "units is an argument of LSTM, GRU and SimpleRNN",
                                    "not of the ConvLSTM2D this wraps")

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
        cli_util.assert_input_error(self, run(["summary", spec]), "kernel_size (7, 7) spans 7 elements along axis 2",
                                    "padding = \"same\"")


if __name__ == "__main__":
    cli_util.main()
