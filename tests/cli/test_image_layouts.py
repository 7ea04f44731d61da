"""Images stored channels last ([N, H, W, C], Keras's arrays) or channels first ([N, C, H, W], PyTorch's arrays and
the CIFAR-10 batches): each data source is read in its own order, for the training, validation and test data
alike, for a spec's channels-last input and for an ONNX model's input in either order; an order that fits no
input is an error."""

import json
import os
import tempfile
import unittest

import cli_util
from cli_util import run

try:
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh
except ImportError:  # reported as a skip, never as a pass
    np = onnx = None

N, HEIGHT, WIDTH, CHANNELS = 24, 4, 5, 3

SPEC = """format_version = 1
[model]
input = [4, 5, 3]
[[model.layers]]
type = "Conv2D"
filters = 2
kernel_size = 2
activation = "relu"
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data]
shuffle = false
mean = [5.0, 5.0, 5.0]
std = [1.0, 2.0, 3.0]
[data.train]
x = "{train}"
y = "y.npy"
[data.validation]
x = "{validation}"
y = "y.npy"
[data.test]
x = "{test}"
y = "y.npy"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 8
[train.optimizer]
name = "sgd"
learning_rate = 0.05
"""


@unittest.skipIf(np is None, "numpy and onnx are needed (tools/install-deps.sh installs them)")
class ImageLayouts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(11)
        # Channels of different scales around 5: a scrambled image or a per-channel constant on the wrong
        # axis changes every number.
        cls.x = (rng.standard_normal((N, CHANNELS, HEIGHT, WIDTH)) * np.array([1.0, 2.0, 3.0])[:, None, None]
                 + 5).astype(np.float32)
        np.save(cls.path("nchw.npy"), cls.x)
        np.save(cls.path("nhwc.npy"), np.ascontiguousarray(cls.x.transpose(0, 2, 3, 1)))
        np.save(cls.path("nwhc.npy"), np.ascontiguousarray(cls.x.transpose(0, 3, 2, 1)))  # no input's order
        np.save(cls.path("y.npy"), (cls.x[:, 0, 1, 2] > 5).astype(np.int64))

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def fit(self, name, args):
        out = self.path(name)
        r = run(["fit", *args, "--device", "cpu", "-q", "--log-format", "jsonl", "--output-dir", out], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines()], os.path.join(out, "last.ckpt")

    def test_each_split_of_a_spec_is_read_in_its_own_order(self):
        results = {}
        for train, validation, test in (("nhwc", "nhwc", "nhwc"), ("nhwc", "nchw", "nchw"),
                                        ("nchw", "nhwc", "nchw"), ("nchw", "nchw", "nhwc")):
            spec = self.path(f"{train}_{validation}_{test}.toml")
            with open(spec, "w") as f:
                f.write(SPEC.format(train=self.path(train + ".npy"), validation=self.path(validation + ".npy"),
                                    test=self.path(test + ".npy")))
            events, ckpt = self.fit(f"run_{train}_{validation}_{test}", [spec])
            epoch = [e for e in events if e["event"] == "epoch"][-1]
            end = events[-1]
            results[(train, validation, test)] = (epoch["loss"], epoch["val_loss"], end["test_loss"])
            # evaluate reads the split it is given in that split's order.
            for split in ("validation", "test"):
                r = run(["evaluate", ckpt, "--data", split, "--device", "cpu", "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(json.loads(r.stdout)["loss"], epoch["val_loss"] if split == "validation"
                                 else end["test_loss"], split)
        first = results[("nhwc", "nhwc", "nhwc")]
        for key, got in results.items():
            self.assertEqual(got, first, key)  # the same images, whatever their order in the files
        # predict takes the images in either order too.
        self.assert_same_predictions(self.path("run_nhwc_nhwc_nhwc/last.ckpt"))

    def assert_same_predictions(self, model):
        out = []
        for data in ("nhwc", "nchw"):
            r = run(["predict", model, self.path(data + ".npy"), "--device", "cpu", "--probabilities"])
            self.assertEqual(r.returncode, 0, r.stderr)
            out.append(np.loadtxt(r.stdout.splitlines(), delimiter=","))
        np.testing.assert_allclose(out[0], out[1], rtol=1e-6, atol=1e-7)

    def model(self, dims):
        # A channels-last input is transposed to NCHW first, as trainer's and TensorFlow's exports do.
        rng = np.random.default_rng(12)
        last = dims[-1] == CHANNELS
        nodes = ([h.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2])] if last else []) + [
            h.make_node("Flatten", ["t" if last else "x"], ["f"], axis=1),
            h.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
        m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", *dims])],
                                      [h.make_tensor_value_info("y", T.FLOAT, ["N", 2])],
                                      [nh.from_array((rng.standard_normal((2, 60)) * 0.1).astype(np.float32), "W"),
                                       nh.from_array(np.zeros(2, np.float32), "b")]),
                         opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    def test_an_onnx_input_of_either_order_takes_images_of_either_order(self):
        # A channels-last input (as trainer exports a spec's model) and a channels-first one (PyTorch's): fed
        # the images in either order, each trains the same weights, with per-channel constants per channel.
        with open(self.path("onnx_train.toml"), "w") as f:
            f.write('format_version = 1\n[data]\nshuffle = false\nmean = [5.0, 5.0, 5.0]\nstd = [1.0, 2.0, 3.0]\n'
                    '[data.train]\ny = "y.npy"\n[train]\nloss = "sparse_categorical_crossentropy"\n'
                    'from_logits = true\nepochs = 2\nbatch_size = 8\n[train.optimizer]\nname = "sgd"\n'
                    'learning_rate = 0.1\n')
        for order, dims in (("last", (HEIGHT, WIDTH, CHANNELS)), ("first", (CHANNELS, HEIGHT, WIDTH))):
            path = self.path(f"channels_{order}.onnx")
            onnx.save(self.model(dims), path)
            weights = []
            for data in ("nhwc", "nchw"):
                _, ckpt = self.fit(f"onnx_{order}_{data}", [path, "--train", self.path("onnx_train.toml"), "--set",
                                                            f"data.train.x={self.path(data + '.npy')}"])
                weights.append(cli_util.read_checkpoint(ckpt)["W"])
            np.testing.assert_allclose(weights[0], weights[1], rtol=1e-5, atol=1e-6, err_msg=order)
            # What the weights compute: the standardized images, channels first once in the model.
            z = (self.x - 5) / np.array([1.0, 2.0, 3.0], dtype=np.float32)[:, None, None]
            r = run(["predict", ckpt, self.path(("nhwc" if order == "last" else "nchw") + ".npy"), "--device", "cpu",
                     "--probabilities"])
            self.assertEqual(r.returncode, 0, r.stderr)
            b = cli_util.read_checkpoint(ckpt)["b"]
            np.testing.assert_allclose(np.loadtxt(r.stdout.splitlines(), delimiter=","),
                                       z.reshape(N, -1) @ weights[1].T + b, rtol=1e-4, atol=1e-5)
            self.assert_same_predictions(ckpt)
            r = run(["fit", path, "--train", self.path("onnx_train.toml"), "--device", "cpu", "-q", "--set",
                     f"data.train.x={self.path('nwhc.npy')}"])
            cli_util.assert_input_error(self, r, "holds samples of shape [5, 4, 3]", "the images are in another order",
                                        f"the input is channels {order}")

    def test_the_layout_of_an_onnx_input_is_its_models_not_its_shapes(self):
        # [6, 4, 4]: more channels than columns, and channels first all the same (no transpose in the model):
        # NHWC arrays are converted for it, as NCHW ones are taken, and both train the same weights.
        rng = np.random.default_rng(13)
        x = rng.standard_normal((8, 6, 4, 4)).astype(np.float32)
        np.save(self.path("wide_nchw.npy"), x)
        np.save(self.path("wide_nhwc.npy"), np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
        np.save(self.path("wide_y.npy"), (x[:, 0, 0, 0] > 0).astype(np.int64))
        nodes = [h.make_node("Flatten", ["x"], ["f"], axis=1), h.make_node("Gemm", ["f", "W", "b"], ["y"], transB=1)]
        m = h.make_model(h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["N", 6, 4, 4])],
                                      [h.make_tensor_value_info("y", T.FLOAT, ["N", 2])],
                                      [nh.from_array((rng.standard_normal((2, 96)) * 0.1).astype(np.float32), "W"),
                                       nh.from_array(np.zeros(2, np.float32), "b")]),
                         opset_imports=[h.make_opsetid("", 17)])
        m.ir_version = 8
        path = self.path("wide.onnx")
        onnx.save(m, path)
        with open(self.path("wide.toml"), "w") as f:
            f.write('format_version = 1\n[data]\nshuffle = false\n[data.train]\ny = "wide_y.npy"\n[train]\n'
                    'loss = "sparse_categorical_crossentropy"\nfrom_logits = true\nepochs = 1\nbatch_size = 4\n'
                    '[train.optimizer]\nname = "sgd"\nlearning_rate = 0.1\n')
        weights = []
        for data in ("wide_nchw", "wide_nhwc"):
            _, ckpt = self.fit("run_" + data, [path, "--train", self.path("wide.toml"), "--set",
                                               f"data.train.x={self.path(data + '.npy')}"])
            weights.append(cli_util.read_checkpoint(ckpt)["W"])
        np.testing.assert_allclose(weights[0], weights[1], rtol=1e-6, atol=1e-7)

    def test_predict_reads_cifar10_batches_as_fit_does(self):
        # A CIFAR-10 batch file (a label byte and a [3, 32, 32] image per record) predicts as the same images in
        # an NHWC array do: through a spec's checkpoint (the CHW planes taken as the model computes), through its
        # export (an NHWC input: the planes transposed), plain or gzip-compressed.
        import gzip
        rng = np.random.default_rng(14)
        n = 12
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = (images[:, 0].mean(axis=(1, 2)) > images[:, 2].mean(axis=(1, 2))).astype(np.uint8)
        records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
        records.tofile(self.path("batch.bin"))
        with gzip.open(self.path("batch.bin.gz"), "wb") as f:
            f.write(records.tobytes())
        np.save(self.path("cifar_nhwc.npy"), np.ascontiguousarray(images.transpose(0, 2, 3, 1)))
        np.save(self.path("cifar_nhwc_f32.npy"), np.ascontiguousarray(images.transpose(0, 2, 3, 1)).astype(np.float32))
        with open(self.path("cifar.toml"), "w") as f:
            f.write('format_version = 1\n[model]\ninput = [32, 32, 3]\n[[model.layers]]\ntype = "Conv2D"\n'
                    'filters = 2\nkernel_size = 4\nstrides = 4\n[[model.layers]]\ntype = "Flatten"\n'
                    '[[model.layers]]\ntype = "Dense"\nunits = 2\nactivation = "softmax"\n[data]\n'
                    'scale = 0.00392156862745098\nmean = [0.5, 0.4, 0.3]\n[data.train]\nx = "batch.bin"\n'
                    '[train]\nloss = "sparse_categorical_crossentropy"\nepochs = 1\nbatch_size = 4\n')
        _, ckpt = self.fit("run_cifar", [self.path("cifar.toml")])
        onnx_path = self.path("cifar.onnx")
        r = run(["export", ckpt, "-o", onnx_path, "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)

        def predict(model, data):
            r = run(["predict", model, self.path(data), "--device", "cpu", "--probabilities", "--batch-size", "5"])
            self.assertEqual(r.returncode, 0, r.stderr)
            return np.loadtxt(r.stdout.splitlines(), delimiter=",")

        want = predict(ckpt, "cifar_nhwc.npy")
        self.assertEqual(want.shape, (n, 2))
        np.testing.assert_array_equal(predict(ckpt, "batch.bin"), want)
        np.testing.assert_array_equal(predict(ckpt, "batch.bin.gz"), want)
        # The export takes floats as given (scaled beforehand by whoever feeds it): the raw pixels here.
        want = predict(onnx_path, "cifar_nhwc_f32.npy")
        np.testing.assert_array_equal(predict(onnx_path, "batch.bin"), want)
        # A file cut inside a record is an error naming its size, or for a stream, the record.
        with open(self.path("cut.bin"), "wb") as f:
            f.write(records.tobytes()[:3073 * 2 + 100])
        r = run(["predict", ckpt, self.path("cut.bin"), "--device", "cpu"])
        cli_util.assert_input_error(self, r, "the size 6246 bytes is not a multiple of 3073", "CIFAR-10")
        with gzip.open(self.path("cut.bin.gz"), "wb") as f:
            f.write(records.tobytes()[:3073 * 2 + 100])
        r = run(["predict", ckpt, self.path("cut.bin.gz"), "--device", "cpu"])
        cli_util.assert_input_error(self, r, "the input ends inside record 3 (100 of its 3073 bytes)")


if __name__ == "__main__":
    cli_util.main()
