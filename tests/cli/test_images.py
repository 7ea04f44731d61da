"""Image folders as Keras's image_dataset_from_directory gives them: trainer fit reads folders of class folders
of PNG, JPEG, BMP and GIF files, each decoded to the input's channels and resized to its height and width,
labelled by its folder; trainer predict of such a checkpoint takes image files and folders of them, read the
same way."""

import os
import tempfile
import unittest

import numpy as np

import cli_util
from cli_util import run

try:
    from PIL import Image
except ImportError:  # reported as a skip, never as a pass
    Image = None

SPEC = """format_version = 1
[model]
input = [12, 12, 3]
[[model.layers]]
type = "Conv2D"
filters = 6
kernel_size = 3
activation = "relu"
[[model.layers]]
type = "GlobalAveragePooling2D"
[[model.layers]]
type = "Dense"
units = 2
activation = "softmax"
[data]
scale = 0.00392156862745098
[data.train]
format = "images"
x = "shapes/train"
[data.validation]
format = "images"
x = "shapes/val"
[train]
loss = "sparse_categorical_crossentropy"
metrics = ["accuracy"]
epochs = 12
batch_size = 16
[train.optimizer]
name = "adam"
learning_rate = 0.02
"""


def resized(a, h, w):
    """Bilinear resizing with half-pixel centres (Keras's), rounded to 8 bits, written independently."""
    def taps(n_in, n_out):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo
    y0, y1, ty = taps(a.shape[0], h)
    x0, x1, tx = taps(a.shape[1], w)
    a = a.astype(np.float64)
    top = a[y0][:, x0] * (1 - tx)[None, :, None] + a[y0][:, x1] * tx[None, :, None]
    bottom = a[y1][:, x0] * (1 - tx)[None, :, None] + a[y1][:, x1] * tx[None, :, None]
    # Halves round up (np.round would round them to even), whatever the arithmetic's last bit.
    v = top * (1 - ty)[:, None, None] + bottom * ty[:, None, None]
    return np.clip(np.floor(v + 0.5 + 1e-9), 0, 255).astype(np.uint8)


