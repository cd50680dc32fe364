"""onnxguard target --to mobile|edge: ORT format files that load and pass the golden set, with provenance."""

from __future__ import annotations

import json

import pytest

from onnxguard import bundle, runtime
from onnxguard.accuracy import parity
from onnxguard.bundle import digest
from onnxguard.trust import sealing


@pytest.mark.parametrize("kind", ["mobile", "edge"])
def test_target_makes_ort_files_that_pass_the_golden_set(cli, digits_bundle, tmp_path, kind):
    plain, _, _ = digits_bundle
    out = tmp_path / kind
    r = cli("target", "--allow-unsigned", plain, "--to", kind, "-o", out)
    assert r.code == 0, r
    assert "PASSED" in r.out and "ort_format_model" not in r.out + r.err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.ort", "model.with_runtime_opt.ort",
                                                      "required_operators.config",
                                                      "runtime_opt.required_operators.config"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "onnxguard-target/1" and m["kind"] == kind
    assert m["parent"]["manifest_sha256"] == digest.file(plain / bundle.MANIFEST)
    assert all(m["files"][n]["sha256"] == digest.file(out / n) for n in m["files"])
    assert "ai.onnx" in m["operators"] and all(s["passed"] for s in m["parity"].values())
    config = (out / "required_operators.config").read_text()
    assert "ai.onnx;" in config and str(tmp_path) not in config
    b = bundle.read(plain)
    for name in ("model.ort", "model.with_runtime_opt.ort"):  # each loads in the Python runtime and agrees
        outs = runtime.run(runtime.session((out / name).read_bytes()), b.golden().inputs)
        report = parity.compare(b.golden().references, outs, {"output": parity.SCORES})
        assert report.passed, report
    assert [p.name for p in tmp_path.iterdir()] == [kind]  # nothing left beside it


def test_sealed_bundle_needs_its_identity_and_leaves_no_plaintext_outside(cli, expect_err, digits_bundle, tmp_path):
    _, sealed, k = digits_bundle
    expect_err(cli("target", "--allow-unsigned", sealed, "--to", "mobile", "-o", tmp_path / "t"), 1,
               "opened without its identity", "--identity")
    r = cli("target", "--allow-unsigned", sealed, "--to", "mobile", "-o", tmp_path / "t", "--identity", k.age_identity)
    assert r.code == 0, r
    plaintext = sealing.open_model(bundle.read(sealed), k.age_identity)
    assert [p.name for p in tmp_path.iterdir()] == ["t"]
    assert all(p.read_bytes() != plaintext for p in (tmp_path / "t").iterdir())


def test_bad_kind_and_existing_output(cli, expect_err, digits_bundle, tmp_path):
    plain, _, _ = digits_bundle
    expect_err(cli("target", "--allow-unsigned", plain, "--to", "toaster", "-o", tmp_path / "t"), 2, "toaster")
    (tmp_path / "exists").mkdir()
    expect_err(cli("target", "--allow-unsigned", plain, "--to", "edge", "-o", tmp_path / "exists"), 2, "exists",
               "--overwrite")


def test_a_target_that_fails_midway_leaves_nothing(digits_bundle, tmp_path, monkeypatch):
    """Staged with staging.atomic_dir: a failure after the ORT files were written removes them, scratch included."""
    from onnxguard import target, trust
    from onnxguard.errors import CheckFailed
    from onnxguard.target import ortformat

    plain, _, _ = digits_bundle

    def drifted(*args, **kwargs):
        raise CheckFailed("drifted")

    monkeypatch.setattr(ortformat.parity, "compare", drifted)
    opened = trust.open_bundle(plain, trust.TrustPolicy(trust.UnsafeUnsigned()))
    with pytest.raises(CheckFailed, match="drifted"):
        target.make(opened, "edge", tmp_path / "t")
    assert list(tmp_path.iterdir()) == []
