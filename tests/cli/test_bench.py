"""trainer bench: one JSON object on stdout with the step's times, per-op times by phase and FLOP counts that
match counts worked out by hand; a table on stderr; bad flags exit 2. Synthetic batches: no data set is read."""

import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import cli_util
from cli_util import assert_finite_number, run, sample

MLP = sample("fashion_mnist/mlp.toml")
CNN = sample("fashion_mnist/cnn.toml")
MATMUL_OPS = {"MatMul", "MatMulTransposed", "Gemm", "FusedGemm", "GemmGradWeightBias"}
# Few, small steps: the tests time nothing, they check what is reported.
FAST = ["--batch-size", "8", "--steps", "3", "--warmup", "1", "--device", "cpu"]


def bench(test, spec, *extra):
    r = run(["bench", spec, *FAST, *extra])
    test.assertEqual(r.returncode, 0, r.stderr)
    lines = r.stdout.splitlines()
    test.assertEqual(len(lines), 1, r.stdout)
    return json.loads(lines[0]), r.stderr


class Bench(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mlp, cls.mlp_err = None, None

    def mlp_result(self):
        if Bench.mlp is None:
            Bench.mlp, Bench.mlp_err = bench(self, MLP)
        return Bench.mlp, Bench.mlp_err

    def test_report(self):
        d, err = self.mlp_result()
        self.assertEqual(d["event"], "bench")
        self.assertEqual(d["batch_size"], 8)
        self.assertEqual(d["steps"], 3)
        self.assertEqual(d["warmup"], 1)
        self.assertIn("CPU", d["device"])
        # No CUDA graph on the CPU.
        self.assertIsNone(d["step_ms_graph"])
        for k in ("median", "mean", "min", "max"):
            assert_finite_number(self, d["step_ms"], k)
        self.assertLessEqual(d["step_ms"]["min"], d["step_ms"]["median"])
        self.assertLessEqual(d["step_ms"]["median"], d["step_ms"]["max"])
        sps = assert_finite_number(self, d, "samples_per_s")
        self.assertAlmostEqual(sps, 8 / (d["step_ms"]["median"] / 1e3), delta=sps * 1e-6)
        gflops = assert_finite_number(self, d, "achieved_gflops")
        self.assertAlmostEqual(gflops, d["flops_per_step"] / (d["step_ms"]["median"] / 1e3) / 1e9,
                               delta=gflops * 1e-6)
        # On the CPU the launch is the whole step: the same steps' median (the profiled, kernel-by-kernel steps
        # were mixed in, which pulled it toward their times).
        host_ms = assert_finite_number(self, d, "host_us_per_step") / 1e3
        self.assertAlmostEqual(host_ms, d["step_ms"]["median"], delta=d["step_ms"]["median"] * 0.05)
        # The table for people.
        for needle in ("samples/s", "forward", "backward", "update", "ms/step"):
            self.assertIn(needle, err)

    def test_phases(self):
        d, _ = self.mlp_result()
        phases = {op["phase"] for op in d["ops"]}
        self.assertEqual(phases, {"forward", "backward", "update"})
        for p in ("forward", "backward", "update"):
            self.assertGreater(d["phases"][p]["ops"], 0, p)
            self.assertEqual(d["phases"][p]["ops"], sum(op["phase"] == p for op in d["ops"]), p)
        by_phase = {p: [op["op"] for op in d["ops"] if op["phase"] == p] for p in phases}
        # Adam updates the three kernels and three biases; the gradients are private-domain ops.
        self.assertEqual(by_phase["update"], ["Adam"] * 6)
        self.assertIn("FusedGemm", by_phase["forward"])
        self.assertIn("MatMulTransposed", by_phase["backward"])
        self.assertNotIn("Adam", by_phase["forward"] + by_phase["backward"])
        # The forward pass (with the loss) comes first, then backward, then the update.
        order = [op["phase"] for op in d["ops"]]
        self.assertEqual(order, sorted(order, key=["forward", "backward", "update"].index))

    def test_op_times_add_up_to_the_step(self):
        d, _ = self.mlp_result()
        for op in d["ops"]:
            self.assertGreaterEqual(assert_finite_number(self, op, "ms_per_step"), 0, op)
        total = sum(op["ms_per_step"] for op in d["ops"])
        self.assertAlmostEqual(total, d["ops_ms_per_step"], delta=1e-3 * total)
        self.assertAlmostEqual(total, sum(d["phases"][p]["ms_per_step"] for p in d["phases"]), delta=1e-3 * total)
        # Medians of a noisy shared machine: per-op medians and the step's median agree only roughly (the bound
        # catches a unit slip, a factor of 1000, not noise).
        step = d["step_ms"]["median"]
        self.assertGreater(total, 0.1 * step, (total, step))
        self.assertLess(total, 10 * step, (total, step))

    def test_mlp_flops_match_the_hand_count(self):
        d, _ = self.mlp_result()
        b = 8
        layers = [(784, 1024), (1024, 512), (512, 10)]
        forward = sum(2 * b * i * o for i, o in layers)
        weights = forward  # dW of each layer: the same products as its forward pass
        biases = sum(b * o for i, o in layers)  # dB: the column sums beside dW (one op: GemmGradWeightBias)
        inputs = sum(2 * b * i * o for i, o in layers[1:])  # dX, except for the model's input
        matmul = {p: sum(op["flops"] for op in d["ops"] if op["op"] in MATMUL_OPS and op["phase"] == p)
                  for p in ("forward", "backward", "update")}
        self.assertEqual(matmul, {"forward": forward, "backward": weights + biases + inputs, "update": 0})
        # What trainer summary counts per sample is the forward products.
        r = run(["summary", MLP, "--json", "--batch-size", str(b)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["flops_per_sample"] * b, forward)
        # Everything else (elementwise, loss, Adam) is one per element: a few percent here.
        self.assertEqual(d["flops_per_step"], sum(op["flops"] for op in d["ops"]))
        total_matmul = forward + weights + biases + inputs
        self.assertGreater(d["flops_per_step"], total_matmul)
        self.assertLess(d["flops_per_step"], 1.1 * total_matmul)
        params = sum(i * o + o for i, o in layers)
        self.assertEqual(d["phases"]["update"]["flops"], params)  # one per parameter element
        for op in d["ops"]:
            if op["op"] == "Flatten":
                self.assertEqual(op["flops"], 0)
            if op["ms_per_step"] > 0:
                self.assertAlmostEqual(op["gflops"], op["flops"] / op["ms_per_step"] / 1e6,
                                       delta=1e-6 * max(op["gflops"], 1))

    def test_cnn_convolution_flops(self):
        d, _ = bench(self, CNN)
        b = 8
        conv = 2 * b * 32 * 26 * 26 * 1 * 3 * 3  # 28x28x1 input, 32 3x3 filters, valid padding
        ops = {op["op"]: op for op in d["ops"]}
        self.assertEqual(ops["Conv"]["phase"], "forward")
        self.assertEqual(ops["Conv"]["flops"], conv)
        self.assertEqual(ops["Conv"]["shapes"], "[8, 1, 28, 28] [32, 1, 3, 3] [32]")
        grad_w = ops["ConvGradWeight"]
        self.assertEqual(grad_w["phase"], "backward")
        # dW's products, plus one per element of dy when it also gives the bias gradient.
        self.assertIn(grad_w["flops"], (conv, conv + b * 32 * 26 * 26))
        # The model's input needs no gradient.
        self.assertNotIn("ConvGradInput", ops)
        self.assertEqual(ops["MaxPool"]["flops"], b * 32 * 13 * 13 * 4)

    def test_losses_and_optimizers(self):
        # Labels suit the loss (one-hot rows for categorical cross-entropy): the loss stays finite, so no
        # warning. SGD with momentum and clipnorm: both are update ops, with the gradients times the step's rate
        # (Keras's velocity) that Momentum takes.
        d, err = bench(self, MLP, "--set", "train.loss=categorical_crossentropy", "--set",
                       "train.optimizer.name=sgd", "--set", "train.optimizer.momentum=0.9", "--set",
                       "train.optimizer.clipnorm=1.0", "--top", "3")
        self.assertNotIn("warning", err)
        update = [op["op"] for op in d["ops"] if op["phase"] == "update"]
        self.assertEqual(sorted(set(update)), ["ClipByGlobalNorm", "Momentum", "Mul"])
        self.assertEqual(update.count("Momentum"), 6)
        self.assertEqual(update.count("Mul"), 6)
        d, err = bench(self, MLP, "--set", "train.loss=mse", "-q")
        self.assertEqual(err, "")
        self.assertTrue(math.isfinite(d["step_ms"]["median"]))

    def test_per_step_classifier_labels(self):
        # A [batch, steps, classes] output takes a class id (or a one-hot row) per step: the synthetic labels
        # lie in the classes, so the step runs and its loss stays finite (no warning).
        with tempfile.TemporaryDirectory() as d:
            spec = os.path.join(d, "tagger.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = { shape = [12], dtype = "int32" }\n'
                        '[[model.layers]]\ntype = "Embedding"\ninput_dim = 40\noutput_dim = 8\n'
                        '[[model.layers]]\ntype = "LSTM"\nunits = 6\nreturn_sequences = true\n'
                        '[[model.layers]]\ntype = "TimeDistributed"\nlayer = "Dense"\nunits = 3\n'
                        'activation = "softmax"\n[train]\nloss = "sparse_categorical_crossentropy"\n')
            for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
                with self.subTest(loss=loss):
                    d_, err = bench(self, spec, "--set", f"train.loss={loss}")
                    self.assertNotIn("warning", err)
                    self.assertTrue(math.isfinite(d_["loss"]), d_)
                    # Random labels over 3 classes, one per step: about log(3) = 1.1 (labels drawn over 36
                    # classes would fail; one-hot rows left empty at most steps would give far less).
                    self.assertGreater(d_["loss"], 0.5)
                    self.assertLess(d_["loss"], 3.0)

    def test_every_output_gets_labels_that_suit_its_loss(self):
        # Two outputs, in either order: a 5-class softmax with one-hot labels and a sigmoid with 0/1 labels.
        # Their summed loss is about log(5) + log(2) = 2.3 whichever comes first (the second's labels were
        # plain features: a constant class or fractions).
        losses = []
        with tempfile.TemporaryDirectory() as d:
            for order in ('["seq", "parity"]', '["parity", "seq"]'):
                spec = os.path.join(d, "two.toml")
                with open(spec, "w") as f:
                    f.write(f'format_version = 1\n[model]\ninput = [8]\noutputs = {order}\n'
                            '[[model.layers]]\ntype = "Dense"\nname = "shared"\nunits = 32\nactivation = "relu"\n'
                            '[[model.layers]]\ntype = "Dense"\nname = "parity"\ninputs = ["shared"]\nunits = 1\n'
                            'activation = "sigmoid"\n[[model.layers]]\ntype = "Dense"\nname = "seq"\n'
                            'inputs = ["shared"]\nunits = 5\nactivation = "softmax"\n[train]\n'
                            'loss = { parity = "binary_crossentropy", seq = "categorical_crossentropy" }\n')
                result, _ = bench(self, spec, "--set", "train.optimizer.learning_rate=1e-9")
                losses.append(result["loss"])
        for loss in losses:
            self.assertAlmostEqual(loss, math.log(5) + math.log(2), delta=0.3, msg=losses)

    def test_cpu_replicas(self):
        # --devices 2: the step on two CPU replicas sharing the batch, with the communication backward did not
        # hide; a batch they do not share evenly is refused.
        report, err = bench(self, MLP, "--devices", "2")
        rep = report["replicas"]
        self.assertEqual(rep["replicas"], 2)
        for k in ("exposed_comm_ms", "compute_ms", "samples_per_s", "scaling_efficiency"):
            self.assertGreaterEqual(rep[k], 0, k)
        self.assertGreater(rep["step_ms"]["median"], 0)
        self.assertEqual(rep["batch_per_replica"], 4)
        self.assertGreater(rep["scaling_efficiency"], 0)
        # Fastest step against fastest step: medians on a machine busy with other work gave 378%.
        self.assertAlmostEqual(rep["scaling_efficiency"], report["step_ms"]["min"] / rep["step_ms"]["min"], delta=1e-4)
        self.assertIn("2 CPU replicas of batch 4", err)
        self.assertFalse(rep["shard_optimizer"])
        # ZeRO-1 as fit runs it: each replica's own update, gradient ranges to their owners, shards gathered.
        sharded, err = bench(self, MLP, "--devices", "2", "--set", "parallel.shard_optimizer=true")
        self.assertTrue(sharded["replicas"]["shard_optimizer"])
        self.assertIn("2 CPU replicas of batch 4, optimizer state sharded", err)
        self.assertNotIn("note:", err)
        # The sharded step makes one collective more (the gather of the updated ranges): stalling replica 1
        # before its collective number k stalls the one timed step for one k more than without sharding.
        def collectives(shard):
            stalled = 0
            for k in range(8):
                r = subprocess.run([cli_util.TRAINER, "bench", MLP, "--batch-size", "8", "--steps", "1", "--warmup",
                                    "0", "--device", "cpu", "--devices", "2", "-q", "--set",
                                    f"parallel.shard_optimizer={shard}"], capture_output=True, text=True,
                                   timeout=120, env=dict(os.environ, TRAINER_FAULT_STALL=f"1:{k}:0.3"))
                self.assertEqual(r.returncode, 0, r.stderr)
                stalled += json.loads(r.stdout)["replicas"]["step_ms"]["median"] > 250
            return stalled
        plain = collectives("false")
        self.assertGreater(plain, 0)
        self.assertEqual(collectives("true"), plain + 1)
        # Exposed communication is time a replica waited for a reduction: with replica 1 held back 0.4 s before
        # its first collective (one timed step, no warm-up), replica 0 waits for it about that long.
        r = subprocess.run([cli_util.TRAINER, "bench", MLP, "--batch-size", "8", "--steps", "1", "--warmup", "0",
                            "--device", "cpu", "--devices", "2", "-q"], capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, TRAINER_FAULT_STALL="1:0:0.4"))
        self.assertEqual(r.returncode, 0, r.stderr)
        stalled = json.loads(r.stdout)["replicas"]
        self.assertGreater(stalled["exposed_comm_ms"], 300)
        self.assertLess(stalled["compute_ms"], stalled["step_ms"]["median"] - 300)
        self.assertIsNone(bench(self, MLP)[0]["replicas"])
        r = run(["bench", MLP, *FAST, "--devices", "3"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("does not divide among 3 replicas", r.stderr)

    @unittest.skipUnless(cli_util.CPU_BF16, "the scaling model reads bf16 benches, which need a CPU with AVX-512")
    def test_the_scaling_model_takes_measured_phases(self):
        # tools/bench/scaling_model.py --measured: the MLP's forward, backward and update times become the
        # bench's (the phases of the per-op times, scaled to the step), and nothing else changes.
        r = run(["bench", MLP, "--batch-size", "64", "--steps", "2", "--warmup", "1", "--device", "cpu", "--set",
                 "train.precision=bf16", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        b = json.loads(r.stdout)
        ops = sum(p["ms_per_step"] for p in b["phases"].values())
        want = [b["step_ms"]["median"] * b["phases"][k]["ms_per_step"] / ops for k in ("forward", "backward", "update")]
        script = os.path.join(cli_util.ROOT, "tools", "bench", "scaling_model.py")
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            f.write(r.stdout)
            f.flush()
            measured = subprocess.run([sys.executable, script, "--measured", f.name], capture_output=True, text=True,
                                      timeout=120)
        modelled = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120)
        self.assertEqual(measured.returncode, 0, measured.stderr)

        def row(text, name):
            line = next(l for l in text.splitlines() if l.startswith(f"| {name} | "))
            return [c.strip() for c in line.strip("|").split("|")]
        got = row(measured.stdout, "Fashion-MNIST MLP")
        for k, w in zip((5, 6, 7), want):
            self.assertAlmostEqual(float(got[k]), w, delta=0.002, msg=got)
        self.assertNotEqual(got, row(modelled.stdout, "Fashion-MNIST MLP"))
        self.assertEqual(row(measured.stdout, "CIFAR-10 CNN"), row(modelled.stdout, "CIFAR-10 CNN"))

    def test_the_device_table_reads_the_bench_output(self):
        # tools/bench/device_table.py, which ends tools/device-check.sh: the bench's JSON as it is today, beside
        # a PyTorch line, gives the row's numbers and ratio; a cut-off line and missing files give dashes.
        r = run(["bench", MLP, "--batch-size", "64", "--steps", "2", "--warmup", "1", "--device", "cpu", "-q"])
        self.assertEqual(r.returncode, 0, r.stderr)
        b = json.loads(r.stdout)
        r2 = run(["bench", MLP, "--batch-size", "64", "--steps", "2", "--warmup", "1", "--device", "cpu", "--devices",
                  "2", "-q"])
        self.assertEqual(r2.returncode, 0, r2.stderr)
        rep = json.loads(r2.stdout)["replicas"]
        torch = {"event": "torch_bench", "model": "fashion_mlp", "batch_size": 64, "precision": b["precision"],
                 "mode": "eager", "step_ms": 1.0, "samples_per_s": b["samples_per_s"] / 2}
        script = os.path.join(cli_util.ROOT, "tools", "bench", "device_table.py")
        with tempfile.TemporaryDirectory() as d:
            ours, theirs = os.path.join(d, "bench.jsonl"), os.path.join(d, "torch.jsonl")
            with open(ours, "w") as f:
                f.write(r.stdout + r2.stdout + '{"event": "bench", "spec": "samples/cifar10/cnn.t\n')
            with open(theirs, "w") as f:
                f.write(json.dumps(torch) + "\n")
            t = subprocess.run([sys.executable, script, ours, theirs], capture_output=True, text=True, timeout=60)
            empty = subprocess.run([sys.executable, script, os.path.join(d, "none"), os.path.join(d, "none")],
                                   capture_output=True, text=True, timeout=60)
        self.assertEqual(t.returncode, 0, t.stderr)
        cells = next(l for l in t.stdout.splitlines() if l.startswith(f"fashion_mlp  {b['precision']}")).split()
        self.assertEqual(cells[2], f"{b['samples_per_s']:,.0f}")
        self.assertEqual(cells[3], f"{64 / b['step_ms']['median'] * 1e3:,.0f}")
        self.assertEqual(cells[4], f"{b['samples_per_s'] / 2:,.0f}")
        self.assertEqual(cells[6], "2.00x")
        # The run on replicas has a line of its own and leaves the table's row to the single device's run.
        line = next(l for l in t.stdout.splitlines() if " on 2 replicas" in l)
        self.assertTrue(line.startswith(f"fashion_mlp {b['precision']} on 2 replicas, batch 32 each:"), line)
        self.assertIn(f"step {rep['step_ms']['median']:.3f} ms", line)
        self.assertIn(f"scaling efficiency {100 * rep['scaling_efficiency']:.1f}%", line)
        cnn = next(l for l in t.stdout.splitlines() if l.startswith("cifar_cnn"))
        self.assertEqual(set(cnn.split()[2:]), {"-"})
        self.assertEqual(empty.returncode, 0, empty.stderr)
        self.assertEqual(sum(l.count("-") for l in empty.stdout.splitlines()[2:8]), 6 * 6)

    def test_bad_flags_exit_2(self):
        for args in (["--steps", "0"], ["--steps", "many"], ["--warmup", "-1"], ["--top", "-2"],
                     ["--device", "tpu"], ["--no-such-flag"], ["--batch-size", "0"]):
            with self.subTest(args=args):
                r = run(["bench", MLP, *args])
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertEqual(r.stdout, "")
        r = run(["bench"])
        self.assertEqual(r.returncode, 2, r.stderr)
        cli_util.assert_input_error(self, run(["bench", "/no/such/spec.toml"]), "/no/such/spec.toml")
        cli_util.assert_input_error(self, run(["bench", MLP, "--set", "train.loss=focal", *FAST]), "focal")


if __name__ == "__main__":
    cli_util.main()
