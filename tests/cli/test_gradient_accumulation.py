"""Gradient accumulation ([train.optimizer] gradient_accumulation_steps, Keras 3's): N steps of batch B update as
one step of batch N B does (SGD with momentum, equal parameters); Adam counts every step in its bias correction as
Keras's iterations do (checked against Keras's update rule in numpy); a checkpoint written between two updates
resumes with the gradients it had gathered; replicas give the same parameters; bad values are exit-2 errors."""

import json
import os
import shutil
import subprocess
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
units = {hidden}
activation = "tanh"
kernel_initializer = "{init}"
[[model.layers]]
type = "Dense"
units = 2
kernel_initializer = "{init}"
[data]
shuffle = false
[data.train]
x = "x.npy"
y = "y.npy"
[train]
loss = "mse"
epochs = {epochs}
batch_size = {batch}
[train.optimizer]
{optimizer}
"""

SGD = 'name = "sgd"\nmomentum = 0.9\nlearning_rate = 0.05\n'


class GradientAccumulation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(0)
        cls.x = rng.normal(size=(64, 5)).astype(np.float32)
        cls.y = (cls.x @ rng.normal(size=(5, 2))).astype(np.float32)
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def fit(self, name, batch, optimizer, steps=None, epochs=3, hidden=8, init="glorot_uniform", args=(), tail=""):
        spec = self.path(name + ".toml")
        with open(spec, "w") as f:
            extra = f"gradient_accumulation_steps = {steps}\n" if steps else ""
            f.write(SPEC.format(hidden=hidden, init=init, epochs=epochs, batch=batch, optimizer=optimizer + extra) + tail)
        out = self.path(name)
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", out, *args], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))

    def assert_same_weights(self, a, b, rtol=1e-5):
        names = [n for n in b if n.endswith(("kernel", "bias"))]
        self.assertEqual(len(names), 4)
        for n in names:
            np.testing.assert_allclose(a[n], b[n], rtol=rtol, atol=1e-6, err_msg=n)

    def test_four_steps_of_eight_update_as_one_step_of_thirty_two(self):
        accumulated = self.fit("acc", 8, SGD, steps=4)
        whole = self.fit("whole", 32, SGD)
        self.assert_same_weights(accumulated, whole)
        # The gathered gradients are state of the run, 0 after an update (64 samples: 8 steps, 2 updates).
        self.assertIn("dense/kernel/accumulated_gradient", accumulated)
        self.assertFalse(np.any(accumulated["dense/kernel/accumulated_gradient"]))
        # The run says so where it begins.
        r = run(["fit", self.path("acc.toml"), "--device", "cpu", "--epochs", "1"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("8 steps per epoch, an update every 4 ·", r.stderr)
        # Not every step updates: without accumulation, batch 8 trains other weights.
        every = self.fit("every", 8, SGD)
        self.assertGreater(np.abs(every["dense/kernel"] - whole["dense/kernel"]).max(), 1e-3)

    def test_adam_counts_its_updates_as_kerass_iterations(self):
        lr, b1, b2, eps, n, batch = 0.01, 0.9, 0.999, 1e-7, 2, 8
        adam = f'name = "adam"\nlearning_rate = {lr}\n'
        got = self.fit("adam", batch, adam, steps=n, epochs=2, hidden=2, init="zeros")
        # Keras's rule on this model: the tanh layer of zeros passes no gradient, so only the output bias moves
        # (zeros in, mse's gradient 2 (b - y) / (batch 2)); the k-th update's bias correction is Adam's k-th.
        bias = np.zeros(2)
        m = np.zeros(2)
        v = np.zeros(2)
        acc = np.zeros(2)
        y = self.y.astype(np.float64)
        for step in range(1, 2 * 64 // batch + 1):
            rows = y[(step - 1) % 8 * batch:(step - 1) % 8 * batch + batch]
            acc += (2 * (bias - rows)).sum(0) / (batch * 2)
            if step % n:
                continue
            k = step // n
            g, acc = acc / n, np.zeros(2)
            m += (g - m) * (1 - b1)
            v += (g * g - v) * (1 - b2)
            alpha = lr * np.sqrt(1 - b2 ** k) / (1 - b1 ** k)
            bias -= alpha * m / (np.sqrt(v) + eps)
        np.testing.assert_allclose(got["dense_1/bias"], bias, rtol=1e-5, atol=1e-7)
        # So Adam too updates as one step of the whole batch.
        self.assert_same_weights(self.fit("adam_acc", 8, adam, steps=4), self.fit("adam_whole", 32, adam))

    def test_a_checkpoint_between_updates_resumes_with_its_gathered_gradients(self):
        ckpt = '\n[train.checkpoint]\nevery_steps = 3\nkeep_last = 0\n'
        straight = self.fit("straight", 8, SGD, steps=4)
        self.fit("stopped", 8, SGD, steps=4, tail=ckpt)
        mid = self.path("stopped/step-3.ckpt")
        self.assertTrue(np.any(cli_util.read_checkpoint(mid)["dense/kernel/accumulated_gradient"]))
        r = run(["fit", "--resume", mid, "--device", "cpu", "-q", "--output-dir", self.path("resumed")],
                timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_same_weights(cli_util.read_checkpoint(self.path("resumed/last.ckpt")), straight, rtol=1e-6)
        two = self.fit("two", 8, SGD, steps=4, args=("--devices", "2"))
        self.assert_same_weights(two, straight)
        sharded = self.fit("sharded", 8, SGD, steps=4, args=("--devices", "2", "--set", "parallel.shard_optimizer=true"))
        self.assert_same_weights(sharded, straight)

    def test_replicas_reduce_once_per_update(self):
        # Each replica gathers its own share between updates: one reduction of the sums per update (steps 3 and
        # 7 of 8), not one per step, as the trace shows; ZeRO-1 gathers the parameters only after an update.
        for sharded in (False, True):
            with self.subTest(sharded=sharded):
                trace = self.path(f"trace{int(sharded)}.json")
                shard = ("--set", "parallel.shard_optimizer=true") if sharded else ()
                self.fit(f"traced{int(sharded)}", 8, SGD, steps=4, epochs=1,
                         args=("--devices", "2", "--trace", trace, *shard))
                with open(trace) as f:
                    events = json.load(f)["traceEvents"]
                reduced = {e["args"]["step"] for e in events if e["name"] == "reduce bucket"}
                self.assertEqual(reduced, {3, 7})
                steps = {e["args"]["step"] for e in events if e["name"] == "step"}
                self.assertEqual(steps, set(range(8)))
                gathered = [e["args"]["step"] for e in events if e["name"] == "gather shards"]
                self.assertEqual(sorted(gathered), [3, 3, 7, 7] if sharded else [])

    def test_uneven_shares_weigh_each_step(self):
        # Batch 10 on 3 replicas: rows 4, 3, 3 of a full batch, 2, 1, 1 of the last (4 rows): each replica's
        # gathered gradient weighs every step by that step's share, and an update's cycle spans the epochs.
        one = self.fit("uneven1", 10, SGD, steps=4)
        three = self.fit("uneven3", 10, SGD, steps=4, args=("--devices", "3", "--allow-uneven"))
        self.assert_same_weights(three, one)
        np.testing.assert_allclose(three["dense/kernel/accumulated_gradient"],
                                   one["dense/kernel/accumulated_gradient"], rtol=1e-5, atol=1e-6)
        self.assertTrue(np.any(one["dense/kernel/accumulated_gradient"]))  # 21 steps: one gathered since

    def test_a_checkpoint_between_updates_moves_to_other_replica_counts(self):
        # Written by 2 replicas three steps into a cycle, the checkpoint holds the replicas' sum of the gathered
        # gradients, as one replica's would; it resumes on 1 and on 4 replicas, and under mpirun.
        ckpt = '\n[train.checkpoint]\nevery_steps = 3\nkeep_last = 0\n'
        straight = self.fit("moved_straight", 8, SGD, steps=4)
        self.fit("moved_one", 8, SGD, steps=4, tail=ckpt)
        self.fit("moved_two", 8, SGD, steps=4, tail=ckpt, args=("--devices", "2"))
        name = "dense/kernel/accumulated_gradient"
        one_mid = cli_util.read_checkpoint(self.path("moved_one/step-3.ckpt"))
        mid = self.path("moved_two/step-3.ckpt")
        np.testing.assert_allclose(cli_util.read_checkpoint(mid)[name], one_mid[name], rtol=1e-5, atol=1e-7)
        for devices in ("1", "4"):
            out = self.path("moved_resumed" + devices)
            r = run(["fit", "--resume", mid, "--device", "cpu", "--devices", devices, "-q", "--output-dir", out],
                    timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assert_same_weights(cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), straight)
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        out = self.path("moved_mpi")
        r = subprocess.run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit",
                            self.path("moved_two.toml"), "--device", "cpu", "-q", "--output-dir", out],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        np.testing.assert_allclose(cli_util.read_checkpoint(os.path.join(out, "step-3.ckpt"))[name], one_mid[name],
                                   rtol=1e-5, atol=1e-7)
        r = subprocess.run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit",
                            "--resume", mid, "--device", "cpu", "-q", "--output-dir", out + "_resumed"],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_same_weights(cli_util.read_checkpoint(os.path.join(out + "_resumed", "last.ckpt")), straight)

    def test_a_checkpoint_between_updates_resumes_bit_for_bit_on_as_many_replicas(self):
        # Each replica's share is in the checkpoint beside their sum: resumed on as many replicas, each takes
        # its own back, and the next update adds the same numbers in the same order as the uninterrupted run.
        # Uneven shares (batch 10 on 3 replicas) and a cycle that spans the epochs.
        ckpt = '\n[train.checkpoint]\nevery_steps = 3\nkeep_last = 0\n'
        three = ("--devices", "3", "--allow-uneven")
        straight = self.fit("shares_straight", 10, SGD, steps=4, args=three)
        self.fit("shares_saved", 10, SGD, steps=4, tail=ckpt, args=three)
        name = "dense/kernel/accumulated_gradient"
        for step in (3, 9):  # 3 and 1 steps gathered since an update
            mid = self.path(f"shares_saved/step-{step}.ckpt")
            saved = cli_util.read_checkpoint(mid)
            shares = [saved[f"{name}@replica{q}"] for q in range(3)]
            self.assertNotIn(f"{name}@replica3", saved)
            self.assertTrue(all(np.any(s) for s in shares))
            np.testing.assert_allclose(shares[0] + shares[1] + shares[2], saved[name], rtol=1e-6, atol=1e-7)
            out = self.path(f"shares_resumed{step}")
            r = run(["fit", "--resume", mid, "--device", "cpu", "-q", "--output-dir", out, *three], timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
            resumed = cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
            self.assertEqual(sorted(resumed), sorted(straight))
            for n in straight:
                np.testing.assert_array_equal(resumed[n], straight[n], err_msg=f"step {step}: {n}")
        # After an update every share is 0, and the checkpoint holds none (step 12: three updates).
        self.assertFalse(any("@replica" in n for n in cli_util.read_checkpoint(self.path("shares_saved/step-12.ckpt"))))
        # Predict and export read a checkpoint with shares.
        r = run(["export", self.path("shares_saved/step-9.ckpt"), "-o", self.path("shares.onnx")], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        # Ranks in two processes: each share comes from its own rank, and goes back to it.
        mpi = [mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit"]
        self.fit("shares_mpi", 8, SGD, steps=4, tail=ckpt, args=("--devices", "2"))  # writes the spec
        straight_out, saved_out = self.path("shares_mpi_straight"), self.path("shares_mpi_saved")
        for out in (straight_out, saved_out):
            r = subprocess.run(mpi + [self.path("shares_mpi.toml"), "--device", "cpu", "-q", "--output-dir", out],
                               capture_output=True, text=True, timeout=300)
            self.assertEqual(r.returncode, 0, r.stderr)
        straight = cli_util.read_checkpoint(os.path.join(straight_out, "last.ckpt"))
        self.assertIn(f"{name}@replica1", cli_util.read_checkpoint(os.path.join(saved_out, "step-3.ckpt")))
        r = subprocess.run(mpi + ["--resume", os.path.join(saved_out, "step-3.ckpt"), "--device", "cpu", "-q",
                                  "--output-dir", saved_out + "_resumed"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        resumed = cli_util.read_checkpoint(os.path.join(saved_out + "_resumed", "last.ckpt"))
        for n in straight:
            np.testing.assert_array_equal(resumed[n], straight[n], err_msg=n)

    def test_constraints_project_the_weights_on_every_step(self):
        # Keras applies constraints after every apply(), one that only accumulates too: one step of two leaves
        # the weights as they were initialized, projected.
        one_step = dict(batch=64, optimizer=SGD, steps=2, epochs=1)
        initial = self.fit("unconstrained", **one_step)
        projected = self.fit("non_neg", init='glorot_uniform"\nkernel_constraint = "non_neg', **one_step)
        for n in ("dense/kernel", "dense_1/kernel"):
            self.assertTrue(np.any(initial[n] < 0), n)
            np.testing.assert_array_equal(projected[n], np.maximum(initial[n], 0), err_msg=n)
        # So do the replicas' shards (ZeRO-1), gathered after every step the weights change.
        sharded = self.fit("non_neg_sharded", init='glorot_uniform"\nkernel_constraint = "non_neg',
                           args=("--devices", "2", "--set", "parallel.shard_optimizer=true"), batch=8, optimizer=SGD,
                           steps=4)
        whole = self.fit("non_neg_whole", init='glorot_uniform"\nkernel_constraint = "non_neg', batch=8,
                         optimizer=SGD, steps=4)
        self.assert_same_weights(sharded, whole)

    def test_bad_values_are_input_errors(self):
        for value, needle in (("0", "must be from 1 (an update every step) to 1000000, not 0"),
                              ("2.5", "must be an integer")):
            spec = self.path("bad.toml")
            with open(spec, "w") as f:
                f.write(SPEC.format(hidden=2, init="zeros", epochs=1, batch=8, optimizer=SGD) +
                        f"gradient_accumulation_steps = {value}\n")
            cli_util.assert_input_error(self, run(["check", spec]), "gradient_accumulation_steps", needle)


if __name__ == "__main__":
    cli_util.main()
