"""trainer fit's checkpoints: exact resume (after an epoch, in the middle of one, after SIGINT), the files an
output directory gets, and damaged or mismatched checkpoints (exit 2, the file named, nothing written)."""

import json
import os
import signal
import subprocess
import tempfile
import time
import unittest

import cli_util
from cli_util import run

# A small, fast run of the Fashion-MNIST MLP: 2 epochs of 24 batches (the last one partial).
SMALL = ["--set", "data.train.limit=1500", "--set", "data.validation.limit=300", "--set", "train.batch_size=64",
         "--log-format", "jsonl", "--quiet"]


tensors = cli_util.checkpoint_bytes


def events(stdout):
    return [json.loads(line) for line in stdout.splitlines()]


@cli_util.skip_without_fashion
class Resume(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.spec = cli_util.sample("fashion_mnist/mlp.toml")

    def tearDown(self):
        self.tmp.cleanup()

    def fit(self, args, out):
        r = run(["fit"] + args + SMALL + ["--output-dir", os.path.join(self.dir, out)], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return events(r.stdout)

    def with_checkpoints(self, extra):
        spec = os.path.join(self.dir, "spec.toml")
        with open(self.spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text + "\n[train.checkpoint]\n" + extra)
        return spec

    def test_resume_after_an_epoch_equals_a_run_that_never_stopped(self):
        # A 2-epoch run that checkpoints every epoch; a second run resumes from its first epoch's checkpoint.
        spec = self.with_checkpoints("every_epochs = 1\nkeep_last = 0\n")
        straight = self.fit([spec, "--epochs", "2"], "straight")
        resumed = self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-1.ckpt")], "second")
        meta_a, a = tensors(os.path.join(self.dir, "straight", "last.ckpt"))
        meta_b, b = tensors(os.path.join(self.dir, "second", "last.ckpt"))
        self.assertEqual(sorted(a), sorted(b))
        self.assertTrue(any(k.endswith("/adam_m") for k in a), sorted(a))  # optimizer state is saved
        for k in a:
            self.assertEqual(a[k], b[k], f"{k} differs")  # bitwise
        self.assertEqual(meta_a["step"], meta_b["step"])
        ea = [e for e in straight if e["event"] == "epoch"][-1]
        eb = [e for e in resumed if e["event"] == "epoch"][-1]
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            self.assertEqual(ea[key], eb[key], key)
        # history.jsonl of the resumed run tells the whole run: both epochs.
        with open(os.path.join(self.dir, "second", "history.jsonl")) as f:
            self.assertEqual([e["epoch"] for e in events(f.read()) if e["event"] == "epoch"], [1, 2])

    def test_a_reduced_learning_rate_resumes(self):
        # Max mode on a falling loss halves the rate after every epoch but the first: 1e-3, 1e-3, 5e-4.
        spec = self.with_checkpoints('every_epochs = 1\nkeep_last = 0\n[train.reduce_lr_on_plateau]\n'
                                     'monitor = "loss"\nmode = "max"\npatience = 0\nfactor = 0.5\n')
        straight = self.fit([spec, "--epochs", "3", "--set", "train.optimizer.schedule.kind=constant"], "straight")
        rates = [e["learning_rate"] for e in straight if e["event"] == "epoch"]
        self.assertEqual(rates, [0.001, 0.001, 0.0005])
        resumed = self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-2.ckpt")], "second")
        self.assertEqual([e["learning_rate"] for e in resumed if e["event"] == "epoch"], [0.0005])
        _, a = tensors(os.path.join(self.dir, "straight", "last.ckpt"))
        _, b = tensors(os.path.join(self.dir, "second", "last.ckpt"))
        for k in a:
            self.assertEqual(a[k], b[k], f"{k} differs")

    def test_early_stopping_baseline_and_start_from_epoch(self):
        # Max mode on a falling loss: epoch 1 is the best, and every later epoch waits. Keras's rules: with
        # patience 2 the run stops after epoch 3; a baseline that epoch 1 does not beat makes its improvement a
        # waited epoch too (stop after 2); start_from_epoch 2 watches from epoch 3 on (stop after 5).
        def epochs_run(extra):
            spec = self.with_checkpoints("every_epochs = 0\n[train.early_stopping]\nmonitor = \"loss\"\n"
                                         "mode = \"max\"\npatience = 2\n" + extra)
            return self.fit([spec, "--epochs", "8"], "es")[-1]["epochs_run"]
        self.assertEqual(epochs_run(""), 3)
        self.assertEqual(epochs_run("baseline = 1e9\n"), 2)
        self.assertEqual(epochs_run("baseline = 0.0\n"), 3)  # beaten by epoch 1: as without one
        self.assertEqual(epochs_run("start_from_epoch = 2\n"), 5)

    def test_save_best_remembers_its_best_across_a_resume(self):
        # Max mode on a falling loss: the first epoch stays the best. A run resumed into its own directory from
        # the first epoch's checkpoint (written in the same epoch as best.ckpt) keeps best.ckpt at epoch 1.
        spec = self.with_checkpoints('every_epochs = 1\nkeep_last = 0\nsave_best = "loss"\nmode = "max"\n')
        straight = self.fit([spec, "--epochs", "3"], "straight")
        losses = [e["loss"] for e in straight if e["event"] == "epoch"]
        self.assertEqual(losses, sorted(losses, reverse=True))  # falling, so epoch 1 is the best
        best = os.path.join(self.dir, "straight", "best.ckpt")
        self.assertEqual(tensors(best)[0]["cursor"], "epoch 1 batch 0")
        for name in ("epoch-2.ckpt", "epoch-3.ckpt", "last.ckpt"):
            os.remove(os.path.join(self.dir, "straight", name))
        self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-1.ckpt")], "straight")
        self.assertTrue(os.path.exists(os.path.join(self.dir, "straight", "epoch-3.ckpt")))
        self.assertEqual(tensors(best)[0]["cursor"], "epoch 1 batch 0")

    def test_resume_in_the_middle_of_an_epoch(self):
        spec = self.with_checkpoints("every_steps = 10\nkeep_last = 0\n")
        self.fit([spec, "--epochs", "2"], "straight")
        # step-30 is batch 6 of epoch 2 (24 batches per epoch).
        ck = os.path.join(self.dir, "straight", "step-30.ckpt")
        self.assertTrue(os.path.exists(ck), os.listdir(os.path.join(self.dir, "straight")))
        meta, _ = tensors(ck)
        self.assertEqual(meta["cursor"], "epoch 1 batch 6")
        self.fit(["--resume", ck], "resumed")
        _, a = tensors(os.path.join(self.dir, "straight", "last.ckpt"))
        _, b = tensors(os.path.join(self.dir, "resumed", "last.ckpt"))
        for k in a:
            self.assertEqual(a[k], b[k], f"{k} differs")
        # Fewer epochs than the checkpoint has reached: refused, and nothing written (it wrote epoch-1.ckpt
        # holding the state of epoch 2, batch 6). The run's own epochs finished resume to nothing more.
        for ck, epochs, message, hint in (
                (ck, 1, "the checkpoint's run is in epoch 2 at batch 6 (step 30), past the 1 epoch asked for",
                 "--epochs 2 or more"),
                (os.path.join(self.dir, "straight", "last.ckpt"), 1,
                 "the checkpoint's run has done 2 epochs, past the 1 epoch asked for", "--epochs 3 or more")):
            out = os.path.join(self.dir, "fewer")
            r = run(["fit", "--resume", ck, "--epochs", str(epochs), "--output-dir", out] + SMALL, timeout=300)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(message, r.stderr)
            self.assertIn(hint, r.stderr)
            self.assertFalse(os.path.exists(out))

    def test_sigint_writes_a_checkpoint_that_resumes_exactly(self):
        straight = os.path.join(self.dir, "straight")
        self.fit([self.spec, "--epochs", "2"], "straight")
        out = os.path.join(self.dir, "interrupted")
        p = subprocess.Popen([cli_util.TRAINER, "fit", self.spec, "--epochs", "2", "--output-dir", out, "--device",
                              "cpu"] + SMALL[:-1],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline()  # the first epoch line: the run is in epoch 2 now
        self.assertIn('"epoch"', first)
        p.send_signal(signal.SIGINT)
        stdout, stderr = p.communicate(timeout=300)
        if p.returncode == 0 or "after the last step" in stderr:
            self.skipTest("the run finished before the signal arrived")
        self.assertEqual(p.returncode, 130, stderr)
        # The command it prints goes on in the same folder (without --output-dir a resumed run writes nothing),
        # on the devices the run took.
        self.assertIn(f"Resume with: trainer fit --resume {out}/last.ckpt --output-dir {out} --device cpu\n", stderr)
        end = events(stdout)[-1]
        self.assertEqual(end["interrupted_by"], "SIGINT")
        self.fit(["--resume", os.path.join(out, "last.ckpt")], "resumed")
        _, a = tensors(os.path.join(straight, "last.ckpt"))
        _, b = tensors(os.path.join(self.dir, "resumed", "last.ckpt"))
        for k in a:
            self.assertEqual(a[k], b[k], f"{k} differs")


class Leftovers(unittest.TestCase):
    SPEC = """format_version = 1
[model]
input = [3]
[[model.layers]]
type = "Dense"
units = 1
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "mse"
"""

    def test_a_killed_writers_temporary_file_is_removed_by_the_next_writer(self):
        import fcntl
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            np.save(os.path.join(d, "x.npy"), np.ones((8, 3), np.float32))
            np.save(os.path.join(d, "y.npy"), np.ones(8, np.float32))
            spec = os.path.join(d, "spec.toml")
            with open(spec, "w") as f:
                f.write(self.SPEC)
            out = os.path.join(d, "out")
            os.makedirs(out)
            # What SIGKILL leaves: an unlocked temporary file an hour old. Beside it, one that a live writer
            # holds locked, one just made (not yet locked by its writer), and another file's.
            def leftover(name, age):
                path = os.path.join(out, name)
                with open(path, "wb") as f:
                    f.write(b"partial")
                os.utime(path, (time.time() - age, time.time() - age))
                return path
            dead = leftover(".epoch-7.ckpt.tmp-00000000deadbeef", 3600)
            held = leftover(".epoch-7.ckpt.tmp-00000000000a11fe", 3600)
            fresh = leftover(".step-90.ckpt.tmp-0000000000000001", 0)
            other = leftover(".notes.txt.tmp-00000000deadbeef", 3600)
            with open(held, "rb") as h:
                fcntl.flock(h, fcntl.LOCK_EX | fcntl.LOCK_NB)
                r = run(["fit", spec, "--output-dir", out, "-q"], timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
            self.assertTrue(os.path.exists(os.path.join(out, "last.ckpt")))
            self.assertFalse(os.path.exists(dead), "the dead writer's file stays")
            for kept in (held, fresh, other):
                self.assertTrue(os.path.exists(kept), kept)


class MetricsOnResume(unittest.TestCase):
    def test_a_run_resumed_mid_epoch_reports_the_checkpoints_metrics_or_refuses(self):
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(1)
            np.save(os.path.join(d, "x.npy"), rng.normal(size=(96, 3)).astype(np.float32))
            np.save(os.path.join(d, "y.npy"), (rng.random(96) > 0.5).astype(np.float32))
            spec = os.path.join(d, "spec.toml")
            with open(spec, "w") as f:
                f.write(Leftovers.SPEC.replace('units = 1', 'units = 1\nactivation = "sigmoid"')
                        .replace('loss = "mse"', 'loss = "binary_crossentropy"\nmetrics = ["accuracy"]\n'
                                 'weighted_metrics = ["auc"]\nepochs = 2\nbatch_size = 16\n'
                                 '[train.checkpoint]\nevery_steps = 2\nkeep_last = 0'))
            def fit(*args):
                return run(["fit", *args, "--log-format", "jsonl", "-q"], timeout=120)
            r = fit(spec, "--output-dir", os.path.join(d, "straight"))
            self.assertEqual(r.returncode, 0, r.stderr)
            want = events(r.stdout)[-1]
            mid = os.path.join(d, "straight", "step-8.ckpt")  # epoch 2, batch 2 of 6
            r = fit("--resume", mid, "--output-dir", os.path.join(d, "resumed"))
            self.assertEqual(r.returncode, 0, r.stderr)
            got = events(r.stdout)[-1]
            for k in ("loss", "accuracy", "auc"):
                self.assertAlmostEqual(got[k], want[k], places=6, msg=k)
            # Other metrics than the sums count: refused, not reported from part of the epoch.
            r = fit("--resume", mid, "--set", 'train.metrics=["accuracy", "auc"]', "--output-dir",
                    os.path.join(d, "other"))
            cli_util.assert_input_error(self, r, "--resume: the checkpoint stopped in the middle of epoch 2",
                                        "count loss, accuracy, auc (batches of 16 from 96 samples;",
                                        "this run counts loss, accuracy, auc, weighted_auc", "end of an epoch")
            # So are another order (seed, shuffle) and other data of the same size: the rest of the epoch's
            # permutation would skip some samples and repeat others.
            r = fit("--resume", mid, "--seed", "7", "--output-dir", os.path.join(d, "seed"))
            cli_util.assert_input_error(self, r, "shuffled by seed 0;", "shuffled by seed 7;")
            r = fit("--resume", mid, "--set", "data.shuffle=false", "--output-dir", os.path.join(d, "order"))
            cli_util.assert_input_error(self, r, "shuffled by seed 0;", "in order;")
            np.save(os.path.join(d, "y2.npy"), 1 - np.load(os.path.join(d, "y.npy")))
            r = fit("--resume", mid, "--set", 'data.train.y="y2.npy"', "--output-dir", os.path.join(d, "data"))
            cli_util.assert_input_error(self, r, "the checkpoint stopped in the middle of epoch 2", "; data ")
            # So are other batches (samples skipped or repeated) and other weights.
            r = fit("--resume", mid, "--batch-size", "32", "--output-dir", os.path.join(d, "batches"))
            cli_util.assert_input_error(self, r, "(batches of 32 from 96 samples;")
            r = fit("--resume", mid, "--set", "train.class_weight=[1, 2]", "--output-dir", os.path.join(d, "cw"))
            cli_util.assert_input_error(self, r, "class_weight [1, 2]")
            # From an epoch's end, new metrics start with the next epoch.
            r = fit("--resume", os.path.join(d, "straight", "epoch-1.ckpt"), "--set",
                    'train.metrics=["accuracy", "auc"]', "--output-dir", os.path.join(d, "from_epoch"))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertAlmostEqual(events(r.stdout)[-1]["weighted_auc"], want["auc"], places=6)


class EarlyStopping(unittest.TestCase):
    """A run that early stopping ends: last.ckpt holds the weights restore_best_weights put back (final.ckpt),
    and resuming any checkpoint of the stopped run trains nothing more."""

    def test_restored_weights_are_the_last_checkpoint_and_a_stopped_run_stays_stopped(self):
        import numpy as np
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(2)
            x = rng.normal(size=(64, 3)).astype(np.float32)
            np.save(os.path.join(d, "x.npy"), x)
            np.save(os.path.join(d, "y.npy"), (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32))
            spec = os.path.join(d, "spec.toml")
            # The loss falls every epoch and mode = "max" calls that worse: epoch 1 stays the best, and
            # patience 2 stops the run after epoch 3 (Keras's rule), with epoch 1's weights put back.
            with open(spec, "w") as f:
                f.write(Leftovers.SPEC.replace("[train]", "[data.validation]\nx = \"x.npy\"\ny = \"y.npy\"\n[train]")
                        + "epochs = 10\nbatch_size = 16\n[train.optimizer]\nname = \"sgd\"\nlearning_rate = 0.05\n"
                        "[train.early_stopping]\nmonitor = \"val_loss\"\nmode = \"max\"\npatience = 2\n"
                        "restore_best_weights = true\n[train.checkpoint]\nevery_epochs = 1\n")
            def fit(*args):
                r = run(["fit", *args, "--device", "cpu", "--log-format", "jsonl", "-q"], timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
                return events(r.stdout)
            def evaluate(ckpt):
                r = run(["evaluate", ckpt, "--device", "cpu", "-q"], timeout=120)
                self.assertEqual(r.returncode, 0, r.stderr)
                return json.loads(r.stdout)["loss"]
            out = os.path.join(d, "run")
            ev = fit(spec, "--output-dir", out)
            end = ev[-1]
            self.assertEqual(end["event"], "fit_end")
            self.assertTrue(end["stopped_early"])
            self.assertEqual((end["epochs_run"], end["best_epoch"]), (3, 1))
            first = ev[0]["val_loss"]
            self.assertLess(ev[2]["val_loss"], first - 1e-3)
            self.assertEqual(sorted(os.listdir(out)),
                             ["epoch-1.ckpt", "epoch-2.ckpt", "epoch-3.ckpt", "final.ckpt", "history.jsonl",
                              "last.ckpt"])
            self.assertEqual(tensors(os.path.join(out, "last.ckpt")), tensors(os.path.join(out, "final.ckpt")))
            self.assertAlmostEqual(evaluate(os.path.join(out, "last.ckpt")), first, places=6)
            self.assertAlmostEqual(evaluate(os.path.join(out, "epoch-3.ckpt")), ev[2]["val_loss"], places=6)
            # Resuming the stopped run, from its last epoch or its final checkpoint, trains no more epochs
            # and ends with the weights the run ended with.
            want = tensors(os.path.join(out, "final.ckpt"))[1]
            for ckpt in ("epoch-3.ckpt", "final.ckpt"):
                again = os.path.join(d, "again-" + ckpt)
                ev = fit("--resume", os.path.join(out, ckpt), "--output-dir", again)
                self.assertEqual([e["event"] for e in ev], ["fit_end"], ckpt)
                self.assertTrue(ev[-1]["stopped_early"])
                self.assertEqual(tensors(os.path.join(again, "last.ckpt"))[1], want, ckpt)
            # Keras's on_train_end: a run that never stops early (patience beyond its epochs) still ends with
            # the best epoch's weights.
            with open(spec) as f:
                text = f.read()
            whole = os.path.join(d, "whole.toml")
            with open(whole, "w") as f:
                f.write(text.replace("epochs = 10", "epochs = 4").replace("patience = 2", "patience = 9")
                        .replace("[train.checkpoint]\nevery_epochs = 1\n", ""))
            out = os.path.join(d, "whole")
            ev = fit(whole, "--output-dir", out)
            end = ev[-1]
            self.assertEqual((end["epochs_run"], end["stopped_early"], end["best_epoch"],
                              end["restored_best_weights"]), (4, False, 1, True))
            # The last epoch's weights are kept beside them (epoch-4.ckpt, with no checkpoint policy), and
            # training on from them is the run that never ended: 6 epochs straight end with its weights.
            self.assertEqual(sorted(os.listdir(out)), ["epoch-4.ckpt", "final.ckpt", "history.jsonl", "last.ckpt"])
            self.assertEqual(tensors(os.path.join(out, "last.ckpt")), tensors(os.path.join(out, "final.ckpt")))
            self.assertAlmostEqual(evaluate(os.path.join(out, "last.ckpt")), ev[0]["val_loss"], places=6)
            self.assertAlmostEqual(evaluate(os.path.join(out, "epoch-4.ckpt")), ev[3]["val_loss"], places=6)
            # Resuming the complete run with nothing left to train keeps that checkpoint as it was.
            kept = tensors(os.path.join(out, "epoch-4.ckpt"))
            fit("--resume", os.path.join(out, "last.ckpt"), "--output-dir", out)
            self.assertEqual(tensors(os.path.join(out, "epoch-4.ckpt")), kept)
            straight = fit(whole, "--epochs", "6", "--output-dir", os.path.join(d, "straight"))
            longer = fit("--resume", os.path.join(out, "epoch-4.ckpt"), "--epochs", "6", "--output-dir",
                         os.path.join(d, "longer"))
            self.assertEqual([e["val_loss"] for e in longer[:-1]], [e["val_loss"] for e in straight[4:-1]])
            self.assertEqual(tensors(os.path.join(d, "longer", "epoch-6.ckpt"))[1],
                             tensors(os.path.join(d, "straight", "epoch-6.ckpt"))[1])
            self.assertEqual(tensors(os.path.join(d, "longer", "final.ckpt"))[1],
                             tensors(os.path.join(d, "straight", "final.ckpt"))[1])


class OutputDirectory(unittest.TestCase):
    """What a run leaves in its --output-dir: a Dense layer on 8 samples of 3 features (x.npy, y.npy)."""

    def setUp(self):
        import numpy as np
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name
        np.save(os.path.join(self.d, "x.npy"), np.ones((8, 3), np.float32))
        np.save(os.path.join(self.d, "y.npy"), np.zeros((8,), np.float32))

    def tearDown(self):
        self.tmp.cleanup()

    def spec(self, extra="", data=""):
        """Leftovers.SPEC with `data` before [train] and `extra` after it."""
        path = os.path.join(self.d, "spec.toml")
        with open(path, "w") as f:
            f.write(Leftovers.SPEC.replace("[train]", data + "[train]") + extra)
        return path

    def test_a_directory_another_run_writes_in_is_refused(self):
        # Two runs in one directory would replace each other's last.ckpt: the second is refused at once.
        import fcntl
        spec = self.spec()
        out = os.path.join(self.d, "run")
        os.mkdir(out)
        held = os.open(out, os.O_RDONLY)
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running trainer fit holds it
            r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q"], timeout=120)
            cli_util.assert_input_error(self, r, out, "another trainer fit is writing its checkpoints",
                                        "--output-dir")
            self.assertEqual(os.listdir(out), [])
        finally:
            os.close(held)
        r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["epoch-1.ckpt", "history.jsonl", "last.ckpt"])

    def test_a_run_that_fails_before_writing_anything_leaves_the_folder_as_it_was(self):
        # Another run's history and checkpoints stay as they are when a run in the same folder fails before its
        # first epoch or checkpoint: a loss that overflows, or a resume of the folder's checkpoint that does.
        spec = self.spec()
        out = os.path.join(self.d, "run")
        r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q", "--set", "train.batch_size=2"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)

        def files():
            return {name: open(os.path.join(out, name), "rb").read() for name in sorted(os.listdir(out))}
        before = files()
        self.assertIn(b'"fit_end"', before["history.jsonl"])
        blow_up = ["--set", "train.optimizer.learning_rate=1e30"]
        for args in ([spec, "--set", "train.batch_size=2", *blow_up],
                     ["--resume", os.path.join(out, "last.ckpt"), "--epochs", "3", *blow_up]):
            r = run(["fit", *args, "--device", "cpu", "--output-dir", out, "-q"], timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("the loss became", r.stderr)
            self.assertEqual(files(), before, args)

    def test_a_run_whose_validation_loss_is_not_finite_leaves_a_readable_checkpoint(self):
        # Validation features that overflow the model (finite, huge) give a NaN or infinite val_loss; the
        # checkpoint's history holds it (JSON has no number for it) and reads back.
        import numpy as np
        np.save(os.path.join(self.d, "xv.npy"), np.full((8, 3), 3e38, np.float32))
        spec = self.spec("epochs = 2\n[train.optimizer]\nname = \"sgd\"\nlearning_rate = 0.01\n",
                         data='[data.validation]\nx = "xv.npy"\ny = "y.npy"\n')
        out = os.path.join(self.d, "run")
        r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "--log-format", "jsonl", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIsNone(events(r.stdout)[-1]["val_loss"])  # null on stdout
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--epochs", "3", "--device", "cpu",
                 "--output-dir", os.path.join(self.d, "again"), "--log-format", "jsonl", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["evaluate", os.path.join(out, "last.ckpt"), "--device", "cpu", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_a_closed_stdout_stops_the_run_with_a_checkpoint(self):
        # `trainer fit ... | head -1`: the reader goes after one line; the run stops as a signal stops it,
        # with a checkpoint that resumes, and exit status 141 (128 + SIGPIPE).
        spec = self.spec("epochs = 200\nbatch_size = 2\n")
        out = os.path.join(self.d, "run")
        p = subprocess.Popen([cli_util.TRAINER, "fit", spec, "--device", "cpu", "--output-dir", out,
                              "--log-format", "jsonl", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = p.stdout.readline()
        p.stdout.close()
        _, err = p.communicate(timeout=120)
        self.assertEqual(json.loads(first)["epoch"], 1)
        self.assertEqual(p.returncode, 141, err.decode())
        self.assertEqual(err.decode(), "")  # -q: nothing to say about it
        with open(os.path.join(out, "history.jsonl")) as f:
            end = json.loads(f.read().splitlines()[-1])
        self.assertEqual(end["event"], "fit_end")
        self.assertLess(end["epochs_run"], 200)
        self.assertEqual(end["interrupted_by"], "SIGPIPE")
        # The writer found the reader gone at an epoch's end: the run stopped there, before another step.
        with open(os.path.join(out, "last.ckpt"), "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            state = json.loads(json.loads(f.read(n))["__metadata__"]["state"])
        self.assertEqual((state["batch"], state["epoch"]), (0, end["epochs_run"]), state)
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--device", "cpu", "--output-dir",
                 os.path.join(self.d, "again"), "--log-format", "jsonl", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(events(r.stdout)[-1]["epochs_run"], 200)

    def test_keep_last_counts_the_checkpoints_a_resumed_run_finds_in_its_directory(self):
        spec = self.spec("epochs = 3\n[train.checkpoint]\nevery_epochs = 1\nkeep_last = 2\n")
        out = os.path.join(self.d, "run")
        r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["epoch-2.ckpt", "epoch-3.ckpt", "history.jsonl", "last.ckpt"])
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--epochs", "5", "--device", "cpu",
                 "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["epoch-4.ckpt", "epoch-5.ckpt", "history.jsonl", "last.ckpt"])
        # Resumed from an earlier epoch into its own folder (a retry from epoch 4): the checkpoints it writes
        # again are the newest, not counted twice (epoch-5 was the only one left, rewritten or not).
        r = run(["fit", "--resume", os.path.join(out, "epoch-4.ckpt"), "--epochs", "6", "--device", "cpu",
                 "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)), ["epoch-5.ckpt", "epoch-6.ckpt", "history.jsonl", "last.ckpt"])
        with_three = self.spec("epochs = 3\n[train.checkpoint]\nevery_epochs = 1\nkeep_last = 3\n")
        out = os.path.join(self.d, "retry")
        self.assertEqual(run(["fit", with_three, "--device", "cpu", "--output-dir", out, "-q"], timeout=120).returncode, 0)
        r = run(["fit", "--resume", os.path.join(out, "epoch-1.ckpt"), "--device", "cpu", "--output-dir", out, "-q"],
                timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)),
                         ["epoch-1.ckpt", "epoch-2.ckpt", "epoch-3.ckpt", "history.jsonl", "last.ckpt"])

    def test_a_resumed_run_keeps_its_optimizer(self):
        spec = self.spec('[train.optimizer]\nname = "adam"\n')
        out = os.path.join(self.d, "run")
        self.assertEqual(run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q"], timeout=120).returncode, 0)
        ckpt = os.path.join(out, "last.ckpt")
        for override in ["train.optimizer.name=sgd", "train.optimizer=SGD"]:
            r = run(["fit", "--resume", ckpt, "--epochs", "2", "--set", override, "--device", "cpu", "-q"],
                    timeout=120)
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"--set {override}: the checkpoint's run trains with adam", r.stderr)
            self.assertIn("hint: its state", r.stderr)
        # Its own name, in Keras's spelling, and its own keys go on; a name of no optimizer is said as such.
        r = run(["fit", "--resume", ckpt, "--epochs", "2", "--set", "train.optimizer.name=Adam", "--set",
                 "train.optimizer.learning_rate=0.01", "--device", "cpu", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["fit", "--resume", ckpt, "--epochs", "2", "--set", 'train.optimizer={name="adam"}', "--device",
                 "cpu", "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["fit", "--resume", ckpt, "--epochs", "2", "--set", "train.optimizer.name=nosuch", "--device",
                 "cpu", "-q"], timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("unknown optimizer 'nosuch'", r.stderr)

    def test_keep_last_orders_checkpoints_of_one_time_by_their_numbers(self):
        # A clock too coarse to tell epoch-9, epoch-10 and epoch-11 apart: epoch-9 is still the oldest.
        spec = self.spec("epochs = 11\n[train.checkpoint]\nevery_epochs = 1\nkeep_last = 3\n")
        out = os.path.join(self.d, "run")
        r = run(["fit", spec, "--device", "cpu", "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        kept = ["epoch-10.ckpt", "epoch-11.ckpt", "epoch-9.ckpt"]
        self.assertEqual(sorted(os.listdir(out)), kept + ["history.jsonl", "last.ckpt"])
        for name in kept:
            os.utime(os.path.join(out, name), (1_700_000_000, 1_700_000_000))
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--epochs", "12", "--device", "cpu",
                 "--output-dir", out, "-q"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(sorted(os.listdir(out)),
                         ["epoch-10.ckpt", "epoch-11.ckpt", "epoch-12.ckpt", "history.jsonl", "last.ckpt"])


@cli_util.skip_without_fashion
class BadCheckpoints(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.spec = cli_util.sample("fashion_mnist/mlp.toml")
        r = run(["fit", cls.spec, "--epochs", "1", "--output-dir", cls.tmp.name] + SMALL, timeout=300)
        assert r.returncode == 0, r.stderr
        cls.ckpt = os.path.join(cls.tmp.name, "last.ckpt")
        with open(cls.ckpt, "rb") as f:
            cls.good = f.read()

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def resume_fails(self, data, expect):
        path = os.path.join(self.tmp.name, "bad.ckpt")
        with open(path, "wb") as f:
            f.write(data)
        out = os.path.join(self.tmp.name, "never")
        r = run(["fit", "--resume", path, "--output-dir", out], timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("bad.ckpt", r.stderr)
        self.assertIn(expect, r.stderr)
        self.assertNotIn("internal error", r.stderr)
        self.assertFalse(os.path.exists(out), "nothing is written for a bad checkpoint")

    def test_a_flipped_byte_in_the_payload(self):
        data = bytearray(self.good)
        data[len(data) - 1000] ^= 0x01
        self.resume_fails(bytes(data), "checksum")

    def test_a_flipped_byte_in_the_header(self):
        data = bytearray(self.good)
        data[40] ^= 0x01
        self.resume_fails(bytes(data), "")

    def test_a_byte_that_is_not_utf8_is_quoted_escaped(self):
        # A flipped bit after a backslash of the JSON header: the parser's message quotes the byte, which went
        # to stderr raw (not UTF-8: a strict reader of stderr failed on it).
        data = bytearray(self.good)
        at = data.index(b"\\", 8)
        data[at + 1] ^= 0x80
        path = os.path.join(self.tmp.name, "bad.ckpt")
        with open(path, "wb") as f:
            f.write(data)
        r = subprocess.run([cli_util.TRAINER, "fit", "--resume", path, "--output-dir",
                            os.path.join(self.tmp.name, "never")], capture_output=True, timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        stderr = r.stderr.decode("utf-8")  # strict
        self.assertIn(f"\\x{data[at + 1]:02x}", stderr)

    def test_a_data_file_in_a_checkpoints_place_is_named_for_what_it_is(self):
        # An NPY array was "a header length that runs past the end", and a CIFAR-10 record of label 8 (its first
        # byte 0x08, as an ONNX model's) was "an ONNX model".
        import numpy as np
        npy = os.path.join(self.tmp.name, "x.npy")
        np.save(npy, np.zeros((3, 4), np.float32))
        record = os.path.join(self.tmp.name, "data_batch_2.bin")
        with open(record, "wb") as f:
            f.write(bytes([8, 60, 58, 46]) + bytes(range(256)) * 12)
        csv = os.path.join(self.tmp.name, "x.csv")
        with open(csv, "w") as f:
            f.write("1,2,3\n4,5,6\n")
        for path, message in ((npy, "is an NPY array, not a checkpoint of trainer fit"),
                              (record, "is not a checkpoint of trainer fit"),
                              (csv, "is a text file, not a checkpoint of trainer fit")):
            for args in (["export", path, "-o", os.path.join(self.tmp.name, "never.onnx")],
                         ["fit", "--resume", path, "--output-dir", os.path.join(self.tmp.name, "never")]):
                r = run(args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(message, r.stderr)
                self.assertNotIn("ONNX", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "never.onnx")))
        # What is not read at all is still the reader's to name.
        r = run(["export", os.path.join(self.tmp.name, "missing.ckpt"), "-o", os.path.join(self.tmp.name, "m.onnx")])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("missing.ckpt: cannot open the checkpoint: No such file or directory", r.stderr)

    def test_a_truncated_checkpoint(self):
        self.resume_fails(self.good[:len(self.good) // 2], "")

    def test_a_spec_whose_layer_shapes_differ(self):
        spec = os.path.join(self.tmp.name, "wider.toml")
        with open(self.spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text.replace("units = 512", "units = 256"))
        r = run(["fit", spec, "--resume", self.ckpt] + SMALL[:-1], timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("does not match the checkpoint", r.stderr)
        self.assertIn("units = 512", r.stderr)
        self.assertIn("units = 256", r.stderr)

    def test_a_set_that_changes_a_layers_size(self):
        # The checkpoint's spec with an override: the error names the checkpoint's tensor and both shapes (it
        # said the "data" had the wrong shape), and the output directory the run made goes again.
        out = os.path.join(self.tmp.name, "made")
        r = run(["fit", "--resume", self.ckpt, "--output-dir", os.path.join(out, "deeper", ""), "--set",
                 "model.layers.1.units=256"], timeout=120)
        self.assertFalse(os.path.exists(out))  # with the parent it made
        # Written with "..": what the run made is what the file system made, not the path's text.
        r = run(["fit", "--resume", self.ckpt, "--output-dir", os.path.join(out, "..", "made2", "x"), "--set",
                 "model.layers.1.units=256"], timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "made2")))
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertRegex(r.stderr, r"the checkpoint holds 'dense/kernel' as f32 \[784, \d+\], and this model has "
                                   r"it as f32 \[784, 256\]")
        self.assertIn("resume with the spec the checkpoint was written with", r.stderr)
        self.assertNotIn("data", r.stderr)


if __name__ == "__main__":
    cli_util.main()
