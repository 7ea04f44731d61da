"""Short fits of every sample through `trainer fit`: exit code 0, every stdout line a JSON object with the expected
keys and sane values, and the Keras-like epoch line on stderr agreeing with it."""

import re
import unittest

import cli_util
from cli_util import assert_finite_number, data_sets, json_lines, run, sample, skip_without_fashion

METRICS = ["loss", "accuracy", "val_loss", "val_accuracy"]
# Epoch 1/2 · 16/16 · 0.4s · loss 2.0310 · accuracy 0.3130 · val_loss 1.1424 · val_accuracy 0.6160
# (Values at 0.001 and below in scientific notation, as Keras prints them: 1.2346e-04.)
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+) · (\d+)/(\d+) · [0-9.]+s((?: · \w+ -?[0-9.]+(?:e[-+]\d+)?)+)$", re.M)


class Fit(unittest.TestCase):
    def fit(self, spec, epochs, train, val, extra=(), timeout=120, batch=64, metrics=METRICS):
        """Runs a short fit and checks everything that does not depend on the model; returns the events.
        `metrics`: the reported values in order, the training ones then the validation ones."""
        args = ["fit", sample(spec), "--set", f"train.epochs={epochs}", *extra]
        r = run(args, timeout=timeout)
        self.assertEqual(r.returncode, 0, f"trainer {' '.join(args)}\nstderr:\n{r.stderr}")
        self.assertIn(f"Training on {train} samples, validating on {val}", r.stderr)
        events = json_lines(self, r.stdout)
        self.assertEqual([e.get("event") for e in events], ["epoch"] * epochs + ["fit_end"], r.stdout)
        steps = -(-train // batch)
        for i, e in enumerate(events[:-1]):
            self.assertEqual(list(e.keys()), ["event", "epoch", "epochs"] + metrics + ["samples_per_s", "seconds"], e)
            self.assertEqual((e["epoch"], e["epochs"]), (i + 1, epochs))
            for k in metrics + ["samples_per_s", "seconds"]:
                assert_finite_number(self, e, k)
            for k in metrics:
                if k != "loss" and k != "val_loss":
                    self.assertTrue(0 <= e[k] <= 1, e)
            self.assertGreaterEqual(e["loss"], 0)
            self.assertGreater(e["samples_per_s"], 0)
            self.assertGreater(e["seconds"], 0)
        end = events[-1]
        for k in ("epochs_run", "seconds", "stopped_early"):
            self.assertIn(k, end)
        self.assertEqual(end["epochs_run"], epochs)
        self.assertIs(end["stopped_early"], False)
        self.assertNotIn("interrupted_by", end)
        assert_finite_number(self, end, "seconds")
        for k in metrics:
            self.assertEqual(end[k], events[-2][k], f"fit_end repeats the last epoch's {k}")
        # stderr: one Keras-like line per epoch, with the same numbers to 4 decimals.
        lines = EPOCH_LINE.findall(r.stderr)
        self.assertEqual(len(lines), epochs, f"epoch lines on stderr:\n{r.stderr}")
        for (ep, eps, step, steps_seen, logs), e in zip(lines, events):
            self.assertEqual((int(ep), int(eps)), (e["epoch"], epochs))
            self.assertEqual((int(step), int(steps_seen)), (steps, steps))
            shown = dict(item.split(" ") for item in logs.split(" · ")[1:])
            self.assertEqual(sorted(shown), sorted(metrics))
            for k in metrics:
                self.assertAlmostEqual(float(shown[k]), e[k], delta=max(0.00005, abs(e[k]) * 5e-5) + 1e-9, msg=k)
        return events

    @skip_without_fashion
    def test_fashion_mlp(self):
        events = self.fit("fashion_mnist/mlp.toml", 2, 1000, 500,
                          ["--set", "data.train.limit=1000", "--set", "data.validation.limit=500"])
        self.assertLess(events[1]["loss"], events[0]["loss"], "the second epoch learns")

    @skip_without_fashion
    def test_fashion_cnn(self):
        self.fit("fashion_mnist/cnn.toml", 1, 512, 256,
                 ["--set", "data.train.limit=512", "--set", "data.validation.limit=256"])

    @skip_without_fashion
    def test_fashion_lstm(self):
        self.fit("fashion_mnist/lstm.toml", 1, 512, 256,
                 ["--set", "data.train.limit=512", "--set", "data.validation.limit=256"])

    def test_cifar10_cnn(self):
        # Five generated data_batch_*.bin files of 100 records each (the cli.data fixture), found by the glob.
        # The generated classes are easy to tell apart: one epoch is far above chance (0.1).
        events = self.fit("cifar10/cnn.toml", 1, 500, 100, data_sets("cifar10"))
        self.assertGreater(events[0]["val_accuracy"], 0.5)

    def test_imdb_lstm(self):
        # 200 time steps per review make this the slowest sample: a few batches are enough.
        self.fit("imdb/lstm.toml", 1, 128, 64,
                 data_sets("imdb") + ["--set", "data.train.limit=128", "--set", "data.validation.limit=64"])

    def test_imdb_transformer(self):
        self.fit("imdb/transformer.toml", 1, 128, 64, data_sets("imdb") + ["--set", "data.validation.limit=64"],
                 batch=32, metrics=["loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"])

    def test_imdb_cnn(self):
        # The generated IMDB files hold 128 training reviews.
        self.fit("imdb/cnn.toml", 1, 128, 64, data_sets("imdb") + ["--set", "data.validation.limit=64"])

    @skip_without_fashion
    def test_same_seed_same_numbers(self):
        args = ["--set", "data.train.limit=256", "--set", "data.validation.limit=128"]
        a = self.fit("fashion_mnist/mlp.toml", 1, 256, 128, args)
        b = self.fit("fashion_mnist/mlp.toml", 1, 256, 128, args)
        c = self.fit("fashion_mnist/mlp.toml", 1, 256, 128, args + ["--seed", "7"])
        for k in METRICS:
            self.assertEqual(a[0][k], b[0][k], k)
        self.assertNotEqual(a[0]["loss"], c[0]["loss"], "another seed gives other numbers")


if __name__ == "__main__":
    cli_util.main()
