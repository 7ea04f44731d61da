"""Device choice: --device auto|cpu|cuda|cuda:N, --gpus. On a machine without a GPU (CI), auto runs on the CPU
and a CUDA build says so in one line; asking for a GPU is an exit-2 error that names what was found. On a machine
with a GPU the no-GPU cases are skipped (tools/device-check.sh covers that side)."""

import os
import unittest

import cli_util
from cli_util import assert_input_error, run, sample, skip_without_fashion

HAVE_GPU = os.path.exists("/dev/nvidiactl")
QUICK = ["--epochs", "1", "--set", "data.train.limit=256", "--set", "data.validation.limit=128", "--log-format",
         "text"]
NO_DEVICE_REASONS = ("no CUDA device", "built without CUDA")


@skip_without_fashion
class Devices(unittest.TestCase):
    def fit(self, *args):
        return run(["fit", sample("fashion_mnist/mlp.toml"), *QUICK, *args])

    def assert_names_no_device(self, err):
        self.assertTrue(any(r in err for r in NO_DEVICE_REASONS), f"no reason given for the missing GPU:\n{err}")

    def test_an_unknown_device_is_a_usage_error(self):
        r = self.fit("--device", "tpu")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("tpu", r.stderr)
        r = self.fit("--device", "cuda:x")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_gpus_with_the_cpu_device(self):
        assert_input_error(self, self.fit("--device", "cpu", "--gpus", "1"), "--gpus", "--device cpu")

    def test_cpu_runs_without_a_note(self):
        r = self.fit("--device", "cpu")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("CUDA", r.stderr)
        self.assertIn("CPU", r.stderr)

    @unittest.skipIf(HAVE_GPU, "this machine has a GPU")
    def test_auto_falls_back_to_the_cpu_in_one_line(self):
        r = self.fit()
        self.assertEqual(r.returncode, 0, r.stderr)
        notes = [line for line in r.stderr.splitlines() if "CUDA" in line]
        self.assertLessEqual(len(notes), 1, r.stderr)
        if notes:  # a CUDA build
            self.assertRegex(notes[0], r"^trainer: no CUDA device \(.+\); running on the CPU$")
        self.assertEqual(self.fit("--quiet").stderr, "")

    @unittest.skipIf(HAVE_GPU, "this machine has a GPU")
    def test_asking_for_a_gpu_without_one(self):
        for args in (["--device", "cuda"], ["--device", "cuda:1"], ["--gpus", "1"], ["--gpus", "all"],
                     ["--gpus", "0,2"]):
            with self.subTest(args=args):
                err = assert_input_error(self, self.fit(*args), args[0])
                self.assert_names_no_device(err)

    def test_precision_on_the_cpu(self):
        r = self.fit("--device", "cpu", "--set", "train.precision=bf16")
        if cli_util.CPU_BF16:
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("CPU, ", r.stderr)
            self.assertIn(" · bf16 · ", r.stderr)
        else:  # a CPU without AVX-512: refused before training, with the way out
            # Named at the setting (it named an internal node), before anything is built.
            assert_input_error(self, r, "--set train.precision=bf16", "needs a CPU with AVX-512",
                               'use precision = "fp32"')
        self.assertNotIn("bf16", self.fit("--device", "cpu").stderr)  # auto is fp32 on the CPU
        assert_input_error(self, self.fit("--device", "cpu", "--set", "train.precision=fp16"), "fp16",
                           "GPUs only")
        assert_input_error(self, self.fit("--set", "train.precision=fp8"), "unknown precision 'fp8'")

    def test_bad_gpu_lists(self):
        for value in ("0,,1", "x", "-1"):
            with self.subTest(value=value):
                r = self.fit("--gpus", value)
                self.assertEqual(r.returncode, 2, r.stderr)
        # Checked before the GPUs are looked at, so the message is the same on any machine.
        assert_input_error(self, self.fit("--gpus", "1,0,1"), "--gpus: GPU 1 appears twice in --gpus 1,0,1")


if __name__ == "__main__":
    cli_util.main()
