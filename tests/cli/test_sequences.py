"""[data.sequences]: arrays of Python lists of token ids (numpy object arrays, as keras.datasets' imdb.npz holds
them) mapped as keras.datasets.imdb.load_data maps their ids and padded as keras.utils.pad_sequences pads them,
checked against the same steps written out in numpy and fed as padded int32 arrays."""

import json
import os
import pickle
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = {{ shape = [{length}], dtype = "int32" }}
[[model.layers]]
type = "Embedding"
input_dim = 1000
output_dim = 8
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.train]
{train}
[data.validation]
{validation}
{sequences}
[train]
loss = "binary_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 16
seed = 4
"""


def load_data(xs, num_words=None, skip_top=0, start_char=1, oov_char=2, index_from=3):
    """keras.datasets.imdb.load_data's id mapping, as its source describes it (None: no start id; ids out of
    range dropped)."""
    if start_char is not None:
        xs = [[start_char] + [w + index_from for w in x] for x in xs]
    else:
        xs = [[w + index_from for w in x] for x in xs]
    if oov_char is None:
        return [[w for w in x if skip_top <= w and (num_words is None or w < num_words)] for x in xs]
    return [[w if skip_top <= w and (num_words is None or w < num_words) else oov_char for w in x] for x in xs]


def pad_sequences(xs, maxlen, padding="pre", truncating="pre", value=0):
    """keras.utils.pad_sequences for a given maxlen."""
    out = np.full((len(xs), maxlen), value, dtype=np.int32)
    for i, s in enumerate(xs):
        if not len(s):
            continue
        t = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        if padding == "post":
            out[i, :len(t)] = t
        else:
            out[i, -len(t):] = t
    return out


def ragged(rng, n):
    a = np.empty(n, dtype=object)
    for i in range(n):
        a[i] = [int(v) for v in rng.zipf(1.3, int(rng.integers(0, 90))).clip(1, 30000)]
    return a


def npy_with_pickle(path, array, protocol):
    """An .npy file of an object array whose pickle has the given protocol (numpy.save picks its own)."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (%d,), }" % len(array)
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
        f.write(pickle.dumps(array, protocol=protocol))


