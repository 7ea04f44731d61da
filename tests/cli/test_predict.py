"""trainer predict and trainer evaluate on a short Fashion-MNIST MLP run: inputs as NPY, CSV and IDX files and on
stdin, CSV and NPY outputs; the checkpoint, the exported ONNX model and onnxruntime agree within 1e-5; every
sample of a partial last batch comes out; a wrong sample shape fails before any output; evaluate reports fit's
validation metrics."""

import gzip
import io
import json
import os
import select
import struct
import subprocess
import tempfile
import threading
import time
import unittest
import zlib

import cli_util
from cli_util import run

try:
    import numpy as np
    import onnxruntime as ort
except ImportError:  # reported as a skip, never as a pass
    np = ort = None

VAL = 1001  # not a multiple of the batch sizes below: the last batch is partial
BATCH = 64


def idx_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * data[3]).reshape(dims)


def predict(args, stdin=None, timeout=120):
    """Runs trainer predict with bytes on stdin; stdout stays bytes (NPY output is binary)."""
    return subprocess.run([cli_util.TRAINER, "predict"] + list(args), input=stdin, capture_output=True,
                          timeout=timeout)


def rows(stdout):
    return np.loadtxt(stdout.decode().splitlines(), delimiter=",", ndmin=2, dtype=np.float64)


