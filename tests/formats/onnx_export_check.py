#!/usr/bin/env python3
"""Checks the models that the C++ onnx_export suite exported: Python onnx's full checker, the header, names and
symbolic batch, then onnxruntime on the saved inputs at two batch sizes against the engine's saved outputs.

Usage: onnx_export_check.py FIXTURE_DIR   (FIXTURE_DIR holds manifest.json, written by formats.onnx_export)
Exit 0 when every case passes, 1 on a failure, 77 (skipped) when onnx, onnxruntime or numpy is missing.
"""
import json
import os
import sys

TOLERANCE = 1e-5

try:
    import numpy as np
    import onnx
    import onnxruntime as ort
except ImportError as e:
    print(f"skipped: {e} (tools/install-deps.sh installs numpy, onnx and onnxruntime)")
    sys.exit(77)


def check_case(root, case):
    path = os.path.join(root, case["model"])
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.producer_name == "trainer", model.producer_name
    opsets = {o.domain: o.version for o in model.opset_import}
    assert opsets == {"": case["opset"]}, opsets

    graph = model.graph
    assert [v.name for v in graph.input] == case["inputs"], [v.name for v in graph.input]
    assert [v.name for v in graph.output] == case["outputs"], [v.name for v in graph.output]
    for v in list(graph.input) + list(graph.output):
        dim0 = v.type.tensor_type.shape.dim[0]
        assert dim0.dim_param == "batch", f"{v.name}: leading dimension {dim0}"
    names = {t.name for t in graph.initializer}
    missing = [n for n in case["initializers"] if n not in names]
    assert not missing, f"initializers missing: {missing}"

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batches = set()
    worst = 0.0
    for run in case["runs"]:
        feeds = {name: np.load(os.path.join(root, f)) for name, f in zip(case["inputs"], run["x"])}
        got = session.run(case["outputs"], feeds)
        for name, f, y in zip(case["outputs"], run["y"], got):
            want = np.load(os.path.join(root, f))
            assert y.shape == want.shape, f"{name} at batch {run['batch']}: shape {y.shape}, want {want.shape}"
            assert y.shape[0] == run["batch"]
            err = float(np.max(np.abs(y.astype(np.float64) - want.astype(np.float64)) / np.maximum(1.0, np.abs(want))))
            worst = max(worst, err)
            assert err <= TOLERANCE, f"{name} at batch {run['batch']}: differs by {err:.3g} (tolerance {TOLERANCE})"
        batches.add(run["batch"])
    assert len(batches) >= 2, f"runs at one batch size only: {batches}"
    return worst, sorted(batches)


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    root = sys.argv[1]
    with open(os.path.join(root, "manifest.json")) as f:
        cases = json.load(f)["cases"]
    if not cases:
        print("manifest.json lists no cases")
        return 1
    failed = 0
    for case in cases:
        try:
            worst, batches = check_case(root, case)
            print(f"ok   {case['name']}: opset {case['opset']}, batches {batches}, max error {worst:.2g}")
        except Exception as e:  # report every case, then fail
            failed += 1
            print(f"FAIL {case['name']}: {type(e).__name__}: {e}")
    print(f"{len(cases) - failed} of {len(cases)} exported models match the engine in onnxruntime")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