class Sequences(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        rng = np.random.default_rng(1)
        self.x_train, self.x_test = ragged(rng, 200), ragged(rng, 60)
        self.y_train = rng.integers(0, 2, 200).astype(np.int64)
        self.y_test = rng.integers(0, 2, 60).astype(np.int64)
        np.savez(self.path("imdb.npz"), x_train=self.x_train, y_train=self.y_train, x_test=self.x_test,
                 y_test=self.y_test)
        np.save(self.path("y_train.npy"), self.y_train)
        np.save(self.path("y_test.npy"), self.y_test)

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def fit(self, train, validation, sequences="", length=50, code=0):
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(length=length, train=train, validation=validation, sequences=sequences))
        r = run(["fit", spec, "--log-format", "jsonl", "--quiet", "--device", "cpu"], timeout=300)
        if code:
            return r
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.json_lines(self, r.stdout)[-1]

    def padded(self, name, xs, ys, **kw):
        np.save(self.path(f"{name}_x.npy"), pad_sequences(xs, **kw))
        np.save(self.path(f"{name}_y.npy"), ys)
        return f'x = "{name}_x.npy"\ny = "{name}_y.npy"'

    def check(self, sequences, length, mapped, **pad):
        """A fit on imdb.npz with [data.sequences] equals one on the same ids mapped and padded in numpy."""
        got = self.fit('x = "imdb.npz"\nx_key = "x_train"\ny_key = "y_train"',
                       'x = "imdb.npz"\nx_key = "x_test"\ny_key = "y_test"', "[data.sequences]\n" + sequences,
                       length)
        want = self.fit(self.padded("train", mapped(self.x_train), self.y_train, maxlen=length, **pad),
                        self.padded("test", mapped(self.x_test), self.y_test, maxlen=length, **pad), "", length)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            self.assertEqual(got[key], want[key], f"{sequences!r}: {key}")
        return got

    def test_load_data_and_pad_sequences(self):
        self.check("load_data = true\nnum_words = 1000\n", 50, lambda x: load_data(x, num_words=1000))
        self.check("load_data = true\nnum_words = 1000\nmaxlen = 30\npadding = \"post\"\ntruncating = \"post\"\n",
                   30, lambda x: load_data(x, num_words=1000), padding="post", truncating="post")
        self.check("load_data = true\nnum_words = 900\nskip_top = 5\nstart_char = 3\noov_char = 1\n"
                   "index_from = 2\nvalue = 7\n", 40,
                   lambda x: load_data(x, num_words=900, skip_top=5, start_char=3, oov_char=1, index_from=2),
                   value=7)
        # Keras's None, as false: no start id, and the ids out of range dropped (the rows shorten).
        self.check("load_data = true\nnum_words = 300\nskip_top = 4\nstart_char = false\noov_char = false\n", 40,
                   lambda x: load_data(x, num_words=300, skip_top=4, start_char=None, oov_char=None))
        self.check("load_data = true\nnum_words = 300\noov_char = false\n", 40,
                   lambda x: load_data(x, num_words=300, oov_char=None))
        # Without load_data the ids are as stored (here kept under the Embedding's 1000).
        small = [[w % 1000 for w in x] for x in self.x_train]
        small_test = [[w % 1000 for w in x] for x in self.x_test]
        for name, xs in (("small_train.npy", small), ("small_test.npy", small_test)):
            a = np.empty(len(xs), dtype=object)
            a[:] = [list(x) for x in xs]
            np.save(self.path(name), a, allow_pickle=True)
        got = self.fit('x = "small_train.npy"\ny = "y_train.npy"', 'x = "small_test.npy"\ny = "y_test.npy"',
                       "[data.sequences]\n", 50)
        want = self.fit(self.padded("s_train", small, self.y_train, maxlen=50),
                        self.padded("s_test", small_test, self.y_test, maxlen=50), "", 50)
        self.assertEqual(got["val_loss"], want["val_loss"])
        # Tuples and numpy arrays of integers, as pad_sequences takes them, read as lists do.
        for name, make in (("tuples", tuple), ("int64", lambda x: np.array(x, dtype=np.int64)),
                           ("int32", lambda x: np.array(x, dtype=np.int32))):
            a = np.empty(len(small), dtype=object)
            a[:] = [make(x) for x in small]
            np.save(self.path(f"{name}.npy"), a, allow_pickle=True)
            again = self.fit(f'x = "{name}.npy"\ny = "y_train.npy"', 'x = "small_test.npy"\ny = "y_test.npy"',
                             "[data.sequences]\n", 50)
            self.assertEqual(again["loss"], got["loss"], name)
        # Pickles of protocols 2 and 4 inside the .npy read alike.
        for proto in (2, 4):
            a = np.empty(len(small), dtype=object)
            a[:] = [list(x) for x in small]
            npy_with_pickle(self.path("small_train.npy"), a, proto)
            again = self.fit('x = "small_train.npy"\ny = "y_train.npy"',
                             'x = "small_test.npy"\ny = "y_test.npy"', "[data.sequences]\n", 50)
            self.assertEqual(again["loss"], got["loss"], f"protocol {proto}")

    def test_predict_pads_lists_as_fit_did(self):
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(length=40, train='x = "imdb.npz"\nx_key = "x_train"\ny_key = "y_train"',
                                validation='x = "imdb.npz"\nx_key = "x_test"\ny_key = "y_test"',
                                sequences='[data.sequences]\nload_data = true\nnum_words = 1000\npadding = "post"\n'))
        out = self.path("run")
        r = run(["fit", spec, "--output-dir", out, "--quiet", "--device", "cpu"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = os.path.join(out, "last.ckpt")
        np.save(self.path("lists.npy"), self.x_test, allow_pickle=True)
        np.save(self.path("padded.npy"), pad_sequences(load_data(self.x_test, num_words=1000), 40, padding="post"))
        on_lists = run(["predict", ckpt, self.path("lists.npy")])
        on_padded = run(["predict", ckpt, self.path("padded.npy")])
        self.assertEqual(on_lists.returncode, 0, on_lists.stderr)
        self.assertEqual(len(on_lists.stdout.splitlines()), len(self.x_test))
        self.assertEqual(on_lists.stdout, on_padded.stdout)
        np.savez(self.path("lists.npz"), x=self.x_test)
        self.assertEqual(run(["predict", ckpt, self.path("lists.npz")]).stdout, on_padded.stdout)

    def test_mistakes_are_named(self):
        train = 'x = "imdb.npz"\nx_key = "x_train"\ny_key = "y_train"'
        val = 'x = "imdb.npz"\nx_key = "x_test"\ny_key = "y_test"'
        # No [data.sequences]: the object array is named, with the way out.
        r = self.fit(train, val, "", code=2)
        cli_util.assert_input_error(self, r, "imdb.npz/x_train.npy", "an object array", "[data.sequences]")
        # Raw ids past the Embedding's input_dim without load_data's num_words.
        r = self.fit(train, val, "[data.sequences]\n", code=2)
        cli_util.assert_input_error(self, r, "is out of range for 1000 tokens",
                                    "take [data.sequences] load_data = true and num_words = 1000")
        r = self.fit(train, val, "[data.sequences]\nload_data = true\nnum_words = 5000\n", code=2)
        cli_util.assert_input_error(self, r, "set [data.sequences] num_words = 1000: ids from it on become oov_char")
        for table, needle in (("num_words = 10\n", "data.sequences.num_words is a setting of Keras's load_data"),
                              ("maxlen = 0\n", "data.sequences.maxlen must be 1 or more, not 0"),
                              ('padding = "middle"\n', "padding"),
                              ("load_data = true\nnum_words = 0\n", "data.sequences.num_words must be from 1"),
                              ("load_data = true\nstart_char = true\n", "data.sequences.start_char = true has no"),
                              ("load_data = true\noov_char = -1\n", "or false for Keras's oov_char=None"),
                              ("load_data = true\nskip_top = false\n", "skip_top")):
            spec = self.path("bad.toml")
            with open(spec, "w") as f:
                f.write(SPEC.format(length=50, train=train, validation=val, sequences="[data.sequences]\n" + table))
            cli_util.assert_input_error(self, run(["check", spec]), "bad.toml", needle)
        # A pickle that calls something else is refused, and nothing runs.
        marker = self.path("ran")

        class Evil:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        a = np.empty(2, dtype=object)
        a[0], a[1] = [1, 2], Evil()
        np.save(self.path("evil.npy"), a, allow_pickle=True)
        r = self.fit('x = "evil.npy"\ny = "y_train.npy"', val, "[data.sequences]\n", code=2)
        cli_util.assert_input_error(self, r, "evil.npy", "the pickle calls posix.system")
        self.assertFalse(os.path.exists(marker))
        # A list holding other than integers, a numpy array of floats.
        a[1] = [1, "two"]
        np.save(self.path("strings.npy"), a, allow_pickle=True)
        r = self.fit('x = "strings.npy"\ny = "y_train.npy"', val, "[data.sequences]\n", code=2)
        cli_util.assert_input_error(self, r, "strings.npy", "sample 1 of the array is not a list of integers")
        a[1] = np.array([0.5, 1.5])
        np.save(self.path("floats.npy"), a, allow_pickle=True)
        r = self.fit('x = "floats.npy"\ny = "y_train.npy"', val, "[data.sequences]\n", code=2)
        cli_util.assert_input_error(self, r, "floats.npy", "sample 1 of the array is a numpy array of f64 of shape (2)")


if __name__ == "__main__":
    cli_util.main()
