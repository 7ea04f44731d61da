"""The man pages: each renders without a groff warning, and each subcommand's page documents exactly the options
that its --help lists (trainer(1) those of the top level, and every subcommand)."""

import glob
import os
import re
import shutil
import subprocess
import tempfile
import unittest

import cli_util
from cli_util import ROOT, run

MAN = os.path.join(ROOT, "man")
SECTIONS = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS", "EXAMPLES", "SEE ALSO"]
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def help_text(*cmd):
    r = run([*cmd, "--help"])
    assert r.returncode == 0, r.stderr
    return r.stdout


def help_section(text, title):
    """The entries of a CLI11 help section ("Options:", "Positionals:", "Subcommands:"): the first column."""
    m = re.search(rf"^{title}:\n((?:  .*\n|\s*\n)*)", text, re.M)
    if not m:
        return []
    return [line.split()[0] for line in m.group(1).splitlines() if line.startswith("  ") and
            not line.startswith("   ")]


def help_options(text):
    """Every option name --help lists: "-q,--quiet" gives -q and --quiet."""
    return {name for entry in help_section(text, "Options") for name in entry.split(",")}


def plain(roff):
    """roff source without escapes that hide option names: \\- is a minus, \\fB... change fonts."""
    return re.sub(r"\\f[BIRP]|\\f\(..|\\&", "", roff).replace("\\-", "-").replace("\\e", "\\")


def man_section(page, title):
    m = re.search(rf'^\.SH "?{re.escape(title)}"?\n(.*?)(?=^\.SH |\Z)', page, re.M | re.S)
    return m.group(1) if m else None


def tagged(section):
    """The tags of a section's .TP paragraphs (the line after each .TP) as text: ".BI \\-\\-seed " N"" gives
    "--seed N"."""
    lines = section.splitlines()
    tags = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]
    return [plain(re.sub(r"^\.[BIR]{1,2} ", "", t)).replace('"', "").strip() for t in tags]


def read(name):
    with open(os.path.join(MAN, name)) as f:
        return f.read()


def subcommands():
    return [c for c in help_section(help_text(), "Subcommands") if c != "help"]


class ManPages(unittest.TestCase):
    def test_pages_exist(self):
        pages = sorted(os.path.basename(p) for p in glob.glob(os.path.join(MAN, "*.[1-9]")))
        want = ["trainer.1", "trainer-model.5"] + [f"trainer-{c}.1" for c in subcommands()]
        self.assertEqual(pages, sorted(want))

    @unittest.skipUnless(shutil.which("groff"), "groff is not installed")
    def test_render_without_warnings(self):
        for path in sorted(glob.glob(os.path.join(MAN, "*.[1-9]"))):
            with self.subTest(page=os.path.basename(path)):
                r = subprocess.run(["groff", "-man", "-ww", "-z", path], capture_output=True, text=True, timeout=60)
                self.assertEqual((r.returncode, r.stderr), (0, ""))

    def test_sections(self):
        for path in sorted(glob.glob(os.path.join(MAN, "*.1"))):
            page = read(os.path.basename(path))
            with self.subTest(page=os.path.basename(path)):
                titles = [t.strip('"') for t in re.findall(r"^\.SH (.*)$", page, re.M)]
                self.assertEqual([t for t in titles if t in SECTIONS], SECTIONS)

    def test_subcommand_options(self):
        for cmd in subcommands():
            with self.subTest(cmd=cmd):
                text = help_text(cmd)
                page = read(f"trainer-{cmd}.1")
                tags = tagged(man_section(page, "OPTIONS"))
                documented = {o for t in tags for o in OPTION.findall(t)}
                listed = help_options(text)
                self.assertTrue(listed, text)
                self.assertEqual(sorted(listed - documented), [], f"options of `trainer {cmd} --help` missing from "
                                                                 f"the OPTIONS of trainer-{cmd}.1")
                self.assertEqual(sorted(documented - listed), [], f"trainer-{cmd}.1 documents options that "
                                                                  f"`trainer {cmd} --help` does not list")
                for positional in help_section(text, "Positionals"):
                    self.assertIn(positional, tags)
                # The synopsis shows every option but --help.
                synopsis = {o for o in OPTION.findall(plain(man_section(page, "SYNOPSIS")))}
                self.assertEqual(sorted(listed - synopsis - {"-h", "--help", "-q"}), [], "SYNOPSIS")

    def test_top_level_options_and_subcommands(self):
        text = help_text()
        page = read("trainer.1")
        documented = {o for t in tagged(man_section(page, "OPTIONS")) for o in OPTION.findall(t)}
        self.assertEqual(help_options(text), documented)
        listed = [t.split()[0] for t in tagged(man_section(page, "SUBCOMMANDS"))]
        self.assertEqual(listed, subcommands() + ["help"])

    def test_help_subcommand(self):
        # `trainer help CMD` prints what `trainer CMD --help` prints; the man pages are checked against that.
        for cmd in subcommands():
            with self.subTest(cmd=cmd):
                r = run(["help", cmd])
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, help_text(cmd))
        # `trainer help` alone is `trainer --help`; `trainer help help` says what help does.
        r = run(["help"])
        self.assertEqual((r.returncode, r.stdout), (0, help_text()))
        r = run(["help", "help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Show the help of a subcommand", r.stdout)
        r = run(["--version"])
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^trainer \d+\.\d+\.\d+\n$")
        self.assertIn(f'"trainer {r.stdout.split()[1]}"', read("trainer.1").splitlines()[0])

    def test_exit_status(self):
        for path in sorted(glob.glob(os.path.join(MAN, "*.1"))):
            name = os.path.basename(path)
            with self.subTest(page=name):
                codes = set(" ".join(tagged(man_section(read(name), "EXIT STATUS"))).replace(",", " ").split())
                self.assertLessEqual({"0", "2"}, codes)
                if name in ("trainer.1", "trainer-fit.1"):
                    self.assertLessEqual({"0", "1", "2", "130", "143"}, codes)

    def test_the_model_page_names_every_layer_type(self):
        # The layer library lists its types in the hint for an unknown one.
        with tempfile.TemporaryDirectory() as tmp:
            spec = os.path.join(tmp, "spec.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "NoSuchLayer"\n')
            r = run(["check", spec])
        self.assertEqual(r.returncode, 2, r.stderr)
        m = re.search(r"hint: layers: (.*)", r.stderr)
        self.assertIsNotNone(m, r.stderr)
        types = [t.strip() for t in m.group(1).split(",")]
        self.assertIn("Conv2D", types)
        page = plain(read("trainer-model.5"))
        paragraph = page[page.index(".B type\n"):page.index(".B name\n")]
        for t in types:
            self.assertRegex(paragraph, rf"(?<![\w]){t}(?![\w])", f"trainer-model(5) does not list layer type {t}")
        # ... and every layer has its arguments described, in a paragraph of its own.
        arguments = page[page.index(".I arguments\n"):]
        for t in types:
            self.assertRegex(arguments, rf"\n\.(?:TP\n\.B|BR) [^\n]*(?<![\w]){t}(?![\w])",
                             f"trainer-model(5) describes no arguments of {t}")


if __name__ == "__main__":
    cli_util.main()
