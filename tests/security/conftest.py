"""Fixtures for the sign/seal/verify tests: one small scikit-learn bundle built once per session, key sets,
and private copies of the bundle for tests that change it."""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from onnxguard.trust import keys, sealing


@dataclass(frozen=True)
class Built:
    path: Path
    marker: str  # a random string written into the model's metadata: present in the plaintext ONNX only


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Built:
    """A bundle built from a LogisticRegression on iris (skops), optimize none: model.onnx + golden.npz."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from onnxguard.build import BuildOptions, build

    d = tmp_path_factory.mktemp("security-src")
    x, y = load_iris(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), d / "iris.skops")
    marker = "plaintext-marker-" + secrets.token_hex(16)
    result = build(str(d / "iris.skops"), d / "bundle", BuildOptions(optimize="none", meta={"marker": marker}))
    return Built(result.bundle.path, marker)


@pytest.fixture(scope="session")
def keyset(tmp_path_factory) -> keys.KeyPaths:
    return keys.generate(tmp_path_factory.mktemp("keys") / "k")


@pytest.fixture(scope="session")
def other_keyset(tmp_path_factory) -> keys.KeyPaths:
    return keys.generate(tmp_path_factory.mktemp("keys-other") / "k")


@pytest.fixture
def bundle_copy(tmp_path, built) -> Path:
    """A private copy of the built bundle (plain, unsigned)."""
    dest = tmp_path / "bundle"
    shutil.copytree(built.path, dest)
    return dest


@pytest.fixture
def sealed_copy(bundle_copy, keyset) -> Path:
    """A private copy, sealed in place to ``keyset``'s age recipient."""
    sealing.seal(bundle_copy, [keyset.recipient])
    return bundle_copy


@dataclass(frozen=True)
class SshKeys:
    ed25519: Path
    ed25519_pub: str
    rsa: Path
    rsa_pub: str
    ecdsa_pub: str  # age does not take ECDSA ssh keys


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory) -> SshKeys:
    """OpenSSH key pairs made with cryptography (no ssh-keygen needed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    d = tmp_path_factory.mktemp("ssh")
    made = {}
    for name, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                      ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ecdsa", ec.generate_private_key(ec.SECP256R1()))):
        (d / name).write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                 serialization.NoEncryption()))
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        made[name] = pub.decode() + " tester@example"
    return SshKeys(d / "ed25519", made["ed25519"], d / "rsa", made["rsa"], made["ecdsa"])
