"""keygen: a P-256 signing key pair and an age identity; never overwrites a key."""

from __future__ import annotations

import json
import stat

import pyrage
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cli_runner import expect_error, run
from onnxguard.errors import InputError
from onnxguard.trust import keys


def test_generate_writes_a_usable_key_set(tmp_path):
    k = keys.generate(tmp_path / "new" / "keys")  # parents are created
    private = serialization.load_pem_private_key(k.private_key.read_bytes(), None)
    public = serialization.load_pem_public_key(k.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert private.public_key() == public
    for secret in (k.private_key, k.age_identity):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    identity_lines = [s for s in k.age_identity.read_text().splitlines() if s and not s.startswith("#")]
    identity = pyrage.x25519.Identity.from_str(identity_lines[0])
    assert str(identity.to_public()) == k.recipient == k.age_recipient.read_text().strip()
    assert f"# public key: {k.recipient}" in k.age_identity.read_text()  # the layout of age-keygen's output
    assert pyrage.decrypt(pyrage.encrypt(b"x", [pyrage.x25519.Recipient.from_str(k.recipient)]), [identity]) == b"x"


@pytest.mark.parametrize("existing", [keys.PRIVATE_KEY, keys.PUBLIC_KEY, keys.AGE_IDENTITY, keys.AGE_RECIPIENT])
def test_generate_never_overwrites_and_writes_nothing(tmp_path, existing):
    (tmp_path / existing).write_text("precious")
    with pytest.raises(InputError, match=f"{existing}: already exists"):
        keys.generate(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]
    assert (tmp_path / existing).read_text() == "precious"


def test_keygen_cli(tmp_path):
    r = run("keygen", "--out", tmp_path / "k", "--json")
    assert r.code == 0, str(r)
    info = json.loads(r.out)
    assert info["recipient"].startswith("age1") and (tmp_path / "k" / keys.AGE_IDENTITY).is_file()
    expect_error(run("keygen", "--out", tmp_path / "k"), 2, str(tmp_path / "k" / keys.PRIVATE_KEY), "already exists",
                 "; choose another --out")  # keygen's own spelling of the output remedy
    (tmp_path / "file").write_text("x")
    expect_error(run("keygen", "--out", tmp_path / "file"), 2, str(tmp_path / "file"), "not a directory")
