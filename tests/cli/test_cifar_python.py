"""The Python version of CIFAR-10 and CIFAR-100 (the pickled batches Keras's cifar10.load_data and
cifar100.load_data keep): read as the binary batches are, labels by key, and pickles that call anything, are
damaged, or hold other things refused with exit 2 and nothing run."""

import json
import os
import pickle
import random
import struct
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [32, 32, 3]
[[model.layers]]
type = "Conv2D"
filters = 4
kernel_size = 3
activation = "relu"
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = {classes}
activation = "softmax"
[data]
scale = 0.00392156862745098
[data.train]
x = {x}
{extra}
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 16
seed = 3
"""


def py2_pickle(labels, data):
    """The bytes Python 2's cPickle.dump(batch, f, 2) wrote for the CIFAR-10 batches: str keys and the image bytes
    as BINSTRING, numpy's _reconstruct and dtype named by GLOBAL, memo entries by BINPUT."""
    n = len(labels)
    out = b"\x80\x02}q\x01(U\x04dataq\x02cnumpy.core.multiarray\n_reconstruct\nq\x03cnumpy\nndarray\nq\x04"
    out += b"K\x00\x85U\x01b\x87Rq\x05(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
    out += b"cnumpy\ndtype\nq\x06U\x02u1K\x00K\x01\x87Rq\x07(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", len(data)) + data + b"tbq\x08"
    out += b"U\x06labelsq\x09]q\x0a(" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    out += b"U\x0bbatch_labelq\x0bU\x15training batch 1 of 5u."
    return out


