"""seal / unseal / open in memory: age (pyrage) encryption at rest of the model and the golden set."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import pyrage
import pytest
from security_support import flip_byte, reference_verify, relist

from cli_runner import expect_error, run, run_many
from onnxguard import bundle, runtime
from onnxguard.bundle import SIGNATURE, digest, golden
from onnxguard.cli import trusting
from onnxguard.errors import BundleError, InputError, Remedy
from onnxguard.trust import sealing, signing


def test_seal_in_place(built, bundle_copy, keyset):
    before = bundle.read(bundle_copy)
    model, gold = (bundle_copy / "model.onnx").read_bytes(), (bundle_copy / "golden.npz").read_bytes()
    result = sealing.seal(bundle_copy, [keyset.recipient])
    assert result.files == (("model.onnx", "model.onnx.age"), ("golden.npz", "golden.npz.age"))
    assert sorted(p.name for p in bundle_copy.iterdir()) == ["golden.npz.age", "manifest.json", "model.onnx.age"]
    b = bundle.read(bundle_copy)  # every .age file matches the manifest
    m = b.manifest
    assert b.sealed and m.model.file == "model.onnx.age" and m.golden.file == "golden.npz.age"
    assert m.model.sha256 == before.manifest.model.sha256 == digest.data(model)  # still the plaintext's
    assert set(m.files) == {"model.onnx.age", "golden.npz.age"}
    for rel, entry in m.files.items():
        assert entry.sha256 == digest.file(bundle_copy / rel)
        assert (bundle_copy / rel).read_bytes().startswith(b"age-encryption.org/v1\n")
    assert m.sealed.recipients == [keyset.recipient] and not m.sealed.passphrase and m.sealed.key_file is None
    assert m.sealed.files["golden.npz.age"].sha256 == digest.data(gold)
    assert built.marker.encode() not in (bundle_copy / "model.onnx.age").read_bytes()
    with pytest.raises(BundleError, match="sealed.*age-encrypted") as e:
        b.model_bytes()
    assert e.value.remedy is Remedy.IDENTITY
    with pytest.raises(BundleError, match="sealed"):
        b.golden()
    assert sealing.open_model(b, keyset.age_identity) == model
    assert sealing.open_golden(bundle_copy, keyset.age_identity).to_bytes() == golden.from_bytes(gold).to_bytes()


def test_sealed_model_runs_from_memory(built, sealed_copy, keyset):
    plain = bundle.read(built.path)
    sess = runtime.session(sealing.open_model(sealed_copy, keyset.age_identity))
    g = plain.golden()
    ours = runtime.run(sess, g.inputs)
    ref = runtime.run(runtime.session(plain.model_bytes()), g.inputs)
    for a, b in zip(ours, ref, strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert runtime.session(sealing.open_model(built.path)).get_inputs()[0].name  # a plain bundle: no identity


def test_identity_sources(sealed_copy, keyset, monkeypatch):
    model = sealing.open_model(sealed_copy, keyset.age_identity)
    secret = next(s for s in keyset.age_identity.read_text().splitlines() if s.startswith("AGE-SECRET-KEY-1"))
    assert sealing.open_model(sealed_copy, secret) == model  # the key itself
    assert sealing.open_model(sealed_copy, sealing.identities(keyset.age_identity)) == model  # parsed identities
    # The library never reads the environment: only the command line does (tests/security/test_sealing CLI cases).
    monkeypatch.setenv("ONNXGUARD_AGE_IDENTITY", str(keyset.age_identity))
    with pytest.raises(InputError, match="no age identity was given") as e:
        sealing.open_model(sealed_copy)
    assert e.value.remedy is Remedy.IDENTITY


def test_several_recipients_and_ssh_keys(bundle_copy, keyset, other_keyset, ssh_keys):
    model = (bundle_copy / "model.onnx").read_bytes()
    sealing.seal(bundle_copy, [keyset.recipient, other_keyset.recipient, ssh_keys.ed25519_pub, ssh_keys.rsa_pub])
    m = bundle.read(bundle_copy).manifest
    assert m.sealed.recipients[2] == " ".join(ssh_keys.ed25519_pub.split()[:2])  # the key comment is not kept
    for identity in (keyset.age_identity, other_keyset.age_identity, ssh_keys.ed25519, ssh_keys.rsa):
        assert sealing.open_model(bundle_copy, identity) == model


@pytest.mark.slow  # each passphrase operation runs age's scrypt at the work factor rage calibrates: ~2 s here
def test_passphrase(bundle_copy, keyset, monkeypatch):
    model = (bundle_copy / "model.onnx").read_bytes()
    sealing.seal(bundle_copy, [keyset.recipient], passphrase="correct horse")
    b = bundle.read(bundle_copy)
    assert b.manifest.sealed.passphrase and b.manifest.sealed.key_file == sealing.KEY_FILE
    assert sealing.KEY_FILE in b.manifest.files  # listed and hashed like every file
    assert b.manifest.sealed.recipients == [keyset.recipient]  # the passphrase's own key is not a listed recipient
    assert sealing.open_model(b, passphrase="correct horse") == model
    assert sealing.open_model(b, keyset.age_identity) == model  # recipients still work
    with pytest.raises(InputError, match="wrong passphrase"):
        sealing.open_model(b, passphrase="wrong")
    # a passphrase alone; unseal drops the key file
    plain = sealing.unseal(b, keyset.age_identity, bundle_copy.parent / "plain")
    assert sealing.KEY_FILE not in plain.manifest.files
    only = sealing.seal(plain.path, [], bundle_copy.parent / "only-passphrase", passphrase="pw").bundle
    assert only.manifest.sealed.recipients == []
    assert sealing.open_model(only, passphrase="pw") == model
    with pytest.raises(InputError, match="not sealed with a passphrase"):
        sealed = sealing.seal(plain.path, [keyset.recipient], plain.path.parent / "x").bundle
        sealing.open_model(sealed, passphrase="pw")
    with pytest.raises(InputError, match="passphrase is empty"):
        sealing.seal(plain.path, [], plain.path.parent / "y", passphrase="")


def test_unseal_restores_the_bundle_exactly(built, sealed_copy, keyset, tmp_path):
    out = sealing.unseal(sealed_copy, keyset.age_identity, tmp_path / "plain")
    for rel in ("manifest.json", "model.onnx", "golden.npz"):
        assert (out.path / rel).read_bytes() == (built.path / rel).read_bytes(), rel
    with pytest.raises(InputError, match="already exists"):
        sealing.unseal(sealed_copy, keyset.age_identity, tmp_path / "plain")
    with pytest.raises(InputError, match="not into the sealed bundle"):
        sealing.unseal(sealed_copy, keyset.age_identity, sealed_copy)
    with pytest.raises(InputError, match="not sealed"):
        sealing.unseal(out, keyset.age_identity, tmp_path / "again")


def test_signed_bundle_is_sealed_into_a_new_directory_only(bundle_copy, keyset, tmp_path):
    signing.sign(bundle_copy, keyset.private_key)
    with pytest.raises(InputError, match="seal first, then sign"):
        sealing.seal(bundle_copy, [keyset.recipient])
    assert (bundle_copy / "model.onnx").is_file()  # untouched
    result = sealing.seal(bundle_copy, [keyset.recipient], tmp_path / "sealed")
    assert result.dropped_signature and not (tmp_path / "sealed" / SIGNATURE).exists()
    assert signing.verify(bundle_copy, keyset.public_key).passed  # the source is as it was
    with pytest.raises(InputError, match="already sealed"):
        sealing.seal(tmp_path / "sealed", [keyset.recipient])


def test_wrong_identity_and_damaged_files(sealed_copy, keyset, other_keyset, tmp_path):
    with pytest.raises(InputError, match="none of the given identities can decrypt it"):
        sealing.open_model(sealed_copy, other_keyset.age_identity)
    age = sealed_copy / "model.onnx.age"
    # a changed byte: the manifest's sha256 of the .age file catches it before any decryption
    damaged = tmp_path / "damaged"
    shutil.copytree(sealed_copy, damaged)
    flip_byte(damaged / "model.onnx.age")
    with pytest.raises(BundleError, match="model.onnx.age: does not match the sha256"):
        sealing.open_model(damaged, keyset.age_identity)
    # ... and with the manifest made to agree (no signature to stop it), age's authentication catches it
    relist(damaged, "model.onnx.age")
    with pytest.raises(BundleError, match="cannot decrypt.*damaged"):
        sealing.open_model(damaged, keyset.age_identity)
    # a valid age file of another plaintext, made with only the PUBLIC recipient: the plaintext sha256 catches it
    swapped = tmp_path / "swapped"
    shutil.copytree(sealed_copy, swapped)
    (swapped / "model.onnx.age").write_bytes(
        pyrage.encrypt(b"not the model", [pyrage.x25519.Recipient.from_str(keyset.recipient)]))
    relist(swapped, "model.onnx.age")
    with pytest.raises(BundleError, match="sealed file was replaced"):
        sealing.open_model(swapped, keyset.age_identity)
    with pytest.raises(BundleError, match="sealed file was replaced"):
        sealing.check(swapped, keyset.age_identity)
    assert age.is_file()


def test_seal_is_atomic(bundle_copy, keyset, monkeypatch):
    """A failure while sealing leaves the bundle as it was and no temporary directory behind."""
    before = {p.name: p.read_bytes() for p in bundle_copy.iterdir()}
    calls = []

    def failing(reader, writer, recipients):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return pyrage.encrypt_io(reader, writer, recipients)

    monkeypatch.setattr(sealing.seal.__globals__["pyrage"], "encrypt_io", failing)
    with pytest.raises(InputError, match="No space left"):
        sealing.seal(bundle_copy, [keyset.recipient])
    assert {p.name: p.read_bytes() for p in bundle_copy.iterdir()} == before
    assert sorted(p.name for p in bundle_copy.parent.iterdir()) == ["bundle"]


# -- the CLI and its bad inputs ---------------------------------------------------------------------------

def test_seal_and_unseal_cli(built, bundle_copy, keyset, other_keyset, ssh_keys, tmp_path):
    rfile = tmp_path / "recipients.txt"
    rfile.write_text(f"# team\n{other_keyset.recipient}\n\n{ssh_keys.ed25519_pub}\n")
    r = run("seal", bundle_copy, "-r", keyset.recipient, "--recipients-file", rfile, "--passphrase-env", "PW", "--json",
           env={"PW": "pw"})
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert info["passphrase"] and len(info["recipients"]) == 3
    assert info["files"] == {"model.onnx": "model.onnx.age", "golden.npz": "golden.npz.age"}
    runs = run_many(("unseal", bundle_copy, "-i", ssh_keys.ed25519, "-o", tmp_path / "u1"),
                   ("unseal", bundle_copy, "-o", tmp_path / "u2", "--passphrase-env", "PW"),
                   ("unseal", bundle_copy, "-o", tmp_path / "u3"),
                   env={"PW": "pw", trusting.IDENTITY_ENV: str(other_keyset.age_identity)})
    for result in runs:
        assert result.code == 0 and "unsealed" in result.out, str(result)
    for n in ("u1", "u2", "u3"):
        for rel in ("manifest.json", "model.onnx", "golden.npz"):
            assert (tmp_path / n / rel).read_bytes() == (built.path / rel).read_bytes(), (n, rel)


def test_seal_bad_inputs(bundle_copy, keyset, other_keyset, ssh_keys, tmp_path):
    bad_file = tmp_path / "bad-recipients.txt"
    bad_file.write_text(f"{keyset.recipient}\nnot-a-recipient\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("# nobody\n")
    secret = next(s for s in keyset.age_identity.read_text().splitlines() if s.startswith("AGE-SECRET-KEY-1"))
    cases = [
        (("seal", tmp_path / "nope", "-r", keyset.recipient), (tmp_path / "nope", "no such bundle")),
        (("seal", bundle_copy), (bundle_copy, "no recipient", "give --recipient age1...")),
        (("seal", bundle_copy, "-r", "age1xyz"), ("--recipient", "'age1xyz'", "not a valid recipient")),
        (("seal", bundle_copy, "-r", "hello"), ("'hello'", "not a recipient", "age1")),
        (("seal", bundle_copy, "-r", secret), ("secret key", "age1")),
        (("seal", bundle_copy, "-r", ssh_keys.ecdsa_pub), ("not a recipient", "ssh-ed25519")),
        (("seal", bundle_copy, "-R", bad_file), (f"{bad_file}:2", "'not-a-recipient'")),
        (("seal", bundle_copy, "-R", empty), (empty, "no recipients")),
        (("seal", bundle_copy, "-R", tmp_path / "none.txt"), (tmp_path / "none.txt", "no such file")),
        (("seal", bundle_copy, "--passphrase-env", "UNSET_VAR"), ("UNSET_VAR", "not set")),
        (("seal", bundle_copy, "-r", keyset.recipient, "-o", bundle_copy), (bundle_copy, "is also an input")),
    ]
    for result, (_, fragments) in zip(run_many(*(c for c, _ in cases)), cases, strict=True):
        expect_error(result, 2, *fragments)
    assert (bundle_copy / "model.onnx").is_file() and not (bundle_copy / "model.onnx.age").exists()


def test_unseal_bad_inputs(sealed_copy, keyset, other_keyset, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(sealed_copy, damaged)
    flip_byte(damaged / "golden.npz.age")
    (tmp_path / "junk.txt").write_text("nothing here\n")
    (tmp_path / "pub.txt").write_text(keyset.recipient + "\n")
    out = tmp_path / "out"
    cases = [
        (("unseal", sealed_copy, "-i", other_keyset.age_identity, "-o", out),
         (sealed_copy / "model.onnx.age", "none of the given identities", keyset.recipient), 2),
        (("unseal", sealed_copy, "-i", tmp_path / "junk.txt", "-o", out),
         (tmp_path / "junk.txt", "not an age identity"), 2),
        (("unseal", sealed_copy, "-i", tmp_path / "pub.txt", "-o", out),
         (tmp_path / "pub.txt", "a recipient (public)"), 2),
        (("unseal", sealed_copy, "-i", tmp_path / "none.txt", "-o", out),
         (tmp_path / "none.txt", "no such identity file"), 2),
        (("unseal", sealed_copy, "-o", out), ("no age identity", trusting.IDENTITY_ENV), 2),
        (("unseal", sealed_copy, "-i", keyset.age_identity, "-o", out, "--passphrase-env", "UNSET_VAR"),
         ("UNSET_VAR",), 2),
        (("unseal", sealed_copy, "-i", keyset.age_identity, "-o", sealed_copy), ("not into the sealed bundle",), 2),
        (("unseal", damaged, "-i", keyset.age_identity, "-o", out), (damaged / "golden.npz.age", "sha256"), 2),
        (("unseal", keyset.age_identity.parent, "-i", keyset.age_identity, "-o", out),
         ("manifest.json", "not a bundle"), 2),
    ]
    runs = run_many(*(c for c, _, _ in cases))
    for result, (_, fragments, code) in zip(runs, cases, strict=True):
        expect_error(result, code, *fragments)
    r = run("unseal", sealed_copy, "-i", keyset.age_identity)  # no -o: a usage error from the parser, exit 2
    assert r.code == 2 and "--output" in r.err and "Traceback" not in r.err, str(r)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary directory left


def test_assets_travel_through_seal_sign_and_unseal(built, keyset, tmp_path):
    """Preprocessing assets (tokenizer/...) stay plaintext, listed and signed; unseal keeps them and is 0700."""
    src = bundle.read(built.path)
    (tmp_path / "tok.json").write_text('{"vocab": ["a"]}')
    with_assets = bundle.write(tmp_path / "b", src.manifest, src.model_bytes(), src.golden(),
                               {"tokenizer/tokenizer.json": tmp_path / "tok.json"})
    sealing.seal(with_assets.path, [keyset.recipient])
    signing.sign(with_assets.path, keyset.private_key)
    sealed = bundle.read(with_assets.path)
    assert "tokenizer/tokenizer.json" in sealed.manifest.files
    assert reference_verify(with_assets.path, keyset.public_key).returncode == 0
    out = sealing.unseal(sealed, keyset.age_identity, tmp_path / "plain")
    assert (out.path / "tokenizer" / "tokenizer.json").read_text() == '{"vocab": ["a"]}'
    assert stat.S_IMODE(out.path.stat().st_mode) == 0o700
    assert sorted(out.manifest.files) == ["golden.npz", "model.onnx", "tokenizer/tokenizer.json"]
