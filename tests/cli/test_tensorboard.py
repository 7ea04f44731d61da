"""trainer fit --tensorboard DIR writes TensorBoard event files as Keras's TensorBoard callback does: each epoch's
training losses, metrics and learning rate in DIR/train, its validation ones in DIR/validation, at step
epoch - 1, and with --tensorboard-histogram-freq the weights' histograms; TensorBoard's own reader reads them,
and a resumed run adds a file that continues the steps."""

import glob
import json
import os
import shutil
import struct
import subprocess
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:  # reported as a skip, never as a pass
    EventAccumulator = None

SPEC = """format_version = 1
[model]
input = [6]
[[model.layers]]
type = "Dense"
units = 8
activation = "relu"
[[model.layers]]
type = "Dense"
units = 3
activation = "softmax"
[data.train]
x = "x.npy"
y = "y.npy"
[data.validation]
x = "vx.npy"
y = "vy.npy"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 4
batch_size = 8
[train.optimizer]
name = "adam"
learning_rate = 0.01
[train.optimizer.schedule]
kind = "exponential"
decay_steps = 5
decay_rate = 0.5
"""


def crc32c(data):
    """CRC-32C (Castagnoli), bit by bit: written independently of the tool's table."""
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def masked(crc):
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    """The TFRecord payloads of a file, each of whose two checksums must hold."""
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at < len(data):
        (n,) = struct.unpack_from("<Q", data, at)
        (len_crc,) = struct.unpack_from("<I", data, at + 8)
        payload = data[at + 12:at + 12 + n]
        (data_crc,) = struct.unpack_from("<I", data, at + 12 + n)
        assert len_crc == masked(crc32c(data[at:at + 8])), f"{path}: bad length checksum at {at}"
        assert data_crc == masked(crc32c(payload)), f"{path}: bad data checksum at {at}"
        out.append(payload)
        at += 16 + n
    return out


