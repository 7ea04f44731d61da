"""Where `trainer fit` writes what: JSON lines on stdout (or nothing with --log-format text), text on stderr
without a progress bar when it is not a terminal, nothing there with --quiet, and --output-dir/history.jsonl
equal to stdout."""

import os
import tempfile
import unittest

import cli_util
from cli_util import json_lines, run, sample, skip_without_fashion

QUICK = ["--set", "train.epochs=2", "--set", "data.train.limit=256", "--set", "data.validation.limit=128"]


@skip_without_fashion
class Output(unittest.TestCase):
    def fit(self, *extra):
        r = run(["fit", sample("fashion_mnist/mlp.toml"), *QUICK, *extra])
        self.assertEqual(r.returncode, 0, r.stderr)
        return r

    def test_text_keeps_stdout_empty(self):
        r = self.fit("--log-format", "text")
        self.assertEqual(r.stdout, "")
        self.assertIn("Epoch 2/2 · 4/4 · ", r.stderr)

    def test_jsonl_and_output_dir(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "run", "1")  # created as needed
            r = self.fit("--log-format", "jsonl", "--output-dir", out)
            self.assertEqual([e["event"] for e in json_lines(self, r.stdout)], ["epoch", "epoch", "fit_end"])
            with open(os.path.join(out, "history.jsonl")) as f:
                self.assertEqual(f.read(), r.stdout)
            # The run's checkpoint at its end, last.ckpt naming it, the history; no temporary file left behind.
            self.assertEqual(sorted(os.listdir(out)), ["epoch-2.ckpt", "history.jsonl", "last.ckpt"])

    def test_output_dir_with_text(self):
        # history.jsonl does not depend on what goes to stdout.
        with tempfile.TemporaryDirectory() as d:
            r = self.fit("--log-format", "text", "--output-dir", d)
            self.assertEqual(r.stdout, "")
            with open(os.path.join(d, "history.jsonl")) as f:
                events = json_lines(self, f.read())
            self.assertEqual([e["event"] for e in events], ["epoch", "epoch", "fit_end"])

    def test_stderr_is_plain_text_when_not_a_terminal(self):
        r = self.fit()
        self.assertNotIn("\r", r.stderr)
        self.assertNotIn("\x1b", r.stderr)
        # A CUDA build without a GPU says so in one line first.
        self.assertRegex(r.stderr, r"^(trainer: no CUDA device \([^\n]*\); running on the CPU\n)?"
                                   r"Training on 256 samples, validating on 128")
        self.assertRegex(r.stderr, r"Done in [0-9.]+s\.\n$")

    def test_quiet(self):
        r = self.fit("--quiet")
        self.assertEqual(r.stderr, "")
        self.assertEqual(len(json_lines(self, r.stdout)), 3)


class HistoryOfAFailedRun(unittest.TestCase):
    def test_a_run_that_fails_keeps_the_history_of_its_checkpoints(self):
        # SGD at a rate that diverges: the loss becomes inf in a later epoch and the run fails (exit 1) after
        # writing checkpoints. history.jsonl holds the epochs those checkpoints finished, in a new folder and in
        # one where an earlier, shorter run left its own history.
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            np.save(os.path.join(d, "x.npy"), (rng.normal(size=(16, 64)) * 10).astype(np.float32))
            np.save(os.path.join(d, "y.npy"), rng.normal(size=(16, 1)).astype(np.float32))
            spec = os.path.join(d, "s.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [64]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                        '[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "mse"\nepochs = 30\n'
                        'batch_size = 4\n[train.optimizer]\nname = "sgd"\nlearning_rate = 0.5\n'
                        '[train.checkpoint]\nevery_epochs = 1\n')
            for out, first in ((os.path.join(d, "new"), None), (os.path.join(d, "again"), "2")):
                if first:
                    r = run(["fit", spec, "-q", "--output-dir", out, "--set", f"train.epochs={first}"], cwd=d)
                    self.assertEqual(r.returncode, 0, r.stderr)
                r = run(["fit", spec, "-q", "--output-dir", out], cwd=d)
                self.assertEqual(r.returncode, 1, r.stderr)
                self.assertIn("the loss became", r.stderr)
                with open(os.path.join(out, "history.jsonl")) as f:
                    events = json_lines(self, f.read())
                epochs = [e["epoch"] for e in events if e["event"] == "epoch"]
                self.assertGreaterEqual(len(epochs), 2)
                self.assertEqual(epochs, list(range(1, len(epochs) + 1)))
                self.assertNotIn("fit_end", [e["event"] for e in events])
                self.assertEqual(events[0]["epochs"], 30)  # this run's lines, not the earlier run's
                self.assertTrue(os.path.exists(os.path.join(out, f"epoch-{epochs[-1]}.ckpt")))


class ListOps(unittest.TestCase):
    def test_three_tab_separated_columns(self):
        r = run(["--list-ops"])
        self.assertEqual(r.returncode, 0, r.stderr)
        rows = [line.split("\t") for line in r.stdout.splitlines()]
        self.assertTrue(all(len(row) == 3 and row[2] in ("engine", "import") for row in rows), rows[:5])
        names = [row[0] for row in rows]
        self.assertEqual(names, sorted(names))
        self.assertEqual(len(names), len(set(names)))
        kinds = {row[0]: (row[1], row[2]) for row in rows}
        self.assertEqual(kinds["Conv"], ("ai.onnx", "engine"))
        self.assertEqual(kinds["Einsum"], ("ai.onnx", "import"))
        self.assertEqual(kinds["LRN"], ("ai.onnx", "import"))
        self.assertEqual(kinds["AdamWUpdate"], ("com.trainer", "engine"))

class NumbersOnStderr(unittest.TestCase):
    def test_small_and_huge_values_in_scientific_notation(self):
        # As Keras's progress bar: four decimals, or scientific notation at 0.001 and below (a loss of 0 is
        # 0.0000e+00); and at ten million and above, where four decimals were dozens of digits.
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            x = np.ones((8, 1), np.float32)
            np.save(os.path.join(d, "x.npy"), x)
            np.save(os.path.join(d, "y.npy"), x)
            np.save(os.path.join(d, "far.npy"), x * 1e5)
            spec = os.path.join(d, "s.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [1]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                        'kernel_initializer = "ones"\n[data.train]\nx = "x.npy"\ny = "y.npy"\n'
                        '[data.validation]\nx = "x.npy"\ny = "far.npy"\n[train]\nloss = "mse"\nepochs = 1\n'
                        'batch_size = 8\n[train.optimizer]\nname = "sgd"\nlearning_rate = 1e-9\n')
            r = run(["fit", spec, "--device", "cpu", "--log-format", "text"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stderr, r"· loss 0\.0000e\+00 · val_loss 9\.99\d\de\+09\n")


if __name__ == "__main__":
    cli_util.main()
