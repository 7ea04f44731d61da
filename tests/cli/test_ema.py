"""Moving averages of the weights ([train.optimizer] use_ema, Keras 3's): the average follows Keras's rule (the first
step's weights, then ema_momentum times itself plus the rest times the new weights), the weights become it every
ema_overwrite_frequency steps and when the run ends; a checkpoint in the middle holds the weights and the averages
apart and resumes exactly; the averages count as optimizer state in `trainer summary`; bad settings are exit-2
errors."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

SPEC = """format_version = 1
[model]
input = [5]
[[model.layers]]
type = "Dense"
units = 2
activation = "tanh"
kernel_initializer = "zeros"
[[model.layers]]
type = "Dense"
units = 2
kernel_initializer = "zeros"
[data]
shuffle = false
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "mse"
epochs = 2
batch_size = 8
[train.optimizer]
name = "sgd"
learning_rate = 0.1
{ema}
"""


class MovingAverage(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(4)
        cls.y = rng.normal(loc=1.0, size=(64, 2)).astype(np.float32)
        np.save(cls.path("x.npy"), rng.normal(size=(64, 5)).astype(np.float32))
        np.save(cls.path("y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def spec(self, name, ema):
        path = self.path(name + ".toml")
        with open(path, "w") as f:
            f.write(SPEC.format(ema=ema))
        return path

    def fit(self, name, ema, *args):
        out = self.path(name)
        r = run(["fit", self.spec(name, ema), "--device", "cpu", "-q", "--output-dir", out, *args], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))

    def reference(self, momentum, frequency=0, max_norm=None):
        """Keras's rule on this model: the tanh layer of zeros passes no gradient, so only the output bias moves
        (mse's gradient 2 (b - y) / 2 per sample, averaged over the batch). Returns the bias that SGD's steps
        leave (with the overwrites) and the average."""
        bias, ema = np.zeros(2), np.zeros(2)
        y = self.y.astype(np.float64)
        for step in range(1, 2 * 8 + 1):
            rows = y[(step - 1) % 8 * 8:(step - 1) % 8 * 8 + 8]
            bias = bias - 0.1 * (bias - rows).mean(0)
            m = 0.0 if step == 1 else momentum
            ema = m * ema + (1 - m) * bias
            if frequency and step % frequency == 0:
                bias = ema.copy()
            if max_norm is not None:  # Keras's MaxNorm, after the average and the overwrite
                norm = np.sqrt((bias * bias).sum())
                bias = bias * (min(norm, max_norm) / (1e-7 + norm))
        return bias, ema

    def test_the_average_reads_the_weights_before_their_constraint(self):
        # Keras's order: update, average, overwrite, then the constraint (here one that binds: the bias grows
        # past a norm of 0.3).
        spec = SPEC.replace('units = 2\nkernel_initializer = "zeros"\n[data]',
                            'units = 2\nkernel_initializer = "zeros"\nbias_constraint = "max_norm(0.3)"\n[data]')
        self.assertNotEqual(spec, SPEC)
        for frequency in (0, 3):
            with self.subTest(frequency=frequency):
                name = f"constrained{frequency}"
                path = self.path(name + ".toml")
                with open(path, "w") as f:
                    f.write(spec.format(ema=f"use_ema = true\nema_momentum = 0.8\nema_overwrite_frequency = {frequency}\n"
                                        "[train.checkpoint]\nevery_epochs = 1\nkeep_last = 0\n"))
                r = run(["fit", path, "--device", "cpu", "-q", "--output-dir", self.path(name)], timeout=300)
                self.assertEqual(r.returncode, 0, r.stderr)
                got = cli_util.read_checkpoint(self.path(name + "/epoch-2.ckpt"))
                bias, ema = self.reference(0.8, frequency=frequency, max_norm=0.3)
                self.assertGreater(np.sqrt((ema * ema).sum()), 0.35)  # the average is not projected
                np.testing.assert_allclose(got["dense_1/bias/ema"], ema, rtol=1e-5)
                np.testing.assert_allclose(got["dense_1/bias"], bias, rtol=1e-5)

    def test_the_run_ends_with_kerass_average_as_its_weights(self):
        got = self.fit("ema", "use_ema = true\nema_momentum = 0.9\n")
        bias, ema = self.reference(0.9)
        np.testing.assert_allclose(got["dense_1/bias/ema"], ema, rtol=1e-5)
        np.testing.assert_allclose(got["dense_1/bias"], ema, rtol=1e-5)
        self.assertGreater(np.abs(bias - ema).max(), 1e-3)  # the last weights are not the average
        plain = self.fit("plain", "")
        np.testing.assert_allclose(plain["dense_1/bias"], bias, rtol=1e-5)
        self.assertNotIn("dense_1/bias/ema", plain)

    def test_the_weights_take_the_average_every_overwrite_frequency_steps(self):
        got = self.fit("every3", "use_ema = true\nema_momentum = 0.8\nema_overwrite_frequency = 3\n")
        _, ema = self.reference(0.8, frequency=3)
        np.testing.assert_allclose(got["dense_1/bias/ema"], ema, rtol=1e-5)
        np.testing.assert_allclose(got["dense_1/bias"], ema, rtol=1e-5)

    def test_a_checkpoint_in_the_middle_resumes_exactly(self):
        ema = "use_ema = true\nema_momentum = 0.9\n[train.checkpoint]\nevery_epochs = 1\nkeep_last = 0\n"
        straight = self.fit("straight", ema)
        # The last epoch's checkpoint holds the weights as trained; the run's end, final.ckpt, the averages.
        self.assertTrue(os.path.samefile(self.path("straight/last.ckpt"), self.path("straight/final.ckpt")))
        np.testing.assert_allclose(straight["dense_1/bias"], self.reference(0.9)[1], rtol=1e-5)
        last_epoch = cli_util.read_checkpoint(self.path("straight/epoch-2.ckpt"))
        np.testing.assert_allclose(last_epoch["dense_1/bias"], self.reference(0.9)[0], rtol=1e-5)
        mid = cli_util.read_checkpoint(self.path("straight/epoch-1.ckpt"))
        # After epoch 1 the weights are SGD's, the average beside them.
        self.assertGreater(np.abs(mid["dense_1/bias"] - mid["dense_1/bias/ema"]).max(), 1e-3)
        r = run(["fit", "--resume", self.path("straight/epoch-1.ckpt"), "--device", "cpu", "-q", "--output-dir",
                 self.path("resumed")], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        resumed = cli_util.read_checkpoint(self.path("resumed/last.ckpt"))
        for n in ("dense_1/bias", "dense_1/bias/ema", "dense_1/kernel"):
            np.testing.assert_allclose(resumed[n], straight[n], rtol=1e-6, err_msg=n)

    def test_averages_turned_on_at_a_resume_start_at_the_weights(self):
        plain = self.fit("before", "")
        r = run(["fit", "--resume", self.path("before/last.ckpt"), "--epochs", "3", "--set",
                 "train.optimizer.use_ema=true", "--device", "cpu", "-q", "--output-dir", self.path("after")],
                timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        after = cli_util.read_checkpoint(self.path("after/last.ckpt"))
        # One more epoch of SGD moves the weights little; averages started at zero would halve them.
        np.testing.assert_allclose(after["dense_1/bias"], plain["dense_1/bias"], rtol=0.2)

    def test_summary_counts_the_averages_as_optimizer_state(self):
        def state(ema):
            r = run(["summary", self.spec("summary", ema), "--json"])
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)["optimizer_state_bytes"]
        params = 4 * (5 * 2 + 2 + 2 * 2 + 2)
        self.assertEqual(state("use_ema = true\n") - state(""), params)

    def test_bad_settings_are_input_errors(self):
        cli_util.assert_input_error(self, run(["check", self.spec("bad", "ema_momentum = 0.9\n")]),
                                    "train.optimizer.ema_momentum applies with use_ema = true")
        cli_util.assert_input_error(self, run(["check", self.spec("bad", "use_ema = true\nema_momentum = 1.5\n")]),
                                    "ema_momentum must be in [0, 1], not 1.5")
        # A spec that names the keys and turns the average off (a checkpoint's spec, --set use_ema=false) is
        # taken as Keras takes it.
        r = run(["check", self.spec("off", "use_ema = true\nema_momentum = 0.9\n"), "--set",
                 "train.optimizer.use_ema=false"])
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run(["fit", self.spec("bad", "use_ema = true\n"), "--device", "cpu", "--devices", "2", "--set",
                 "parallel.shard_optimizer=true", "-q"])
        cli_util.assert_input_error(self, r, "use_ema with a sharded optimizer is not supported")


if __name__ == "__main__":
    cli_util.main()
