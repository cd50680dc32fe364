"""verify: the bundle door's numbered steps (manifest, files, signature, sealed plaintext, scan), all reported,
and golden drift on this machine's runtime; fail closed."""

from __future__ import annotations

import json
import os

import pytest
from security_support import flip_byte, relist

from cli_runner import expect_error, run, run_many
from onnxguard.bundle import golden
from onnxguard.errors import InputError
from onnxguard.trust import PublicKeys, Status, Step, TrustPolicy, UnsafeUnscanned, UnsafeUnsigned, signing, verify

UNSIGNED = TrustPolicy(UnsafeUnsigned())


def _key(keyset) -> TrustPolicy:
    return TrustPolicy(PublicKeys((keyset.public_key,)))


def test_plain_unsigned_bundle_passes_only_under_unsafe_unsigned(bundle_copy):
    report = verify.verify(bundle_copy, UNSIGNED)
    assert report.passed and report.trust.step(Step.SIGNATURE).status is Status.WAIVED
    assert report.trust.step(Step.PLAINTEXT).status is Status.NOT_APPLICABLE
    assert [f.status.value for f in report.trust.files] == ["ok", "ok"]
    assert report.golden_status is verify.GoldenStatus.NOT_REQUESTED and report.trust.waivers == ("UnsafeUnsigned",)
    no_rule = verify.verify(bundle_copy, TrustPolicy(None))
    assert not no_rule.passed and no_rule.trust.step(Step.SIGNATURE).status is Status.NOT_CHECKED


