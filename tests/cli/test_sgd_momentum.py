"""SGD with momentum keeps Keras's velocity (v = momentum v - rate g; w += v, Nesterov: w += momentum v - rate g),
checked against that rule in numpy under a decaying rate, where PyTorch's velocity of gradients would move the
weights elsewhere (and under a cosine that warms up from the learning rate to its warmup_target); a checkpoint
of an earlier version, whose velocity held gradients, resumes converted."""

import json
import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

N, BATCH, EPOCHS, RATE, MOMENTUM = 32, 16, 3, 0.1, 0.9

SPEC = """format_version = 1
[model]
input = [5]
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
epochs = {epochs}
batch_size = {batch}
[train.optimizer]
name = "sgd"
learning_rate = {rate}
momentum = {momentum}
nesterov = {nesterov}
[train.optimizer.schedule]
kind = "exponential"
decay_steps = 2
decay_rate = 0.5
[train.checkpoint]
every_epochs = 1
keep_last = 0
"""


def rate_at(step):
    return RATE * 0.5 ** (step / 2)


class SgdMomentum(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        rng = np.random.default_rng(5)
        cls.x = rng.normal(size=(N, 5)).astype(np.float32)
        cls.y = rng.normal(size=(N, 2)).astype(np.float32)
        np.save(cls.path("x.npy"), cls.x)
        np.save(cls.path("y.npy"), cls.y)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    @classmethod
    def path(cls, name):
        return os.path.join(cls.tmp.name, name)

    def fit(self, name, nesterov, *args):
        spec = self.path(name + ".toml")
        with open(spec, "w") as f:
            f.write(SPEC.format(epochs=EPOCHS, batch=BATCH, rate=RATE, momentum=MOMENTUM,
                                nesterov="true" if nesterov else "false"))
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", self.path(name), *args], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(self.path(name + "/last.ckpt"))

    def keras(self, nesterov, rate=rate_at):
        """Keras's SGD on the linear model, step by step in float64, at rate(step)."""
        x, y = self.x.astype(np.float64), self.y.astype(np.float64)
        w, b = np.zeros((5, 2)), np.zeros(2)
        vw, vb = np.zeros((5, 2)), np.zeros(2)
        steps = N // BATCH
        for t in range(EPOCHS * steps):
            rows = slice(t % steps * BATCH, t % steps * BATCH + BATCH)
            d = 2 * (x[rows] @ w + b - y[rows]) / (BATCH * 2)
            gw, gb = x[rows].T @ d, d.sum(0)
            lr = rate(t)
            vw, vb = MOMENTUM * vw - lr * gw, MOMENTUM * vb - lr * gb
            if nesterov:
                w, b = w + MOMENTUM * vw - lr * gw, b + MOMENTUM * vb - lr * gb
            else:
                w, b = w + vw, b + vb
        return w, b, vw, vb

    def test_the_velocity_is_kerass_under_a_decaying_rate(self):
        for nesterov in (False, True):
            with self.subTest(nesterov=nesterov):
                got = self.fit(f"keras{int(nesterov)}", nesterov)
                w, b, vw, _ = self.keras(nesterov)
                np.testing.assert_allclose(got["dense/kernel"], w, rtol=1e-5, atol=1e-7)
                np.testing.assert_allclose(got["dense/bias"], b, rtol=1e-5, atol=1e-7)
                # The state is Keras's velocity, negated: the steps already scaled by their rates.
                np.testing.assert_allclose(got["dense/kernel/momentum"], -vw, rtol=1e-5, atol=1e-7)

    def test_a_cosine_warms_up_from_the_learning_rate_to_warmup_target(self):
        # Keras's CosineDecay(0.02, decay_steps=4, warmup_target=0.1, warmup_steps=3): 0.02, 0.0467, 0.0733,
        # then the cosine from 0.1.
        def cosine(t):
            if t < 3:
                return 0.02 + (0.1 - 0.02) * t / 3
            return 0.1 * 0.5 * (1 + np.cos(np.pi * min(t - 3, 4) / 4))
        spec = self.path("warmup.toml")
        text = SPEC.format(epochs=EPOCHS, batch=BATCH, rate=0.02, momentum=MOMENTUM, nesterov="false")
        text = text.replace('kind = "exponential"\ndecay_steps = 2\ndecay_rate = 0.5\n',
                            'kind = "cosine"\ndecay_steps = 4\nwarmup_steps = 3\nwarmup_target = 0.1\n')
        with open(spec, "w") as f:
            f.write(text)
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", self.path("warmup")], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = cli_util.read_checkpoint(self.path("warmup/last.ckpt"))
        w, b, vw, _ = self.keras(False, cosine)
        np.testing.assert_allclose(got["dense/kernel"], w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(got["dense/kernel/momentum"], -vw, rtol=1e-5, atol=1e-7)

    def earlier(self, ckpt, out, rate, velocity=None):
        """Writes `ckpt` as an earlier version wrote it: the velocity in gradients (this one's over `rate`, its
        last step's), and no "velocity" in the state (or the given one); the checksums made right again."""
        with open(ckpt, "rb") as f:
            data = f.read()
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        payload = bytearray(data[8 + n:])
        for name, info in header.items():
            if name.endswith("/momentum"):
                begin, end = info["data_offsets"]
                v = np.frombuffer(bytes(payload[begin:end]), dtype=np.float32) / np.float32(rate)
                payload[begin:end] = v.astype(np.float32).tobytes()
        state = json.loads(header["__metadata__"]["state"])
        self.assertEqual(state.pop("velocity"), "rate_scaled")
        if velocity:
            state["velocity"] = velocity
        header["__metadata__"]["state"] = json.dumps(state)
        with open(out, "wb") as f:
            f.write(cli_util.signed_checkpoint(header, payload))

    def resume(self, ckpt, name):
        r = run(["fit", "--resume", ckpt, "--device", "cpu", "-q", "--output-dir", self.path(name)], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(self.path(name + "/last.ckpt"))

    def assert_same(self, got, want):
        for name in ("dense/kernel", "dense/bias", "dense/kernel/momentum"):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)

    def test_an_earlier_checkpoint_of_gradients_resumes_converted(self):
        straight = self.fit("straight", False)
        self.earlier(self.path("straight/epoch-1.ckpt"), self.path("earlier.ckpt"), rate_at(1))
        self.assert_same(self.resume(self.path("earlier.ckpt"), "resumed"), straight)
        # A velocity of a kind this version does not know is refused.
        self.earlier(self.path("straight/epoch-1.ckpt"), self.path("later.ckpt"), 1.0, velocity="per_parameter")
        r = run(["fit", "--resume", self.path("later.ckpt"), "--device", "cpu", "-q", "--output-dir",
                 self.path("later")])
        cli_util.assert_input_error(self, r, "later.ckpt", "the checkpoint's velocity is 'per_parameter'",
                                    "written by a later version")

    def test_an_earlier_checkpoint_converts_at_the_rate_its_last_step_took(self):
        # ReduceLROnPlateau lowers the factor at the end of epoch 2 (no loss improves by 100), before that
        # epoch's checkpoint: the velocity was gathered at 0.1, which the epoch's logged rate says.
        spec = self.path("plateau.toml")
        text = SPEC.format(epochs=4, batch=BATCH, rate=RATE, momentum=MOMENTUM, nesterov="false")
        text = text.replace('[train.optimizer.schedule]\nkind = "exponential"\ndecay_steps = 2\ndecay_rate = 0.5\n',
                            "")
        text += '[train.reduce_lr_on_plateau]\nmonitor = "loss"\npatience = 1\nfactor = 0.1\nmin_delta = 100.0\n'
        with open(spec, "w") as f:
            f.write(text)
        r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", self.path("plateau")], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        straight = cli_util.read_checkpoint(self.path("plateau/last.ckpt"))
        self.earlier(self.path("plateau/epoch-2.ckpt"), self.path("plateau_earlier.ckpt"), RATE)
        self.assert_same(self.resume(self.path("plateau_earlier.ckpt"), "plateau_resumed"), straight)

if __name__ == "__main__":
    cli_util.main()
