"""sign / verify: OpenSSF model-signing, checked by the package's own `model_signing verify key` command."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from security_support import MODEL_SIGNING, flip_byte, reference_verify

from cli_runner import environment, expect_error, run, run_many
from onnxguard.bundle import SIGNATURE
from onnxguard.errors import BundleError, CheckFailed, InputError, Remedy
from onnxguard.trust import signing


@pytest.fixture
def signed(bundle_copy, keyset) -> Path:
    signing.sign(bundle_copy, keyset.private_key)
    return bundle_copy


def test_sign_and_verify(bundle_copy, keyset):
    result = signing.sign(bundle_copy, keyset.private_key)
    assert result.signature == bundle_copy / SIGNATURE and result.method == "key" and not result.replaced
    assert result.files == 3  # manifest.json, model.onnx, golden.npz
    report = signing.verify(bundle_copy, keyset.public_key)
    assert report.passed and report.detail == "verified"
    assert signing.verify(bundle_copy, keyset.public_key.read_bytes()).passed  # PEM bytes work too (the scanner's seam)
    assert report.raise_for_failure() is report


def test_reference_command_accepts_the_signature(signed, keyset, tmp_path):
    r = reference_verify(signed, keyset.public_key)
    assert r.returncode == 0 and "Verification succeeded" in r.stdout, r.stdout + r.stderr
    r = reference_verify(Path(os.path.relpath(signed, tmp_path)), keyset.public_key, cwd=tmp_path)  # relative paths
    assert r.returncode == 0, r.stdout + r.stderr


def test_renamed_bundle_still_verifies(signed, keyset, tmp_path):
    moved = tmp_path / "shipped-elsewhere"
    signed.rename(moved)
    assert reference_verify(moved, keyset.public_key).returncode == 0
    assert signing.verify(moved, keyset.public_key).passed


@pytest.mark.parametrize("rel", ["manifest.json", "model.onnx", "golden.npz"])
def test_one_changed_byte_in_any_file_fails_both_verifiers(signed, keyset, rel):
    flip_byte(signed / rel)
    r = reference_verify(signed, keyset.public_key)
    assert r.returncode != 0 and "Verification failed" in r.stderr, r.stdout + r.stderr
    report = signing.verify(signed, keyset.public_key)
    assert not report.passed and f"changed: {rel}" in report.detail
    with pytest.raises(CheckFailed, match="does not match its signature"):
        report.raise_for_failure()


def test_added_and_removed_files_fail_both_verifiers(signed, keyset):
    (signed / "extra.txt").write_text("smuggled")
    assert reference_verify(signed, keyset.public_key).returncode != 0
    assert "unsigned: extra.txt" in signing.verify(signed, keyset.public_key).detail
    (signed / "extra.txt").unlink()
    (signed / "golden.npz").unlink()
    assert reference_verify(signed, keyset.public_key).returncode != 0
    assert "missing: golden.npz" in signing.verify(signed, keyset.public_key).detail


def test_changed_signature_and_wrong_key_fail(signed, keyset, other_keyset):
    assert "another key" in signing.verify(signed, other_keyset.public_key).detail
    assert reference_verify(signed, other_keyset.public_key).returncode != 0
    sig = json.loads((signed / SIGNATURE).read_text())
    sig["dsseEnvelope"]["signatures"][0]["sig"] = sig["dsseEnvelope"]["signatures"][0]["sig"][::-1]
    (signed / SIGNATURE).write_text(json.dumps(sig))
    assert not signing.verify(signed, keyset.public_key).passed
    (signed / SIGNATURE).write_text("not a signature")
    report = signing.verify(signed, keyset.public_key)
    assert not report.passed and "does not verify" in report.detail


def test_unsigned_bundle_fails_verification(bundle_copy, keyset):
    report = signing.verify(bundle_copy, keyset.public_key)
    assert not report.passed and "not signed" in report.detail


def test_resign_replaces_the_signature(signed, other_keyset):
    result = signing.sign(signed, other_keyset.private_key)
    assert result.replaced
    assert reference_verify(signed, other_keyset.public_key).returncode == 0


def test_seal_then_sign_verifies_with_the_reference_command(sealed_copy, keyset):
    signing.sign(sealed_copy, keyset.private_key)
    assert reference_verify(sealed_copy, keyset.public_key).returncode == 0
    flip_byte(sealed_copy / "model.onnx.age")
    assert reference_verify(sealed_copy, keyset.public_key).returncode != 0


def test_a_modified_bundle_is_never_signed(bundle_copy, keyset):
    flip_byte(bundle_copy / "golden.npz")
    with pytest.raises(BundleError, match="golden.npz: does not match the sha256"):
        signing.sign(bundle_copy, keyset.private_key)
    assert not (bundle_copy / SIGNATURE).exists()


def test_encrypted_private_key(bundle_copy, tmp_path):
    key = ec.generate_private_key(ec.SECP384R1())
    path = tmp_path / "enc.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"s3cret")))
    with pytest.raises(InputError, match="enc.pem: the private key is encrypted") as e:
        signing.sign(bundle_copy, path)
    assert e.value.remedy is Remedy.PASSWORD  # the library names no flag; the CLI's is below
    with pytest.raises(InputError, match="wrong password"):
        signing.sign(bundle_copy, path, password="nope")
    signing.sign(bundle_copy, path, password="s3cret")
    pub = tmp_path / "enc.pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    assert reference_verify(bundle_copy, pub).returncode == 0
    r = run("sign", bundle_copy, "--key", path, "--password-env", "KEYPASS", env={"KEYPASS": "s3cret"})
    assert r.code == 0 and "re-signed" in r.out, str(r)
    expect_error(run("sign", bundle_copy, "--key", path, "--password-env", "KEYPASS"), 2, "KEYPASS", "not set")
    expect_error(run("sign", bundle_copy, "--key", path), 2,
                 f"{path}: the private key is encrypted; give --password-env")


# -- certificate mode (offline: a private CA made here) --------------------------------------------------

def _cert(subject: str, key, issuer_key, issuer: str, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = (b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False))
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test root", ca_key, ca_key, "test root", ca=True)
    leaf = _cert("model signer", leaf_key, ca_key, "test root", ca=False)
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "leaf.key").write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    return d


def test_certificate_signing(bundle_copy, pki, keyset, tmp_path):
    signing.sign_with_certificate(bundle_copy, pki / "leaf.key", pki / "leaf.pem", [pki / "ca.pem"])
    assert signing.verify_certificate(bundle_copy, [pki / "ca.pem"]).passed
    r = subprocess.run([str(MODEL_SIGNING), "verify", "certificate", "--signature", str(bundle_copy / SIGNATURE),
                        "--certificate_chain", str(pki / "ca.pem"), str(bundle_copy)],
                       capture_output=True, text=True, check=False, env=environment(), timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    other = tmp_path / "other-ca"
    shutil.copytree(pki, other)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    (other / "ca.pem").write_bytes(_cert("test root", ca_key, ca_key, "test root", True)
                                   .public_bytes(serialization.Encoding.PEM))
    assert not signing.verify_certificate(bundle_copy, [other / "ca.pem"]).passed  # an untrusted root
    with pytest.raises(InputError, match="not the pair of"):
        signing.sign_with_certificate(bundle_copy, keyset.private_key, pki / "leaf.pem")
    r = run("sign", bundle_copy, "--key", pki / "leaf.key", "--certificate", pki / "leaf.pem",
           "--certificate-chain", pki / "ca.pem")
    assert r.code == 0, str(r)
    r = run("verify", bundle_copy, "--certificate-chain", pki / "ca.pem", "--json")
    assert r.code == 0, str(r)
    report = json.loads(r.out)
    assert report["steps"][2] == {"step": 3, "name": "signature", "status": "passed",
                                  "detail": "verified (certificate)"}


# -- the CLI and its bad inputs ---------------------------------------------------------------------------

def test_sign_cli(bundle_copy, keyset):
    r = run("sign", bundle_copy, "--key", keyset.private_key, "--json")
    assert r.code == 0, str(r)
    assert json.loads(r.out)["signature"] == str(bundle_copy / SIGNATURE)
    assert reference_verify(bundle_copy, keyset.public_key).returncode == 0


def _write_key(path: Path, key, public: bool = False) -> Path:
    if public:
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    else:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return path


def test_sign_bad_inputs(bundle_copy, keyset, tmp_path):
    k = tmp_path
    rsa_key = _write_key(k / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ed_key = _write_key(k / "ed.pem", ed25519.Ed25519PrivateKey.generate())
    curve = _write_key(k / "k1.pem", ec.generate_private_key(ec.SECP256K1()))
    (k / "junk.pem").write_text("hello, not a key\n")
    cases = [
        (("sign", k / "missing", "--key", keyset.private_key), (k / "missing", "no such bundle")),
        (("sign", bundle_copy, "--key", k / "nope.pem"), (k / "nope.pem", "no such file")),
        (("sign", bundle_copy, "--key", k / "junk.pem"), (k / "junk.pem", "not a PEM file")),
        (("sign", bundle_copy, "--key", keyset.public_key), (keyset.public_key, "not a PEM private key")),
        (("sign", bundle_copy, "--key", rsa_key), (rsa_key, "RSA", "elliptic-curve")),
        (("sign", bundle_copy, "--key", ed_key), (ed_key, "Ed25519", "elliptic-curve")),
        (("sign", bundle_copy, "--key", curve), (curve, "secp256k1")),
        (("sign", bundle_copy), ("--key",)),
        (("sign", bundle_copy, "--key", keyset.private_key, "--sigstore"), ("--sigstore",)),
        (("sign", bundle_copy, "--key", keyset.private_key, "--certificate-chain", keyset.public_key),
         ("--certificate",)),
    ]
    for result, (_, fragments) in zip(run_many(*(c for c, _ in cases)), cases, strict=True):
        expect_error(result, 2, *fragments)
    assert not (bundle_copy / SIGNATURE).exists()
    flip_byte(bundle_copy / "model.onnx")
    expect_error(run("sign", bundle_copy, "--key", keyset.private_key), 2, bundle_copy / "model.onnx", "sha256")
    assert not (bundle_copy / SIGNATURE).exists()


def test_verify_bad_key_inputs(signed, keyset, tmp_path):
    (tmp_path / "junk.pem").write_text("junk")
    rsa_pub = _write_key(tmp_path / "rsa.pub", rsa.generate_private_key(public_exponent=65537, key_size=2048), True)
    cases = [
        (("verify", signed, "--public-key", tmp_path / "junk.pem"), (tmp_path / "junk.pem", "not a PEM")),
        (("verify", signed, "--public-key", keyset.private_key), (keyset.private_key, "private key")),
        (("verify", signed, "--public-key", tmp_path / "none.pem"), (tmp_path / "none.pem", "no such file")),
        (("verify", signed, "--public-key", rsa_pub), (rsa_pub, "RSA")),
    ]
    for result, (_, fragments) in zip(run_many(*(c for c, _ in cases)), cases, strict=True):
        expect_error(result, 2, *fragments)
    with pytest.raises(InputError, match="not a PEM"):
        signing.verify(signed, b"not pem")


def test_sigstore_without_network_is_one_clear_error(bundle_copy, tmp_path):
    """Keyless signing needs an OIDC token and Fulcio: here it must fail as one line, exit 2, never a traceback.
    (Offline it fails refreshing Sigstore's TUF metadata; with a network, on the malformed token.)"""
    home = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data")}
    r = run("sign", bundle_copy, "--sigstore", "--identity-token-env", "TOKEN", env={"TOKEN": "not-a-jwt", **home})
    expect_error(r, 2, "Sigstore keyless signing failed")
    assert not (bundle_copy / SIGNATURE).exists()


@pytest.mark.parametrize("load", [signing.load_public_key, signing.load_private_key])
def test_a_key_that_is_a_fifo_or_huge_is_refused_unread(tmp_path, load):
    """Keys and certificates are read like any untrusted file: a FIFO never stalls, a huge file is not read."""
    fifo = tmp_path / "key.pem"
    os.mkfifo(fifo)
    box: list[BaseException] = []
    worker = threading.Thread(target=lambda: box.append(pytest.raises(InputError, load, fifo).value), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a FIFO as a key blocked"
    assert len(box) == 1 and str(box[0]) == f"{fifo}: is a FIFO, not a regular file", box
    huge = tmp_path / "huge.pem"
    with open(huge, "wb") as f:
        f.truncate(signing.MAX_PEM_BYTES + 1)
    with pytest.raises(InputError, match=r"huge\.pem: 1\.0 MiB, over the 1\.0 MiB limit for a PEM .* key, not read"):
        load(huge)


def test_a_manifest_that_no_longer_parses_is_named_by_the_signature_check(signed, keyset):
    """The signature covers manifest.json: a damaged one is reported as changed, as the door reports it."""
    (signed / "manifest.json").write_bytes(b"{ not json")
    report = signing.verify(signed, keyset.public_key)
    assert not report.passed and "changed: manifest.json" in report.detail, report
