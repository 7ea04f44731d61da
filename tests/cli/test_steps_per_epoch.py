"""train.steps_per_epoch and train.validation_steps (Keras's fit arguments): epochs of a set number of steps
read on through the shuffled passes over the training data, their resume, and validation on the first batches."""

import json
import math
import os
import tempfile
import unittest

import cli_util
from cli_util import run

# The Fashion-MNIST MLP on 1500 training samples at batch 64: a pass is 24 batches, the last of 28 samples.
SMALL = ["--set", "data.train.limit=1500", "--set", "data.validation.limit=300", "--set", "train.batch_size=64",
         "--log-format", "jsonl", "--quiet"]


tensors = cli_util.checkpoint_bytes


def epochs_of(stdout):
    return [e for e in map(json.loads, stdout.splitlines()) if e["event"] == "epoch"]


@cli_util.skip_without_fashion
class StepsPerEpoch(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.spec = cli_util.sample("fashion_mnist/mlp.toml")

    def tearDown(self):
        self.tmp.cleanup()

    def fit(self, args, out, code=0, quiet=True):
        # args after SMALL: their --set wins.
        small = SMALL if quiet else [a for a in SMALL if a != "--quiet"]
        r = run(["fit"] + small + args + ["--output-dir", os.path.join(self.dir, out)], timeout=300)
        self.assertEqual(r.returncode, code, r.stderr)
        return r

    def weights(self, out, name="last.ckpt"):
        return tensors(os.path.join(self.dir, out, name))[1]

    def assert_same_weights(self, a, b):
        wa, wb = self.weights(a), self.weights(b)
        self.assertEqual(sorted(wa), sorted(wb))
        for k in wa:
            self.assertTrue(wa[k] == wb[k], f"{k} differs between {a} and {b}")

    def test_epochs_read_on_through_the_passes(self):
        # 50 steps as 5 epochs of 10, 2 of 25 and 1 of 50: the same batches in the same order (passes 0, 1 and
        # the start of 2, each shuffled by its number), the same schedule over 50 steps, so the same weights.
        runs = {}
        for steps, epochs in ((10, 5), (25, 2), (50, 1)):
            out = f"s{steps}"
            r = self.fit([self.spec, "--epochs", str(epochs), "--set", f"train.steps_per_epoch={steps}"], out,
                         quiet=False)
            runs[out] = epochs_of(r.stdout)
            self.assertEqual(len(runs[out]), epochs)
            self.assertIn(f"{steps} steps per epoch (a pass over the data is 24)", r.stderr)
        self.assert_same_weights("s10", "s25")
        self.assert_same_weights("s10", "s50")
        # Whole passes: 4 epochs of 12 steps are the 2 epochs of 24 a run without steps_per_epoch trains.
        self.fit([self.spec, "--epochs", "4", "--set", "train.steps_per_epoch=12"], "s12")
        self.fit([self.spec, "--epochs", "2"], "passes")
        self.assert_same_weights("s12", "passes")
        # Broken stream (each epoch restarting its own pass): 10 steps from pass k's start differ.
        self.fit([self.spec, "--epochs", "5", "--set", "train.steps_per_epoch=10", "--set", "train.seed=2"],
                 "seed2")
        with self.assertRaises(AssertionError):
            self.assert_same_weights("s10", "seed2")

    def test_resume_in_and_between_epochs_continues_the_stream(self):
        spec = os.path.join(self.dir, "spec.toml")
        with open(self.spec) as f:
            text = f.read()
        with open(spec, "w") as f:
            f.write(text + "\n[train.checkpoint]\nevery_epochs = 1\nevery_steps = 7\nkeep_last = 0\n")
        const = ["--set", "train.optimizer.schedule.kind=constant"]
        steps10 = ["--set", "train.steps_per_epoch=10"]
        self.fit([spec, "--epochs", "5"] + steps10 + const, "straight")
        # step-21: epoch 3, batch 1; the run crosses into pass 1 after the resume (at step 24).
        meta, _ = tensors(os.path.join(self.dir, "straight", "step-21.ckpt"))
        self.assertEqual(meta["cursor"], "epoch 2 batch 1")
        self.fit(["--resume", os.path.join(self.dir, "straight", "step-21.ckpt")], "mid")
        self.assert_same_weights("straight", "mid")
        # step-35: epoch 4, batch 5, 11 batches into pass 1.
        self.assertEqual(tensors(os.path.join(self.dir, "straight", "step-35.ckpt"))[0]["cursor"], "epoch 3 batch 5")
        self.fit(["--resume", os.path.join(self.dir, "straight", "step-35.ckpt")], "mid2")
        self.assert_same_weights("straight", "mid2")
        # At an epoch's end (20 steps, 1280 samples into pass 0) the epochs may change length: 2 of 15 steps
        # make the same 50 steps of the stream.
        self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-2.ckpt"), "--epochs", "4",
                  "--set", "train.steps_per_epoch=15"], "longer")
        self.assert_same_weights("straight", "longer")
        # A cosine over the whole run keeps decaying along the run's new length: 20 steps, then 2 epochs of 5.
        # (A plateau that never acts makes the epochs report their rate.)
        cosine = os.path.join(self.dir, "cosine.toml")
        with open(cosine, "w") as f:
            f.write(text + "\n[train.checkpoint]\nevery_epochs = 1\nkeep_last = 0\n"
                    "[train.reduce_lr_on_plateau]\npatience = 1000\n")
        self.fit([cosine, "--epochs", "4"] + steps10, "cosine")
        r = self.fit(["--resume", os.path.join(self.dir, "cosine", "epoch-2.ckpt"), "--set",
                      "train.steps_per_epoch=5"], "cosine5")
        rates = [e["learning_rate"] for e in epochs_of(r.stdout)]
        self.assertEqual(len(rates), 2)
        # Each epoch's last step's rate (steps 25 and 30 of 30); a cosine over 40 steps would give others.
        for rate, step in zip(rates, (24, 29)):
            self.assertAlmostEqual(rate, 0.001 * 0.5 * (1 + math.cos(math.pi * step / 30)), delta=1e-9)
        # In the middle of an epoch they may not.
        r = self.fit(["--resume", os.path.join(self.dir, "straight", "step-21.ckpt"),
                      "--set", "train.steps_per_epoch=12"], "bad", code=2)
        self.assertIn("the checkpoint stopped in the middle of an epoch of 10 steps, and this run's epochs are "
                      "12 steps", r.stderr)
        self.assertIn("train.steps_per_epoch = 10", r.stderr)
        # A batch size whose batches do not reach the checkpoint's place in the pass (1280 samples) is refused.
        r = self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-2.ckpt"), "--epochs", "4",
                      "--set", "train.batch_size=48"], "bad", code=2)
        self.assertIn("the checkpoint stopped 1280 samples into a pass over the training data, which batches "
                      "of 48 do not reach", r.stderr)
        # Another seed or other data at that place would skip and repeat samples of the pass.
        for change in (["--set", "train.seed=9"], ["--set", "data.train.limit=1400"]):
            r = self.fit(["--resume", os.path.join(self.dir, "straight", "epoch-2.ckpt"), "--epochs", "4"] + change,
                         "bad", code=2)
            self.assertIn("the checkpoint stopped 1280 samples into a pass over the training data of 1500 samples, "
                          "seed ", r.stderr)
            self.assertIn("resume with the seed, shuffle setting and training data", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "bad")))
        # A run without steps_per_epoch resumed from the end of its first epoch with it reads pass 1 on.
        self.fit([spec, "--epochs", "2"] + const, "passes")
        self.fit(["--resume", os.path.join(self.dir, "passes", "epoch-1.ckpt"), "--epochs", "3",
                  "--set", "train.steps_per_epoch=12"], "passes_then_steps")
        self.assert_same_weights("passes", "passes_then_steps")

    def test_validation_steps_evaluates_the_first_batches(self):
        # 300 validation samples are 5 batches; the first 2 are samples 0..127.
        r = self.fit([self.spec, "--epochs", "1", "--set", "train.validation_steps=2"], "two", quiet=False)
        self.assertIn("validating on 128 ", r.stderr)
        two = epochs_of(r.stdout)[0]
        first = epochs_of(self.fit([self.spec, "--epochs", "1", "--set", "data.validation.limit=128"],
                                   "first").stdout)[0]
        whole = epochs_of(self.fit([self.spec, "--epochs", "1"], "whole").stdout)[0]
        for key in ("loss", "val_loss", "val_accuracy"):
            self.assertEqual(two[key], first[key], key)
        self.assertNotEqual(two["val_loss"], whole["val_loss"])
        # More steps than the data has: all of it.
        many = epochs_of(self.fit([self.spec, "--epochs", "1", "--set", "train.validation_steps=99"],
                                  "many").stdout)[0]
        self.assertEqual(many["val_loss"], whole["val_loss"])

    def test_bad_values_are_refused(self):
        for key in ("steps_per_epoch", "validation_steps"):
            r = run(["check", self.spec, "--set", f"train.{key}=0"])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"train.{key} must be 1 or more, not 0", r.stderr)


if __name__ == "__main__":
    cli_util.main()
