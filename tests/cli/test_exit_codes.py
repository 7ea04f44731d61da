"""Exit codes of `trainer fit` besides 0 and 2: a signal during a fit ends it after the current step with 128 +
the signal and a fit_end line that says so; a loss that becomes NaN is a run-time failure, 1."""

import json
import os
import shlex
import signal
import subprocess
import tempfile
import unittest

import cli_util
from cli_util import json_lines, run, sample, skip_without_fashion

# Many short epochs: the signal always arrives while training runs.
LONG_FIT = ["--set", "train.epochs=200", "--set", "data.train.limit=1024", "--set", "data.validation.limit=256"]


@skip_without_fashion
class ExitCodes(unittest.TestCase):
    def interrupt(self, sig, extra=()):
        args = [cli_util.TRAINER, "fit", sample("fashion_mnist/mlp.toml"), *LONG_FIT, *extra]
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline()  # the first epoch line: training is under way
            self.assertEqual(json.loads(first)["event"], "epoch", first)
            p.send_signal(sig)
            rest, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 128 + sig, f"stderr:\n{err}")
        events = json_lines(self, first + rest)
        end = events[-1]
        self.assertEqual(end["event"], "fit_end")
        self.assertEqual(end["interrupted_by"], signal.Signals(sig).name)
        self.assertEqual(end["epochs_run"], len(events) - 1)
        self.assertGreaterEqual(end["epochs_run"], 1)
        self.assertLess(end["epochs_run"], 200)
        n = end["epochs_run"]
        self.assertIn(f"Interrupted by {signal.Signals(sig).name} after {n} epoch{'' if n == 1 else 's'}.", err)
        self.assertNotIn("internal error", err)
        self.last_stderr = err
        return first + rest

    def test_sigint(self):
        self.interrupt(signal.SIGINT)

    def test_signals_reach_one_thread_only(self):
        # oneDNN's generated GEMM kernels move the stack pointer into the heap while they run: a signal handled on
        # a thread that computes writes its frame there. Every thread but one blocks the signals trainer handles.
        args = [cli_util.TRAINER, "fit", sample("fashion_mnist/mlp.toml"), *LONG_FIT]
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = p.stdout.readline()  # training is under way: OpenMP's and the loaders' threads exist
            self.assertEqual(json.loads(first)["event"], "epoch", first)
            masks = {}
            for tid in os.listdir(f"/proc/{p.pid}/task"):
                try:
                    with open(f"/proc/{p.pid}/task/{tid}/status") as f:
                        status = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
                except FileNotFoundError:  # a thread that ended meanwhile
                    continue
                masks[int(tid)] = int(status["SigBlk"], 16)
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.assertEqual(p.returncode, 130, err)
        self.assertGreaterEqual(len(masks), 3, masks)  # the main thread, the signal thread, a loader at least
        bits = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))
        open_to = [tid for tid, m in masks.items() if m & bits == 0]
        self.assertEqual(len(open_to), 1, {tid: hex(m) for tid, m in masks.items()})
        self.assertNotEqual(open_to[0], p.pid, "the main thread computes")
        # What a thread's own action raises stays open everywhere: a blocked SIGTTOU lets a background job write
        # to a terminal that stops such writers (stty tostop); a blocked SIGPIPE would stay pending.
        for sig in (signal.SIGTTOU, signal.SIGTTIN, signal.SIGPIPE, signal.SIGSEGV):
            self.assertEqual(masks[p.pid] & (1 << (sig - 1)), 0, sig.name)

    def test_a_signal_after_the_last_step_still_ends_as_interrupted(self):
        # Ctrl-C during the test pass after the last epoch was ignored: the run exited 0, and fit_end did not say
        # it was interrupted. The run is complete then: its checkpoint is written, and it ends with 130.
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(0)
            np.save(os.path.join(d, "x.npy"), rng.normal(size=(4, 64)).astype(np.float32))
            np.save(os.path.join(d, "y.npy"), np.zeros(4, np.int64))
            np.save(os.path.join(d, "tx.npy"), rng.normal(size=(6000, 64)).astype(np.float32))
            np.save(os.path.join(d, "ty.npy"), np.zeros(6000, np.int64))
            spec = os.path.join(d, "late.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [64]\n[[model.layers]]\ntype = "Dense"\nunits = 1500\n'
                        '[[model.layers]]\ntype = "Dense"\nunits = 1500\n[[model.layers]]\ntype = "Dense"\n'
                        'units = 2\nactivation = "softmax"\n[data.train]\nx = "x.npy"\ny = "y.npy"\n'
                        '[data.test]\nx = "tx.npy"\ny = "ty.npy"\n[train]\n'
                        'loss = "sparse_categorical_crossentropy"\nepochs = 1\nbatch_size = 4\n')
            out = os.path.join(d, "run")
            p = subprocess.Popen([cli_util.TRAINER, "fit", spec, "--device", "cpu", "--output-dir", out,
                                  "--log-format", "jsonl"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                first = p.stdout.readline()  # the last epoch's line: the test pass follows
                self.assertEqual(json.loads(first)["event"], "epoch", first)
                p.send_signal(signal.SIGINT)
                rest, err = p.communicate(timeout=120)
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            self.assertEqual(p.returncode, 130, err)
            end = json.loads(rest.splitlines()[-1])
            self.assertEqual(end["event"], "fit_end")
            self.assertEqual(end["interrupted_by"], "SIGINT")
            self.assertIn("Interrupted by SIGINT after the last step: the run is complete", err)
            self.assertIn("Test · test_loss", err)  # the test pass ran, and its results are said
            self.assertTrue(os.path.exists(os.path.join(out, "last.ckpt")))

    def test_sigterm_keeps_the_history(self):
        with tempfile.TemporaryDirectory() as d:
            out = self.interrupt(signal.SIGTERM, ["--output-dir", d])
            with open(os.path.join(d, "history.jsonl")) as f:
                self.assertEqual(f.read(), out)
            # The command that resumes reads back in a shell: a folder with a space and a quote is quoted.
            odd = os.path.join(d, "it's a run")
            self.interrupt(signal.SIGINT, ["--output-dir", odd])
            line = next(l for l in self.last_stderr.splitlines() if l.startswith("Resume with: "))
            self.assertEqual(shlex.split(line[len("Resume with: "):])[2:6],
                             ["--resume", os.path.join(odd, "last.ckpt"), "--output-dir", odd])

    def test_nan_loss(self):
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--set", "data.train.limit=640", "--set",
                 "data.validation.limit=64", "--set", "train.optimizer.name=sgd", "--set",
                 "train.optimizer.learning_rate=1e30"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr, r"loss became (nan|inf|-inf) at epoch 1, step \d+")
        self.assertIn("\n  hint: lower the learning rate", r.stderr)
        self.assertNotIn("internal error", r.stderr)


if __name__ == "__main__":
    cli_util.main()
