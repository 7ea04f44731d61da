#!/usr/bin/env python3
"""Checkpoints read with nothing but numpy and json: the safetensors layout, the checksum and every value.

Usage: checkpoint_numpy_check.py WRITER, where WRITER is the checkpoint_write_sample program. It writes a
checkpoint and a JSON file of what the checkpoint holds; this script reads the checkpoint on its own.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

MASK64 = (1 << 64) - 1
P1, P2, P3, P4, P5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                      0x27D4EB2F165667C5)

NUMPY_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2", "I32": "<i4", "I64": "<i8",
                "U8": "u1", "BOOL": "?"}


def rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK64


def lane(acc, value):
    acc = (acc + value * P2) & MASK64
    return (rotl(acc, 31) * P1) & MASK64


def xxh64(data, seed=0):
    """XXH64 from the published algorithm, independent of the C++ one (and slow: small files only)."""
    n = len(data)
    words = np.frombuffer(data[: n - n % 32], dtype="<u8").tolist()
    i = 0
    if n >= 32:
        acc = [(seed + P1 + P2) & MASK64, (seed + P2) & MASK64, seed, (seed - P1) & MASK64]
        for k in range(0, len(words), 4):
            acc = [lane(acc[j], words[k + j]) for j in range(4)]
        h = (rotl(acc[0], 1) + rotl(acc[1], 7) + rotl(acc[2], 12) + rotl(acc[3], 18)) & MASK64
        for a in acc:
            h = ((h ^ lane(0, a)) * P1 + P4) & MASK64
        i = n - n % 32
    else:
        h = (seed + P5) & MASK64
    h = (h + n) & MASK64
    while i + 8 <= n:
        h ^= lane(0, int.from_bytes(data[i : i + 8], "little"))
        h = (rotl(h, 27) * P1 + P4) & MASK64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i : i + 4], "little") * P1) & MASK64
        h = (rotl(h, 23) * P2 + P3) & MASK64
        i += 4
    while i < n:
        h ^= (data[i] * P5) & MASK64
        h = (rotl(h, 11) * P1) & MASK64
        i += 1
    h ^= h >> 33
    h = (h * P2) & MASK64
    h ^= h >> 29
    h = (h * P3) & MASK64
    h ^= h >> 32
    return h


def no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys in {keys}"
    return dict(pairs)


def values_of(dtype, raw, shape):
    a = np.frombuffer(raw, dtype=NUMPY_DTYPES[dtype]).reshape(shape)
    if dtype == "BF16":  # numpy has no bfloat16: its bits are the upper half of a float32
        a = (a.astype("<u4") << 16).view("<f4")
    return a


def check(ckpt, expected):
    data = open(ckpt, "rb").read()
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 == 0, "the header is padded so that the data starts at a multiple of 8"
    header_bytes = data[8 : 8 + n]
    payload = data[8 + n :]
    header = json.loads(header_bytes.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    assert header_bytes.rstrip(b" ").endswith(b"}"), "padding is spaces after the JSON object"

    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values()), "safetensors metadata values are strings"
    assert meta["format"] == "trainer-checkpoint"
    assert meta["format_version"] == "1"
    assert meta["producer"].startswith("trainer "), meta["producer"]
    for k, v in expected["metadata"].items():
        assert meta[k] == v, f"metadata {k}: {meta[k]!r} != {v!r}"
    assert set(meta) == set(expected["metadata"]) | {"format", "format_version", "producer", "checksum"}

    # The checksum as checkpoint.h defines it.
    algo, h_hex, p_hex = meta["checksum"].split(":")
    assert algo == "xxh64" and len(h_hex) == 16 and len(p_hex) == 16
    assert xxh64(payload) == int(p_hex, 16), "payload digest"
    needle = ('"checksum":"' + meta["checksum"] + '"').encode()
    at = data.index(needle) + len('"checksum":"xxh64:')
    zeroed = data[:at] + b"0" * 16 + data[at + 16 : 8 + n]
    assert xxh64(zeroed) == int(h_hex, 16), "header digest"

    # Tensors tile the payload, each aligned to its element size.
    spans = sorted((t["data_offsets"][0], t["data_offsets"][1], name) for name, t in header.items())
    end = 0
    for begin, stop, name in spans:
        assert begin == end, f"{name}: starts at {begin}, previous tensor ends at {end}"
        itemsize = np.dtype(NUMPY_DTYPES[header[name]["dtype"]]).itemsize
        assert (8 + n + begin) % itemsize == 0, f"{name}: aligned"
        end = stop
    assert end == len(payload), "the tensors cover the payload exactly"

    assert set(header) == set(expected["tensors"])
    for name, want in expected["tensors"].items():
        t = header[name]
        assert t["dtype"] == want["dtype"], name
        assert t["shape"] == want["shape"], name
        begin, stop = t["data_offsets"]
        got = values_of(t["dtype"], payload[begin:stop], t["shape"])
        kind = np.float64 if got.dtype.kind == "f" else object
        ref = np.array(want["values"], dtype=kind).reshape(want["shape"])
        if got.dtype.kind == "f":
            assert np.array_equal(got.astype(np.float64), ref), f"{name}: {got} != {ref}"
        else:
            assert got.astype(object).tolist() == ref.tolist(), f"{name}: {got} != {ref}"
    return header


def check_with_safetensors(ckpt, expected):
    """The safetensors package, when present, must read the same values (BF16 aside: numpy lacks it)."""
    try:
        from safetensors.numpy import load_file
    except ImportError:
        print("safetensors is not installed: its read is skipped")
        return
    try:
        loaded = load_file(ckpt)
    except TypeError:
        return  # older safetensors versions refuse BF16 with numpy
    for name, want in expected["tensors"].items():
        if want["dtype"] != "BF16":
            got = loaded[name].astype(np.float64).ravel()
            assert np.array_equal(got, np.array(want["values"], np.float64)), name


def main():
    assert xxh64(b"") == 0xEF46DB3751D8E999
    assert xxh64(b"abc") == 0x44BC2CF5AD770999
    assert xxh64(b"Nobody inspects the spammish repetition") == 0xFBCEA83C8A378BF1
    assert xxh64(b"a" * 32) == 0x856E843298F99AD7
    with tempfile.TemporaryDirectory() as d:
        ckpt, exp = os.path.join(d, "sample.ckpt"), os.path.join(d, "expected.json")
        subprocess.run([sys.argv[1], ckpt, exp], check=True)
        expected = json.load(open(exp))
        header = check(ckpt, expected)
        check_with_safetensors(ckpt, expected)
    print(f"ok: {len(header)} tensors and {len(expected['metadata'])} metadata keys read by numpy and json")


if __name__ == "__main__":
    main()