def npy_bytes(a):
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def npy_header(shape, descr="|u1"):
    """The header numpy.save writes for an array of `shape`, for data that follows in pieces."""
    d = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    d += " " * ((64 - (10 + len(d) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(d).to_bytes(2, "little") + d.encode()


@unittest.skipIf(ort is None, "numpy and onnxruntime are needed (tools/install-deps.sh installs them)")
@cli_util.skip_without_fashion
class Predict(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        t = cls.tmp.name
        cls.run_dir = os.path.join(t, "run")
        r = run(["fit", cli_util.sample("fashion_mnist/mlp.toml"), "--epochs", "1", "--set", "data.train.limit=2000",
                 "--set", f"data.validation.limit={VAL}", "--output-dir", cls.run_dir, "--quiet"], timeout=600)
        assert r.returncode == 0, r.stderr
        cls.fit_end = [json.loads(line) for line in r.stdout.splitlines()][-1]
        cls.ckpt = os.path.join(cls.run_dir, "last.ckpt")
        cls.onnx = os.path.join(t, "mlp.onnx")
        r = run(["export", cls.ckpt, "-o", cls.onnx, "--quiet"])
        assert r.returncode == 0, r.stderr
        # The validation samples as stored (uint8 pixels: the checkpoint's spec scales them by 1/255) and as the
        # exported model takes them (float32, already scaled).
        cls.x = np.ascontiguousarray(idx_images(os.path.join(cli_util.FASHION_DIR, "t10k-images-idx3-ubyte.gz"))[:VAL])
        cls.xf = cls.x.astype(np.float32) / np.float32(255)
        cls.files = {}
        cls.files["npy"] = os.path.join(t, "x.npy")
        np.save(cls.files["npy"], cls.x)
        cls.files["npy_f32"] = os.path.join(t, "xf.npy")
        np.save(cls.files["npy_f32"], cls.xf)
        cls.files["csv"] = os.path.join(t, "x.csv")
        with open(cls.files["csv"], "w") as f:
            f.write(",".join(f"p{i}" for i in range(784)) + "\n")  # a header line, skipped
            np.savetxt(f, cls.x.reshape(VAL, -1), fmt="%d", delimiter=",")
        idx = b"\0\0\x08\x03" + struct.pack(">III", VAL, 28, 28) + cls.x.tobytes()
        cls.files["idx"] = os.path.join(t, "x-idx3-ubyte")
        with open(cls.files["idx"], "wb") as f:
            f.write(idx)
        cls.files["idx_gz"] = os.path.join(t, "x-idx3-ubyte.gz")
        with gzip.open(cls.files["idx_gz"], "wb") as f:
            f.write(idx)
        cls.reference = ort.InferenceSession(cls.onnx).run(None, {"input": cls.xf})[0]

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def ok(self, r):
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        return r.stdout

    def test_onnxruntime_equals_predict_on_the_validation_samples(self):
        for model, x in ((self.onnx, "npy_f32"), (self.ckpt, "npy")):
            with self.subTest(model=os.path.basename(model)):
                p = rows(self.ok(predict([model, self.files[x], "--probabilities", "--batch-size", str(BATCH)])))
                self.assertEqual(p.shape, (VAL, 10))
                np.testing.assert_allclose(p, self.reference, rtol=0, atol=1e-5)

    def test_checkpoint_and_onnx_give_the_same_probabilities(self):
        a = rows(self.ok(predict([self.ckpt, self.files["idx"], "--probabilities"])))
        b = rows(self.ok(predict([self.onnx, self.files["npy_f32"], "--probabilities"])))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)

    def test_every_input_format_from_a_file_and_from_stdin(self):
        want = self.reference.argmax(axis=1)
        for kind in ("npy", "csv", "idx", "idx_gz"):
            path = self.files[kind]
            with open(path, "rb") as f:
                data = f.read()
            for source, args, stdin in (("file", [path], None), ("stdin -", ["-"], data), ("stdin", [], data)):
                with self.subTest(input=kind, source=source):
                    out = self.ok(predict([self.ckpt] + args + ["--batch-size", str(BATCH)], stdin=stdin))
                    ids = rows(out)[:, 0]
                    self.assertEqual(len(ids), VAL)  # the last batch (1001 = 15 * 64 + 41) is partial
                    # The same weights, one argmax apart at most (a near-tie between two classes).
                    self.assertLessEqual(int((ids != want).sum()), 1)

    def test_a_pipe_given_by_path_is_read_once(self):
        # <(cat x.npy) and a FIFO: predict once peeked at the path to tell an NPZ, which took the pipe's first
        # bytes (0 rows and exit 0, a bogus CSV error, or a FIFO waited on forever).
        want = self.reference.argmax(axis=1)
        for kind in ("npy", "csv"):
            with open(self.files[kind], "rb") as f:
                data = f.read()

            def feed(path_or_fd):
                with open(path_or_fd, "wb") as w:
                    w.write(data)

            with self.subTest(input=kind, source="/dev/fd"):
                r, w = os.pipe()
                writer = threading.Thread(target=feed, args=(w,))
                writer.start()
                res = subprocess.run([cli_util.TRAINER, "predict", self.ckpt, f"/dev/fd/{r}"], pass_fds=(r,),
                                     capture_output=True, timeout=120)
                os.close(r)
                writer.join()
                self.assertLessEqual(int((rows(self.ok(res))[:, 0] != want).sum()), 1)
            with self.subTest(input=kind, source="fifo"):
                fifo = os.path.join(self.tmp.name, f"fifo_{kind}")
                os.mkfifo(fifo)
                writer = threading.Thread(target=feed, args=(fifo,))
                writer.start()
                res = predict([self.ckpt, fifo], timeout=60)
                writer.join()
                self.assertLessEqual(int((rows(self.ok(res))[:, 0] != want).sum()), 1)
        # A model cannot be read from a pipe: said plainly.
        r, w = os.pipe()
        os.close(w)
        res = subprocess.run([cli_util.TRAINER, "predict", f"/dev/fd/{r}", self.files["npy"]], pass_fds=(r,),
                             capture_output=True, text=True, timeout=60)
        os.close(r)
        cli_util.assert_input_error(self, res, "not a regular file", "save the checkpoint or ONNX model to a file")

    def test_csv_column_names_and_a_first_sample_with_a_bad_field(self):
        rng = np.random.default_rng(7)
        x = rng.integers(0, 255, (3, 784))
        body = "\n".join(",".join(str(v) for v in row) for row in x) + "\n"
        want = rows(self.ok(predict([self.ckpt, "-"], stdin=body.encode())))
        self.assertEqual(len(want), 3)
        # Names with a quoted comma, or a comment line: skipped, whatever their number of fields.
        for header in ('"pixel,0",' + ",".join(f"p{i}" for i in range(1, 784)), "# exported by a tool"):
            with self.subTest(header=header):
                got = rows(self.ok(predict([self.ckpt, "-"], stdin=(header + "\n" + body).encode())))
                np.testing.assert_array_equal(got, want)
        # A first line of numbers with an empty field is a sample in error, not a header to skip.
        bad = ",".join(["1", ""] + ["2"] * 782) + "\n" + body
        res = predict([self.ckpt, "-"], stdin=bad.encode())
        self.assertEqual(res.returncode, 2, res.stderr.decode())
        self.assertIn("stdin:1:3: '' is not a number", res.stderr.decode())
        self.assertEqual(res.stdout, b"")

    def test_an_npz_of_x_or_of_the_input_name(self):
        # A model of one input reads the array x of an .npz, as training data does, or the one named after its
        # input; a large deflated array is inflated as it is read.
        for key, compress in (("x", np.savez), ("input", np.savez_compressed)):
            with self.subTest(key=key):
                path = os.path.join(self.tmp.name, f"{key}.npz")
                compress(path, **{key: self.xf, "other": self.xf[:3]})
                p = rows(self.ok(predict([self.onnx, path, "--probabilities", "--batch-size", str(BATCH)])))
                np.testing.assert_allclose(p, self.reference, rtol=0, atol=1e-5)
        with open(os.path.join(self.tmp.name, "x.npz"), "rb") as f:
            r = predict([self.onnx, "-"], stdin=f.read())
        self.assertEqual(r.returncode, 2)
        self.assertIn("give the .npz file's path", r.stderr.decode())
        path = os.path.join(self.tmp.name, "misnamed.npz")
        np.savez(path, images=self.xf)
        r = predict([self.onnx, path])
        self.assertEqual(r.returncode, 2)
        self.assertIn("no array 'input'", r.stderr.decode())
        self.assertIn("name the array x or input", r.stderr.decode())

    def test_npy_output(self):
        out = self.ok(predict([self.onnx, self.files["npy_f32"], "--output-format", "npy", "--probabilities"]))
        p = np.load(io.BytesIO(out))
        self.assertEqual((p.shape, p.dtype), ((VAL, 10), np.float32))
        np.testing.assert_allclose(p, self.reference, rtol=0, atol=1e-5)
        out = self.ok(predict([self.onnx, "-", "--output-format", "npy", "--batch-size", str(BATCH)],
                              stdin=npy_bytes(self.xf)))
        ids = np.load(io.BytesIO(out))
        self.assertEqual((ids.shape, ids.dtype), ((VAL,), np.int64))
        csv_ids = rows(self.ok(predict([self.onnx, self.files["npy_f32"]])))[:, 0]
        np.testing.assert_array_equal(ids, csv_ids)

    def test_partial_last_batch_returns_every_row(self):
        for n in (1, 63, 64, 65, VAL):
            with self.subTest(samples=n):
                # From a file (count known: two plans) and from CSV on stdin (count unknown until the end).
                p = rows(self.ok(predict([self.onnx, "-", "--probabilities", "--batch-size", str(BATCH)],
                                         stdin=npy_bytes(self.xf[:n]))))
                self.assertEqual(p.shape, (n, 10))
                np.testing.assert_allclose(p, self.reference[:n], rtol=0, atol=1e-5)
                csv = "\n".join(",".join(str(int(v)) for v in s) for s in self.x[:n].reshape(n, -1)).encode()
                p = rows(self.ok(predict([self.ckpt, "--probabilities", "--batch-size", str(BATCH)], stdin=csv)))
                self.assertEqual(p.shape, (n, 10))
                np.testing.assert_allclose(p, self.reference[:n], rtol=0, atol=1e-5)

    def test_a_short_csv_is_planned_at_its_own_length_not_at_a_large_batch_size(self):
        # CSV does not say how many samples it holds: predict reads ahead before planning (4097 samples, then
        # doubling while the input keeps up), so 5 rows, and 5000 rows, at --batch-size 200000 run as one batch
        # of their own length (a plan and buffers for 200000 samples of 784 values would take gigabytes), from a
        # file and from a pipe. 5000 rows at --batch-size 4096 run as two batches, every row as the reference.
        def csv_of(n):
            return "\n".join(",".join(str(int(v)) for v in s)
                             for s in self.x[np.arange(n) % VAL].reshape(n, -1)).encode() + b"\n"
        for n, batch, source in ((5, 200000, "file"), (5, 200000, "-"), (5000, 200000, "file"), (5000, 4096, "-")):
            with self.subTest(rows=n, batch=batch, source=source):
                path = os.path.join(self.tmp.name, f"rows{n}.csv")
                with open(path, "wb") as f:
                    f.write(csv_of(n))
                with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                    p = subprocess.Popen([cli_util.TRAINER, "predict", self.ckpt, path if source == "file" else "-",
                                          "--probabilities", "--batch-size", str(batch)], stdin=subprocess.PIPE,
                                         stdout=out, stderr=err)
                    p.stdin.write(csv_of(n) if source == "-" else b"")
                    p.stdin.close()
                    _, status, usage = os.wait4(p.pid, 0)  # this run's own peak memory
                    out.seek(0)
                    err.seek(0)
                    out, err = out.read(), err.read().decode()
                self.assertEqual(os.waitstatus_to_exitcode(status), 0, err)
                np.testing.assert_allclose(rows(out), self.reference[np.arange(n) % VAL], rtol=0, atol=1e-5)
                self.assertIn(f"at batch {min(n, batch)} ", err)
                self.assertLess(usage.ru_maxrss / 1024, 400, f"predict held {usage.ru_maxrss / 1024:.0f} MiB")

    def test_wrong_feature_shape_names_both_shapes_and_writes_nothing(self):
        cases = [("npy", npy_bytes(self.x[:10, :27, :]), "[27, 28]"),
                 ("csv", b"\n".join(b",".join(b"0" for _ in range(783)) for _ in range(3)), "[783]")]
        for kind, data, got in cases:
            for model in (self.ckpt, self.onnx):
                with self.subTest(input=kind, model=os.path.basename(model)):
                    r = predict([model, "-"], stdin=data)
                    r.stderr = r.stderr.decode()
                    cli_util.assert_input_error(self, r, "stdin", got, "[28, 28]")
                    self.assertEqual(r.stdout, b"")

    def test_a_header_of_huge_samples_is_refused_before_any_allocation(self):
        # Headers alone (no data): samples of 2^31 floats, a damaged NPY header length, IDX samples of 2^32 bytes
        # and of 2^64. Each is refused from its header, under an address-space limit far below one such sample.
        import resource

        def limited():
            resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        npy = b"{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2147483648), }"
        npy += b" " * (63 - len(npy) % 64) + b"\n"
        cases = [("huge.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(npy)) + npy, "[2147483648]"),
                 ("header.npy", b"\x93NUMPY\x02\x00" + struct.pack("<I", 0x7FFFFFFF) + b"{}",
                  "the NPY header says it is 2147483647 bytes long"),
                 ("big-idx3-ubyte", b"\0\0\x08\x03" + struct.pack(">III", 256, 65536, 65536), "[65536, 65536]"),
                 ("huge-idx3-ubyte", b"\0\0\x08\x03" + struct.pack(">III", 256, 2**32 - 1, 2**32 - 1),
                  "more than 2^48 values per sample")]
        for name, data, needle in cases:
            with self.subTest(name):
                path = os.path.join(self.tmp.name, name)
                with open(path, "wb") as f:
                    f.write(data)
                r = subprocess.run([cli_util.TRAINER, "predict", self.ckpt, path, "--device", "cpu"],
                                   capture_output=True, text=True, timeout=120, preexec_fn=limited)
                cli_util.assert_input_error(self, r, name, needle)
                self.assertEqual(r.stdout, "")

    def test_npy_output_of_csv_input_is_refused_before_any_output(self):
        r = predict([self.ckpt, self.files["csv"], "--output-format", "npy"])
        r.stderr = r.stderr.decode()
        cli_util.assert_input_error(self, r, "x.csv", "NPY output")
        self.assertEqual(r.stdout, b"")

    def test_a_truncated_input_is_an_input_error(self):
        with open(self.files["npy"], "rb") as f:
            data = f.read()
        r = predict([self.ckpt, "-"], stdin=data[:len(data) // 2])
        r.stderr = r.stderr.decode()
        cli_util.assert_input_error(self, r, "stdin: byte", f"of its {VAL} samples")

    def test_bytes_after_the_declared_samples_are_an_input_error(self):
        # fit refuses an IDX or NPY file whose header declares fewer samples than it holds; so does predict, after
        # the rows of the samples the header declares.
        for name in ("idx", "npy"):
            with self.subTest(name):
                with open(self.files[name], "rb") as f:
                    data = f.read()
                r = predict([self.ckpt, "-"], stdin=data + b"\0\0\0\0")
                r.stderr = r.stderr.decode()
                cli_util.assert_input_error(self, r, f"stdin: byte {len(data)}:", f"follows the {VAL} samples",
                                            "hint: ")
                self.assertEqual(len(r.stdout.decode().splitlines()), VAL)
                self.ok(predict([self.ckpt, "-"], stdin=data))
        # A writer that keeps the pipe open after the last sample is not waited on for that check.
        with open(self.files["npy"], "rb") as f:
            data = f.read()
        p = subprocess.Popen([cli_util.TRAINER, "predict", self.ckpt, "-", "-q"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            p.stdin.write(data)
            p.stdin.flush()
            self.assertEqual(p.wait(timeout=20), 0, "predict waited for the end of an input it had read whole")
            self.assertEqual(len(p.stdout.read().splitlines()), VAL)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdin.close()

    def test_a_later_input_error_keeps_the_complete_batches_rows(self):
        # CSV rows, then a ragged row: the rows of the batches before it are written, then the error.
        with open(self.files["csv"]) as f:
            lines = f.read().splitlines()
        bad = os.path.join(self.tmp.name, "ragged.csv")
        with open(bad, "w") as f:
            f.write("\n".join(lines[:301]) + "\n1,2,3\n")  # the header and 300 samples
        r = predict([self.ckpt, bad, "--batch-size", "64"])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(len(r.stdout.decode().splitlines()), 256)  # 4 whole batches of 64
        self.assertIn(b"ragged.csv:302", r.stderr)

    def test_a_byte_order_mark_is_no_sample(self):
        # A headerless CSV that starts with a UTF-8 byte-order mark (as spreadsheets write it): every sample.
        with open(self.files["csv"]) as f:
            rows = f.read().splitlines()[1:11]
        path = os.path.join(self.tmp.name, "bom.csv")
        with open(path, "wb") as f:
            f.write(b"\xef\xbb\xbf" + "\n".join(rows).encode() + b"\n")
        r = predict([self.ckpt, path])
        self.assertEqual(r.returncode, 0, r.stderr)
        want = predict([self.ckpt, self.files["npy"], "--batch-size", "10"]).stdout.decode().splitlines()[:10]
        self.assertEqual(r.stdout.decode().splitlines(), want)

    def test_a_reader_that_stops_early_ends_predict_quietly(self):
        # cat x.npy | trainer predict m.onnx - | head -n 2: predict sees a closed pipe and exits 0, quietly.
        many = npy_bytes(np.concatenate([self.xf] * 20))
        p = subprocess.Popen([cli_util.TRAINER, "predict", self.onnx, "-", "--probabilities"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        head = subprocess.Popen(["head", "-n", "2"], stdin=p.stdout, stdout=subprocess.PIPE)
        p.stdout.close()
        try:
            p.stdin.write(many)
        except BrokenPipeError:
            pass  # predict stopped reading: what a pipeline expects
        try:
            p.stdin.close()
        except BrokenPipeError:
            pass
        out = head.communicate(timeout=120)[0]
        err = p.stderr.read().decode()
        p.stderr.close()
        self.assertEqual(p.wait(timeout=120), 0, err)
        self.assertNotIn("error", err)
        self.assertEqual(len(out.decode().splitlines()), 2)

    def stream(self, pieces, compress=False, model=None):
        """Writes `pieces` (bytes, and the rows expected once they are in) to predict's stdin one at a time, waiting
        after each (the pipe still open) for those rows; returns the rows seen after each, the whole output and
        predict's exit."""
        p = subprocess.Popen([cli_util.TRAINER, "predict", model or self.ckpt, "-", "--probabilities", "-q"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        z = zlib.compressobj(wbits=31) if compress else None  # gzip, flushed after every piece
        out, seen = b"", []
        try:
            for data, samples in pieces:
                p.stdin.write(z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH) if z else data)
                p.stdin.flush()
                deadline = time.monotonic() + 20
                while out.count(b"\n") < samples and time.monotonic() < deadline:
                    if select.select([p.stdout], [], [], 0.2)[0]:
                        out += os.read(p.stdout.fileno(), 1 << 16)
                seen.append(out.count(b"\n"))
            if z:
                p.stdin.write(z.flush())
        finally:
            p.stdin.close()
            rest, err = p.stdout.read(), p.stderr.read()
            p.stdout.close()
            p.stderr.close()
        return seen, out + rest, p.wait(timeout=60), err.decode()

    def test_a_slow_pipe_gets_its_rows_as_the_samples_arrive(self):
        # A writer that sends 3 samples, then 7, then the rest, and waits in between with the pipe open: each
        # sample's row comes out before the next piece is sent (a batch of 256 is never filled), as CSV, as gzip
        # flushed after each piece, and as NPY; the rows equal those of the whole input read from a file.
        x = self.x[:40].reshape(40, -1)
        want = rows(self.ok(predict([self.ckpt, self.files["npy"], "--probabilities"])))[:40]
        csv = [",".join(map(str, r)).encode() + b"\n" for r in x]
        npy = npy_bytes(self.x[:40])
        head = len(npy) - x.nbytes
        cases = {
            "csv": [(b"".join(csv[:3]), 3), (b"".join(csv[3:10]), 10), (b"".join(csv[10:]), 40)],
            # Blank lines after the rows: skipped, and no reason to wait for the next row.
            "csv_blank": [(b"\n \n".join(csv[:3]) + b"\n\n", 3), (b"\n".join(csv[3:10]) + b" \n\n", 10),
                          (b"".join(csv[10:]), 40)],
            "npy": [(npy[:head + 3 * 784], 3), (npy[head + 3 * 784:head + 10 * 784], 10),
                    (npy[head + 10 * 784:], 40)],
        }
        for kind, compress in (("csv", False), ("csv", True), ("csv_blank", False), ("npy", False)):
            with self.subTest(input=kind, gzip=compress):
                seen, out, code, err = self.stream(cases[kind], compress)
                self.assertEqual(code, 0, err)
                self.assertEqual(seen[:2], [3, 10])
                np.testing.assert_allclose(rows(out), want, rtol=0, atol=1e-6)

    def test_samples_larger_than_the_read_buffer_stream_too(self):
        # Samples of 20,000 values (80 kB as float32 NPY, 180 kB as CSV), the writer pausing after a whole
        # sample and most of the next: the whole one's row comes out at the pause.
        from onnx import TensorProto, helper
        model = os.path.join(self.tmp.name, "wide.onnx")
        graph = helper.make_graph(
            [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "wide",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 20000])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
            [helper.make_tensor("axes", TensorProto.INT64, [1], [1])])
        with open(model, "wb") as f:
            f.write(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        x = np.random.default_rng(3).integers(0, 9, size=(5, 20000)).astype(np.float32)
        npy = npy_bytes(x)
        head, row = len(npy) - x.nbytes, 80000
        csv = [",".join(f"{v:.6f}" for v in r).encode() + b"\n" for r in x]  # 180 kB rows
        for kind, pieces in (
                ("npy", [(npy[:head + row + 70000], 1), (npy[head + row + 70000:head + 3 * row + 70000], 3),
                         (npy[head + 3 * row + 70000:], 5)]),
                ("csv", [(csv[0] + csv[1][:100000], 1), (csv[1][100000:] + csv[2] + csv[3][:100000], 3),
                         (csv[3][100000:] + csv[4], 5)])):
            with self.subTest(input=kind):
                seen, out, code, err = self.stream(pieces, model=model)
                self.assertEqual(code, 0, err)
                self.assertEqual(seen[:2], [1, 3])
                np.testing.assert_allclose(rows(out)[:, 0], x.sum(1), rtol=1e-6)

    def test_an_empty_input_gives_no_rows(self):
        # Nothing on stdin (or blank lines only) is no samples, as a CSV of a header alone: no rows, exit 0.
        for data in (b"", b"\n \n"):
            with self.subTest(stdin=data):
                r = predict([self.ckpt, "-"], stdin=data)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, b"")
                self.assertIn(b"0 samples", r.stderr)
        for args, shape in (([], (0,)), (["--probabilities"], (0, 10))):
            r = predict([self.ckpt, "-", "--output-format", "npy"] + args, stdin=b"")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(np.load(io.BytesIO(r.stdout)).shape, shape)

    def test_concatenated_gzip_members_are_one_input(self):
        # cat a.csv.gz b.csv.gz | trainer predict: the samples of both members, in order.
        lines = [",".join(map(str, r)) for r in self.x[:30].reshape(30, -1)]
        data = gzip.compress(("\n".join(lines[:12]) + "\n").encode()) + gzip.compress(
            ("\n".join(lines[12:]) + "\n").encode())
        got = rows(self.ok(predict([self.ckpt, "-", "--probabilities"], stdin=data)))
        want = rows(self.ok(predict([self.ckpt, self.files["npy"], "--probabilities"])))[:30]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        r = predict([self.ckpt, "-"], stdin=data[:-9])  # the second member cut short
        r.stderr = r.stderr.decode()
        cli_util.assert_input_error(self, r, "stdin", "gzip")
        # Zero bytes may pad the end; other bytes after the last member are not the input's (they were ignored).
        got = rows(self.ok(predict([self.ckpt, "-", "--probabilities"], stdin=data + bytes(700))))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        for junk in (b"PK\x03\x04", bytes(5000) + b"x", b"\x1f"):
            r = predict([self.ckpt, "-"], stdin=data + junk)
            r.stderr = r.stderr.decode()
            cli_util.assert_input_error(self, r, "stdin", "bytes that are not gzip data follow the gzip stream",
                                        "hint: the file is damaged")

    def test_memory_stays_constant_however_long_the_input(self):
        # 200,000 samples (157 MB) streamed from this process: predict's peak memory (VmHWM of its own address
        # space) after 20,000 samples and after all of them stays the same, and far below the input's size.
        n, chunk_samples = 200_000, 10_000
        p = subprocess.Popen([cli_util.TRAINER, "predict", self.ckpt, "-", "-q"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        counted = {}

        def count():
            counted["lines"] = sum(1 for _ in p.stdout)
        reader = threading.Thread(target=count)
        reader.start()

        def peak_bytes():
            with open(f"/proc/{p.pid}/status") as f:
                kb = [line.split()[1] for line in f if line.startswith("VmHWM:")][0]
            return int(kb) * 1024

        chunk = np.tile(self.x, (10, 1, 1))[:chunk_samples].tobytes()
        p.stdin.write(npy_header((n, 28, 28)))
        for i in range(n // chunk_samples):
            p.stdin.write(chunk)
            p.stdin.flush()
            if i == 1:
                early = peak_bytes()
        late = peak_bytes()
        p.stdin.close()
        err = p.stderr.read().decode()
        self.assertEqual(p.wait(timeout=120), 0, err)
        reader.join()
        p.stdout.close()
        p.stderr.close()
        self.assertEqual(counted["lines"], n)
        self.assertLess(late - early, 16 << 20, f"peak memory grew from {early} to {late} bytes")
        self.assertLess(late, 120 << 20, "peak memory")

    def test_evaluate_reports_fit_validation_metrics(self):
        r = run(["evaluate", self.ckpt])
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(len(lines), 1, r.stdout)
        e = json.loads(lines[0])
        self.assertEqual((e["event"], e["data"], e["samples"]), ("evaluate", "validation", VAL))
        self.assertAlmostEqual(e["loss"], self.fit_end["val_loss"], delta=1e-6 * abs(self.fit_end["val_loss"]))
        self.assertEqual(e["accuracy"], self.fit_end["val_accuracy"])
        self.assertIn("accuracy", r.stderr)  # the human summary
        # Another batch size counts the same samples; only float rounding differs.
        r = run(["evaluate", self.ckpt, "--batch-size", "100", "--quiet"])
        e2 = json.loads(r.stdout)
        self.assertEqual(r.stderr, "")
        self.assertAlmostEqual(e2["loss"], e["loss"], delta=1e-5)
        self.assertEqual(e2["accuracy"], e["accuracy"])
        # The accuracy is the share of predict's class ids that match the labels.
        labels = idx_images(os.path.join(cli_util.FASHION_DIR, "t10k-labels-idx1-ubyte.gz"))[:VAL]
        ids = rows(self.ok(predict([self.ckpt, self.files["npy"]])))[:, 0]
        self.assertAlmostEqual(float((ids == labels).mean()), e["accuracy"], delta=1.5 / VAL)

    def test_evaluate_into_a_pipe_closed_early_is_no_failure(self):
        # `trainer evaluate CKPT | true`: the reader is gone before the line is written (it was killed by SIGPIPE,
        # 141); and a full disk names itself (it said "Input/output error").
        r = subprocess.run(["bash", "-c", f'"{cli_util.TRAINER}" evaluate "{self.ckpt}" -q | true; '
                            "exit ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        if os.path.exists("/dev/full"):
            with open("/dev/full", "w") as full:
                r = subprocess.run([cli_util.TRAINER, "evaluate", self.ckpt, "-q"], stdout=full, stderr=subprocess.PIPE,
                                   text=True, timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("No space left on device", r.stderr)

    def test_evaluate_bad_choices(self):
        r = run(["evaluate", self.ckpt, "--data", "test"])
        cli_util.assert_input_error(self, r, "last.ckpt", "no test data")
        self.assertEqual(r.stdout, "")
        r = run(["evaluate", self.onnx])
        cli_util.assert_input_error(self, r, "mlp.onnx", "evaluate needs a checkpoint")
        d = cli_util.FASHION_DIR
        r = run(["evaluate", self.ckpt, "--data", "test", "--set", f"data.test.x={d}/t10k-images-idx3-ubyte.gz",
                 "--set", f"data.test.y={d}/t10k-labels-idx1-ubyte.gz", "--set", "data.test.limit=300"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["samples"], 300)

    def test_an_npz_without_arrays_says_so(self):
        # numpy.savez() with no arrays writes only the zip's end record: it was "neither NPY, IDX nor CSV".
        path = os.path.join(self.tmp.name, "empty.npz")
        np.savez(path)
        r = run(["predict", self.ckpt, path])
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("its arrays: none", r.stderr)

    def test_samples_given_as_the_model_are_named_for_what_they_are(self):
        # The arguments swapped: an NPY array, an IDX file or a CSV as MODEL was "not a valid ONNX model".
        for kind, message in (("npy", "is an NPY array, not a model"), ("idx", "is an IDX file, not a model"),
                              ("csv", "is a text file, not a model")):
            r = run(["predict", self.files[kind], self.ckpt])
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(message, r.stderr)
            self.assertIn("MODEL comes first", r.stderr)
            self.assertEqual(r.stdout, "")


@unittest.skipIf(ort is None, "numpy and onnxruntime are needed (tools/install-deps.sh installs them)")
class PredictChannelsLast(unittest.TestCase):
    def test_hwc_images_of_a_checkpoint_match_the_exported_nhwc_model(self):
        # The CIFAR-10 CNN's spec takes [32, 32, 3]: predict converts HWC samples to the CHW the model computes
        # in, with the spec's 1/255, as the exported model (NHWC input) does inside its graph.
        sets = cli_util.data_sets("cifar10")
        with tempfile.TemporaryDirectory() as t:
            r = run(["fit", cli_util.sample("cifar10/cnn.toml"), "--epochs", "1", "--output-dir", t, "--quiet"] + sets,
                    timeout=600)
            self.assertEqual(r.returncode, 0, r.stderr)
            model = os.path.join(t, "cnn.onnx")
            r = run(["export", os.path.join(t, "last.ckpt"), "-o", model, "--quiet"])
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(cli_util.DATA_DIR, "cifar10", "test_batch.bin"), "rb") as f:
                records = np.frombuffer(f.read(), np.uint8).reshape(-1, 3073)
            x = np.ascontiguousarray(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # NHWC
            want = ort.InferenceSession(model).run(None, {"input": x.astype(np.float32) / np.float32(255)})[0]
            got = rows(predict([os.path.join(t, "last.ckpt"), "-", "--probabilities", "--batch-size", "7"],
                               stdin=npy_bytes(x)).stdout)
            self.assertEqual(got.shape, want.shape)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)



@unittest.skipIf(ort is None, "numpy and onnxruntime are needed (tools/install-deps.sh installs them)")
class PredictChannelsLastImagesOfAnOnnxModel(unittest.TestCase):
    def test_hwc_images_are_transposed_for_a_chw_input(self):
        # An ONNX model's [3, 6, 6] input takes [6, 6, 3] images (as trainer fit takes them): the same rows as
        # the CHW array.
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh
        rng = np.random.default_rng(4)
        w = nh.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w")
        nodes = [h.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3]), h.make_node("Flatten", ["c"], ["y"])]
        g = h.make_graph(nodes, "conv", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 6, 6])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 32])], [w])
        x = rng.normal(size=(5, 3, 6, 6)).astype(np.float32)
        with tempfile.TemporaryDirectory() as t:
            model = os.path.join(t, "conv.onnx")
            with open(model, "wb") as f:
                f.write(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())
            np.save(os.path.join(t, "chw.npy"), x)
            np.save(os.path.join(t, "hwc.npy"), np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            out = {}
            for name in ("chw", "hwc"):
                r = predict([model, os.path.join(t, f"{name}.npy"), "--probabilities", "-q"])
                self.assertEqual(r.returncode, 0, r.stderr)
                out[name] = rows(r.stdout)
            self.assertEqual(out["hwc"].shape, (5, 32))
            np.testing.assert_array_equal(out["hwc"], out["chw"])
            # Integer inputs (token ids) are never transposed: their [H, W, C] arrays stay a shape error.
            cast = h.make_graph([h.make_node("Cast", ["x"], ["f"], to=T.FLOAT), h.make_node("Flatten", ["f"], ["y"])],
                                "ints", [h.make_tensor_value_info("x", T.INT64, ["N", 2, 3, 4])],
                                [h.make_tensor_value_info("y", T.FLOAT, ["N", 24])])
            with open(model, "wb") as f:
                f.write(h.make_model(cast, opset_imports=[h.make_opsetid("", 17)]).SerializeToString())
            np.save(os.path.join(t, "ids.npy"), np.arange(120, dtype=np.int64).reshape(5, 3, 4, 2))
            r = predict([model, os.path.join(t, "ids.npy"), "--probabilities", "-q"])
            r.stderr = r.stderr.decode()
            cli_util.assert_input_error(self, r, "ids.npy", "[3, 4, 2]")


@unittest.skipIf(ort is None, "numpy and onnxruntime are needed (tools/install-deps.sh installs them)")
class PredictAModelTrainedOnLogits(unittest.TestCase):
    def test_the_export_decides_at_zero_as_the_checkpoint_does(self):
        # One logit per sample (binary cross-entropy from logits): class 1 above 0, whether predict reads the
        # checkpoint or its export (which holds the spec that says so).
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(3)
            x = rng.standard_normal((64, 5)).astype(np.float32)
            np.save(os.path.join(d, "x.npy"), x)
            np.save(os.path.join(d, "y.npy"), (x[:, 0] > 0.3).astype(np.float32))
            with open(os.path.join(d, "spec.toml"), "w") as f:
                f.write('format_version = 1\n[model]\ninput = [5]\n[[model.layers]]\ntype = "Dense"\nunits = 1\n'
                        '[data.train]\nx = "x.npy"\ny = "y.npy"\n[train]\nloss = "binary_crossentropy"\n'
                        'from_logits = true\nepochs = 2\nbatch_size = 16\n')
            r = run(["fit", os.path.join(d, "spec.toml"), "--device", "cpu", "--output-dir", os.path.join(d, "run"),
                     "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            ckpt, model = os.path.join(d, "run", "last.ckpt"), os.path.join(d, "m.onnx")
            r = run(["export", ckpt, "-o", model, "-q"])
            self.assertEqual(r.returncode, 0, r.stderr)
            logits = ort.InferenceSession(model).run(None, {"input": x})[0][:, 0]
            self.assertTrue((logits > 0).any() and (logits < 0).any() and ((logits > 0) != (logits > 0.5)).any(),
                            "some logits between 0 and 0.5 tell the thresholds apart")
            for m in (ckpt, model):
                r = predict([m, os.path.join(d, "x.npy"), "--device", "cpu"])
                self.assertEqual(r.returncode, 0, r.stderr.decode())
                np.testing.assert_array_equal(rows(r.stdout)[:, 0], (logits > 0).astype(np.float64), err_msg=m)


class PredictAPassThroughModel(unittest.TestCase):
    def test_a_model_that_passes_its_input_through_predicts_it(self):
        # A lone Dropout: in inference its graph is empty, and the output is the input.
        with tempfile.TemporaryDirectory() as t:
            x = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
            np.save(os.path.join(t, "x.npy"), x)
            spec = os.path.join(t, "id.toml")
            with open(spec, "w") as f:
                f.write('format_version = 1\n[model]\ninput = [3]\n[[model.layers]]\ntype = "Dropout"\nrate = 0.5\n'
                        '[data.train]\nx = "x.npy"\ny = "x.npy"\n[train]\nloss = "mse"\nepochs = 1\n'
                        'batch_size = 2\n')
            r = run(["fit", spec, "--device", "cpu", "-q", "--output-dir", t])
            self.assertEqual(r.returncode, 0, r.stderr)
            got = rows(predict([os.path.join(t, "last.ckpt"), os.path.join(t, "x.npy"), "--probabilities"]).stdout)
            np.testing.assert_allclose(got, x, rtol=1e-6)


class PredictByTheLoss(unittest.TestCase):
    def test_a_regression_writes_values_and_multi_label_a_bit_per_label(self):
        # An mse model's predictions were 0/1 "class ids" thresholded at 0.5, and a multi-label sigmoid output
        # (binary cross-entropy over 3 columns) one argmax per sample.
        rng = np.random.default_rng(5)
        x = rng.normal(size=(40, 4)).astype(np.float32)
        with tempfile.TemporaryDirectory() as t:
            np.save(os.path.join(t, "x.npy"), x)
            np.save(os.path.join(t, "y_reg.npy"), (x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32))[:, None] * 4)
            np.save(os.path.join(t, "y_multi.npy"), (x[:, :3] > 0).astype(np.float32))
            base = ('format_version = 1\n[model]\ninput = [4]\n[[model.layers]]\ntype = "Dense"\nunits = {units}\n'
                    'activation = "{act}"\n[data.train]\nx = "x.npy"\ny = "{y}"\n[train]\nloss = "{loss}"\n'
                    'epochs = 1\nbatch_size = 8\n')
            for name, units, act, y, loss in (("reg", 1, "linear", "y_reg.npy", "mse"),
                                              ("multi", 3, "sigmoid", "y_multi.npy", "binary_crossentropy"),
                                              ("hinge", 3, "linear", "y_multi.npy", "hinge")):
                spec = os.path.join(t, name + ".toml")
                with open(spec, "w") as f:
                    f.write(base.format(units=units, act=act, y=y, loss=loss))
                r = run(["fit", spec, "-q", "--device", "cpu", "--output-dir", os.path.join(t, name)])
                self.assertEqual(r.returncode, 0, r.stderr)
                ckpt = os.path.join(t, name, "last.ckpt")
                onnx_path = os.path.join(t, name + ".onnx")
                self.assertEqual(run(["export", ckpt, "-o", onnx_path, "-q"]).returncode, 0)
                want = ort.InferenceSession(onnx_path).run(None, {"input": x})[0]
                for model in (ckpt, onnx_path):
                    r = predict([model, os.path.join(t, "x.npy"), "--device", "cpu"])
                    self.assertEqual(r.returncode, 0, r.stderr)
                    got = rows(r.stdout)
                    if name == "reg":
                        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
                        self.assertGreater(len(np.unique(got)), 10)  # values, not 0/1
                        self.assertIn(b"trained with mse (a regression): writing its output values", r.stderr)
                    else:  # a 0 or 1 per label; a hinge's scores decided at 0
                        self.assertEqual(got.shape, (40, 3))
                        boundary = 0.0 if name == "hinge" else 0.5
                        np.testing.assert_array_equal(got, (want > boundary).astype(np.float64))
                        self.assertTrue(0 < got.mean() < 1)


class PredictInputsItCannotFeed(unittest.TestCase):
    def test_a_uint8_input_is_named_with_its_model(self):
        # The message named neither the model nor its input.
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        nodes = [h.make_node("Cast", ["pixels"], ["f"], to=T.FLOAT), h.make_node("Relu", ["f"], ["y"])]
        g = h.make_graph(nodes, "u8", [h.make_tensor_value_info("pixels", T.UINT8, ["N", 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])])
        with tempfile.TemporaryDirectory() as t:
            path = os.path.join(t, "u8.onnx")
            onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
            r = predict([path, "-"], stdin=npy_bytes(np.zeros((2, 4), np.uint8)))
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(f"{path}: the ONNX model's input 'pixels' is u8, which predict cannot feed".encode(),
                          r.stderr)
            self.assertIn(b"hint: predict feeds float32, float64, int32 or int64 inputs", r.stderr)
            self.assertEqual(r.stdout, b"")


class PredictIntegerOutputs(unittest.TestCase):
    def test_a_model_that_ends_in_argmax_gives_its_class_ids(self):
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh
        rng = np.random.default_rng(3)
        w = nh.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w")
        nodes = [h.make_node("MatMul", ["x", "w"], ["s"]), h.make_node("ArgMax", ["s"], ["y"], axis=1, keepdims=0)]
        g = h.make_graph(nodes, "argmax", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4])],
                         [h.make_tensor_value_info("y", T.INT64, ["N"])], [w])
        x = rng.normal(size=(37, 4)).astype(np.float32)
        with tempfile.TemporaryDirectory() as t:
            path = os.path.join(t, "argmax.onnx")
            onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
            want = ort.InferenceSession(path).run(None, {"x": x})[0]
            r = predict([path, "-", "--batch-size", "8"], stdin=npy_bytes(x))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual([int(v) for v in r.stdout.split()], want.tolist())
            self.assertGreater(len(set(want.tolist())), 2)

    def test_integer_rows_of_a_cumulative_sum(self):
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh
        axis = nh.from_array(np.array(1, np.int64), "axis")
        nodes = [h.make_node("CumSum", ["x", "axis"], ["y"], exclusive=1)]
        g = h.make_graph(nodes, "cumsum", [h.make_tensor_value_info("x", T.INT64, ["N", 5])],
                         [h.make_tensor_value_info("y", T.INT64, ["N", 5])], [axis])
        x = np.random.default_rng(4).integers(-50, 50, size=(9, 5)).astype(np.int64)
        with tempfile.TemporaryDirectory() as t:
            path = os.path.join(t, "cumsum.onnx")
            onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
            want = ort.InferenceSession(path).run(None, {"x": x})[0]
            r = predict([path, "-"], stdin=npy_bytes(x))
            self.assertEqual(r.returncode, 2, r.stderr)  # rows of integers are not class ids
            self.assertIn(b"use --probabilities", r.stderr)
            r = predict([path, "-", "--probabilities"], stdin=npy_bytes(x))
            self.assertEqual(r.returncode, 0, r.stderr)
            got = np.array([[float(v) for v in line.split(",")] for line in r.stdout.decode().split()])
            np.testing.assert_array_equal(got, want.astype(np.float64))
    def test_outputs_that_are_no_rows_per_sample_are_refused(self):
        # An output that does not lead with the batch, or that is an initializer, gives no row per sample:
        # an error naming it, before anything is written.
        import onnx
        from onnx import TensorProto as T
        from onnx import helper as h
        from onnx import numpy_helper as nh
        shape = nh.from_array(np.array([-1, 6], np.int64), "shape")
        w = nh.from_array(np.ones((3, 3), np.float32), "w")
        empty = nh.from_array(np.zeros((3, 0), np.float32), "empty")
        cases = [([h.make_node("Reshape", ["x", "shape"], ["y"])], "y", [shape], "does not lead with the batch"),
                 ([h.make_node("Relu", ["x"], ["r"])], "w", [w], "the output 'w' is an initializer"),
                 ([h.make_node("MatMul", ["x", "empty"], ["y"])], "y", [empty], "no values per sample")]
        x = np.ones((8, 3), np.float32)
        for nodes, out, inits, needle in cases:
            with self.subTest(needle=needle), tempfile.TemporaryDirectory() as t:
                g = h.make_graph(nodes, "bad", [h.make_tensor_value_info("x", T.FLOAT, ["N", 3])],
                                 [h.make_tensor_value_info(out, T.FLOAT, None)], inits)
                path = os.path.join(t, "bad.onnx")
                onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
                r = predict([path, "-"], stdin=npy_bytes(x))
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle.encode(), r.stderr)
                self.assertEqual(r.stdout, b"")

if __name__ == "__main__":
    cli_util.main()