@unittest.skipIf(Image is None, "needs Pillow (tools/install-deps.sh installs it)")
class Images(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        rng = np.random.default_rng(3)
        for split, n in (("train", 40), ("val", 12)):
            for k, cls in enumerate(("bright", "dark")):
                folder = self.path("shapes", split, cls)
                os.makedirs(folder)
                for i in range(n):
                    h, w = (int(v) for v in rng.integers(9, 20, 2))
                    base = 170 if cls == "bright" else 40
                    a = (base + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
                    # PNGs of every size (resized), JPEGs at the input's size, and a grey PNG.
                    if i % 3 == 0:
                        Image.fromarray(resized(a, 12, 12)).save(os.path.join(folder, f"{i}.jpg"), quality=95)
                    elif i % 7 == 0:
                        Image.fromarray(a[:, :, 0]).save(os.path.join(folder, f"{i}.png"))
                    else:
                        Image.fromarray(a).save(os.path.join(folder, f"{i}.png"))
        with open(self.path("shapes", "train", "bright", "notes.txt"), "w") as f:
            f.write("not an image: left out")

    def path(self, *names):
        return os.path.join(self.tmp.name, *names)

    def expected(self, path):
        """The sample trainer makes of an image file, by Pillow's decoding and the resizing above."""
        img = Image.open(path)
        a = np.asarray(img.convert("RGB") if img.mode != "L" else img)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        return resized(a, 12, 12)

    def test_fit_trains_on_image_folders_and_predict_reads_images_as_fit_did(self):
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC)
        out = self.path("run")
        r = run(["fit", spec, "--output-dir", out])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Training on 80 samples, validating on 24", r.stderr)
        last = [e for e in cli_util.json_lines(self, r.stdout) if e["event"] == "epoch"][-1]
        self.assertGreater(last["val_accuracy"], 0.9)
        ckpt = os.path.join(out, "last.ckpt")

        # predict on a folder and a file gives what it gives on the same images as an NPY made here.
        folder = self.path("shapes", "val", "dark")
        files = sorted((f for f in os.listdir(folder) if f.endswith((".png", ".jpg"))),
                       key=lambda f: int(f.split(".")[0]))
        one = self.path("shapes", "val", "bright", "1.png")
        got = cli_util.predict_rows(self, [ckpt, folder, one])
        self.assertEqual(got.shape, (len(files) + 1, 2))
        np.save(self.path("x.npy"), np.stack([self.expected(os.path.join(folder, f)) for f in files] +
                                             [self.expected(one)]))
        want = cli_util.predict_rows(self, [ckpt, self.path("x.npy")])
        png = [i for i, f in enumerate(files) if f.endswith(".png")] + [len(files)]
        np.testing.assert_array_equal(got[png], want[png])  # PNG: the same bytes
        np.testing.assert_allclose(got, want, atol=2e-3)     # JPEG: decoders may differ by one level
        self.assertTrue((got[:-1, 1] > 0.5).all())  # the dark ones
        self.assertGreater(got[-1, 0], 0.5)

    def test_bmp_and_gif_files_decode_as_pillow_decodes_them(self):
        # Pillow writes BMPs of 1, 8 (grey and palette), 24 and 32 bits, and GIFs (a palette with a
        # transparent colour, interlaced, and an animation whose first frame counts); fit reads them among the
        # PNGs, and predict on them gives what it gives on Pillow's pixels of them.
        rng = np.random.default_rng(5)
        made = []
        for k, cls in enumerate(("bright", "dark")):
            folder = self.path("shapes", "train", cls)
            for i in range(6):
                h, w = (int(v) for v in rng.integers(9, 20, 2))
                a = ((170 if cls == "bright" else 40) + rng.integers(0, 60, (h, w, 3))).astype(np.uint8)
                img = Image.fromarray(a)
                name = os.path.join(folder, f"extra{i}")
                if i == 0:
                    img.save(name + ".bmp")                                    # 24 bits
                elif i == 1:
                    Image.fromarray(np.dstack([a, a[:, :, :1]])).save(name + ".BMP")  # 32 bits, alpha unused
                elif i == 2:
                    img.convert("L").save(name + ".bmp")                       # 8 bits, grey table
                elif i == 3:
                    img.quantize(16).save(name + ".bmp")                       # 8 bits, a palette of 16
                    img.convert("1").save(name + "_1bit.bmp")                  # 1 bit
                    made.append(name + "_1bit.bmp")
                elif i == 4:
                    p = Image.fromarray(a.repeat(2, 0).repeat(2, 1)).quantize(32)  # 18 or more: interlaced
                    pal = p.getpalette()[:96]
                    pal[0:3] = [0, 0, 0]                   # the transparent colour is black, as trainer reads it
                    p.putpalette(pal)
                    p.save(name + ".gif", transparency=0, interlace=True)
                else:
                    frames = [img.quantize(64), Image.fromarray(255 - a).quantize(64)]
                    frames[0].save(name + ".gif", save_all=True, append_images=frames[1:], duration=100)
                made.append(name + (".bmp" if i in (0, 2, 3) else ".BMP" if i == 1 else ".gif"))
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.replace("epochs = 12", "epochs = 1"))
        r = run(["fit", spec, "--output-dir", self.path("run")])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Training on 94 samples", r.stderr)
        ckpt = self.path("run", "last.ckpt")
        got = cli_util.predict_rows(self, [ckpt] + made)

        def pillow(path):
            with Image.open(path) as img:
                img.seek(0)
                return resized(np.asarray(img.convert("RGB")), 12, 12)

        np.save(self.path("x.npy"), np.stack([pillow(p) for p in made]))
        want = cli_util.predict_rows(self, [ckpt, self.path("x.npy")])
        np.testing.assert_array_equal(got, want)

    def test_the_flowers_sample_on_folders_of_photos(self):
        # samples/flowers/cnn.toml as a user runs it, on five class folders of JPEGs of several sizes beside a
        # LICENSE.txt, as flower_photos unpacks.
        rng = np.random.default_rng(9)
        root = self.path("flower_photos")
        for k, cls in enumerate(("daisy", "dandelion", "roses", "sunflowers", "tulips")):
            os.makedirs(os.path.join(root, cls))
            for i in range(6):
                h, w = (int(v) for v in rng.integers(120, 260, 2))
                a = (rng.integers(0, 50, (h, w, 3)) + 40 * k).astype(np.uint8)
                Image.fromarray(a).save(os.path.join(root, cls, f"{i}_{k}.jpg"), quality=90)
        with open(os.path.join(root, "LICENSE.txt"), "w") as f:
            f.write("licences")
        out = self.path("flowers_run")
        r = run(["fit", cli_util.sample("flowers/cnn.toml"), "--output-dir", out, "--set", f"data.train.x={root}",
                 "--set", "train.epochs=1", "--set", "train.batch_size=8"], timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("Training on 24 samples, validating on 6", r.stderr)
        rows = cli_util.predict_rows(self, [os.path.join(out, "last.ckpt"), os.path.join(root, "roses")], ndmin=2)
        self.assertEqual(rows.shape, (6, 5))

    def test_a_categorical_loss_gets_one_hot_labels_and_trains_as_the_sparse_one(self):
        # Keras's label_mode "categorical": the same classes as one-hot rows, so the same losses.
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC.replace("epochs = 12", "epochs = 2"))
        losses = {}
        for loss in ("sparse_categorical_crossentropy", "categorical_crossentropy"):
            r = run(["fit", spec, "--set", f"train.loss={loss}"])
            self.assertEqual(r.returncode, 0, r.stderr)
            losses[loss] = [(e["loss"], e["val_loss"]) for e in cli_util.json_lines(self, r.stdout)
                            if e["event"] == "epoch"]
        np.testing.assert_allclose(losses["categorical_crossentropy"], losses["sparse_categorical_crossentropy"],
                                   rtol=1e-5)

    def test_bad_images_and_inputs_are_input_errors(self):
        spec = self.path("spec.toml")
        with open(spec, "w") as f:
            f.write(SPEC)
        with open(self.path("shapes", "train", "dark", "broken.jpg"), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 cut short")
        cli_util.assert_input_error(self, run(["fit", spec, "--output-dir", self.path("run")]), "broken.jpg",
                                    "JPEG image cannot be decoded")
        self.assertFalse(os.path.exists(self.path("run", "last.ckpt")))
        os.remove(self.path("shapes", "train", "dark", "broken.jpg"))
        with open(spec, "w") as f:
            f.write(SPEC.replace("input = [12, 12, 3]", "input = [12, 12, 2]"))
        cli_util.assert_input_error(self, run(["fit", spec]), "spec.toml:", "with 1, 3 or 4 channels")


if __name__ == "__main__":
    cli_util.main()
