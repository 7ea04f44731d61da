"""Data parallelism on CPU replicas (`trainer fit --device cpu --devices N`): N = 1, 2 and 4 train the same
parameters (to float reduction order) for the MLP, CNN and LSTM samples; a checkpoint written by 4 replicas resumes
on 1 and on 2; uneven shares need --allow-uneven; --scale-lr is explicit and logged; a stalled replica makes the
run stop within the collective timeout with a line naming the rank and the collective; ZeRO-1 (a sharded optimizer
state) trains what the unsharded run trains, in one process and under mpirun, and its checkpoints resume on one
replica; a signal to one MPI rank stops them all after the same step."""

import json
import os
import shutil
import subprocess
import tempfile
import time
import unittest

import numpy as np

import cli_util
from cli_util import assert_input_error, run, sample, skip_without_fashion

STEPS, BATCH = 50, 64
SUBSET = ["--set", f"data.train.limit={STEPS * BATCH}", "--set", "data.validation.limit=256",
          "--set", f"train.batch_size={BATCH}", "--log-format", "jsonl", "--quiet"]


@skip_without_fashion
class Parallel(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def fit(self, spec, devices, out, *extra, epochs=1):
        r = run(["fit", sample(spec), "--device", "cpu", "--devices", str(devices), "--epochs", str(epochs),
                 "--output-dir", out, *SUBSET, *extra], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.events = cli_util.json_lines(self, r.stdout)
        return cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))

    def assert_same_metrics(self, want, got, what):
        """The epochs' training and validation metrics: summed over the replicas, weighted by sample count."""
        self.assertEqual([e["event"] for e in want], [e["event"] for e in got], what)
        for a, b in zip(want, got):
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in a:
                    self.assertAlmostEqual(a[key], b[key], delta=1e-5 * max(1.0, abs(a[key])), msg=f"{what}: {key}")

    def resume(self, checkpoint, devices, name):
        """Resumes a checkpoint on `devices` CPU replicas; returns the parameters it ends with."""
        out = os.path.join(self.tmp.name, name)
        r = run(["fit", "--resume", checkpoint, "--device", "cpu", "--devices", str(devices), "--output-dir", out,
                 "--quiet"], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        return cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))

    def assert_close(self, want, got, what, tolerance=1e-5):
        self.assertEqual(sorted(want), sorted(got), what)
        for name in want:
            a, b = want[name].astype(np.float64), got[name].astype(np.float64)
            scale = max(np.abs(a).max(), 1e-30)
            self.assertLessEqual(np.abs(a - b).max() / scale, tolerance, f"{what}: {name}")

    def test_one_two_and_four_replicas_train_the_same_parameters(self):
        for spec in ("fashion_mnist/mlp.toml", "fashion_mnist/cnn.toml", "fashion_mnist/lstm.toml"):
            with self.subTest(spec=spec):
                base = os.path.join(self.tmp.name, spec.replace("/", "_"))
                one = self.fit(spec, 1, base + "_1")
                one_events = self.events
                for n in (2, 4):
                    self.assert_close(one, self.fit(spec, n, f"{base}_{n}"), f"{spec} with {n} replicas")
                    self.assert_same_metrics(one_events, self.events, f"{spec} with {n} replicas")

    def test_the_cifar10_cnn_and_imdb_lstm_samples_on_one_and_two_replicas(self):
        # The product's two cases as a user writes them (the sample specs, on the generated CIFAR-10 and IMDB
        # files): 2 replicas, and 2 with the optimizer state sharded, train what 1 trains, validation included.
        for spec, kind in (("cifar10/cnn.toml", "cifar10"), ("imdb/lstm.toml", "imdb")):
            with self.subTest(spec=spec):
                base = os.path.join(self.tmp.name, kind)
                def fit(devices, out, *extra):
                    r = run(["fit", sample(spec), "--device", "cpu", "--devices", str(devices), "--epochs", "2",
                             "--output-dir", out, "--log-format", "jsonl", *cli_util.data_sets(kind), *extra],
                            timeout=600)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    return cli_util.json_lines(self, r.stdout)[-1], cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
                end1, one = fit(1, base + "_1")
                end2, two = fit(2, base + "_2")
                end2s, two_sharded = fit(2, base + "_2s", "--set", "parallel.shard_optimizer=true")
                self.assert_close(one, two, f"{spec} on 2 replicas")
                self.assert_close(one, two_sharded, f"{spec} on 2 sharded replicas")
                for end in (end2, end2s):
                    self.assertAlmostEqual(end["val_loss"], end1["val_loss"], places=5)
                    self.assertEqual(end["val_accuracy"], end1["val_accuracy"])

    def test_a_checkpoint_of_four_replicas_resumes_on_one_and_two(self):
        # Two epochs of 25 steps by 4 replicas, with a checkpoint after each; the one after epoch 1 resumes on 1 and
        # on 2 replicas and must end where the 4 did.
        spec = "fashion_mnist/mlp.toml"
        run_dir = os.path.join(self.tmp.name, "four")
        straight = self.fit(spec, 4, run_dir, "--set", f"data.train.limit={STEPS * BATCH // 2}",
                            "--set", "train.checkpoint.every_epochs=1", epochs=2)
        for n in (1, 2):
            with self.subTest(replicas=n):
                self.assert_close(straight, self.resume(os.path.join(run_dir, "epoch-1.ckpt"), n, f"resumed_{n}"),
                                  f"4 replicas, resumed on {n}")

    def test_replicas_evaluate_the_model_the_checkpoint_holds(self):
        # BatchNormalization's moving statistics come from each replica's own rows; before evaluating, every
        # replica takes replica 0's, so the validation numbers of a run are those of its checkpoint's model.
        d = cli_util.FASHION_DIR
        spec = os.path.join(self.tmp.name, "bn.toml")
        with open(spec, "w") as f:
            f.write(f"""format_version = 1
[model]
input = [28, 28]
[[model.layers]]
type = "Flatten"
[[model.layers]]
type = "Dense"
units = 64
[[model.layers]]
type = "BatchNormalization"
[[model.layers]]
type = "Activation"
activation = "relu"
[[model.layers]]
type = "Dense"
units = 10
activation = "softmax"
[data]
scale = 0.00392156862745098
[data.train]
x = "{d}/train-images-idx3-ubyte.gz"
y = "{d}/train-labels-idx1-ubyte.gz"
limit = 1280
[data.validation]
x = "{d}/t10k-images-idx3-ubyte.gz"
y = "{d}/t10k-labels-idx1-ubyte.gz"
limit = 512
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 2
batch_size = 64
""")
        args = ["fit", spec, "--device", "cpu", "--log-format", "jsonl", "--quiet"]
        runs = [("2 replicas", lambda out: run(args + ["--devices", "2", "--output-dir", out], timeout=300))]
        if shutil.which("mpirun"):
            runs.append(("mpirun -np 2", lambda out: self.mpirun(args + ["--output-dir", out], timeout=300)))
        for what, fit in runs:
            with self.subTest(what):
                out = os.path.join(self.tmp.name, "bn_" + what.replace(" ", "_"))
                r = fit(out)
                self.assertEqual(r.returncode, 0, r.stderr)
                end = cli_util.json_lines(self, r.stdout)[-1]
                r = run(["evaluate", os.path.join(out, "last.ckpt"), "--device", "cpu", "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                evaluated = json.loads(r.stdout)
                self.assertAlmostEqual(end["val_loss"], evaluated["loss"], delta=1e-6)
                self.assertEqual(end["val_accuracy"], evaluated["accuracy"])

    def test_uneven_shares_need_allow_uneven(self):
        spec = "fashion_mnist/mlp.toml"
        r = run(["fit", sample(spec), "--device", "cpu", "--devices", "3", *SUBSET])
        assert_input_error(self, r, "does not divide among 3 replicas", "--allow-uneven")
        one = self.fit(spec, 1, os.path.join(self.tmp.name, "u1"))
        three = self.fit(spec, 3, os.path.join(self.tmp.name, "u3"), "--allow-uneven")
        # Weights of 21/64 and 22/64 round differently from one replica's sums: over 50 Adam steps a ReLU unit
        # whose input sits at zero can switch, which moves its weights (and more so their Adam moments) by far
        # more than the rounding itself. The parameters stay within 1e-3, and all but a handful of units within
        # 1e-5.
        params = {k: v for k, v in one.items() if "/adam" not in k}
        self.assert_close(params, {k: three[k] for k in params}, "3 replicas with uneven shares", tolerance=1e-3)
        for name, a in params.items():
            a, b = a.astype(np.float64), three[name].astype(np.float64)
            off = np.abs(a - b) > 1e-5 * max(np.abs(a).max(), 1e-30)
            self.assertLess(off.mean(), 0.01, f"{name}: {off.sum()} of {off.size} elements differ")

    def test_the_learning_rate_scales_only_when_asked(self):
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--devices", "2", "--epochs", "1",
                 "--set", "data.train.limit=256", "--set", "data.validation.limit=64", "--scale-lr", "linear",
                 "--log-format", "text"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Learning rate 0.001 x 2 replicas = 0.002 (--scale-lr linear).", r.stderr)
        # Scaled is what the doubled rate trains, and not what the spec's rate trains.
        spec, limit = "fashion_mnist/mlp.toml", ["--set", f"data.train.limit={STEPS * BATCH // 2}"]
        scaled_dir = os.path.join(self.tmp.name, "scaled")
        scaled = self.fit(spec, 2, scaled_dir, *limit, "--scale-lr", "linear", "--set",
                          "train.checkpoint.every_epochs=1", epochs=2)
        doubled = self.fit(spec, 2, os.path.join(self.tmp.name, "doubled"), *limit, "--set",
                           "train.optimizer.learning_rate=0.002", epochs=2)
        plain = self.fit(spec, 2, os.path.join(self.tmp.name, "plain"), *limit, epochs=2)
        self.assert_close(doubled, scaled, "--scale-lr linear vs learning_rate=0.002", tolerance=0)
        self.assertGreater(max(np.abs(plain[k] - scaled[k]).max() for k in plain), 1e-4)
        # The checkpoint keeps the factor: resumed on 1 replica, the run goes on at 0.002 and ends where it did.
        out = os.path.join(self.tmp.name, "scaled_resumed")
        r = run(["fit", "--resume", os.path.join(scaled_dir, "epoch-1.ckpt"), "--device", "cpu", "--output-dir", out,
                 "--log-format", "jsonl"], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Learning rate 0.001 x 2 = 0.002, as the checkpoint's run (--scale-lr linear on 2 replicas).",
                      r.stderr)
        self.assert_close(scaled, cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), "scaled, resumed on 1")
        # Asking for another factor is allowed and said.
        r = run(["fit", "--resume", os.path.join(scaled_dir, "epoch-1.ckpt"), "--device", "cpu", "--output-dir",
                 os.path.join(self.tmp.name, "unscaled"), "--scale-lr", "none", "--log-format", "jsonl"], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Learning rate 0.001 (--scale-lr none; the checkpoint's run used 0.001 x 2 = 0.002).", r.stderr)

    def test_scale_lr_multiplies_every_rate_of_a_schedule(self):
        # piecewise_constant's values and polynomial's end_learning_rate are rates too: --scale-lr linear left
        # them as they were (it scaled learning_rate alone, which piecewise_constant does not read).
        # The sample without its rate and schedule (piecewise_constant takes no learning_rate).
        with open(sample("fashion_mnist/mlp.toml")) as f:
            text = f.read()
        text = text.replace("learning_rate = 0.001\n", "").replace('[train.optimizer.schedule]\nkind = "cosine"', "")
        spec = os.path.join(self.tmp.name, "mlp.toml")
        with open(spec, "w") as f:
            f.write(text.replace('name = "adam"', 'name = "adam"\n[train.optimizer.schedule]'))
        limit = ["--set", f"data.train.limit={STEPS * BATCH // 2}"]
        kinds = {
            "piecewise": (["kind=\"piecewise_constant\"", "boundaries=[2]", "values=[0.002, 0.0005]"],
                          ["kind=\"piecewise_constant\"", "boundaries=[2]", "values=[0.004, 0.001]"]),
            "polynomial": (["kind=\"polynomial\"", "decay_steps=3", "end_learning_rate=0.0005"],
                           ["kind=\"polynomial\"", "decay_steps=3", "end_learning_rate=0.001"]),
        }
        for kind, (spec_keys, doubled_keys) in kinds.items():
            with self.subTest(kind=kind):
                def schedule(keys, rate):
                    sets = ["--set", f"train.optimizer.learning_rate={rate}"] if "polynomial" in keys[0] else []
                    for k in keys:
                        sets += ["--set", f"train.optimizer.schedule.{k}"]
                    return sets
                scaled = self.fit(spec, 2, os.path.join(self.tmp.name, kind + "_scaled"), *limit, "--scale-lr",
                                  "linear", *schedule(spec_keys, 0.001), epochs=2)
                doubled = self.fit(spec, 2, os.path.join(self.tmp.name, kind + "_doubled"), *limit,
                                   *schedule(doubled_keys, 0.002), epochs=2)
                self.assert_close(doubled, scaled, f"{kind}: --scale-lr linear vs the rates doubled", tolerance=0)
        # What stderr says is what trains: piecewise_constant's values, not the learning_rate it does not read.
        r = run(["fit", spec, "--device", "cpu", "--devices", "2", "--epochs", "1", *limit, "--output-dir",
                 os.path.join(self.tmp.name, "said"), "--scale-lr", "linear", "--log-format", "text",
                 *schedule(kinds["piecewise"][0], 0.001)], timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Learning rate [0.002, 0.0005] x 2 replicas = [0.004, 0.001] (--scale-lr linear).", r.stderr)

    def mpirun_command(self, args, ranks=2):
        mpirun = shutil.which("mpirun")
        if not mpirun:
            self.skipTest("mpirun (openmpi-bin) is not installed")
        return [mpirun, "-np", str(ranks), "--oversubscribe", "--allow-run-as-root", cli_util.TRAINER] + args

    def mpirun(self, args, env=None, timeout=600, ranks=2):
        return subprocess.run(self.mpirun_command(args, ranks), capture_output=True, text=True, timeout=timeout,
                              env=env)

    def test_mpirun_ranks_train_what_one_replica_trains(self):
        for spec in ("fashion_mnist/mlp.toml", "fashion_mnist/cnn.toml", "fashion_mnist/lstm.toml"):
            with self.subTest(spec=spec):
                base = os.path.join(self.tmp.name, "mpi_" + spec.replace("/", "_"))
                one = self.fit(spec, 1, base + "_1")
                out = base + "_np2"
                r = self.mpirun(["fit", sample(spec), "--device", "cpu", "--epochs", "1", "--output-dir", out,
                                 *SUBSET[:-1]])
                self.assertEqual(r.returncode, 0, r.stderr)
                # Rank 0 alone writes standard output: one epoch line and one fit_end line.
                one_events = self.events
                events = cli_util.json_lines(self, r.stdout)
                self.assertEqual([e["event"] for e in events], ["epoch", "fit_end"], r.stdout)
                self.assert_close(one, cli_util.read_checkpoint(os.path.join(out, "last.ckpt")), f"{spec}, mpirun -np 2")
                self.assert_same_metrics(one_events, events, f"{spec}, mpirun -np 2")
                self.assertEqual(r.stderr.count("Training on"), 1, r.stderr)  # rank 0 alone speaks
        spec = "fashion_mnist/mlp.toml"
        r = self.mpirun(["fit", sample(spec), "--device", "cpu", "--devices", "2", *SUBSET])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("every rank is one replica", r.stderr)
        r = self.mpirun(["fit", sample(spec), "--device", "cuda:1", *SUBSET])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("under mpirun each rank drives the GPU of its local rank, and --device cuda:1 names one",
                      r.stderr)

    def test_tasks_that_mpi_did_not_join_are_refused(self):
        # srun's tasks under an MPI that does not speak Slurm's PMI each start a world of one: left alone, each
        # would train on its share of the rows with nobody to sum with. Slurm's variables without srun act so.
        env = dict(os.environ, SLURM_NTASKS="2", SLURM_STEP_NUM_TASKS="2", SLURM_PROCID="1", SLURM_LOCALID="1")
        out = os.path.join(self.tmp.name, "unjoined")
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1", "--output-dir", out,
                 *SUBSET], env=env)
        assert_input_error(self, r, "srun started this process as rank 1 of 2, but MPI made it rank 0 of 1",
                           "srun --mpi=pmix")
        self.assertFalse(os.path.exists(os.path.join(out, "last.ckpt")))
        # A batch script's own environment (the job's tasks, no srun step): a plain fit there is one process.
        env = dict(os.environ, SLURM_NTASKS="2", SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_TASKS_PER_NODE="2")
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1", "--output-dir", out,
                 *SUBSET], env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(os.path.exists(os.path.join(out, "last.ckpt")))

    def test_mpirun_ranks_shard_the_optimizer_state(self):
        # ZeRO-1 across processes: MPI reduce-scatters the gradients and all-gathers the shards; every rank
        # gathers the checkpoints' optimizer state, rank 0 writes it, and it resumes on one replica.
        spec = "fashion_mnist/mlp.toml"
        two = self.fit(spec, 2, os.path.join(self.tmp.name, "t2"), "--set", f"data.train.limit={STEPS * BATCH // 2}",
                       epochs=2)
        out = os.path.join(self.tmp.name, "mpi_shard")
        r = self.mpirun(["fit", sample(spec), "--device", "cpu", "--epochs", "2", "--output-dir", out, *SUBSET[:-1],
                         "--set", f"data.train.limit={STEPS * BATCH // 2}", "--set", "parallel.shard_optimizer=true",
                         "--set", "train.checkpoint.every_epochs=1"])
        self.assertEqual(r.returncode, 0, r.stderr)
        straight = cli_util.read_checkpoint(os.path.join(out, "last.ckpt"))
        self.assert_close(two, straight, "mpirun -np 2, sharded", tolerance=1e-6)
        self.assert_close(straight, self.resume(os.path.join(out, "epoch-1.ckpt"), 1, "mpi_shard_resumed"),
                          "sharded by MPI, resumed on 1")
        # And resumed by sharded MPI ranks again: each rank takes its shards of the checkpoint's state and leaves
        # the other rank's (every rank refused the optimizer state it does not own).
        again = os.path.join(self.tmp.name, "mpi_shard_again")
        r = self.mpirun(["fit", "--resume", os.path.join(out, "epoch-1.ckpt"), "--device", "cpu", "--output-dir", again,
                         "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_close(straight, cli_util.read_checkpoint(os.path.join(again, "last.ckpt")),
                          "sharded by MPI, resumed by sharded MPI ranks")

    def test_ranks_started_with_other_flags_are_refused(self):
        # mpirun -np 1 trainer fit ... : -np 1 trainer fit ... --seed 9: rank 1 would average another model's
        # gradients into rank 0's and the run would report numbers of neither. Every rank stops, exit 2, nothing
        # written.
        mpirun = self.mpirun_command([])[:-1]  # mpirun and its flags, then the two programs
        out = os.path.join(self.tmp.name, "mismatch")
        base = [cli_util.TRAINER, "fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1",
                *SUBSET[:-1], "--output-dir", out, "-q"]
        for other in (["--seed", "9"], ["--set", "train.optimizer.learning_rate=0.5"]):
            with self.subTest(other=other):
                cmd = [mpirun[0], "-np", "1", *mpirun[3:], *base, ":", "-np", "1", *mpirun[3:], *base, *other]
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
                self.assertNotEqual(r.returncode, 0, r.stderr)
                self.assertIn("trainer: error: mpirun rank 1 of 2 trains another run than rank 0", r.stderr)
                self.assertFalse(os.path.exists(os.path.join(out, "last.ckpt")))

    def test_other_subcommands_refuse_mpirun(self):
        # trainer evaluate (or predict, export, ...) under mpirun would run once per rank, each writing the same
        # output: rank 0 says so once, and nothing is written to stdout.
        r = self.mpirun(["summary", sample("fashion_mnist/mlp.toml")])
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, "")
        self.assertEqual(r.stderr.count("trainer: error: mpirun: trainer summary runs in one process, and mpirun "
                                        "started 2 ranks of it"), 1, r.stderr)

    def test_mpirun_into_a_file_writes_json_lines_without_being_asked(self):
        # OpenMPI gives each rank's stdout a terminal even when the job's is a file: the automatic choice took
        # text, and `mpirun ... > file` got no metrics at all.
        r = self.mpirun(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1",
                         "--output-dir", os.path.join(self.tmp.name, "mpi_auto"), *SUBSET[:-3], "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual([e["event"] for e in cli_util.json_lines(self, r.stdout)], ["epoch", "fit_end"], r.stdout)
        r = self.mpirun(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1",
                         "--output-dir", os.path.join(self.tmp.name, "mpi_text"), *SUBSET[:-3], "--quiet",
                         "--log-format", "text"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "")

    def test_a_mistake_every_rank_meets_is_said_once(self):
        # Each of the 3 ranks read the same missing spec and printed the same error.
        r = self.mpirun(["fit", os.path.join(self.tmp.name, "no-such.toml")], ranks=3, timeout=120)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.count("no-such.toml: cannot read the spec"), 1, r.stderr)
        # A mistyped option (the parser's error), and a mistake met after MPI has started (MPI_Finalize made rank
        # 0 wait for the others, which then said it too).
        r = self.mpirun(["fit", sample("fashion_mnist/mlp.toml"), "--epochz", "2"], ranks=3, timeout=120)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.count("--epochz: trainer fit has no such option"), 1, r.stderr)
        run_dir = os.path.join(self.tmp.name, "said_once")
        self.fit("fashion_mnist/mlp.toml", 1, run_dir)
        r = self.mpirun(["fit", "--resume", os.path.join(run_dir, "last.ckpt"), "--set", "model.layers.1.units=3",
                         "--device", "cpu", "--output-dir", os.path.join(self.tmp.name, "said_once_2")], timeout=120)
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr.count("and this model has it as f32 [784, 3]"), 1, r.stderr)

    def test_an_output_dir_rank_0_refuses_ends_every_rank_at_once(self):
        # Rank 0 alone prepares --output-dir; rank 1 went on into the first collective and waited there for the
        # whole --collective-timeout (300 s by default), then exited 1 blaming a stalled rank.
        in_the_way = os.path.join(self.tmp.name, "a_file")
        with open(in_the_way, "w") as f:
            f.write("not a directory\n")
        r = self.mpirun(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1",
                         "--output-dir", in_the_way, *SUBSET], timeout=120)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(r.stderr.count("cannot be the output directory: "), 1, r.stderr)
        self.assertIn("a_file is not a directory", r.stderr)
        self.assertNotIn("did not complete", r.stderr)
        with open(in_the_way) as f:
            self.assertEqual(f.read(), "not a directory\n")

    def test_ranks_resuming_different_checkpoints_are_refused(self):
        # Two folders with the same spec and data of the same size but other values, trained alike: their
        # epoch-1 checkpoints have the same step. Ranks resuming one each (a stale copy of a checkpoint on one
        # machine) would average two models; they are refused.
        mpirun = self.mpirun_command([])[:-1]
        spec = ('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "Dense"\nunits = 3\n'
                'activation = "softmax"\n[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\n'
                'loss = "sparse_categorical_crossentropy"\nepochs = 2\nbatch_size = 8\nseed = 1\n'
                '[train.checkpoint]\nevery_epochs = 1\n')
        dirs = []
        for seed in (0, 1):
            d = os.path.join(self.tmp.name, f"machine{seed}")
            os.makedirs(d)
            rng = np.random.default_rng(seed)
            np.save(os.path.join(d, "x.npy"), rng.normal(size=(32, 4)).astype(np.float32))
            np.save(os.path.join(d, "y.npy"), rng.integers(0, 3, 32).astype(np.int64))
            with open(os.path.join(d, "m.toml"), "w") as f:
                f.write(spec)
            r = run(["fit", "m.toml", "--output-dir", "run", "-q"], cwd=d)
            self.assertEqual(r.returncode, 0, r.stderr)
            dirs.append(d)
        def resume(second, out):
            args = [cli_util.TRAINER, "fit", "--resume", "run/epoch-1.ckpt", "--output-dir", out, "-q"]
            return subprocess.run([mpirun[0], "-np", "1", *mpirun[3:], "-wdir", dirs[0], *args, ":", "-np", "1",
                                   *mpirun[3:], "-wdir", second, *args], capture_output=True, text=True, timeout=300)
        r = resume(dirs[1], "again")
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("trainer: error: mpirun rank 1 of 2 trains another run than rank 0", r.stderr)
        r = resume(dirs[0], "again2")  # the same checkpoint on both ranks is one run
        self.assertEqual(r.returncode, 0, r.stderr)

    def rank_pid(self, rank, marker):
        """The pid of the MPI rank whose command line holds `marker`."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if f"OMPI_COMM_WORLD_RANK={rank}".encode() in env and marker.encode() in cmd:
                return int(pid)
        self.fail(f"no process for rank {rank}")

    def test_a_dead_rank_ends_the_job_and_keeps_the_last_checkpoint(self):
        out = os.path.join(self.tmp.name, "killed")
        p = subprocess.Popen(self.mpirun_command(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu",
                                                  "--epochs", "1000", "--collective-timeout", "20", "--output-dir",
                                                  out, "--log-format", "jsonl", "--set", "data.train.limit=1280",
                                                  "--set", "data.validation.limit=64", "--set",
                                                  "train.checkpoint.every_epochs=1"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            p.stdout.readline()  # epoch 1 has ended and its checkpoint is written
            t0 = time.monotonic()
            os.kill(self.rank_pid(1, out), 9)
            p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertNotEqual(p.returncode, 0)
        self.assertLess(time.monotonic() - t0, 30, "the other rank waited")
        # The checkpoints written before the death are whole.
        params = cli_util.read_checkpoint(os.path.join(out, "epoch-1.ckpt"))
        self.assertIn("dense/kernel", params)

    def test_a_signal_to_one_rank_stops_every_rank(self):
        # SIGINT to rank 1 alone: the per-step metric sum carries the signal, so rank 0 stops after the same step
        # and writes the interrupted run's checkpoint, instead of waiting out the collective timeout; every rank
        # names that signal and exits as it does (130).
        out = os.path.join(self.tmp.name, "signalled")
        p = subprocess.Popen(self.mpirun_command(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu",
                                                  "--epochs", "1000", "--collective-timeout", "60", "--output-dir",
                                                  out, "--log-format", "jsonl", "--set", "data.train.limit=1280",
                                                  "--set", "data.validation.limit=64"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            p.stdout.readline()  # the first epoch has ended: both ranks are training
            t0 = time.monotonic()
            os.kill(self.rank_pid(1, out), 2)
            stdout, stderr = p.communicate(timeout=50)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        self.assertLess(time.monotonic() - t0, 30, "rank 0 waited for the stopped rank")
        self.assertNotIn("did not complete", stderr)
        self.assertEqual(p.returncode, 130, stderr)
        self.assertEqual(cli_util.json_lines(self, stdout)[-1]["interrupted_by"], "SIGINT", stdout)
        self.assertTrue(os.path.exists(os.path.join(out, "last.ckpt")), "the interrupted run's checkpoint")

    def test_a_stalled_rank_stops_every_rank(self):
        # Rank 1's seventh collective is step 2's gradient bucket (two at the start compare the ranks' runs, then
        # one MPI call per bucket, one for the metrics).
        env = dict(os.environ, TRAINER_FAULT_STALL="1:6:60")
        t0 = time.monotonic()
        r = self.mpirun(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--epochs", "1",
                         "--collective-timeout", "2", "--allow-uneven", *SUBSET], env=env, timeout=120, ranks=3)
        self.assertNotEqual(r.returncode, 0)
        self.assertLess(time.monotonic() - t0, 60, "the ranks waited for the stalled one")
        # Every rank that can still speak says what it waited for, the stalled one aside.
        for rank in (0, 2):
            self.assertRegex(r.stderr, rf"rank {rank} on \S+: all_reduce \(bucket \d+ of step \d+\) did not "
                                       r"complete within 2 s")
        self.assertNotIn("rank 1 on", r.stderr)

    def test_bucket_reductions_overlap_backward(self):
        # With the default sizes the MLP's 5.3 MB of gradients make two buckets: the first closes past 1 MB (the
        # last two layers' gradients, computed first), the second holds the first layer's. The first is summed on
        # the communication thread while backward still computes the second, as the trace shows.
        trace = os.path.join(self.tmp.name, "trace.json")
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--devices", "2", "--epochs", "1",
                 "--set", "data.train.limit=1280", "--set", "data.validation.limit=64", "--trace", trace, "--quiet"])
        self.assertEqual(r.returncode, 0, r.stderr)
        import json
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
        last_ready, first_reduce = {}, {}
        for e in events:
            step = e.get("args", {}).get("step")
            if e["name"] == "bucket ready" and e["tid"] == 0:
                last_ready[step] = max(last_ready.get(step, 0), e["ts"])
            elif e["name"] == "reduce bucket" and e["tid"] == 1:
                first_reduce[step] = min(first_reduce.get(step, float("inf")), e["ts"])
        self.assertEqual(len(last_ready), 20, "20 steps of replica 0 in the trace")
        self.assertEqual(max(len([e for e in events if e["name"] == "bucket ready" and e["tid"] == 0
                                  and e["args"]["step"] == s]) for s in last_ready), 2,
                                "two buckets per step")
        overlapped = [s for s in last_ready if first_reduce.get(s, float("inf")) < last_ready[s]]
        self.assertGreater(len(overlapped), 0, "no reduction started before backward finished its buckets")

    def test_sharded_optimizer_state_trains_what_the_unsharded_run_trains(self):
        # ZeRO-1: each replica updates its range of the parameters' elements and sends it on; the checkpoint
        # gathers every optimizer state whole, and a sharded checkpoint resumes on one replica.
        spec = "fashion_mnist/mlp.toml"
        shard = ["--set", "parallel.shard_optimizer=true"]
        plain = self.fit(spec, 2, os.path.join(self.tmp.name, "plain2"))
        trace = os.path.join(self.tmp.name, "shard_trace.json")
        sharded = self.fit(spec, 2, os.path.join(self.tmp.name, "shard2"), *shard, "--trace", trace)
        self.assertEqual(sorted(plain), sorted(sharded))
        import json
        with open(trace) as f:
            gathers = [e for e in json.load(f)["traceEvents"] if e["name"] == "gather shards"]
        self.assertEqual(len(gathers), 2 * STEPS, "one all-gather per replica and step in the trace")
        for name in plain:
            np.testing.assert_array_equal(plain[name], sharded[name], err_msg=name)
        # The CNN in bf16 (where the CPU runs it) and the LSTM (3-D weights) on 4 replicas: bitwise too.
        bf16 = ["--set", "train.precision=bf16"] if cli_util.CPU_BF16 else []
        for other, n, extra in (("fashion_mnist/cnn.toml", 2, bf16),
                                ("fashion_mnist/lstm.toml", 4, [])):
            with self.subTest(spec=other):
                base = os.path.join(self.tmp.name, other.replace("/", "_"))
                a = self.fit(other, n, base + "_plain", *extra)
                b = self.fit(other, n, base + "_shard", *shard, *extra)
                for name in a:
                    np.testing.assert_array_equal(a[name], b[name], err_msg=f"{other}: {name}")
        # With clipping every replica needs every summed gradient: they are all-reduced, then each replica
        # updates its range.
        clip = ["--set", "train.optimizer.clipnorm=0.5"]
        plain = self.fit(spec, 2, os.path.join(self.tmp.name, "plain2_clip"), *clip)
        sharded = self.fit(spec, 2, os.path.join(self.tmp.name, "shard2_clip"), *shard, *clip)
        for name in plain:
            np.testing.assert_array_equal(plain[name], sharded[name], err_msg=f"{name}, clipped")
        # Clipping each element needs no other: the ranges are reduced to their owners and clipped there.
        clip = ["--set", "train.optimizer.clipvalue=0.002"]
        plain = self.fit(spec, 2, os.path.join(self.tmp.name, "plain2_clipvalue"), *clip)
        sharded = self.fit(spec, 2, os.path.join(self.tmp.name, "shard2_clipvalue"), *shard, *clip)
        unclipped = self.fit(spec, 2, os.path.join(self.tmp.name, "plain2_unclipped"))
        for name in plain:
            np.testing.assert_array_equal(plain[name], sharded[name], err_msg=f"{name}, clipped by value")
        self.assertTrue(any(np.abs(plain[n] - unclipped[n]).max() > 1e-6 for n in plain), "clipvalue clipped")
        one = self.fit(spec, 1, os.path.join(self.tmp.name, "one"))
        self.assert_close(one, self.fit(spec, 4, os.path.join(self.tmp.name, "shard4"), *shard), "sharded on 4")
        run_dir = os.path.join(self.tmp.name, "shard_ckpt")
        straight = self.fit(spec, 4, run_dir, *shard, "--set", f"data.train.limit={STEPS * BATCH // 2}",
                            "--set", "train.checkpoint.every_epochs=1", epochs=2)
        self.assert_close(straight, self.resume(os.path.join(run_dir, "epoch-1.ckpt"), 1, "shard_resumed"),
                          "sharded, resumed on 1")
        # On 2 replicas the checkpoint's whole optimizer state is split differently: each takes its range.
        self.assert_close(straight, self.resume(os.path.join(run_dir, "epoch-1.ckpt"), 2, "shard_resumed_2"),
                          "sharded on 4, resumed sharded on 2")

    def test_summary_reports_the_optimizer_state_per_replica(self):
        import json
        def summary(*extra):
            r = run(["summary", sample("fashion_mnist/cnn.toml"), "--json", *extra])
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)
        whole = summary("--devices", "4")
        self.assertEqual(whole["optimizer_state_bytes_per_replica"], whole["optimizer_state_bytes"])
        shared = summary("--devices", "4", "--set", "parallel.shard_optimizer=true")
        self.assertEqual(shared["optimizer_state_bytes"], whole["optimizer_state_bytes"])
        self.assertLess(shared["optimizer_state_bytes_per_replica"], whole["optimizer_state_bytes"])
        # The elements are split evenly (on multiples of 16): a quarter each, give or take 16 elements' state.
        self.assertGreaterEqual(shared["optimizer_state_bytes_per_replica"], whole["optimizer_state_bytes"] // 4)
        self.assertLessEqual(shared["optimizer_state_bytes_per_replica"], whole["optimizer_state_bytes"] // 4 + 16 * 8)
        # The planned memory is one replica's: its rows of the batch (the sample's 64 over 4: 16), which is what
        # one device plans at batch 16; sharded, less by at least the optimizer state it no longer holds, less
        # the master copy of its range and, at worst (a range off the alignment), a copy of that range's
        # gradient: a quarter of the parameters each.
        self.assertEqual(whole["batch_per_replica"], 16)
        self.assertEqual(whole["planned_bytes"], summary("--set", "train.batch_size=16")["planned_bytes"])
        params = 4 * whole["trainable_params"]
        saved = whole["optimizer_state_bytes"] - shared["optimizer_state_bytes_per_replica"] - 2 * params // 4
        self.assertLessEqual(shared["planned_bytes"], whole["planned_bytes"] - saved + 4096)

    def test_replicas_are_cpu_devices(self):
        # Refused from the flags alone, before any device is looked at: the same on a machine with GPUs.
        assert_input_error(self, run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cuda", "--devices", "2"]),
                           "--devices 2 makes CPU replicas, and --device cuda asks for a GPU", "--device cpu")
        assert_input_error(self, run(["fit", sample("fashion_mnist/mlp.toml"), "--gpus", "2", "--devices", "2"]),
                           "--devices makes CPU replicas, and --gpus chooses GPUs")

    def test_a_stalled_replica_stops_the_run_within_the_timeout(self):
        env = dict(os.environ, TRAINER_FAULT_STALL="1:5:60")
        out = os.path.join(self.tmp.name, "stall")
        t0 = time.monotonic()
        r = run(["fit", sample("fashion_mnist/mlp.toml"), "--device", "cpu", "--devices", "2", "--epochs", "1",
                 "--output-dir", out, "--collective-timeout", "2", "--set", "train.checkpoint.every_steps=1", *SUBSET],
                env=env, timeout=120)
        elapsed = time.monotonic() - t0
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertLess(elapsed, 30, "the run waited for the stalled replica")
        self.assertRegex(r.stderr, r"rank \d on \S+: all_reduce \(bucket \d+ of step \d+\) did not complete "
                                   r"within 2 s")
        # Replica 1's sixth collective is step 3's second bucket: the checkpoints of steps 1 and 2 are whole,
        # and the last of them resumes.
        self.assertEqual(sorted(os.listdir(out)), ["history.jsonl", "last.ckpt", "step-1.ckpt", "step-2.ckpt"])
        with open(os.path.join(out, "history.jsonl")) as f:
            self.assertEqual(f.read(), "")  # no epoch finished
        self.assertEqual(os.path.samefile(os.path.join(out, "last.ckpt"), os.path.join(out, "step-2.ckpt")), True)
        resumed = os.path.join(self.tmp.name, "stall_resumed")
        r = run(["fit", "--resume", os.path.join(out, "last.ckpt"), "--device", "cpu", "--devices", "2",
                 "--output-dir", resumed, "--quiet"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    cli_util.main()