@unittest.skipIf(EventAccumulator is None, "needs tensorboard (tools/install-deps.sh installs it)")
class TensorBoard(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        rng = np.random.default_rng(0)
        for name, n in (("", 64), ("v", 24)):
            x = rng.normal(size=(n, 6)).astype(np.float32)
            np.save(self.path(name + "x.npy"), x)
            np.save(self.path(name + "y.npy"), (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1))
        self.spec = self.path("spec.toml")
        with open(self.spec, "w") as f:
            f.write(SPEC)

    def path(self, *names):
        return os.path.join(self.tmp.name, *names)

    def scalars(self, folder):
        """{tag: [(step, value), ...]} of every event file in a run folder, by TensorBoard's reader."""
        acc = EventAccumulator(folder)
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    def test_each_epoch_is_written_as_keras_writes_it_and_tensorboard_reads_it(self):
        tb = self.path("logs")
        r = run(["fit", self.spec, "--output-dir", self.path("run"), "--tensorboard", tb])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"]
        self.assertEqual(len(epochs), 4)
        for run_name in ("train", "validation"):
            files = glob.glob(os.path.join(tb, run_name, "events.out.tfevents.*"))
            self.assertEqual(len(files), 1, files)
            self.assertGreater(len(records(files[0])), 4)  # a version record and one per epoch
        train, val = self.scalars(os.path.join(tb, "train")), self.scalars(os.path.join(tb, "validation"))
        self.assertEqual(sorted(train), ["epoch_accuracy", "epoch_learning_rate", "epoch_loss"])
        self.assertEqual(sorted(val), ["epoch_accuracy", "epoch_loss", "evaluation_accuracy_vs_iterations",
                                       "evaluation_loss_vs_iterations"])
        # Keras's on_test_end: the validation numbers at the optimizer's iterations (8 updates an epoch).
        self.assertEqual([s for s, _ in val["evaluation_loss_vs_iterations"]], [8, 16, 24, 32])
        self.assertEqual([v for _, v in val["evaluation_loss_vs_iterations"]], [v for _, v in val["epoch_loss"]])
        for k, e in enumerate(epochs):
            for got, key in ((train["epoch_loss"], "loss"), (train["epoch_accuracy"], "accuracy"),
                             (val["epoch_loss"], "val_loss"), (val["epoch_accuracy"], "val_accuracy")):
                self.assertEqual(got[k][0], k)
                # A float32 of the value, against JSON's 9 digits of the double.
                self.assertLess(abs(got[k][1] - e[key]), 2e-7 * max(1.0, abs(e[key])), key)
        # The optimizer's rate after each epoch, as Keras reads it: the next step's. 8 steps an epoch, halved
        # every 5 (exponential decay, not staircase).
        for k in range(4):
            self.assertAlmostEqual(train["epoch_learning_rate"][k][1], 0.01 * 0.5 ** (8 * (k + 1) / 5), places=7)

        # A resumed run adds its own files, whose steps continue the run's.
        r2 = run(["fit", "--resume", self.path("run", "epoch-4.ckpt"), "--epochs", "6", "--tensorboard", tb])
        self.assertEqual(r2.returncode, 0, r2.stderr)
        more = [e for e in cli_util.json_lines(self, r2.stdout) if e["event"] == "epoch"]
        self.assertEqual(len(glob.glob(os.path.join(tb, "train", "events.out.tfevents.*"))), 2)
        train = self.scalars(os.path.join(tb, "train"))
        self.assertEqual([s for s, _ in train["epoch_loss"]], list(range(6)))
        self.assertEqual(train["epoch_loss"][5][0], 5)
        self.assertAlmostEqual(train["epoch_loss"][5][1], more[-1]["loss"], places=6)

    def test_weight_histograms_every_n_epochs_as_keras_histogram_freq(self):
        tb = self.path("logs")
        r = run(["fit", self.spec, "--output-dir", self.path("run"), "--tensorboard", tb,
                 "--tensorboard-histogram-freq", "3"])
        self.assertEqual(r.returncode, 0, r.stderr)
        acc = EventAccumulator(os.path.join(tb, "train"), size_guidance={"histograms": 0})
        acc.Reload()
        self.assertEqual(sorted(acc.Tags()["histograms"]),
                         ["dense/bias", "dense/kernel", "dense_1/bias", "dense_1/kernel"])
        # Keras counts the epochs from 0: after the 1st and the 4th (steps 0 and 3).
        weights = cli_util.read_checkpoint(self.path("run", "last.ckpt"))
        for tag in acc.Tags()["histograms"]:
            events = acc.Histograms(tag)
            self.assertEqual([e.step for e in events], [0, 3])
            h = events[-1].histogram_value  # the last epoch's: the weights last.ckpt holds
            w = weights[tag].astype(np.float64).ravel()
            self.assertEqual(h.num, w.size)
            self.assertEqual((h.min, h.max), (w.min(), w.max()))
            self.assertAlmostEqual(h.sum, w.sum(), places=9)
            self.assertAlmostEqual(h.sum_squares, (w * w).sum(), places=9)
            # 30 buckets of equal width, each holding the values above the last one's edge and up to its own.
            self.assertEqual(len(h.bucket), 30)
            np.testing.assert_allclose(h.bucket_limit, w.min() + (w.max() - w.min()) * np.arange(1, 31) / 30)
            edges = [-np.inf] + list(h.bucket_limit[:-1]) + [np.inf]
            want = [np.sum((w > lo) & (w <= hi)) for lo, hi in zip(edges[:-1], edges[1:])]
            self.assertEqual(list(h.bucket), want)

        r = run(["fit", self.spec, "--tensorboard-histogram-freq", "1"])
        cli_util.assert_input_error(self, r, "--tensorboard-histogram-freq", "--tensorboard DIR")

    def test_histograms_hold_the_layers_weights_not_the_optimizers_or_shards(self):
        with open(self.spec, "w") as f:
            f.write(SPEC.replace('activation = "relu"\n', 'activation = "relu"\n[[model.layers]]\n'
                                 'type = "BatchNormalization"\n', 1))
        tb = self.path("logs")
        r = run(["fit", self.spec, "--device", "cpu", "--devices", "2", "--set", "parallel.shard_optimizer=true",
                 "--tensorboard", tb, "--tensorboard-histogram-freq", "2"])
        self.assertEqual(r.returncode, 0, r.stderr)
        acc = EventAccumulator(os.path.join(tb, "train"), size_guidance={"histograms": 0})
        acc.Reload()
        self.assertEqual(sorted(acc.Tags()["histograms"]),
                         ["batch_normalization/beta", "batch_normalization/gamma",
                          "batch_normalization/moving_mean", "batch_normalization/moving_variance",
                          "dense/bias", "dense/kernel", "dense_1/bias", "dense_1/kernel"])

    def test_replicas_write_one_set_of_files(self):
        tb = self.path("logs")
        r = run(["fit", self.spec, "--device", "cpu", "--devices", "2", "--tensorboard", tb])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"]
        self.assertEqual(len(glob.glob(os.path.join(tb, "train", "*"))), 1)
        train = self.scalars(os.path.join(tb, "train"))
        self.assertEqual(train["epoch_loss"][-1][0], 3)
        self.assertAlmostEqual(train["epoch_loss"][-1][1], epochs[-1]["loss"], places=6)

    def test_update_freq_adds_running_batch_scalars_as_keras(self):
        tb = self.path("logs")
        r = run(["fit", self.spec, "--tensorboard", tb, "--tensorboard-update-freq", "4"])
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"]
        train = self.scalars(os.path.join(tb, "train"))
        # 8 batches an epoch: every 4th batch of the run (1-based), the epoch's running means so far; at an
        # epoch's last batch they are the epoch's numbers.
        self.assertEqual([s for s, _ in train["batch_loss"]], list(range(4, 33, 4)))
        self.assertEqual([s for s, _ in train["batch_accuracy"]], list(range(4, 33, 4)))
        for k, e in enumerate(epochs):
            step, value = train["batch_loss"][2 * k + 1]
            self.assertEqual(step, 8 * (k + 1))
            self.assertLess(abs(value - e["loss"]), 2e-7 * max(1.0, abs(e["loss"])))
        self.assertEqual([s for s, _ in train["epoch_loss"]], [0, 1, 2, 3])
        r = run(["fit", self.spec, "--tensorboard", tb, "--tensorboard-update-freq", "0"])
        cli_util.assert_input_error(self, r, "--tensorboard-update-freq", "epoch, batch or a number")

        # A run resumed at a larger batch numbers its batches by the steps trained, as its schedule does: the
        # first run's epoch 2 ended at step 16, and 4 batches of 16 make each epoch after it.
        r = run(["fit", self.spec, "--output-dir", self.path("run"), "--epochs", "2"])
        self.assertEqual(r.returncode, 0, r.stderr)
        tb2 = self.path("logs2")
        r = run(["fit", "--resume", self.path("run", "epoch-2.ckpt"), "--batch-size", "16", "--epochs", "4",
                 "--tensorboard", tb2, "--tensorboard-update-freq", "batch"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([s for s, _ in self.scalars(os.path.join(tb2, "train"))["batch_loss"]],
                         list(range(17, 25)))

    def test_mpirun_rank_0_alone_writes(self):
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        tb = self.path("logs")
        r = subprocess.run([mpirun, "-np", "2", "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER, "fit",
                            self.spec, "--device", "cpu", "--tensorboard", tb],
                           capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        for run_name in ("train", "validation"):
            self.assertEqual(len(glob.glob(os.path.join(tb, run_name, "events.out.tfevents.*"))), 1)
        self.assertEqual([s for s, _ in self.scalars(os.path.join(tb, "train"))["epoch_loss"]], [0, 1, 2, 3])

    def test_a_folder_that_cannot_be_made_is_an_input_error(self):
        with open(self.path("taken"), "w") as f:
            f.write("a file")
        r = run(["fit", self.spec, "--tensorboard", self.path("taken")])
        cli_util.assert_input_error(self, r, "taken", "cannot make the TensorBoard folder")
        r = run(["fit", self.spec, "--tensorboard", ""])
        self.assertEqual(r.returncode, 2, r.stderr)
        # A run that fails before its first epoch leaves no TensorBoard folders it made (8 samples a batch
        # do not split over 3 replicas).
        r = run(["fit", self.spec, "--device", "cpu", "--devices", "3", "--tensorboard", self.path("a", "logs")])
        cli_util.assert_input_error(self, r, "does not divide among 3 replicas")
        self.assertFalse(os.path.exists(self.path("a")))


if __name__ == "__main__":
    cli_util.main()
