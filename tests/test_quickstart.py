"""onnxguard quickstart: train the digits CNN, build a bundle through the real pipeline, show what a user needs."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxguard import bundle
from onnxguard.trust import sealing


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory, cli):
    workdir = tmp_path_factory.mktemp("quickstart") / "work"
    cwd = tmp_path_factory.mktemp("quickstart-cwd")
    r = cli("quickstart", "--workdir", workdir, cwd=cwd)
    assert list(cwd.iterdir()) == [], "quickstart wrote outside its --workdir"
    return workdir, r


def test_quickstart_runs_and_reports(quickstart):
    workdir, r = quickstart
    assert r.code == 0, str(r)
    assert "Traceback" not in r.err
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", r.out)[1])
    assert accuracy > 95.0
    assert re.search(r"parity[^\n]*: PASSED \(\d+ examples", r.out), r.out
    assert f"bundle: {(workdir / 'bundle').resolve()}" in r.out
    assert "predictions on test images" in r.out
    rows = re.findall(r"│ (\d)\s+│ (\d)\s+│\s+[\d.]+%\s+│ (ok|wrong)", r.out)
    assert len(rows) == 8 and all((t == p) == (v == "ok") for t, p, v in rows), r.out
    assert sum(v == "ok" for *_, v in rows) >= 6
    for text in ("IR version", "opset", "parameters", "image: float32 [batch, 1, 8, 8]", "labels"):
        assert text in r.out, text


def test_quickstart_bundle_reads_back_and_classifies_digits(quickstart):
    from onnxguard.examples import digits

    workdir, r = quickstart
    assert r.code == 0, str(r)
    b = bundle.read(workdir / "bundle")
    m = b.manifest
    assert m.name == "digits-cnn" and m.labels == [str(i) for i in range(10)]
    assert m.source.framework == "pytorch" and m.source.identifier.endswith("digits_cnn.pt2")
    assert m.parity.passed and m.golden.origin == "npz"
    assert float(m.metadata["test_accuracy"]) > 0.95 and m.metadata["dataset"] == "sklearn digits"
    assert (workdir / "digits_cnn.pt2").is_file()
    # independent of onnxguard's own numbers: the shipped model on the held-out digits
    data = digits.load_data()
    assert m.sealed is not None and (workdir / "bundle" / "model.sig").is_file()  # sealed, then signed
    assert "verify (signature, every hash, golden set on this runtime): PASSED" in r.out
    text = " ".join(r.out.split())  # rich wraps long lines at the console's width
    assert "served on http://127.0.0.1:" in text and "without one: 401" in text and "records, verified" in text
    from onnxguard.serve import audit

    log = audit.verify(workdir / "serve" / "audit.db")
    assert log.passed and [r_.status for _, r_ in audit.tail(workdir / "serve" / "audit.db")] == [200, 401]
    model = sealing.open_model(b, workdir / "keys" / "age-identity.txt")  # decrypted in memory
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: data.x_test})[0]
    assert (logits.argmax(1) == data.y_test).mean() > 0.95
    assert np.isfinite(logits).all()


def test_quickstart_ends_with_every_target_consistent(quickstart, cli):
    workdir, r = quickstart
    assert r.code == 0, str(r)
    table = r.out[r.out.index("consistency vs the source framework: PASSED"):]
    for row in ("digits-cnn (bundle)", "digits-cnn.int8.onnx", "mobile/model.ort", "web/index.html (Chromium, WASM)"):
        assert re.search(re.escape(row) + r"[^\n]*│ ok", table), row
    assert "skipped" not in r.out
    targets = workdir / "targets"
    assert (targets / "web" / "index.html").is_file() and (targets / "mobile" / "model.ort").is_file()
    # the same check from the command line, then on a tampered copy of the INT8 variant
    identity = workdir / "keys" / "age-identity.txt"
    ok = cli("consistency", "--allow-unsigned", workdir / "bundle", targets / "digits-cnn.int8.onnx",
             "--identity", identity)
    assert ok.code == 0 and "PASSED" in ok.out, ok
    model = onnx.load(targets / "digits-cnn.int8.onnx")
    weight = max(model.graph.initializer, key=lambda i: np.prod(i.dims))  # the INT8 weights of the widest layer
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr.flat[::3] = arr.flat[::3][::-1]  # a third of them shuffled
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, targets.parent / "tampered.int8.onnx")
    bad = cli("consistency", "--allow-unsigned", workdir / "bundle", targets.parent / "tampered.int8.onnx",
              "--identity", identity)
    assert bad.code == 1 and "FAILED" in bad.out, bad
