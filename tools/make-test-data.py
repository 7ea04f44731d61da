#!/usr/bin/env python3
"""Writes small datasets in the exact file formats of CIFAR-10 (binary version) and IMDB (token ids as NPY), for
tests and documentation where the real data cannot be downloaded. The data are synthetic but learnable: each class
has its own image pattern, and each review sentiment its own words. Pure Python: no numpy needed.

  tools/make-test-data.py cifar10 OUT_DIR [--per-batch N] [--seed S]
      OUT_DIR/data_batch_1.bin .. data_batch_5.bin, test_batch.bin, batches.meta.txt
  tools/make-test-data.py fashion OUT_DIR [--train N] [--test N] [--seed S]
      OUT_DIR/train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz,
      t10k-labels-idx1-ubyte.gz: 28x28 grey images, 10 classes (the Fashion-MNIST file names and IDX format)
  tools/make-test-data.py imdb OUT_DIR [--train N] [--test N] [--maxlen L] [--num-words V] [--seed S]
      OUT_DIR/x_train.npy (int32 [N, L]), y_train.npy (int64 [N]), x_test.npy, y_test.npy
"""

import argparse
import gzip
import os
import random
import struct
import sys

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_class_images(cls, variants, rng):
    """Noisy variants of one class's pattern: a base colour and stripes whose direction and period depend on the
    class. Each image is 3072 bytes, channel-major (all red, then green, then blue), 32x32 row-major."""
    base = [(37 * cls + 40) % 256, (91 * cls + 120) % 256, (53 * cls + 200) % 256]
    period = 3 + cls % 5
    horizontal = cls % 2 == 0
    images = []
    for _ in range(variants):
        img = bytearray(3072)
        for c in range(3):
            for y in range(32):
                for x in range(32):
                    stripe = ((y if horizontal else x) // period) % 2
                    v = base[c] + (60 if stripe else -60) + rng.randint(-40, 40)
                    img[c * 1024 + y * 32 + x] = max(0, min(255, v))
        images.append(bytes(img))
    return images


def write_cifar10(out, per_batch, seed):
    rng = random.Random(seed)
    images = [cifar_class_images(c, 16, rng) for c in range(10)]
    os.makedirs(out, exist_ok=True)
    names = [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        records = []
        for _ in range(per_batch):
            label = rng.randrange(10)
            records.append(bytes([label]) + rng.choice(images[label]))
        with open(os.path.join(out, name), "wb") as f:
            f.write(b"".join(records))
    with open(os.path.join(out, "batches.meta.txt"), "w") as f:
        f.write("\n".join(CIFAR_CLASSES) + "\n\n")
    print(f"wrote {len(names)} CIFAR-10 batches of {per_batch} records ({per_batch * 3073} bytes each) to {out}")


def write_npy(path, typecode, descr, shape, values):
    """A version 1.0 .npy file: magic, header dict padded so the data start on a 64-byte boundary, C-order data."""
    count = 1
    for d in shape:
        count *= d
    assert len(values) == count
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    data = struct.pack(f"<{count}{typecode}", *values)
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1") + data)


def imdb_reviews(n, maxlen, num_words, rng):
    """Token ids as Keras's imdb.load_data gives them (1 = start of review, 2 = out of vocabulary, words from 3 on),
    padded and truncated at the front to maxlen as keras.utils.pad_sequences does. Positive reviews use more of one
    band of words, negative ones more of another."""
    positive_words = range(10, 60)
    negative_words = range(60, 110)
    xs, ys = [], []
    for _ in range(n):
        label = rng.randrange(2)
        length = rng.randint(maxlen // 4, maxlen + maxlen // 4)
        seq = [1]
        for _ in range(length - 1):
            r = rng.random()
            if r < 0.12:
                seq.append(rng.choice(positive_words if label else negative_words))
            elif r < 0.14:
                seq.append(2)
            else:
                # Common words are frequent: a rough Zipf law over the vocabulary.
                seq.append(min(num_words - 1, 3 + int(rng.paretovariate(1.0))))
        seq = seq[-maxlen:]
        xs.extend([0] * (maxlen - len(seq)) + seq)
        ys.append(label)
    return xs, ys


def write_imdb(out, n_train, n_test, maxlen, num_words, seed):
    if num_words < 110:
        sys.exit("make-test-data.py: --num-words must be at least 110")
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        xs, ys = imdb_reviews(n, maxlen, num_words, rng)
        write_npy(os.path.join(out, f"x_{split}.npy"), "i", "<i4", (n, maxlen), xs)
        write_npy(os.path.join(out, f"y_{split}.npy"), "q", "<i8", (n,), ys)
    print(f"wrote IMDB-format token ids ({n_train} train, {n_test} test, maxlen {maxlen}, {num_words} words) to {out}")


def write_fashion(out, n_train, n_test, seed):
    """IDX files named like Fashion-MNIST's: each class a bright band at its own rows, plus noise."""
    rng = random.Random(seed)
    os.makedirs(out, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = bytearray(), bytearray()
        for _ in range(n):
            cls = rng.randrange(10)
            labels.append(cls)
            top = 2 + 2 * cls
            for r in range(28):
                band = top <= r < top + 4
                images.extend(min(255, (200 if band else 20) + rng.randrange(50)) for _ in range(28))
        with gzip.open(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), "wb") as fh:
            fh.write(struct.pack(">iiii", 2051, n, 28, 28) + bytes(images))
        with gzip.open(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"), "wb") as fh:
            fh.write(struct.pack(">ii", 2049, n) + bytes(labels))
    print(f"wrote Fashion-MNIST-format IDX files ({n_train} train, {n_test} test) to {out}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("cifar10", help="CIFAR-10 binary batches")
    c.add_argument("out")
    c.add_argument("--per-batch", type=int, default=500, help="records per batch file (the real ones hold 10000)")
    c.add_argument("--seed", type=int, default=0)
    fa = sub.add_parser("fashion", help="Fashion-MNIST-format IDX files (gzip)")
    fa.add_argument("out")
    fa.add_argument("--train", type=int, default=2048)
    fa.add_argument("--test", type=int, default=512)
    fa.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("imdb", help="IMDB reviews as padded int32 token ids in .npy files")
    i.add_argument("out")
    i.add_argument("--train", type=int, default=2000)
    i.add_argument("--test", type=int, default=500)
    i.add_argument("--maxlen", type=int, default=200)
    i.add_argument("--num-words", type=int, default=10000)
    i.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.what == "cifar10":
        write_cifar10(a.out, a.per_batch, a.seed)
    elif a.what == "fashion":
        write_fashion(a.out, a.train, a.test, a.seed)
    else:
        write_imdb(a.out, a.train, a.test, a.maxlen, a.num_words, a.seed)


if __name__ == "__main__":
    main()