def test_signed_bundle_without_a_key_is_not_checked_and_fails(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    report = verify.verify(sealed_copy, TrustPolicy(None), identity=keyset.age_identity)
    assert not report.passed
    assert report.trust.step(Step.SIGNATURE).status is Status.NOT_CHECKED
    assert any("signature" in f and "no key was given" in f for f in report.failures)


def test_signed_sealed_bundle_everything_checked(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    report = verify.verify(sealed_copy, _key(keyset), golden=True, identity=keyset.age_identity)
    assert report.passed, report.failures
    assert [s.status for s in report.trust.steps] == [Status.PASSED] * 5
    assert report.trust.signer.startswith("key sha256:") and report.golden_status is verify.GoldenStatus.PASSED
    d = report.to_dict()
    assert d["passed"] and [s["name"] for s in d["steps"]] == ["manifest", "files", "signature", "plaintext", "scan"]
    assert d["golden"]["passed"] and d["golden"]["targets"][0]["kind"] == "fp32"


def test_sealed_bundle_without_identity_fails_unless_waived(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    report = verify.verify(sealed_copy, _key(keyset))
    assert not report.passed
    assert report.trust.step(Step.PLAINTEXT).status is Status.NOT_CHECKED
    assert report.trust.step(Step.SCAN).status is Status.NOT_CHECKED
    waived = verify.verify(sealed_copy, TrustPolicy(PublicKeys((keyset.public_key,)), UnsafeUnscanned()))
    assert waived.passed and waived.trust.step(Step.SCAN).status is Status.WAIVED
    assert waived.trust.waivers == ("UnsafeUnscanned",)


def test_every_problem_is_reported_at_once(sealed_copy, keyset, other_keyset):
    signing.sign(sealed_copy, keyset.private_key)
    flip_byte(sealed_copy / "golden.npz.age")
    (sealed_copy / "model.onnx.age").unlink()
    (sealed_copy / "notes.txt").write_text("x")
    os.symlink("/etc/passwd", sealed_copy / "link")
    report = verify.verify(sealed_copy, _key(other_keyset), golden=True, identity=keyset.age_identity)
    assert not report.passed
    assert {(f.file, f.status.value) for f in report.trust.files} == {
        ("golden.npz.age", "changed"), ("model.onnx.age", "missing"), ("notes.txt", "unexpected"), ("link", "symlink")}
    assert report.trust.step(Step.SIGNATURE).status is Status.FAILED
    assert report.golden_status is verify.GoldenStatus.SKIPPED
    text = " | ".join(report.failures)
    for fragment in ("signature:", "golden.npz.age: does not match",
                     "model.onnx.age: listed in the manifest but missing", "notes.txt: not listed",
                     "link: is a symlink", "golden: not run"):
        assert fragment in text


def _drift(bundle, factor: float) -> None:
    """Scale the stored reference outputs (an unsigned bundle: the manifest is made to agree)."""
    g = golden.load(bundle / "golden.npz")
    refs = [{k: (v * factor if v.dtype.kind == "f" else v) for k, v in batch.items()} for batch in g.references]
    golden.GoldenSet(g.inputs, tuple(refs)).save(bundle / "golden.npz")
    relist(bundle, "golden.npz")


def test_golden_drift_fails(bundle_copy):
    _drift(bundle_copy, 1.05)
    report = verify.verify(bundle_copy, UNSIGNED, golden=True)
    assert not report.passed and report.golden_status is verify.GoldenStatus.FAILED
    assert any("drifted from the source's reference outputs" in f and "max |diff|" in f for f in report.failures)
    assert [f.status.value for f in report.trust.files] == ["ok", "ok"]  # the hashes agree: only the outputs tell


def test_golden_within_tolerance_passes(bundle_copy):
    _drift(bundle_copy, 1.0 + 1e-6)
    assert verify.verify(bundle_copy, UNSIGNED, golden=True).passed


def test_replaced_sealed_file_is_a_failed_check(sealed_copy, keyset):
    import pyrage

    (sealed_copy / "golden.npz.age").write_bytes(
        pyrage.encrypt(b"other", [pyrage.x25519.Recipient.from_str(keyset.recipient)]))
    relist(sealed_copy, "golden.npz.age")
    report = verify.verify(sealed_copy, UNSIGNED, identity=keyset.age_identity)
    assert not report.passed and report.trust.step(Step.PLAINTEXT).status is Status.FAILED
    assert any("sealed file was replaced" in f for f in report.failures)


def test_sealed_golden_needs_an_identity(sealed_copy, other_keyset):
    with pytest.raises(InputError, match="none of the given identities"):
        verify.verify(sealed_copy, UNSIGNED, golden=True, identity=other_keyset.age_identity)
    report = verify.verify(sealed_copy, UNSIGNED, golden=True)  # nothing opens the golden set: not run, a failure
    assert not report.passed and report.golden_status is verify.GoldenStatus.SKIPPED


# -- the CLI ------------------------------------------------------------------------------------------------

def test_verify_cli_pass_and_fail(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    ok = run("verify", sealed_copy, "--public-key", keyset.public_key, "--golden", "-i", keyset.age_identity)
    assert ok.code == 0 and "PASSED" in ok.out and "verified (key sha256:" in ok.out, str(ok)
    flip_byte(sealed_copy / "manifest.json", 40)
    runs = run_many(("verify", sealed_copy, "--public-key", keyset.public_key),
                   ("verify", sealed_copy, "--public-key", keyset.public_key, "--json"))
    line = expect_error(runs[0], 1, str(sealed_copy), "verification failed", "signature")
    assert "FAILED" in runs[0].out and line  # the report first, on stdout; then one line on stderr
    report = json.loads(runs[1].out)
    assert runs[1].code == 1 and not report["passed"]
    assert {s["name"]: s["status"] for s in report["steps"]}["signature"] == "failed"
    assert set(report) == {"bundle", "name", "version", "passed", "digest", "signer", "waivers", "steps", "files",
                           "scan", "golden_status", "golden", "failures"}


def test_verify_cli_signed_bundle_without_key_exits_1(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    r = run("verify", sealed_copy, "-i", keyset.age_identity)
    line = expect_error(r, 1, str(sealed_copy), "signature", "no key was given")
    assert "--public-key" in line and "--allow-unsigned" in line
    assert run("verify", sealed_copy, "-i", keyset.age_identity, "--allow-unsigned").code == 0
    assert run("verify", sealed_copy, "--public-key", keyset.public_key).code == 1  # sealed: not decrypted, not scanned
    assert run("verify", sealed_copy, "--public-key", keyset.public_key, "--allow-unscanned").code == 0


def test_verify_cli_golden_drift_exit_1(bundle_copy):
    _drift(bundle_copy, 2.0)
    r = run("verify", bundle_copy, "--golden", "--json", "--allow-unsigned")
    assert r.code == 1 and json.loads(r.out)["golden"]["passed"] is False, str(r)
    expect_error(r, 1, "drifted")


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
        (("verify", sealed_copy, "--golden", "--allow-unsigned"), ("opened without its identity", "--identity"), 1),
        (("verify", sealed_copy, "--golden", "-i", other_keyset.age_identity),
         (sealed_copy / "model.onnx.age", "none of the given identities"), 2),
        (("verify", sealed_copy, "--golden", "-i", tmp_path / "none"), (tmp_path / "none", "no such identity file"), 2),
        (("verify", no_golden, "--golden", "--allow-unsigned"), (no_golden, "no golden set"), 2),
        (("verify", built.path, "--allow-unsigned", "--public-key", keyset.public_key), ("--allow-unsigned",), 2),
        (("verify", built.path, "--sigstore-identity", "me@example.com"), ("issuer",), 2),
        (("verify", built.path, "--public-key", keyset.public_key, "--certificate-chain", keyset.public_key),
         ("not several",), 2),
        (("verify", broken), (broken / "manifest.json", "not valid JSON"), 1),
    ]
    runs = run_many(*(c for c, _, _ in cases))
    for result, (_, fragments, code) in zip(runs, cases, strict=True):
        expect_error(result, code, *fragments)