class Evil:
    """An object whose pickle calls os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class CifarPython(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        rng = np.random.default_rng(7)
        self.n = 48
        self.images = rng.integers(0, 256, (self.n, 3072), dtype=np.uint8)
        self.labels = [int(v) for v in rng.integers(0, 10, self.n)]
        self.fine = [int(v) for v in rng.integers(0, 100, self.n)]
        self.coarse = [int(v) for v in rng.integers(0, 20, self.n)]

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        return name

    def binary(self, name, labels):
        """The same images and labels as CIFAR-10 binary records (a label byte, then the image)."""
        return self.write(name, b"".join(bytes([l]) + self.images[i].tobytes() for i, l in enumerate(labels)))

    def fit(self, x, classes=10, extra="", code=0, args=()):
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(classes=classes, x=json.dumps(x), extra=extra))
        r = run(["fit", spec, "--log-format", "jsonl", "--quiet", "--device", "cpu"] + list(args), timeout=300)
        if code == 0:
            self.assertEqual(r.returncode, 0, r.stderr)
            return cli_util.json_lines(self, r.stdout)[-1]
        return r

    def test_batches_read_as_the_binary_version(self):
        reference = self.fit(self.binary("batch.bin", self.labels))
        batch = {"batch_label": "training batch 1 of 5", "labels": self.labels, "data": self.images,
                 "filenames": [f"img_{i}.png" for i in range(self.n)]}
        for proto in (2, 3, 4, 5):
            name = self.write(f"data_batch_p{proto}", pickle.dumps(batch, protocol=proto))
            got = self.fit(name)
            for key in ("loss", "accuracy"):
                self.assertEqual(got[key], reference[key], f"protocol {proto}: {key}")
        # As Python 2 wrote the real files; Python 3 reads it as Keras does (encoding="bytes").
        py2 = py2_pickle(self.labels, self.images.tobytes())
        back = pickle.loads(py2, encoding="bytes")
        self.assertTrue(np.array_equal(back[b"data"], self.images))
        self.assertEqual(back[b"labels"], self.labels)
        os.mkdir(self.path("two"))
        got = self.fit(self.write("two/data_batch_1", py2))
        self.assertEqual(got["loss"], reference["loss"])
        # Two files (a glob), and labels as a numpy array.
        self.write("two/data_batch_2", pickle.dumps({"data": self.images, "labels": np.array(self.labels)},
                                                    protocol=4))
        two = self.fit("two/data_batch_*")
        self.binary("b2.bin", self.labels)
        self.assertEqual(two["loss"], self.fit(["batch.bin", "b2.bin"])["loss"])

    def test_predict_reads_a_batch(self):
        out = self.path("run")
        self.fit(self.binary("batch.bin", self.labels), args=["--output-dir", out])
        ckpt = os.path.join(out, "last.ckpt")
        self.write("test_batch", pickle.dumps({"data": self.images, "labels": self.labels}, protocol=4))
        on_bin = run(["predict", ckpt, self.path("batch.bin")])
        on_pickle = run(["predict", ckpt, self.path("test_batch")])
        self.assertEqual(on_pickle.returncode, 0, on_pickle.stderr)
        self.assertEqual(len(on_pickle.stdout.splitlines()), self.n)
        self.assertEqual(on_pickle.stdout, on_bin.stdout)
        # Told by its first bytes, also under a CIFAR-10 binary batch's name.
        self.write("named.bin", pickle.dumps({"data": self.images, "labels": self.labels}, protocol=2))
        self.assertEqual(run(["predict", ckpt, self.path("named.bin")]).stdout, on_bin.stdout)
        # Standard input that is the file itself reads as the file; a pipe cannot be.
        with open(self.path("test_batch"), "rb") as f:
            self.assertEqual(run(["predict", ckpt, "-"], stdin=f).stdout, on_bin.stdout)
        piped = subprocess.run(f'cat "{self.path("test_batch")}" | "{cli_util.TRAINER}" predict "{ckpt}" -',
                               shell=True, capture_output=True, text=True, timeout=120)
        cli_util.assert_input_error(self, piped, "stdin", "is a Python pickle, which cannot be read as a stream")
        self.write("evil", pickle.dumps({"data": Evil(self.path("ran"))}, protocol=4))
        cli_util.assert_input_error(self, run(["predict", ckpt, self.path("evil")]), "the pickle calls posix.system")
        self.assertFalse(os.path.exists(self.path("ran")))

    def test_cifar100_fine_and_coarse_labels(self):
        self.write("train", pickle.dumps({"data": self.images, "fine_labels": self.fine,
                                           "coarse_labels": self.coarse}, protocol=4))
        fine = self.fit("train", classes=100)
        self.assertEqual(fine["loss"], self.fit(self.binary("fine.bin", self.fine), classes=100)["loss"])
        coarse = self.fit("train", classes=20, extra='y_key = "coarse_labels"')
        self.assertEqual(coarse["loss"], self.fit(self.binary("coarse.bin", self.coarse), classes=20)["loss"])
        r = self.fit("train", classes=20, extra='y_key = "labels_of_nothing"', code=2)
        cli_util.assert_input_error(self, r, "train", "has no 'labels_of_nothing' (y_key)")
        r = self.fit("train", classes=20, extra='x_key = "images"', code=2)
        cli_util.assert_input_error(self, r, "spec.toml:17:1", "x_key = \"images\" names an array of .npz files")
        self.assertEqual(self.fit("train", classes=100, extra='x_key = "data"')["loss"], fine["loss"])

    def test_a_pickle_that_calls_anything_else_is_refused_and_nothing_runs(self):
        marker = self.path("ran")
        self.write("evil", pickle.dumps({"data": self.images, "labels": Evil(marker)}, protocol=2))
        r = self.fit("evil", code=2)
        cli_util.assert_input_error(self, r, "evil: byte ", "the pickle calls posix.system, which no data file "
                                    "needs")
        self.assertFalse(os.path.exists(marker))
        for proto in (2, 4):
            self.write("evil", pickle.dumps([Evil(marker)], protocol=proto))
            cli_util.assert_input_error(self, self.fit("evil", code=2), "the pickle calls posix.system")
        self.assertFalse(os.path.exists(marker))

    def test_other_contents_are_named(self):
        cases = [
            ({"labels": self.labels}, "the pickle's dict has no 'data'"),
            ({"data": self.images}, "the pickle's dict has no 'labels' or 'fine_labels'"),
            ({"data": self.images.astype(np.float32), "labels": self.labels},
             "its 'data' is an array of f32 of shape (48, 3072), not the bytes of N images"),
            ({"data": self.images[:, :100], "labels": self.labels}, "shape (48, 100)"),
            ({"data": self.images, "labels": self.labels[:-1]}, "'labels' holds 47 labels for 48 images"),
            ({"data": self.images, "labels": self.labels[:-1] + [300]}, "label 47 of 'labels' is not a class id"),
            ({"data": np.array([[1, 2], [3]], dtype=object), "labels": [0, 1]},
             "a numpy array of Python objects"),
            ({"data": self.images.astype(">u2"), "labels": self.labels}, "a numpy array of u2"),
            ([1, 2, 3], "the pickle holds no dict of data and labels"),
        ]
        for obj, needle in cases:
            self.write("bad", pickle.dumps(obj, protocol=4))
            cli_util.assert_input_error(self, self.fit("bad", code=2), "bad", needle)
        # A pickle of protocol 0 or 1 is not a CIFAR batch's: its name tells nothing, so the format is asked for.
        self.write("old", pickle.dumps({"data": 1}, protocol=1))
        cli_util.assert_input_error(self, self.fit("old", code=2), "cannot tell the format of 'old'")

    def test_damaged_pickles_are_refused_never_crash(self):
        good = py2_pickle(self.labels, self.images.tobytes())
        for cut in (1, 2, 3, 20, 60, 200, len(good) // 2, len(good) - 300, len(good) - 1):
            self.write("cut", good[:cut])
            r = self.fit("cut", code=2)
            cli_util.assert_input_error(self, r, "cut")
        rnd = random.Random(5)
        for trial in range(60):
            data = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                at = rnd.randrange(2, 200) if rnd.random() < 0.8 else rnd.randrange(len(good) - 120, len(good))
                data[at] = rnd.randrange(256)
            self.write("flip", bytes(data))
            r = self.fit("flip", code=2)
            self.assertIn(r.returncode, (0, 2), f"trial {trial}: {r.stderr}")
            self.assertNotIn("internal error", r.stderr)


if __name__ == "__main__":
    cli_util.main()
