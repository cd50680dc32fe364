"""The key broker, in process: it releases the identity, wrapped to the attested key, only to a fresh
attestation that matches the owner's policy; a replayed attestation is refused."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import orjson
import pyrage
import pytest

from onnxguard.confidential import attestation, envelope, keybroker
from onnxguard.confidential.attestation import ModelFacts
from onnxguard.confidential.platform import SimulationPlatform
from onnxguard.confidential.platform.simulation import generate_key, load_private_key
from onnxguard.confidential.policy import ExpectedPolicy
from onnxguard.errors import InputError

DIGEST = hashlib.sha256(b"manifest").hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("broker")
    pk = generate_key(root / "platform")
    identity = f"# test\n{pyrage.x25519.Identity.generate()}\n".encode()
    expected = ExpectedPolicy.of(platforms=["simulation"], platform_keys=[pk.public_key], code_measurements=["local"],
                                 bundle_digests=[DIGEST])
    platform = SimulationPlatform(load_private_key(pk.private_key))
    keys = envelope.ServerKeys.generate()
    facts = attestation.facts(platform, [ModelFacts("digits", DIGEST, "0" * 64, None)], keys.public)
    return keybroker.Broker(identity, expected), identity, platform, keys, facts


def ask(broker, platform, facts):
    nonce = bytes.fromhex(broker.nonce()["nonce"])
    body = orjson.dumps({"attestation": attestation.attest(facts, platform, nonce).to_dict()})
    return body, broker.release(body)


def test_release_is_wrapped_to_the_attested_key(setup):
    broker, identity, platform, keys, facts = setup
    body, result = ask(broker, platform, facts)
    assert result.released and result.reason == "released" and result.digest == DIGEST
    wrapped = base64.b64decode(result.response["wrapped"])
    assert identity not in wrapped
    att = attestation.Attestation.from_dict(orjson.loads(body)["attestation"])
    opened = envelope.SUITES[envelope.PQ].decrypt(wrapped, keys.private[envelope.PQ],
                                                  info=keybroker.RELEASE_INFO + att.report_data)
    assert opened == identity
    replay = broker.release(body)  # the same attestation again: its nonce was used
    assert not replay.released and replay.reason == "refused: nonce"
    assert "replayed" in replay.response["error"]


@pytest.mark.parametrize(("change", "check"), [
    ({"code": {"measurement": "1" * 64, "onnxguard": "x", "onnxruntime": "y"}}, "code"),
    ({"models": (ModelFacts("digits", hashlib.sha256(b"other").hexdigest(), "0" * 64, None),)}, "model"),
])
def test_another_code_measurement_or_bundle_is_refused(setup, change, check):
    broker, _, platform, _, facts = setup
    _, result = ask(broker, platform, dataclasses.replace(facts, **change))
    assert not result.released and result.reason == f"refused: {check}"
    assert "wrapped" not in result.response and f"({check})" in result.response["error"]


def test_a_nonce_it_did_not_issue_is_refused(setup):
    broker, _, platform, _, facts = setup
    body = orjson.dumps({"attestation": attestation.attest(facts, platform, b"\x07" * 32).to_dict()})
    result = broker.release(body)
    assert not result.released and result.reason == "refused: nonce"
    assert broker.release(b"not json").reason.startswith("malformed")


def test_the_broker_needs_an_identity(setup):
    _, _, _, _, _ = setup
    with pytest.raises(InputError, match="not an age identity"):
        keybroker.Broker(b"hello\n", setup[0].policy)
