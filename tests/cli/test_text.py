"""Text data as Keras's text_dataset_from_directory and TextVectorization give it: trainer fit reads folders of
class folders of .txt files, adapts a vocabulary on the training texts, and writes it into the checkpoint's
spec, so that resume, evaluate and predict (a text per line) turn text into the same ids."""

import json
import os
import random
import re
import tempfile
import tomllib
import unittest
from collections import Counter

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = {{ shape = [12], dtype = "int32" }}
[[model.layers]]
type = "Embedding"
input_dim = {input_dim}
output_dim = 8
[[model.layers]]
type = "GlobalAveragePooling1D"
[[model.layers]]
type = "Dense"
units = 1
activation = "sigmoid"
[data.text]
max_tokens = {max_tokens}
output_sequence_length = 12
padding = "pre"
[data.train]
format = "text"
x = "reviews/train"
class_names = ["neg", "pos"]
[data.validation]
format = "text"
x = "reviews/test"
class_names = ["neg", "pos"]
[train]
loss = "binary_crossentropy"
metrics = ["accuracy"]
epochs = {epochs}
batch_size = 16
[train.optimizer]
name = "adam"
learning_rate = 0.05
"""

GOOD = ["Great", "wonderful!", "LOVED", "superb,"]
BAD = ["awful.", "Boring", "terrible!!", "dull"]
FILLER = ["the", "a", "movie", "film", "plot", "it's", "and", "this", "of", "story", "<br", "/>"]


def checkpoint_spec(path):
    with open(path, "rb") as f:
        data = f.read()
    n = int.from_bytes(data[:8], "little")
    return tomllib.loads(json.loads(data[8:8 + n])["__metadata__"]["spec"])


def keras_ids(text, vocabulary, length):
    """TextVectorization's ids by its rules, written independently: lowercase, strip ASCII punctuation, split
    at white space; 0 pads (in front, as the spec asks), 1 is an unknown word, the vocabulary counts from 2;
    a long text keeps its first words."""
    words = re.sub(r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]", "", text.lower()).split()
    index = {w: i + 2 for i, w in enumerate(vocabulary)}
    ids = [index.get(w, 1) for w in words][:length]
    return [0] * (length - len(ids)) + ids


class Text(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        rng = random.Random(5)
        self.train_texts = []
        for split, n in (("train", 48), ("test", 16)):
            for cls, words in (("neg", BAD), ("pos", GOOD)):
                folder = self.path("reviews", split, cls)
                os.makedirs(folder)
                for i in range(n):
                    w = [rng.choice(FILLER) for _ in range(rng.randint(2, 14))]
                    for _ in range(2):
                        w.insert(rng.randrange(len(w) + 1), rng.choice(words))
                    text = " ".join(w)
                    if split == "train":
                        self.train_texts.append(text)
                    with open(os.path.join(folder, f"{i}_{rng.randint(1, 10)}.txt"), "w") as f:
                        f.write(text)
        os.makedirs(self.path("reviews", "train", "unsup"))  # a folder class_names leaves out
        with open(self.path("reviews", "train", "unsup", "0_0.txt"), "w") as f:
            f.write("unlabelled")

    def path(self, *names):
        return os.path.join(self.tmp.name, *names)

    def spec(self, name="spec.toml", input_dim=30, max_tokens=20, epochs=4):
        path = self.path(name)
        with open(path, "w") as f:
            f.write(SPEC.format(input_dim=input_dim, max_tokens=max_tokens, epochs=epochs))
        return path

    def test_fit_adapts_the_vocabulary_and_predict_reads_text_lines_as_fit_read_the_files(self):
        spec = self.spec()
        out = self.path("run")
        r = run(["fit", spec, "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Text: a vocabulary of 18 words from the 96 training texts (adapt).", r.stderr)
        events = cli_util.json_lines(self, r.stdout)
        last = [e for e in events if e["event"] == "epoch"][-1]
        self.assertGreater(last["val_accuracy"], 0.9)  # the words that tell the classes apart were learned

        # The vocabulary: the training texts' words, most frequent first (ties in reverse byte order, as Keras's
        # np.lexsort((tokens, counts))[::-1]), max_tokens - 2.
        text = checkpoint_spec(os.path.join(out, "last.ckpt"))["data"]["text"]
        counts = Counter(w for t in self.train_texts
                         for w in re.sub(r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]", "", t.lower()).split())
        self.assertEqual(len(counts), 19)  # max_tokens = 20 keeps 18
        want = sorted(counts, key=lambda w: (counts[w], w.encode()), reverse=True)[:18]  # ties: Keras's order
        self.assertEqual(text["vocabulary"], want)

        # predict on text lines gives what predict gives on the ids written by Keras's rules, and evaluate's
        # loss is fit's val_loss.
        lines = ["A GREAT film, loved it!", "", "boring... and dull", "zzz unknown words only",
                 "the the the the the the the the the the the the the the wonderful"]
        got = cli_util.predict_rows(self, [os.path.join(out, "last.ckpt"), "-"], input="\n".join(lines) + "\n")
        ids = np.array([keras_ids(t, want, 12) for t in lines if t], np.int32)
        np.save(self.path("ids.npy"), ids)
        want_rows = cli_util.predict_rows(self, [os.path.join(out, "last.ckpt"), self.path("ids.npy")])
        self.assertEqual(got.shape, (4,))
        np.testing.assert_array_equal(got, want_rows)
        self.assertGreater(got[0], 0.5)
        self.assertLess(got[1], 0.5)
        e = run(["evaluate", os.path.join(out, "last.ckpt")])
        self.assertEqual(e.returncode, 0, e.stderr)
        self.assertAlmostEqual(json.loads(e.stdout)["loss"], last["val_loss"], places=5)

        # Resume with the spec, which gives no vocabulary: the checkpoint's adapted one is kept, and the run
        # continues as one that was never interrupted.
        whole = self.path("whole")
        r = run(["fit", self.spec("six.toml", epochs=6), "--output-dir", whole])
        self.assertEqual(r.returncode, 0, r.stderr)
        r2 = run(["fit", spec, "--resume", os.path.join(out, "last.ckpt"), "--set", "train.epochs=6",
                  "--output-dir", self.path("resumed")])
        self.assertEqual(r2.returncode, 0, r2.stderr)
        self.assertNotIn("(adapt)", r2.stderr)
        a = cli_util.read_checkpoint(os.path.join(whole, "last.ckpt"))
        b = cli_util.read_checkpoint(self.path("resumed", "last.ckpt"))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], name)

    def test_the_imdb_sample_on_review_files(self):
        # samples/imdb/lstm_text.toml as a user runs it, its folders moved to these reviews.
        out = self.path("sample")
        r = run(["fit", cli_util.sample("imdb/lstm_text.toml"), "--output-dir", out, "--set", "train.epochs=1",
                 "--set", f"data.train.x={self.path('reviews', 'train')}",
                 "--set", f"data.validation.x={self.path('reviews', 'test')}"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Text: a vocabulary of 19 words from the 96 training texts (adapt).", r.stderr)
        self.assertIn("Training on 96 samples, validating on 32", r.stderr)
        spec = checkpoint_spec(os.path.join(out, "last.ckpt"))
        self.assertEqual(len(spec["data"]["text"]["vocabulary"]), 19)
        rows = cli_util.predict_rows(self, [os.path.join(out, "last.ckpt")], input="a great film\nawful\n")
        self.assertEqual(rows.shape, (2,))

    def test_validation_folders_take_the_training_classes_and_hidden_ones_are_left_out(self):
        # Training has a, b and c; validation lacks b: its c is still label 2. A hidden folder is no class,
        # and texts in a class's subfolders (any case of .txt) count.
        words = {"a": "alpha", "b": "beta", "c": "gamma"}
        for split, n in (("train", 20), ("val", 8)):
            for cls, word in words.items():
                if split == "val" and cls == "b":
                    continue
                os.makedirs(self.path("abc", split, cls, "more"))
                for i in range(n):
                    name = os.path.join("more", f"{i}.TXT") if i % 4 == 0 else f"{i}.txt"
                    with open(self.path("abc", split, cls, name), "w") as f:
                        f.write(f"the {word} one {i}")
            os.makedirs(self.path("abc", split, ".ipynb_checkpoints"))
        spec = self.path("abc.toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(input_dim=40, max_tokens=40, epochs=15)
                    .replace('x = "reviews/train"\nclass_names = ["neg", "pos"]', 'x = "abc/train"')
                    .replace('x = "reviews/test"\nclass_names = ["neg", "pos"]', 'x = "abc/val"')
                    .replace('units = 1\nactivation = "sigmoid"', 'units = 3\nactivation = "softmax"')
                    .replace('"binary_crossentropy"', '"sparse_categorical_crossentropy"'))
        out = self.path("abc_run")
        r = run(["fit", spec, "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Training on 60 samples, validating on 16", r.stderr)
        last = [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"][-1]
        self.assertEqual(last["val_accuracy"], 1.0)
        # evaluate reads the validation folder alone, with the training classes too.
        e = run(["evaluate", os.path.join(out, "last.ckpt")])
        self.assertEqual(e.returncode, 0, e.stderr)
        self.assertEqual(json.loads(e.stdout)["accuracy"], 1.0)
        # A link to a parent folder is not followed (no loop), and a folder named twice is read once.
        os.symlink("..", self.path("abc", "train", "a", "more", "up"))
        twice = self.path("twice.toml")
        with open(spec) as f, open(twice, "w") as g:
            g.write(f.read().replace('x = "abc/train"', 'x = ["abc/train", "abc/tr*"]'))
        r = run(["fit", twice, "--set", "train.epochs=1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Training on 60 samples, validating on 16", r.stderr)
        # A class the training data lacks is an error; so is a change of the text settings on resume.
        os.makedirs(self.path("abc", "val", "d"))
        with open(self.path("abc", "val", "d", "0.txt"), "w") as f:
            f.write("delta")
        cli_util.assert_input_error(self, run(["fit", spec]), "class folder 'd' is not one of the training data's "
                                    "(a, b, c)")
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--set", "data.text.standardize=none"])
        cli_util.assert_input_error(self, r, "--set", "[data.text] of a checkpoint cannot change")
        # An .npz of ids predicts as the same .npy does.
        ids = np.array([[0] * 11 + [2], [0] * 11 + [5]], np.int32)
        np.save(self.path("ids.npy"), ids)
        np.savez(self.path("ids.npz"), x=ids)
        np.testing.assert_array_equal(
            cli_util.predict_rows(self, [os.path.join(out, "last.ckpt"), self.path("ids.npz")], ndmin=2),
            cli_util.predict_rows(self, [os.path.join(out, "last.ckpt"), self.path("ids.npy")], ndmin=2))

    def test_an_embedding_smaller_than_the_vocabulary_and_a_missing_class_folder_are_input_errors(self):
        r = run(["fit", self.spec(input_dim=10, max_tokens=30), "--output-dir", self.path("run")])
        cli_util.assert_input_error(self, r, "spec.toml:14:1", "data.text.max_tokens is 30, and the model's "
                                    "embedding takes ids below 10", "max_tokens = 10")
        r = run(["fit", self.spec(input_dim=10, max_tokens=0), "--output-dir", self.path("run")])
        cli_util.assert_input_error(self, r, "spec.toml:14:1", "the text vocabulary gives ids up to 20",
                                    "the model's embedding takes ids below 10", "or give at most 8 words")
        self.assertFalse(os.path.exists(self.path("run", "last.ckpt")))
        spec = self.spec()
        with open(spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text.replace('class_names = ["neg", "pos"]\n[data.validation]',
                                 'class_names = ["neg", "positive"]\n[data.validation]'))
        cli_util.assert_input_error(self, run(["fit", spec]), "spec.toml:18:1",
                                    "has no class folder 'positive'", "its class folders: neg, pos, unsup")
        # A folder read as a data file: the hint names the formats that read folders.
        with open(spec, "w") as f:
            f.write(text.replace('format = "text"\nx = "reviews/train"\nclass_names = ["neg", "pos"]\n',
                                 'x = "reviews/train"\n'))
        cli_util.assert_input_error(self, run(["fit", spec]), "data file 'reviews/train' is not a regular file",
                                    'format = "text" or "images"')


if __name__ == "__main__":
    cli_util.main()
