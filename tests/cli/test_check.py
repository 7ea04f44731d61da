"""`trainer check` passes every sample spec of the repository (and the example in trainer-model(5))."""

import glob
import os
import re
import tempfile
import unittest

import cli_util
from cli_util import ROOT, SAMPLES, run, sample


class Check(unittest.TestCase):
    def test_sample_list_is_complete(self):
        # The summary and fit tests walk cli_util.SAMPLE_SPECS: a new sample must be added there.
        found = sorted(os.path.relpath(p, SAMPLES) for p in glob.glob(os.path.join(SAMPLES, "**", "*.toml"),
                                                                      recursive=True))
        self.assertEqual(found, sorted(cli_util.SAMPLE_SPECS))

    def test_every_sample(self):
        for spec in cli_util.SAMPLE_SPECS:
            with self.subTest(spec=spec):
                r = run(["check", sample(spec)])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stderr, rf"{re.escape(sample(spec))}: ok · \d+ layers · \d+ parameters")
                self.assertEqual(r.stdout, "")
                q = run(["check", "--quiet", sample(spec)])
                self.assertEqual((q.returncode, q.stdout, q.stderr), (0, "", ""))

    def test_example_of_the_man_page(self):
        # The first .nf block of EXAMPLES in trainer-model(5) is a whole spec.
        with open(os.path.join(ROOT, "man", "trainer-model.5")) as f:
            page = f.read()
        examples = page[page.index(".SH EXAMPLES"):]
        block = examples[examples.index(".nf\n") + 4:examples.index(".fi\n")]
        text = block.replace("\\-", "-").replace("\\e", "\\")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "example.toml")
            with open(path, "w") as f:
                f.write(text)
            r = run(["check", path])
            self.assertEqual(r.returncode, 0, r.stderr + "\n" + text)


if __name__ == "__main__":
    cli_util.main()
