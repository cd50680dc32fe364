"""verify: signature, every manifest hash, sealed plaintext, and golden drift on this machine's runtime."""

from __future__ import annotations

import json
import os

import pytest
from security_support import flip_byte, og, og_many, one_error, relist

from onnxguard.bundle import golden
from onnxguard.trust import signing, verify
from onnxguard.errors import InputError


def test_plain_unsigned_bundle(bundle_copy):
    report = verify.verify(bundle_copy)
    assert report.passed and report.signature == verify.UNSIGNED and report.plaintext.startswith("n/a")
    assert [f.status for f in report.files] == ["ok", "ok"] and report.golden_status == "not requested"


def test_signed_sealed_bundle_everything_checked(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    report = verify.verify(sealed_copy)
    assert report.passed and report.signature == verify.NOT_CHECKED  # present, no key: reported, not a failure
    report = verify.verify(sealed_copy, keyset.public_key, golden=True, identity=keyset.age_identity)
    assert report.passed, report.failures
    assert report.signature == verify.VERIFIED and report.plaintext == "checked" and report.golden_status == "passed"
    assert {o.name for o in report.golden.outputs} == set(report.build_max_abs)
    d = report.to_dict()
    assert d["passed"] and d["signature"] == {"status": "verified", "method": "key", "detail": "verified"}
    assert d["golden"]["tolerance"] == {"atol": 1e-4, "rtol": 1e-3, "min_cosine": 0.9999, "min_label_agreement": 1.0}


def test_every_problem_is_reported_at_once(sealed_copy, keyset, other_keyset):
    signing.sign(sealed_copy, keyset.private_key)
    flip_byte(sealed_copy / "golden.npz.age")
    (sealed_copy / "model.onnx.age").unlink()
    (sealed_copy / "notes.txt").write_text("x")
    os.symlink("/etc/passwd", sealed_copy / "link")
    report = verify.verify(sealed_copy, other_keyset.public_key, golden=True, identity=keyset.age_identity)
    assert not report.passed
    assert {(f.file, f.status) for f in report.files} == {
        ("golden.npz.age", "changed"), ("model.onnx.age", "missing"), ("notes.txt", "unexpected"), ("link", "symlink")}
    assert report.signature == verify.FAILED and report.golden_status.startswith("skipped")
    text = " | ".join(report.failures)
    for fragment in ("signature:", "golden.npz.age: changed", "model.onnx.age: missing", "notes.txt: unexpected",
                     "link: symlink", "golden: not run"):
        assert fragment in text


def _drift(bundle, factor: float) -> None:
    """Scale the stored reference outputs (an unsigned bundle: the manifest is made to agree)."""
    g = golden.load(bundle / "golden.npz")
    refs = [{k: (v * factor if v.dtype.kind == "f" else v) for k, v in batch.items()} for batch in g.references]
    golden.GoldenSet(g.inputs, tuple(refs)).save(bundle / "golden.npz")
    relist(bundle, "golden.npz")


def test_golden_drift_fails(bundle_copy):
    _drift(bundle_copy, 1.05)
    report = verify.verify(bundle_copy, golden=True)
    assert not report.passed and report.golden_status == "failed"
    assert any("drifted from the source's reference outputs" in f and "probabilities" in f for f in report.failures)
    assert [f.status for f in report.files] == ["ok", "ok"]  # the hashes agree: only the outputs tell


def test_golden_within_tolerance_passes(bundle_copy):
    _drift(bundle_copy, 1.0 + 1e-6)
    assert verify.verify(bundle_copy, golden=True).passed


def test_replaced_sealed_file_is_a_failed_check(sealed_copy, keyset):
    import pyrage

    (sealed_copy / "golden.npz.age").write_bytes(
        pyrage.encrypt(b"other", [pyrage.x25519.Recipient.from_str(keyset.recipient)]))
    relist(sealed_copy, "golden.npz.age")
    report = verify.verify(sealed_copy, identity=keyset.age_identity)
    assert not report.passed and report.plaintext == "failed"
    assert any("sealed file was replaced" in f for f in report.failures)


def test_sealed_golden_needs_an_identity(sealed_copy, other_keyset):
    with pytest.raises(InputError, match="no age identity"):
        verify.verify(sealed_copy, golden=True)
    with pytest.raises(InputError, match="none of the given identities"):
        verify.verify(sealed_copy, golden=True, identity=other_keyset.age_identity)
    report = verify.verify(sealed_copy)  # hashes only: fine without an identity
    assert report.passed and report.plaintext.startswith("not checked")


# -- the CLI ------------------------------------------------------------------------------------------------

def test_verify_cli_pass_and_fail(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    ok = og("verify", sealed_copy, "--public-key", keyset.public_key, "--golden", "-i", keyset.age_identity)
    assert ok.code == 0 and "PASSED" in ok.out and "verified (key)" in ok.out, str(ok)
    flip_byte(sealed_copy / "manifest.json", 40)
    runs = og_many(("verify", sealed_copy, "--public-key", keyset.public_key),
                   ("verify", sealed_copy, "--public-key", keyset.public_key, "--json"))
    line = one_error(runs[0], 1, str(sealed_copy), "verification failed", "signature")
    assert "FAILED" in runs[0].out and line  # the report first, on stdout; then one line on stderr
    report = json.loads(runs[1].out)
    assert runs[1].code == 1 and not report["passed"] and report["signature"]["status"] == "failed"
    assert set(report) == {"bundle", "name", "version", "passed", "signature", "files", "sealed", "plaintext",
                           "golden_status", "golden", "failures"}


def test_verify_cli_golden_drift_exit_1(bundle_copy):
    _drift(bundle_copy, 2.0)
    r = og("verify", bundle_copy, "--golden", "--json")
    assert r.code == 1 and json.loads(r.out)["golden"]["passed"] is False, str(r)
    one_error(r, 1, "drifted")


def test_verify_cli_bad_inputs(built, sealed_copy, keyset, other_keyset, tmp_path):
    no_golden = tmp_path / "no-golden"
    no_golden.mkdir()
    m = json.loads((built.path / "manifest.json").read_text())
    m["golden"] = None
    m["files"].pop("golden.npz")
    (no_golden / "manifest.json").write_text(json.dumps(m))
    (no_golden / "model.onnx").write_bytes((built.path / "model.onnx").read_bytes())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    cases = [
        (("verify", tmp_path / "nope"), (tmp_path / "nope", "no such bundle"), 2),
        (("verify", keyset.public_key.parent), ("manifest.json", "not a bundle"), 2),
        (("verify", sealed_copy, "--golden"), ("no age identity",), 2),
        (("verify", sealed_copy, "--golden", "-i", other_keyset.age_identity),
         (sealed_copy / "model.onnx.age", "none of the given identities"), 2),
        (("verify", sealed_copy, "--golden", "-i", tmp_path / "none"), (tmp_path / "none", "no such identity file"), 2),
        (("verify", no_golden, "--golden"), (no_golden, "no golden set"), 2),
        (("verify", built.path, "--sigstore-identity", "me@example.com"), ("issuer",), 2),
        (("verify", built.path, "--public-key", keyset.public_key, "--certificate-chain", keyset.public_key),
         ("not several",), 2),
        (("verify", broken), (broken / "manifest.json", "not valid JSON"), 1),
    ]
    runs = og_many(*(c for c, _, _ in cases))
    for run, (_, fragments, code) in zip(runs, cases, strict=True):
        one_error(run, code, *fragments)
