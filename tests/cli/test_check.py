"""`trainer check` passes every sample spec of the repository (and the example in trainer-model(5))."""

import glob
import os
import re
import tempfile
import unittest

import cli_util
from cli_util import ROOT, SAMPLES, run, sample


class Check(unittest.TestCase):
    def test_sample_list_is_complete(self):
        # The summary and fit tests walk cli_util.SAMPLE_SPECS: a new sample must be added there.
        found = sorted(os.path.relpath(p, SAMPLES) for p in glob.glob(os.path.join(SAMPLES, "**", "*.toml"),
                                                                      recursive=True))
        self.assertEqual(found, sorted(cli_util.SAMPLE_SPECS))

    def test_every_sample(self):
        for spec in cli_util.SAMPLE_SPECS:
            with self.subTest(spec=spec):
                r = run(["check", sample(spec)])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stderr, rf"{re.escape(sample(spec))}: ok · \d+ layers · \d+ parameters")
                self.assertEqual(r.stdout, "")
                q = run(["check", "--quiet", sample(spec)])
                self.assertEqual((q.returncode, q.stdout, q.stderr), (0, "", ""))

    def test_example_of_the_man_page(self):
        # The first .nf block of EXAMPLES in trainer-model(5) is a whole spec.
        with open(os.path.join(ROOT, "man", "trainer-model.5")) as f:
            page = f.read()
        examples = page[page.index(".SH EXAMPLES"):]
        block = examples[examples.index(".nf\n") + 4:examples.index(".fi\n")]
        text = block.replace("\\-", "-").replace("\\e", "\\")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "example.toml")
            with open(path, "w") as f:
                f.write(text)
            r = run(["check", path])
            self.assertEqual(r.returncode, 0, r.stderr + "\n" + text)


class PipedSpec(unittest.TestCase):
    """A spec piped in (`trainer check /dev/stdin`, `<(...)`) is read once, its relative paths taken from the
    working directory; an ONNX model or a checkpoint through a pipe is refused, saying to save it first."""

    def test_a_spec_on_stdin_checks_and_trains(self):
        import numpy as np
        import subprocess
        with open(sample("fashion_mnist/mlp.toml")) as f:
            text = f.read()
        r = subprocess.run([cli_util.TRAINER, "check", "/dev/stdin"], input=text, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"/dev/stdin: ok · \d+ layers")
        # An empty pipe (a rank of mpirun other than 0 reads an empty stdin) is said to be one.
        r = subprocess.run([cli_util.TRAINER, "check", "/dev/stdin"], input="", capture_output=True, text=True)
        cli_util.assert_input_error(self, r, "/dev/stdin: gave nothing", "only rank 0 reads standard input")
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            np.save(os.path.join(d, "x.npy"), rng.normal(size=(32, 4)).astype(np.float32))
            np.save(os.path.join(d, "y.npy"), rng.integers(0, 3, size=32).astype(np.int64))
            spec = ('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "Dense"\nunits = 3\n'
                    'activation = "softmax"\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\n'
                    'loss = "sparse_categorical_crossentropy"\nepochs = 1\nbatch_size = 8\n')
            r = subprocess.run([cli_util.TRAINER, "fit", "/dev/stdin", "--device", "cpu", "--log-format", "jsonl",
                                "-q"], input=spec, capture_output=True, text=True, cwd=d)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(cli_util.json_lines(self, r.stdout)[-1]["event"], "fit_end")
            # A checkpoint through a pipe is refused, not read as TOML.
            r = subprocess.run([cli_util.TRAINER, "fit", "/dev/stdin", "--device", "cpu", "-q", "--output-dir", "run"],
                               input=spec, capture_output=True, text=True, cwd=d)
            self.assertEqual(r.returncode, 0, r.stderr)
            # Its checkpoint finds the data where the run found them, from any working directory.
            r = run(["evaluate", os.path.join(d, "run", "last.ckpt"), "--device", "cpu"], cwd="/")
            self.assertEqual(r.returncode, 0, r.stderr)
            # /dev/stdin that names a file (a redirection, not a pipe) is the working directory's too.
            with open(os.path.join(d, "spec.txt"), "w") as f:
                f.write(spec)
            with open(os.path.join(d, "spec.txt")) as f:
                r = subprocess.run([cli_util.TRAINER, "fit", "/dev/stdin", "--device", "cpu", "-q"], stdin=f,
                                   capture_output=True, text=True, cwd=d)
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(d, "run", "last.ckpt"), "rb") as f:
                ckpt = f.read()
            r = subprocess.run([cli_util.TRAINER, "summary", "/dev/stdin"], input=ckpt, capture_output=True)
            r.stdout, r.stderr = r.stdout.decode(), r.stderr.decode()
            cli_util.assert_input_error(self, r, "/dev/stdin: is not a regular file (a pipe or a device)",
                                        "save it to a file first")

    def test_long_quotes_of_a_spec_are_clipped(self):
        # A 5000-character layer type is quoted in part, on a line of reasonable length.
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "long.toml")
            with open(path, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "' + "A" * 5000 + '"\n')
            r = run(["check", path])
            cli_util.assert_input_error(self, r, "AAAA", "bytes)")
            self.assertLess(len(r.stderr.splitlines()[0]), 600, r.stderr[:300])  # the hint lists the types
        # A run of bytes that are no UTF-8 (each escaped when shown) is clipped once, its count told.
        import subprocess
        r = subprocess.run([os.fsencode(cli_util.TRAINER), b"fit", b"--log-format", b"\x80" * 1000],
                           capture_output=True)
        err = r.stderr.decode()
        self.assertEqual(r.returncode, 2, err)
        self.assertEqual(err.count("bytes)..."), 1, err[:400])
        self.assertLess(len(err.splitlines()[0]), 1500, err[:400])


if __name__ == "__main__":
    cli_util.main()
