"""Bad input, one case per mistake a user makes: each must exit with status 2 and a message that names the place
(file:line:col, the file and byte, the CSV line, the sample index, or the --set override), without a crash."""

import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import unittest
import zlib

import cli_util
from cli_util import assert_input_error, run

# A valid spec on 8 random 28x28 images (x.idx, y.idx); each case breaks one thing.
SPEC = """format_version = 1

[model]
input = [28, 28]

[[model.layers]]
type = "Flatten"

[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"

[data.train]
x = "x.idx"
y = "y.idx"

[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 1
batch_size = 4
"""

N = 8


def idx_images(n, magic=0x803):
    rng = random.Random(1)
    return struct.pack(">IIII", magic, n, 28, 28) + bytes(rng.randrange(256) for _ in range(n * 28 * 28))


def idx_labels(labels):
    return struct.pack(">II", 0x801, len(labels)) + bytes(labels)


def line_col(text, needle):
    """1-based line and column where `needle` starts in `text`."""
    i = text.index(needle)
    line = text.count("\n", 0, i) + 1
    return line, i - (text.rfind("\n", 0, i) + 1) + 1


class BadInput(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="trainer-bad-input-")
        self.write("x.idx", idx_images(N))
        self.write("y.idx", idx_labels([1, 2, 3, 4, 5, 6, 7, 8]))

    def tearDown(self):
        shutil.rmtree(self.dir)

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        return path

    def spec(self, text, name="spec.toml"):
        return self.write(name, text)

    def trainer(self, *args):
        return run(list(args), cwd=self.dir, timeout=60)

    def test_the_valid_spec_trains(self):
        # The cases below differ from this one in the one thing they break.
        r = self.trainer("fit", self.spec(SPEC))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_a_stderr_that_takes_nothing_changes_no_exit_code(self):
        # stderr on a full device (or a closed pipe): the messages are lost, the exit codes are not (writing them
        # used to throw, and the process aborted with 134).
        if not os.path.exists("/dev/full"):
            self.skipTest("no /dev/full here")
        bad = self.spec(SPEC.replace('type = "Flatten"', 'type = "Flaten"'), "bad.toml")
        for args, code in ((["check", bad], 2), (["fit", bad], 2), (["fit", self.spec(SPEC)], 0),
                           (["predict", bad], 2)):
            with self.subTest(args=args[0] + (" (bad)" if bad in args else "")):
                with open("/dev/full", "w") as full:
                    r = subprocess.run([cli_util.TRAINER, *args], cwd=self.dir, stdout=subprocess.DEVNULL, stderr=full,
                                       timeout=60)
                self.assertEqual(r.returncode, code)

    def test_pipes_whose_reader_is_gone_end_nothing_early(self):
        # stderr into a reader that quit (a log reader that died): the command still does its work and says so
        # on stdout (the first notice on stderr killed predict with SIGPIPE, before any prediction); stdout
        # into a reader that quit (`trainer summary spec | head -1`) is no failure.
        spec = self.spec(SPEC)
        out = os.path.join(self.dir, "run")
        self.assertEqual(self.trainer("fit", spec, "--output-dir", out, "-q").returncode, 0)
        for args, want in ((["fit", spec, "--epochs", "1", "--log-format", "jsonl"], '"event": "epoch"'),
                           (["evaluate", os.path.join(out, "last.ckpt")], '"loss"'),
                           (["summary", spec], "Total params"),
                           (["export", os.path.join(out, "last.ckpt"), "-o", os.path.join(self.dir, "m.onnx")], "")):
            with self.subTest(args=args[0], closed="stderr"):
                r, w = os.pipe()
                os.close(r)
                device = ["--device", "auto"] if args[0] in ("fit", "evaluate") else []  # its notice on stderr
                res = subprocess.run([cli_util.TRAINER, *args, *device], cwd=self.dir, stdout=subprocess.PIPE,
                                     stderr=w, text=True, timeout=120)
                os.close(w)
                self.assertEqual(res.returncode, 0)
                self.assertIn(want, res.stdout)
        for args in (["summary", spec], ["check", spec], ["--list-ops"]):
            with self.subTest(args=args[0], closed="stdout"):
                r, w = os.pipe()
                os.close(r)
                res = subprocess.run([cli_util.TRAINER, *args], cwd=self.dir, stdout=w, stderr=subprocess.PIPE,
                                     text=True, timeout=60)
                os.close(w)
                self.assertEqual(res.returncode, 0)
                self.assertNotIn("error", res.stderr)

    def test_an_empty_output_dir_is_refused(self):
        # It trained and wrote nothing, exit 0.
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", ""), "--output-dir",
                           "names no folder")

    def test_unknown_layer_type(self):
        text = SPEC.replace('type = "Flatten"', 'type = "Flaten"')
        # Its place: its type value.
        line, col = line_col(text, '"Flaten"')
        err = assert_input_error(self, self.trainer("check", self.spec(text)), "unknown layer type 'Flaten'")
        self.assertIn(f"spec.toml:{line}:{col}: unknown layer type", err)
        self.assertIn("did you mean 'Flatten'?", err)
        # A type given by --set is reported at the --set.
        err = assert_input_error(self, self.trainer("check", self.spec(SPEC), "--set", 'model.layers.0.type="Flaten"'),
                                 "unknown layer type 'Flaten'")
        self.assertIn("--set model.layers.0.type=\"Flaten\": unknown layer type", err)
        # TimeDistributed's wrapped type, at its `layer` value.
        text = SPEC.replace('type = "Flatten"', 'type = "TimeDistributed"\nlayer = "Dens"\nunits = 2')
        line, col = line_col(text, '"Dens"')
        err = assert_input_error(self, self.trainer("check", self.spec(text)), "unknown layer type 'Dens'")
        self.assertIn(f"spec.toml:{line}:{col}: unknown layer type", err)

    def test_binary_labels_outside_0_1(self):
        # Class ids 1..8 for a one-unit sigmoid output: refused, naming the first sample past 1 (sample 1's label 2).
        text = (SPEC.replace("units = 10", "units = 1").replace('activation = "softmax"', 'activation = "sigmoid"')
                .replace('loss = "sparse_categorical_crossentropy"', 'loss = "binary_crossentropy"'))
        err = assert_input_error(self, self.trainer("fit", self.spec(text)), "sample 1", "label 2",
                                 "is not a binary label")
        self.assertIn("sparse_categorical_crossentropy", err)  # the hint for class ids
        # 0/1 labels train.
        self.write("y.idx", idx_labels([0, 1, 1, 0, 1, 0, 0, 1]))
        r = self.trainer("fit", self.spec(text))
        self.assertEqual(r.returncode, 0, r.stderr)
        # Under a mask the padded steps' labels are the mask's to skip (-1 here), as Keras skips them.
        import numpy as np
        x = np.zeros((4, 5, 3), np.float32)
        x[:, :3] = np.random.default_rng(0).standard_normal((4, 3, 3))
        y = np.full((4, 5, 1), -1.0, np.float32)
        y[:, :3] = 1.0
        np.save(os.path.join(self.dir, "xs.npy"), x)
        np.save(os.path.join(self.dir, "ys.npy"), y)
        masked = ('format_version = 1\n[model]\ninput = [5, 3]\n[[model.layers]]\ntype = "Masking"\n'
                  '[[model.layers]]\ntype = "LSTM"\nunits = 4\nreturn_sequences = true\n[[model.layers]]\n'
                  'type = "Dense"\nunits = 1\nactivation = "sigmoid"\n[data.train]\nx = "xs.npy"\ny = "ys.npy"\n'
                  '[train]\nloss = "binary_crossentropy"\nbatch_size = 4\n')
        r = self.trainer("fit", self.spec(masked, "masked.toml"), "--output-dir", "masked")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_errors_a_user_meets_carry_a_hint(self):
        text = SPEC.replace('type = "Flatten"', 'type = "TimeDistributed"\nlayer = "TimeDistributed"')
        err = assert_input_error(self, self.trainer("check", self.spec(text)), "wraps a layer of one input")
        self.assertIn("hint: ", err)
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "run")
        self.assertEqual(r.returncode, 0, r.stderr)
        err = assert_input_error(self, self.trainer("predict", "run/last.ckpt", "x.idx", "--output", "nope"),
                                 "--output", "no output 'nope'")
        self.assertIn("hint: ", err)

    def test_unknown_key(self):
        text = SPEC.replace("epochs = 1", "epoch = 1")
        line, col = line_col(text, "epoch = 1")
        err = assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                                 "unknown key 'epoch' in [train]")
        self.assertIn("did you mean 'epochs'?", err)

    def test_unknown_layer_argument(self):
        text = SPEC.replace("units = 10", "units = 10\nunitz = 3")
        line, col = line_col(text, "unitz")
        # At the key, as an unknown key of [train] is.
        err = assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                                 "Dense layer 'dense'", "unknown argument 'unitz'")
        self.assertIn("did you mean 'units'?", err)
        text = SPEC.replace("units = 10", "units = 10\nstateful = true")
        line, col = line_col(text, "stateful")
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           "Keras's argument 'stateful' is not supported")

    def test_wrong_type(self):
        text = SPEC.replace("units = 10", 'units = "ten"')
        line, col = line_col(text, '"ten"')
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           "'units' must be an integer")
        text = SPEC.replace("epochs = 1", 'epochs = "1"')
        line, col = line_col(text, '"1"')
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:", "epochs")

    def test_zero_units(self):
        text = SPEC.replace("units = 10", "units = 0")
        line, col = line_col(text, "0\nactivation")
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           "Dense layer 'dense'", "units must be a positive integer, got 0")

    def test_kernel_larger_than_its_input(self):
        text = """format_version = 1
[model]
input = [4, 4, 1]
[[model.layers]]
type = "MaxPooling2D"
pool_size = 1
[[model.layers]]
type = "Conv2D"
filters = 2
kernel_size = 5
"""
        line, col = line_col(text, "5\n")
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           "Conv2D layer 'conv2d'", "(5, 5)", "(None, 4, 4, 1)", "'max_pooling2d'")

    def test_missing_data_file(self):
        text = SPEC.replace('x = "x.idx"', 'x = "nothing-here.idx"')
        assert_input_error(self, self.trainer("fit", self.spec(text)), "spec.toml:", "nothing-here.idx",
                           "does not exist")

    def test_idx_bad_magic(self):
        self.write("x.idx", idx_images(N, magic=0x1234))
        assert_input_error(self, self.trainer("fit", self.spec(SPEC)), "x.idx: byte 0:", "magic number 0x00001234")

    def test_idx_truncated(self):
        self.write("x.idx", idx_images(N)[:16 + 3 * 784 + 100])
        err = assert_input_error(self, self.trainer("fit", self.spec(SPEC)), "x.idx: byte ", "truncated")
        self.assertIn(f"{3 * 784 + 100} of its {N * 784} data bytes", err)

    def test_ragged_csv_row(self):
        self.write("rows.csv", "a,b,c,label\n1,2,3,0\n4,5,6,1\n7,8,1\n1,1,1,0\n")
        text = """format_version = 1
[model]
input = [3]
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data.train]
x = "rows.csv"
[train]
loss = "sparse_categorical_crossentropy"
"""
        assert_input_error(self, self.trainer("fit", self.spec(text)), "rows.csv:4:", "3 fields", "4")
        # A label column named twice in the header is ambiguous.
        self.write("rows.csv", "a,label,c,label\n1,2,3,0\n4,5,6,1\n")
        named = text.replace('x = "rows.csv"', 'x = "rows.csv"\nlabel_column = "label"')
        assert_input_error(self, self.trainer("fit", self.spec(named)), "label_column 'label' names columns 1 and 3")

    def test_label_out_of_range(self):
        self.write("y.idx", idx_labels([1, 2, 3, 4, 12, 6, 7, 8]))
        err = assert_input_error(self, self.trainer("fit", self.spec(SPEC)), "y.idx", "sample 4",
                                 "label 12", "10 classes")
        self.assertIn("[0, 9]", err)

    def test_class_ids_for_one_unit(self):
        # A sigmoid unit under sparse_categorical_crossentropy: one probability, and labels 0 and 1.
        self.write("y.idx", idx_labels([0, 1, 0, 1, 0, 1, 0, 1]))
        text = SPEC.replace("units = 10", "units = 1").replace('"softmax"', '"sigmoid"').replace(
            'metrics = ["accuracy"]\n', "")
        err = assert_input_error(self, self.trainer("fit", self.spec(text)), "y.idx", "sample 1",
                                 "label 1 is a class id, and the model's output has one unit")
        self.assertIn("binary_crossentropy", err)

    def test_a_classifier_without_flatten(self):
        # Dense layers on [28, 28] act on the last axis: the output classifies each of 28 rows.
        text = SPEC.replace('type = "Flatten"', 'type = "Dropout"\nrate = 0.1')
        err = assert_input_error(self, self.trainer("fit", self.spec(text)),
                                 "sparse_categorical_crossentropy needs 28 labels per sample")
        self.assertIn("put Flatten or a global pooling layer before the Dense layers", err)

    def test_a_spec_where_a_trained_model_belongs(self):
        spec = self.spec(SPEC)
        self.write("x.npy", b"")
        for args in (["predict", spec, "x.npy"], ["evaluate", spec], ["export", spec, "-o", "m.onnx"]):
            err = assert_input_error(self, self.trainer(*args), "spec.toml: is a model spec, not a trained model",
                                     f"trainer {args[0]} takes a checkpoint")
            self.assertIn(f"trainer fit {spec} --output-dir DIR, then trainer {args[0]} DIR/last.ckpt", err)
        assert_input_error(self, self.trainer("fit", "--resume", spec), "is a model spec, not a checkpoint")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "m.onnx")))

    def test_binary_crossentropy_on_10_units_with_class_ids(self):
        # Ten outputs under binary_crossentropy are a multi-label classification (valid Keras, so check
        # accepts it); class-id labels do not fit it, and fit says so at the data, naming the way out.
        text = SPEC.replace('"sparse_categorical_crossentropy"', '"binary_crossentropy"')
        r = self.trainer("check", self.spec(text))
        self.assertEqual(r.returncode, 0, r.stderr)
        line, col = line_col(text, "[data.train]")
        err = assert_input_error(self, self.trainer("fit", self.spec(text)), f"spec.toml:{line}:{col}:",
                                 "binary_crossentropy needs 10 labels per sample", "[10]", "shape []")
        self.assertIn("sparse_categorical_crossentropy", err)

    def test_unknown_format_version(self):
        text = SPEC.replace("format_version = 1", "format_version = 2")
        line, col = line_col(text, "2\n")
        err = assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                                 "format_version 2")
        self.assertIn("format_version = 1", err)

    def test_set_on_a_key_that_does_not_exist(self):
        err = assert_input_error(self, self.trainer("check", self.spec(SPEC), "--set", "train.epoch=3"),
                                 "--set train.epoch=3:", "unknown key 'train.epoch'")
        self.assertIn("did you mean 'train.epochs'?", err)
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--set", "model.layers.1.unitz=3"),
                           "--set model.layers.1.unitz=3:", "unknown argument 'unitz'")

    def test_a_bad_value_that_set_gave_is_named_by_the_override(self):
        # The key is the file's, the value the override's: the error names the override, not the file's line.
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--set", "data.train.x=missing.idx"),
                           "--set data.train.x=missing.idx: data file 'missing.idx' does not exist")
        text = SPEC.replace('loss = "sparse_categorical_crossentropy"',
                            'loss = "SparseCategoricalCrossentropy(from_logits=False)"\nfrom_logits = false')
        assert_input_error(self, self.trainer("check", self.spec(text), "--set", "train.from_logits=true"),
                           "--set train.from_logits=true: train.from_logits is true, and the loss's call says")


    def test_absurd_sizes_and_ranks(self):
        # Sizes no machine holds are errors naming the tensor, before anything is allocated; a sample of more
        # than 8 dimensions is named at its place.
        text = SPEC.replace("input = [28, 28]", "input = [28, 9223372036854775807]")
        assert_input_error(self, self.trainer("check", self.spec(text)), "is too large: over 2^40 bytes")
        # A layer's sizes are named at their argument first.
        text = SPEC.replace("units = 10", "units = 9223372036854775807")
        assert_input_error(self, self.trainer("check", self.spec(text)),
                           "units = 9223372036854775807 is too large (at most 2147483647)")
        text = SPEC.replace("input = [28, 28]", "input = [" + ", ".join(["1"] * 30) + ", 784]")
        line, col = line_col(text, "[1, 1")
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           "31 dimensions; a sample has at most 8")
        # An absurdly long unknown key is cut short in the message.
        err = assert_input_error(self, self.trainer("check", self.spec(SPEC.replace("epochs = 1", "e" * 5000 + " = 1"))),
                                 "unknown key 'eeee")
        self.assertLess(len(err), 1000)

    def test_idx_dimensions_past_the_file(self):
        self.write("x.idx", struct.pack(">IIII", 0x803, 0x7FFFFFFF, 0x7FFFFFFF, 0x7FFFFFFF) + bytes(64))
        assert_input_error(self, self.trainer("fit", self.spec(SPEC)), "x.idx", "need more than 2^64 data bytes")
        self.write("x.idx", struct.pack(">IIII", 0x803, 1000, 28, 28) + bytes(64))
        assert_input_error(self, self.trainer("fit", self.spec(SPEC)), "x.idx", "64 of its 784000 data bytes")

    def test_labels_that_are_not_finite(self):
        # NaN targets would only show as a NaN loss after a step: named with their sample instead.
        import numpy as np
        y = np.linspace(0, 1, N).astype(np.float32)
        y[5] = np.nan
        np.save(os.path.join(self.dir, "x.npy"), np.ones((N, 28, 28), np.float32))
        np.save(os.path.join(self.dir, "y.npy"), y)
        text = SPEC.replace('x.idx', 'x.npy').replace('y.idx', 'y.npy').replace("units = 10", "units = 1").replace(
            '"sparse_categorical_crossentropy"', '"mse"').replace('metrics = ["accuracy"]\n', "")
        assert_input_error(self, self.trainer("fit", self.spec(text)), "sample 5", "label nan (element 0) is not a finite number")

    def test_features_that_are_not_finite(self):
        # A NaN or infinite feature is named with its sample before its step (the loss would turn NaN there).
        import numpy as np
        for bad in (np.nan, np.inf):
            x = np.ones((N, 28, 28), np.float32)
            x[6, 3, 4] = bad
            np.save(os.path.join(self.dir, "x.npy"), x)
            np.save(os.path.join(self.dir, "y.npy"), np.arange(1, N + 1, dtype=np.int64) % 10)
            text = SPEC.replace('x.idx', 'x.npy').replace('y.idx', 'y.npy')
            assert_input_error(self, self.trainer("fit", self.spec(text), "--device", "cpu"), "x.npy", "sample 6",
                               f"feature {'nan' if np.isnan(bad) else 'inf'} (element {3 * 28 + 4}) is not a finite")

    def test_bad_labels_of_any_split_are_found_before_training(self):
        # A test label out of range ends the run at its start, not after the last epoch with nothing saved.
        import numpy as np
        np.save(os.path.join(self.dir, "x.npy"), np.ones((N, 28, 28), np.float32))
        np.save(os.path.join(self.dir, "yt.npy"), np.array([1, 2, 3, 4, 5, 6, 10, 8], np.int64))
        np.save(os.path.join(self.dir, "y.npy"), np.arange(1, N + 1, dtype=np.int64) % 10)
        text = SPEC.replace('x.idx', 'x.npy').replace('y.idx', 'y.npy') + '[data.test]\nx = "x.npy"\ny = "yt.npy"\n'
        r = self.trainer("fit", self.spec(text), "--device", "cpu", "--epochs", "3", "--log-format", "jsonl")
        assert_input_error(self, r, "yt.npy", "sample 6", "label 10 is out of range for 10 classes")
        self.assertNotIn('"event": "epoch"', r.stdout)

    def test_validation_split_counts_as_keras(self):
        # Keras trains on the first floor(N * (1 - split)) samples: 8 at 0.3 -> 5 and 3; at 0.01 -> 7 and 1.
        for split, train, held in ((0.3, 5, 3), (0.01, 7, 1)):
            text = SPEC.replace("[data.train]", f"[data]\nvalidation_split = {split}\n[data.train]")
            r = self.trainer("fit", self.spec(text), "--device", "cpu", "--log-format", "text")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn(f"Training on {train} samples, validating on {held}", r.stderr)

    def test_npy_header_with_a_key_numpy_refuses(self):
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 784), 'extra': 1, }"
        header += " " * (118 - len(header)) + "\n"
        self.write("x.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() +
                   bytes(8 * 784 * 4))
        text = SPEC.replace('x = "x.idx"', 'x = "x.npy"\nformat = "npy"').replace('y = "y.idx"', 'y = "y.idx"')
        assert_input_error(self, self.trainer("fit", self.spec(text.replace('format = "npy"', ""))),
                           "unexpected key 'extra'")


    def test_sizes_that_wrap_64_bits_are_damaged_files_not_crashes(self):
        # An NPY shape of 2^48 x 65536 bytes (2^64: the product wrapped to 0 and passed the size check) and an
        # NPZ member whose zip64 size is 2^64 - 10 (its end wrapped below the file size) were read past the end
        # of the mapping: SIGBUS.
        def npy(descr, shape, data=b""):
            header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
            header += " " * (118 - len(header)) + "\n"
            return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + data
        self.write("x.npy", npy("|u1", "(281474976710656, 65536, 1)"))
        self.write("y.npy", npy("|u1", "(281474976710656, 65536, 1)"))
        wide = ('format_version = 1\n[model]\ninput = [65536, 1]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                '[data.train]\nx = "x.npy"\ny = "y.npy"\nlimit = 4\n[train]\nloss = "mse"\nepochs = 1\n'
                'batch_size = 2\n')
        assert_input_error(self, self.trainer("fit", self.spec(wide)), "x.npy", "holds more bytes than any file")
        # A stored zip member, its sizes moved to a zip64 extra field.
        member = npy("<f4", "(8, 784)", bytes(8 * 784 * 4))
        name = b"x.npy"
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, len(member), len(member), len(name), 0)
        huge = (1 << 64) - 10
        extra = struct.pack("<HHQQ", 1, 16, huge, huge)
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0, 0, 0xFFFFFFFF, 0xFFFFFFFF,
                              len(name), len(extra), 0, 0, 0, 0, 0) + name + extra
        labels, y_name = npy("|u1", "(8,)", bytes(8)), b"y.npy"
        y_local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(labels), len(labels),
                              len(labels), len(y_name), 0)
        body = local + name + member
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(labels),
                               len(labels), len(labels), len(y_name), 0, 0, 0, 0, 0, len(body)) + y_name
        body += y_local + y_name + labels
        end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 2, 2, len(central), len(body), 0)
        self.write("x.npz", body + central + end)
        text = SPEC.replace('x = "x.idx"', 'x = "x.npz"\nx_key = "x"\ny_key = "y"').replace('y = "y.idx"\n', "")
        assert_input_error(self, self.trainer("fit", self.spec(text)), "x.npz", "the archive ends inside member")

    def test_damaged_or_empty_data_gets_a_hint(self):
        header = "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 784), }"
        header += " " * (118 - len(header)) + "\n"
        self.write("x.npy", b"\x93NUMPY\x09\x00" + struct.pack("<H", len(header)) + header.encode() +
                   bytes(8 * 784 * 4))
        npy = SPEC.replace('x = "x.idx"', 'x = "x.npy"')
        assert_input_error(self, self.trainer("fit", self.spec(npy)), "x.npy: byte 6:", "version 9.0",
                           "\n  hint: write it with numpy.save")
        self.write("header.csv", "a,b,c,label\n")
        csv = SPEC.replace('input = [28, 28]', 'input = [3]').replace('type = "Flatten"', 'type = "Dense"\nunits = 3')
        csv = csv.replace('x = "x.idx"', 'x = "header.csv"').replace('y = "y.idx"\n', "")
        assert_input_error(self, self.trainer("fit", self.spec(csv)), "header.csv holds no samples",
                           "\n  hint: point the spec at a file with samples (a CSV file needs rows")
        # Labels as NPY beside IDX samples: read as IDX, they were a "bad magic number".
        np_labels = bytes(8)
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (8,), }"
        header += " " * (118 - len(header)) + "\n"
        self.write("y.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + np_labels)
        assert_input_error(self, self.trainer("fit", self.spec(SPEC.replace('y = "y.idx"', 'y = "y.npy"'))),
                           "y.npy: byte 0: is an NPY array, read as IDX", "a dataset's files share one format")
        # A number past double's range was "not a number" (and its row taken for a header).
        self.write("header.csv", "a,b,c,label\n1,2,3,0\n1e400,2,3,1\n")
        assert_input_error(self, self.trainer("fit", self.spec(csv)),
                           "header.csv:3:1: column 'a' holds '1e400', a number past the range of numbers",
                           "hint: scale the data into float32's range")

    def test_an_onnx_model_without_inputs_or_outputs_gets_a_hint(self):
        try:
            from onnx import TensorProto, helper
        except ImportError:
            self.skipTest("onnx is needed (tools/install-deps.sh installs it)")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
        one = helper.make_tensor("one", TensorProto.FLOAT, [4], [1, 1, 1, 1])
        for name, nodes, inputs, outputs, needles in (
                ("no-outputs", [helper.make_node("Relu", ["x"], ["y"])], [x], [],
                 ("no outputs", "\n  hint: predict writes the graph's outputs")),
                ("no-inputs", [helper.make_node("Constant", [], ["y"], value=one)], [], [y],
                 ("no inputs", "\n  hint: predict needs a graph input"))):
            with self.subTest(name):
                graph = helper.make_graph(nodes, "g", inputs, outputs)
                self.write(name + ".onnx", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                           .SerializeToString())
                r = self.trainer("predict", name + ".onnx", self.write("in.csv", "1,2,3,4\n"))
                assert_input_error(self, r, name + ".onnx", *needles)

    def edited_checkpoint(self, edit):
        """Trains SPEC into run/last.ckpt and writes edited.ckpt: its header changed by edit(header), the checksum
        made right again."""
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "run", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(self.dir, "run", "last.ckpt"), "rb") as f:
            data = f.read()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        edit(header)
        self.write("edited.ckpt", cli_util.signed_checkpoint(header, data[8 + n:]))

    def test_a_checkpoint_state_no_run_writes(self):
        # The training state of an edited checkpoint (checksum made right again) is held to what a run writes:
        # a learning-rate factor of 0 or below trained nothing or climbed the loss, NaN sums made NaN metrics.
        for key, value, needle in (("lr_factor", -0.5, "'lr_factor' = -0.5"), ("lr_factor", 0, "'lr_factor' = 0"),
                                   ("loss_scale", -1, "'loss_scale' = -1"), ("seconds", "NaN", "'seconds' = NaN"),
                                   ("metric_sums", [1.0, "Infinity"], "'metric_sums' entry (number 2)"),
                                   ("batch", 99, "at batch 99 of its epoch but step 2")):
            with self.subTest(key=key, value=value):
                def edit(header):
                    state = json.loads(header["__metadata__"]["state"])
                    state[key] = value
                    header["__metadata__"]["state"] = json.dumps(state)
                self.edited_checkpoint(edit)
                r = self.trainer("fit", self.spec(SPEC), "--resume", "edited.ckpt")
                assert_input_error(self, r, "edited.ckpt", needle, "hint: the file is damaged or was edited")

    def test_a_checkpoint_without_a_weight_of_its_model(self):
        # A checkpoint whose tensors miss a weight of the model its spec describes (edited, the checksum made
        # right again) is refused by every command that reads it, not run with the weight's initial values.
        def edit(header):
            header["dense/kernelX"] = header.pop("dense/kernel")
        self.edited_checkpoint(edit)
        self.write("p.idx", idx_images(4))
        for args in (["evaluate", "edited.ckpt"], ["export", "edited.ckpt", "-o", "out.onnx"],
                     ["predict", "edited.ckpt", "p.idx"]):
            with self.subTest(args=args):
                assert_input_error(self, self.trainer(*args), "edited.ckpt",
                                   "the checkpoint has no 'dense/kernel', which its model has")
        self.assertFalse(os.path.exists(os.path.join(self.dir, "out.onnx")))

    def test_a_set_that_drops_a_trained_weight_is_refused(self):
        # evaluate --set model.layers.1.use_bias=false builds a model without the trained bias: it ran without
        # it (another loss, exit 0); the checkpoint's bias has no place in that model.
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "run", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        assert_input_error(self, self.trainer("evaluate", "run/last.ckpt", "--set", "model.layers.1.use_bias=false"),
                           "run/last.ckpt", "the checkpoint holds 'dense/bias', which the model does not have")
        # A --set that resizes a layer: the hint names it before a damaged file.
        assert_input_error(self, self.trainer("evaluate", "run/last.ckpt", "--set", "model.layers.1.units=16"),
                           "run/last.ckpt", "'dense/kernel' in the checkpoint does not fit the model",
                           "a --set that changes the model cannot read it")
        r = self.trainer("evaluate", "run/last.ckpt", "-q")  # the optimizer state is no such value
        self.assertEqual(r.returncode, 0, r.stderr)

    @unittest.skipUnless(os.path.exists("/dev/full"), "needs /dev/full")
    def test_a_full_standard_output_is_named_with_its_error(self):
        # The write that failed says why (not a later call's errno), help included.
        for args in (["fit", self.spec(SPEC), "--output-dir", "full", "-q", "--log-format", "jsonl"],
                     ["fit", "--help"], ["help", "fit"]):
            with self.subTest(args=args), open("/dev/full", "w") as full:
                r = subprocess.run([cli_util.TRAINER] + args, cwd=self.dir, stdout=full, stderr=subprocess.PIPE,
                                   text=True, timeout=60)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("writing to standard output failed: No space left on device", r.stderr)

    def test_a_label_shape_error_names_the_label_file(self):
        import numpy as np
        np.save(os.path.join(self.dir, "x.npy"), np.ones((N, 28, 28), np.float32))
        np.save(os.path.join(self.dir, "onehot.npy"), np.eye(10, dtype=np.float32)[:N])
        text = SPEC.replace('x.idx', 'x.npy').replace('y.idx', 'onehot.npy')
        assert_input_error(self, self.trainer("fit", self.spec(text), "--device", "cpu"),
                           "onehot.npy has labels of shape [10]", "categorical_crossentropy")

    def test_outputs_that_cannot_be_written_are_found_before_any_work(self):
        # An --output-dir that is a file, a checkpoint path taken by a folder, a --trace in a missing folder: errors
        # before training, so an existing run's checkpoints are not replaced by a run that then fails.
        self.write("a_file", "x")
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", "a_file"), "a_file",
                           "cannot be the output directory")
        os.makedirs(os.path.join(self.dir, "taken", "last.ckpt"))
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", "taken"),
                           "last.ckpt: is in the way of the run's checkpoint")
        # A checkpoint's name (epoch-N.ckpt whichever N, as the end of a run without [train.checkpoint] writes
        # one too; step-N.ckpt, as an interrupt writes one), the history's, or a link to a folder at one of them:
        # found at the start too, not when the run gets to write it.
        os.makedirs(os.path.join(self.dir, "a_folder"))
        for name, what, folder in (("epoch-1.ckpt", "checkpoint", True), ("epoch-7.ckpt", "checkpoint", True),
                                   ("step-40.ckpt", "checkpoint", True), ("history.jsonl", "history", True),
                                   ("best.ckpt", "checkpoint", False)):
            with self.subTest(taken=name, folder=folder):
                path = os.path.join(self.dir, "taken2", name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if folder:
                    os.makedirs(path)
                else:
                    os.symlink(os.path.join(self.dir, "a_folder"), path)
                assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", "taken2"),
                                   f"{name}: is in the way of the run's {what}")
                os.rmdir(path) if folder else os.unlink(path)
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "run", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        ckpt = os.path.join(self.dir, "run", "last.ckpt")
        with open(ckpt, "rb") as f:
            before = f.read()
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", "run", "--trace", "nodir/t.json"),
                           "--trace", "the folder nodir does not exist")
        # Through a symbolic link to a folder that does not exist, or a loop of links: refused before training
        # (they passed, and the run failed after training when the trace was written).
        os.symlink("nodir/t.json", os.path.join(self.dir, "t_link"))
        os.symlink("loop_b", os.path.join(self.dir, "loop_a"))
        os.symlink("loop_a", os.path.join(self.dir, "loop_b"))
        for link, message in (("t_link", "the folder nodir (where its link leads) does not exist"),
                              ("loop_a", "is a symbolic link in a loop of links")):
            r = self.trainer("fit", self.spec(SPEC), "--output-dir", "run2", "--trace", link, "--log-format", "jsonl")
            assert_input_error(self, r, "--trace", message)
            self.assertNotIn('"epoch"', r.stdout)
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--output-dir", "x", "--trace", "run/last.ckpt"),
                           "is a checkpoint: writing would destroy it")
        # export's -o: not the checkpoint it reads, not a FIFO; a symbolic link is written through.
        assert_input_error(self, self.trainer("export", "run/last.ckpt", "-o", "run/last.ckpt"),
                           "is the input run/last.ckpt: writing would destroy it")
        os.mkfifo(os.path.join(self.dir, "fifo"))
        assert_input_error(self, self.trainer("export", "run/last.ckpt", "-o", "fifo"), "is not a regular file")
        with open(ckpt, "rb") as f:
            self.assertEqual(f.read(), before)
        self.write("target.onnx", "old")
        os.symlink("target.onnx", os.path.join(self.dir, "link.onnx"))
        r = self.trainer("export", "run/last.ckpt", "-o", "link.onnx", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.islink(os.path.join(self.dir, "link.onnx")))
        self.assertGreater(os.path.getsize(os.path.join(self.dir, "target.onnx")), 1000)
        # Output that cannot reach stdout (a full device) is an error, not a silent success.
        if os.path.exists("/dev/full"):
            with open("/dev/full", "w") as full:
                r = subprocess.run([cli_util.TRAINER, "evaluate", "run/last.ckpt", "--data", "train", "-q"],
                                   cwd=self.dir, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("trainer: error: writing to standard output failed", r.stderr)

    def test_a_resumed_onnx_model_must_be_the_checkpoints(self):
        # The checkpoint embeds its ONNX model: resuming with another model file is an error, not ignored.
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "a", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.trainer("fit", self.spec(SPEC), "--output-dir", "b", "--seed", "7", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        for run_dir in ("a", "b"):
            r = self.trainer("export", f"{run_dir}/last.ckpt", "-o", f"{run_dir}.onnx", "-q")
            self.assertEqual(r.returncode, 0, r.stderr)
        train = self.write("t.toml", "format_version = 1\n" + SPEC[SPEC.index("[data.train]"):])
        shutil.copy(os.path.join(self.dir, "a.onnx"), os.path.join(self.dir, "m.onnx"))
        r = self.trainer("fit", "m.onnx", "--train", train, "--output-dir", "m", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        shutil.copy(os.path.join(self.dir, "b.onnx"), os.path.join(self.dir, "m.onnx"))
        assert_input_error(self, self.trainer("fit", "m.onnx", "--train", train, "--resume", "m/last.ckpt", "--epochs",
                                              "2", "--output-dir", "m2"),
                           "is not the one the checkpoint m/last.ckpt was trained from")

    def test_non_finite_layer_arguments(self):
        # TOML's nan and inf are numbers; no layer argument takes them (they trained NaN weights).
        for layer, arg in (('type = "GaussianNoise"', "stddev"), ('type = "Rescaling"\nscale = 1.0', "offset"),
                           ('type = "LeakyReLU"', "negative_slope")):
            for value in ("nan", "inf", "-inf"):
                with self.subTest(layer=layer, value=value):
                    text = SPEC.replace('type = "Flatten"', f'type = "Flatten"\n[[model.layers]]\n{layer}\n{arg} = {value}')
                    line, col = line_col(text, f"{arg} = {value}")
                    assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:",
                                       f"argument '{arg}' must be a finite number, got {value}")

    def test_windows_beyond_two_to_the_twentieth(self):
        # A dilation of 2^31 - 1 was an internal error of the convolution library; a pool of 2^31 - 1 took minutes
        # a step.
        for layer, arg in (('type = "Reshape"\ntarget_shape = [28, 28, 1]\n[[model.layers]]\ntype = "Conv2D"\n'
                            'filters = 2\nkernel_size = 3\npadding = "same"', "dilation_rate"),
                           ('type = "MaxPooling1D"\npadding = "same"', "pool_size")):
            with self.subTest(arg=arg):
                text = SPEC.replace('type = "Flatten"', f'{layer}\n{arg} = 2147483647\n[[model.layers]]\ntype = "Flatten"')
                line, col = line_col(text, f"{arg} = 2147483647")
                assert_input_error(self, self.trainer("fit", self.spec(text), "-q"), f"spec.toml:{line}:",
                                   "at most 1048576")

    def test_a_weight_larger_than_memory_is_a_spec_error(self):
        # 784 x 300,000,000 floats: 876 GiB, more than this machine's memory and under a tensor's 2^40 bytes. It ran
        # out of memory (exit 1) in check and summary alike.
        text = SPEC.replace("units = 10", "units = 300000000")
        for command in ("check", "summary"):
            with self.subTest(command=command):
                assert_input_error(self, self.trainer(command, self.spec(text)), "Dense layer 'dense'",
                                   "its weight 'kernel' of shape [784, 300000000]", "of memory")

    def test_weights_that_together_outgrow_memory_are_a_spec_error(self):
        # Each weight fits, both do not: under a 1.5 GiB address-space limit (ulimit -v; a cgroup's memory.max
        # counts too), 0.9 GiB of Dense 300000 then 1.1 GiB of Dense 1000. Without the sum the model filled the
        # memory: "out of memory" (exit 1) here, the kernel's OOM kill (signal 9) on the machine's own memory.
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))

        text = SPEC.replace("units = 10\n", "units = 300000\n").replace(
            'activation = "softmax"', 'activation = "relu"\n\n[[model.layers]]\ntype = "Dense"\nunits = 1000\n'
            'activation = "softmax"')
        path = self.spec(text)
        for command in ("check", "summary"):
            with self.subTest(command=command):
                r = subprocess.run([cli_util.TRAINER, command, path], cwd=self.dir, capture_output=True, text=True,
                                   timeout=120, preexec_fn=limit)
                assert_input_error(self, r, "Dense layer 'dense_1'", "its weight 'kernel' of shape [300000, 1000]",
                                   "weights before it", "1.5 GiB of memory this process may use")

    def test_activations_larger_than_host_memory_still_plan(self):
        # A training step of 30 GiB of activations (RepeatVector 80000 of 100 values at batch 1000) under a 1.5 GiB
        # address-space limit: its planned memory is for a device to hold, not host tensors, so check reports it.
        import resource

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29))

        path = self.spec('format_version = 1\n[model]\ninput = [100]\n[[model.layers]]\ntype = "RepeatVector"\n'
                         'n = 80000\n[[model.layers]]\ntype = "GlobalAveragePooling1D"\n[train]\nloss = "mse"\n'
                         'batch_size = 1000\n')
        r = subprocess.run([cli_util.TRAINER, "check", path], cwd=self.dir, capture_output=True, text=True, timeout=120,
                           preexec_fn=limit)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("training step planned in 30518.72 MiB", r.stderr)
        # Training it there fails at run time (exit 1), with what could not be had and what to change.
        def npy(shape):
            header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"
            header += " " * (118 - len(header)) + "\n"
            return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(4000 * 100)
        self.write("x.npy", npy("(1000, 100)"))
        self.write("y.npy", npy("(1000, 100)"))
        with open(path, "a") as f:
            f.write('epochs = 1\n[data.train]\nx = "x.npy"\ny = "y.npy"\n')
        r = subprocess.run([cli_util.TRAINER, "fit", path], cwd=self.dir, capture_output=True, text=True, timeout=120,
                           preexec_fn=limit)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("trainer: error: cannot allocate", r.stderr)
        self.assertIn("MiB of host memory for the plan\n  hint: lower the batch size (train.batch_size", r.stderr)

    def test_an_empty_activation_is_unknown(self):
        text = SPEC.replace('activation = "softmax"', 'activation = ""')
        line, col = line_col(text, '""')
        assert_input_error(self, self.trainer("check", self.spec(text)), f"spec.toml:{line}:{col}:",
                           'unknown activation ""')

    def test_a_spec_path_to_a_device_is_refused_before_it_fills_memory(self):
        if not os.path.exists("/dev/zero"):
            self.skipTest("no /dev/zero")
        assert_input_error(self, self.trainer("check", "/dev/zero"), "/dev/zero", "larger than 16 MiB")

    def test_an_onnx_initializer_that_claims_more_than_its_data(self):
        # 4 bytes of data for a [262144, 65536] float initializer (64 GiB): the size is compared before anything
        # is allocated (it ran out of memory), and a claim beyond what a tensor may hold names the initializer.
        try:
            import onnx
            from onnx import TensorProto, helper
        except ImportError:
            self.skipTest("onnx is needed (tools/install-deps.sh installs it)")
        for dims, needle in (([262144, 65536], "raw_data"), ([1 << 40, 1 << 30], "over 2^40 bytes")):
            w = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=b"\0\0\0\0")
            graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g",
                                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], [w])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            with self.subTest(dims=dims):
                self.write("huge.onnx", model.SerializeToString())
                assert_input_error(self, self.trainer("summary", "huge.onnx"), "huge.onnx", "initializer", "'w'",
                                   needle)

    def test_a_one_hot_depth_beyond_any_class_count(self):
        # depth 2^40: the class ids alone were 8 TiB ("out of memory", exit 1). The unnamed node is named once.
        try:
            from onnx import TensorProto, helper
        except ImportError:
            self.skipTest("onnx is needed (tools/install-deps.sh installs it)")
        # A float depth of 1e30 or NaN is judged as given (its cast to an integer had no meaning).
        for depth_type, depth, needle in ((TensorProto.INT64, 1 << 40, "depth 1099511627776 is more classes"),
                                          (TensorProto.FLOAT, 1e30, "depth 1e+30 is more classes"),
                                          (TensorProto.FLOAT, float("nan"), "depth nan is not positive")):
            with self.subTest(depth=depth):
                graph = helper.make_graph(
                    [helper.make_node("OneHot", ["x", "depth", "values"], ["y"])], "g",
                    [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                    [helper.make_tensor("depth", depth_type, [], [depth]),
                     helper.make_tensor("values", TensorProto.FLOAT, [2], [0, 1])])
                self.write("onehot.onnx", helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                           .SerializeToString())
                err = assert_input_error(self, self.trainer("summary", "onehot.onnx"),
                                         "onehot.onnx: node #0 (OneHot): " + needle)
                self.assertEqual(err.count("node #0 (OneHot)"), 1, err)

    def test_a_token_beyond_a_token_and_position_embedding_names_its_sample(self):
        # Checked as the batch is gathered, as for an Embedding (it failed inside the Gather, naming no sample).
        import numpy as np
        x = np.arange(40, dtype=np.int32).reshape(8, 5) % 10
        x[6, 1] = 12
        np.save(os.path.join(self.dir, "tok.npy"), x)
        np.save(os.path.join(self.dir, "lab.npy"), np.zeros((8, 1), np.float32))
        text = ('format_version = 1\n[model]\ninput = { shape = [5], dtype = "int32" }\n[[model.layers]]\n'
                'type = "TokenAndPositionEmbedding"\nvocabulary_size = 10\nsequence_length = 5\nembedding_dim = 4\n'
                '[[model.layers]]\ntype = "GlobalAveragePooling1D"\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                'activation = "sigmoid"\n[data.train]\nx = "tok.npy"\ny = "lab.npy"\n[train]\n'
                'loss = "binary_crossentropy"\nbatch_size = 4\n')
        assert_input_error(self, self.trainer("fit", self.spec(text), "-q"), "tok.npy", "sample 6",
                           "token id 12", "[0, 9]")

    def test_messages_quote_damaged_input_printably_and_briefly(self):
        # A NUL in an NPY header's dtype cut the message short; a 40 kB header was quoted whole.
        def npy(header):
            header += " " * (-(10 + len(header) + 1) % 64) + "\n"
            return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(8 * 784)
        self.write("nul.npy", npy("{'descr': '<f4\0', 'fortran_order': False, 'shape': (8, 28, 28), }"))
        self.write("deep.npy", npy("{'descr': '<f4', 'fortran_order': False, 'shape': " + "(" * 40000 + "8, }"))
        self.write("y.npy", b"\x93NUMPY\x01\x00v\x00" + (b"{'descr': '<i8', 'fortran_order': False, 'shape': (8,), }"
                                                          .ljust(117) + b"\n") + bytes(64))
        spec = SPEC.replace('y = "y.idx"', 'y = "y.npy"')
        r = self.trainer("fit", self.spec(spec.replace('x = "x.idx"', 'x = "nul.npy"')))
        assert_input_error(self, r, "nul.npy", "dtype '<f4\\x00' is not supported")
        self.assertNotIn("\0", r.stderr)
        r = self.trainer("fit", self.spec(spec.replace('x = "x.idx"', 'x = "deep.npy"')))
        assert_input_error(self, r, "deep.npy", "more bytes)")
        self.assertLess(len(r.stderr), 4500)
        # A line end in a quoted value is shown as \n: an error is one line and its hint the next.
        r = self.trainer("fit", self.spec(SPEC.replace('type = "Flatten"', 'type = "Flat\\nten\\r"')))
        assert_input_error(self, r, "unknown layer type 'Flat\\nten\\r'")
        line = next(l for l in r.stderr.splitlines() if "unknown layer type" in l)
        self.assertIn("'Flat\\nten\\r'", line)
        # A zip member whose start is past the end of the archive named "byte 4294967295" as its place.
        member = npy("{'descr': '|u1', 'fortran_order': False, 'shape': (8, 28, 28), }")
        name = b"x.npy"
        central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, zlib.crc32(member), len(member),
                              len(member), len(name), 0, 0, 0, 0, 0, 0xFFFFFFFF) + name
        body = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, zlib.crc32(member), len(member), len(member),
                           len(name), 0) + name + member
        end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(body), 0)
        self.write("x.npz", body + central + end)
        text = SPEC.replace('x = "x.idx"', 'x = "x.npz"').replace('y = "y.idx"\n', 'y_key = "x"\n')
        r = self.trainer("fit", self.spec(text))
        err = assert_input_error(self, r, "x.npz: a damaged zip archive: member 'x.npy' starts at byte 4294967295, "
                                 "past the end of the file", "hint: the archive is damaged")
        self.assertNotIn("x.npz: byte", err)


    def test_a_key_of_thousands_of_parts_is_refused_not_a_crash(self):
        # The TOML parser recurses once per part of a dotted key: 40,000 parts overflowed the stack (SIGSEGV),
        # from the spec, from --set, and from a table header.
        deep = ".a" * 40000
        assert_input_error(self, self.trainer("fit", self.spec(SPEC + f"[x{deep}]\n")), f"spec.toml:{SPEC.count(chr(10)) + 1}:1",
                           "a dotted key has more than 64 parts", "hint: ")
        assert_input_error(self, self.trainer("fit", self.spec(SPEC + f"x{deep} = 1\n")), f"spec.toml:{SPEC.count(chr(10)) + 1}:1")
        err = assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--set", f"train{deep}=1"),
                                 "--set has a dotted key of more than 64 parts")
        self.assertLess(len(err), 1000)
        # A quote in the key hid its dots from the scan, and the split key crashed the parser all the same.
        for key in (f"'{deep}", f"train'{deep}", f'"{deep}'):
            assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--set", f"{key}=1"), "--set has a dotted key")
        # The line counts a line continuation of a multi-line string.
        text = SPEC.replace("[train]", 'note = """a \\\nb \\\nc"""\n[train]') + f"x{deep} = 1\n"
        assert_input_error(self, self.trainer("fit", self.spec(text)), f"spec.toml:{text.count(chr(10))}:1")
        assert_input_error(self, self.trainer("fit", self.spec(SPEC), "--set", f"train.x={{a{deep} = 1}}"),
                           "--set has a dotted key")
        # Dots in strings, comments and numbers are not key parts: a long array of floats still parses.
        floats = ", ".join("0.5" for _ in range(200))
        text = SPEC.replace("[train]", f'# {"." * 100}\n[train]\nclass_weight_note = "{"." * 100}"\n')
        err = assert_input_error(self, self.trainer("fit", self.spec(text)), "class_weight_note")
        self.assertNotIn("dotted key", err)
        text = SPEC.replace('units = 10', f'units = 10\nbias_initializer = "zeros"\nfoo = [{floats}]')
        err = assert_input_error(self, self.trainer("fit", self.spec(text)), "foo")
        self.assertNotIn("dotted key", err)

    def test_trace_never_replaces_what_the_run_reads(self):
        # --trace naming the spec, a data file or the --train TOML was written over at the end of the run.
        spec = self.spec(SPEC)
        for victim in ("spec.toml", "x.idx", "y.idx"):
            with open(os.path.join(self.dir, victim), "rb") as f:
                before = f.read()
            r = self.trainer("fit", spec, "--trace", victim, "-q")
            assert_input_error(self, r, "--trace", f"'{victim}' is the input", "writing would destroy it")
            with open(os.path.join(self.dir, victim), "rb") as f:
                self.assertEqual(f.read(), before)
        # Nor a file the run writes in its --output-dir, where the trace, written last, replaced the checkpoint.
        os.makedirs(os.path.join(self.dir, "out"))
        for name in ("last.ckpt", "epoch-1.ckpt", "history.jsonl"):
            r = self.trainer("fit", spec, "--output-dir", "out", "--trace", os.path.join("out", name), "-q")
            assert_input_error(self, r, "--trace", "is a file the run writes in --output-dir out")
        os.symlink(os.path.join("out", "history.jsonl"), os.path.join(self.dir, "h.json"))  # through a link
        assert_input_error(self, self.trainer("fit", spec, "--output-dir", "out", "--trace", "h.json", "-q"),
                           "--trace", "is a file the run writes in --output-dir out")
        r = self.trainer("fit", spec, "--trace", "t.json", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.getsize(os.path.join(self.dir, "t.json")) > 0)

    def test_bytes_after_the_data_are_a_damaged_file(self):
        # An NPY file longer than its header says, and a gzip stream followed by other bytes, were read as if
        # the extra bytes were not there.
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (8, 28, 28), }"
        header += " " * (118 - len(header)) + "\n"
        images = idx_images(N)[16:]
        npy = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + images
        self.write("x.npy", npy + b"junk")
        header = "{'descr': '|u1', 'fortran_order': False, 'shape': (8,), }"
        header += " " * (118 - len(header)) + "\n"
        self.write("y.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(range(8)))
        text = SPEC.replace('x = "x.idx"', 'x = "x.npy"').replace('y = "y.idx"', 'y = "y.npy"')
        assert_input_error(self, self.trainer("fit", self.spec(text)), f"x.npy: byte {len(npy)}",
                           "4 bytes follow the data: the header says shape [8, 28, 28] (|u1)", "hint: ")
        self.write("x.npy", npy)
        r = self.trainer("fit", self.spec(text), "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        gz = zlib.compressobj(wbits=31)
        packed = gz.compress(idx_images(N)) + gz.flush()
        self.write("x.idx.gz", packed + b"\x00" * 7)  # zero padding is allowed
        text = SPEC.replace('x = "x.idx"', 'x = "x.idx.gz"')
        r = self.trainer("fit", self.spec(text), "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.write("x.idx.gz", packed + b"PK\x03\x04 more")
        assert_input_error(self, self.trainer("fit", self.spec(text)), f"x.idx.gz: byte {len(packed)}",
                           "9 bytes that are not gzip data follow the gzip stream", "hint: ")

    def test_from_logits_on_an_output_of_probabilities_is_refused(self):
        # A softmax or sigmoid output with from_logits = true went through a second softmax or sigmoid: the loss
        # never got small, and predict's class ids, decided at 0 on probabilities, were all 1.
        text = SPEC.replace('[train]\n', '[train]\nfrom_logits = true\n')
        line, col = line_col(text, 'from_logits = true')
        # The error names where from_logits is set: its key, the loss's call, or the --set override.
        assert_input_error(self, self.trainer("fit", self.spec(text)), f"spec.toml:{line}:{col + 14}",
                           "from_logits is set, but the output 'dense' comes from a softmax",
                           "hint: leave from_logits out, or end the model without the softmax")
        assert_input_error(self, self.trainer("check", self.spec(text)), "comes from a softmax")
        assert_input_error(self, self.trainer("check", self.spec(SPEC), "--set", "train.from_logits=true"),
                           "--set train.from_logits=true: from_logits is set")
        called = SPEC.replace('"sparse_categorical_crossentropy"', '"SparseCategoricalCrossentropy(True)"')
        line, col = line_col(called, '"SparseCategoricalCrossentropy(True)"')
        assert_input_error(self, self.trainer("check", self.spec(called)), f"spec.toml:{line}:{col}",
                           "from_logits is set")
        # Through layers that change no value (a Dropout after the softmax), and from a Softmax layer.
        dropped = text.replace('activation = "softmax"\n', 'activation = "softmax"\n\n[[model.layers]]\n'
                               'type = "Dropout"\nrate = 0.1\n')
        assert_input_error(self, self.trainer("check", self.spec(dropped)), "output 'dropout' comes from a softmax")
        layer = text.replace('activation = "softmax"\n', '\n[[model.layers]]\ntype = "Softmax"\n')
        assert_input_error(self, self.trainer("check", self.spec(layer)), "output 'softmax' comes from a softmax")
        r = self.trainer("fit", self.spec(text.replace('activation = "softmax"', 'activation = "linear"')), "-q")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_keras_habits_get_the_way_this_format_says_it(self):
        # ModelCheckpoint's monitor was sent to [train.reduce_lr_on_plateau]; Keras's None dimension was told that
        # the batch is not part of the shape.
        text = SPEC + '[train.checkpoint]\nmonitor = "val_loss"\n'
        assert_input_error(self, self.trainer("fit", self.spec(text), "--output-dir", "o"),
                           "unknown key 'monitor' in [train.checkpoint]", 'hint: the checkpoint of the best epoch is '
                           'save_best = "val_loss"')
        text = SPEC.replace("input = [28, 28]", "input = [-1, 28]")
        assert_input_error(self, self.trainer("fit", self.spec(text)), "must hold positive dimensions, not -1",
                           "Keras's None, a length that varies, is not supported")
        # A loss listed as a metric was offered 'sparse_categorical_accuracy'; Keras's list of lists by output, on a
        # model of one output, was told to quote its entries.
        # Keras's loss metrics are metrics (the loss's own too), each with the labels it reads.
        for metrics, needles in (('["sparse_categorical_crossentropy", "huber"]',
                                  ("the loss 'huber' is not a metric here", "hint: metrics take: ")),
                                 ('["binary_crossentropy"]',
                                  ("metric 'binary_crossentropy' reads labels of the output's shape, and the labels "
                                   "are class ids", "hint: report sparse_categorical_crossentropy")),
                                 ('[["accuracy"]]', ("must hold strings, not an array",
                                                     "hint: give one list of names"))):
            text = SPEC.replace('metrics = ["accuracy"]', f"metrics = {metrics}")
            assert_input_error(self, self.trainer("fit", self.spec(text)), *needles)

    def test_evaluate_reads_only_the_split_it_evaluates(self):
        # evaluate --data test opened the training and validation files too, and failed when they were gone
        # (a checkpoint and its test files were not enough).
        shutil.copy(os.path.join(self.dir, "x.idx"), os.path.join(self.dir, "tx.idx"))
        shutil.copy(os.path.join(self.dir, "y.idx"), os.path.join(self.dir, "ty.idx"))
        text = SPEC.replace("[train]", '[data.test]\nx = "tx.idx"\ny = "ty.idx"\n\n[train]')
        r = self.trainer("fit", self.spec(text), "--output-dir", "o", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        before = self.trainer("evaluate", "o/last.ckpt", "--data", "test", "-q")
        self.assertEqual(before.returncode, 0, before.stderr)
        os.remove(os.path.join(self.dir, "x.idx"))
        os.remove(os.path.join(self.dir, "y.idx"))
        after = self.trainer("evaluate", "o/last.ckpt", "--data", "test", "-q")
        self.assertEqual(after.returncode, 0, after.stderr)
        strip = lambda out: {k: v for k, v in json.loads(out).items() if k != "seconds"}
        self.assertEqual(strip(after.stdout), strip(before.stdout))
        self.assertEqual(strip(after.stdout)["samples"], N)
        assert_input_error(self, self.trainer("evaluate", "o/last.ckpt", "--data", "train"), "x.idx")

class BadUsage(unittest.TestCase):
    """Command-line mistakes also exit with 2."""

    def test_usage(self):
        spec = cli_util.sample("fashion_mnist/mlp.toml")
        for args in (["fit", spec, "--epoch", "3"], ["fit", spec, "--log-format", "xml"], ["fit"],
                     ["fit", spec, "--epochs", "0"], ["no-such-command"], ["help", "fitt"]):
            with self.subTest(args=args):
                r = run(args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertNotEqual(r.stderr, "")

    def test_option_values_read_like_other_bad_input(self):
        # One "trainer: error:" line naming the option, and a hint, as for a bad spec.
        spec = cli_util.sample("fashion_mnist/mlp.toml")
        for args, needle in ((["--collective-timeout", "0"], "'0' is not a number of seconds from 0.001 to 1e7"),
                             (["--scale-lr", "foo"], "--scale-lr: foo"),
                             (["--devices", "0"], "--devices: '0' is not a whole number from 1 to 1024"),
                             (["--devices", "1.5"], "--devices: '1.5' is not a whole number from 1 to 1024"),
                             (["--epochs", "0"], "--epochs: '0' is not a whole number of at least 1"),
                             (["--batch-size", "x"], "--batch-size: 'x' is not a whole number of at least 1"),
                             (["--epochs", "99999999999"], "--epochs: '99999999999' is larger than 2147483647"),
                             (["--seed", "-1"], "--seed: '-1' is not a whole number from 0 to"),
                             (["--epoch", "3"], "--epoch: trainer fit has no such option"),
                             (["--device"], "--device: a value is missing after it"),
                             (["--gpus", ""], "--gpus: an empty value chooses no GPU"),
                             (["--epochs", "1", "--epochs", "2"], "--epochs: given more than once"),
                             (["extra_arg"], "'extra_arg': trainer fit takes no more arguments")):
            with self.subTest(args=args):
                err = assert_input_error(self, run(["fit", spec, *args]), needle, "\n  hint: ", "trainer fit --help")
                self.assertLess(len(err), 400, err)
        # The other commands' counts read the same.
        for args, needle in ((["bench", spec, "--warmup", "-1"], "--warmup: '-1' is not a whole number of at least 0"),
                             (["bench", spec, "--steps", "0"], "--steps: '0' is not a whole number of at least 1"),
                             (["export", spec, "--opset", "99"], "--opset: '99' is not a whole number from 13 to"),
                             (["summary", spec, "--devices", "2000"], "--devices: '2000' is not a whole number"),
                             (["predict", spec, "--batch-size", "0"], "--batch-size: '0' is not a whole number")):
            with self.subTest(args=args):
                err = assert_input_error(self, run(args), needle, f"hint: trainer {args[0]} --help")
                self.assertLess(len(err), 400, err)

    def test_a_typo_gets_what_it_most_likely_meant(self):
        spec = cli_util.sample("fashion_mnist/mlp.toml")
        for args, meant in ((["fit", spec, "--epoch", "3"], "--epochs"), (["fit", spec, "--devcies", "2"], "--devices"),
                            (["fit", spec, "--gpu", "2"], "--gpus"), (["fit", spec, "--epoch=3"], "--epochs"),
                            (["bench", spec, "--step", "3"], "--steps"), (["fitt", spec], "fit"),
                            (["sumary", spec], "summary"), (["help", "evalute"], "evaluate"),
                            (["predict", spec, "-", "--probability"], "--probabilities")):
            with self.subTest(args=args):
                assert_input_error(self, run(args), f"hint: did you mean {meant}? ")
        # Nothing close: no guess.
        for args in (["fit", spec, "--zzzzzz"], ["zzzzzz"], ["fit", spec, "-x"]):
            with self.subTest(args=args):
                err = assert_input_error(self, run(args), "hint: trainer")
                self.assertNotIn("did you mean", err)

    def test_missing_spec(self):
        assert_input_error(self, run(["check", "no-such-spec.toml"]), "no-such-spec.toml")


if __name__ == "__main__":
    cli_util.main()
