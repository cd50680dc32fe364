"""The verifier's checks, without a server: each refusal names its check; the statement binds what it says."""

from __future__ import annotations

import base64
import dataclasses
import hashlib

import orjson
import pytest

from onnxguard.confidential import attestation, envelope, policy
from onnxguard.confidential.attestation import Attestation, ModelFacts
from onnxguard.confidential.platform import Evidence, PlatformError, SimulationPlatform, verifier
from onnxguard.confidential.platform.simulation import generate_key, load_private_key
from onnxguard.confidential.policy import Check, ExpectedPolicy, Status
from onnxguard.errors import InputError

DIGEST = hashlib.sha256(b"manifest").hexdigest()
OTHER = hashlib.sha256(b"another manifest").hexdigest()
MODEL = ModelFacts("digits", DIGEST, hashlib.sha256(b"model").hexdigest(), "key sha256:" + "ab" * 32)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("platform")
    return generate_key(root / "a"), generate_key(root / "b")


@pytest.fixture(scope="module")
def server(keys):
    platform = SimulationPlatform(load_private_key(keys[0].private_key))
    return platform, attestation.facts(platform, [MODEL], envelope.ServerKeys.generate().public)


def expected(keys, **kw):
    base = dict(platforms=["simulation"], platform_keys=[keys[0].public_key], code_measurements=["local"],
                bundle_digests=[DIGEST], model="digits")
    return ExpectedPolicy.of(**{**base, **kw})


def test_a_fresh_statement_passes_every_check_in_order(keys, server):
    platform, facts = server
    nonce = b"n" * 32
    result = policy.check(attestation.attest(facts, platform, nonce), expected(keys), nonce)
    assert [s.check for s in result.steps] == list(Check)
    assert all(s.status is Status.PASSED for s in result.steps)
    assert result.statement["platform"] == "simulation" and not result.hardware
    assert result.statement["models"][0]["bundle_digest"] == DIGEST
    assert result.statement["code"]["measurement"] == attestation.code()["measurement"]
    assert set(result.statement["keys"]) == {envelope.PQ, envelope.CLASSIC}


def refused(att, pol, nonce, **kw) -> policy.CheckResult:
    with pytest.raises(policy.AttestationRefused) as e:
        policy.check(att, pol, nonce, **kw)
    failed = e.value.verification.failed
    assert e.value.check is failed.check and f"({failed.check.value})" in e.value.message
    later = e.value.verification.steps[failed.check.number:]
    assert all(s.status is Status.NOT_CHECKED for s in later)  # nothing after a failure vouches
    return failed


def test_refusals_name_the_failed_check(keys, server):
    platform, facts = server
    nonce = b"n" * 32
    att = attestation.attest(facts, platform, nonce)
    assert refused(att, expected(keys, bundle_digests=[OTHER]), nonce).check is Check.MODEL
    with pytest.raises(InputError, match="elliptic-curve"):  # a platform key is no bundle signing key
        expected(keys, bundle_digests=[], signer_keys=[keys[1].public_key])
    assert refused(att, expected(keys, code_measurements=["0" * 64]), nonce).check is Check.CODE
    assert refused(att, expected(keys), b"m" * 32).check is Check.NONCE  # a statement made for another nonce
    assert refused(att, expected(keys), None).check is Check.NONCE
    stale = refused(att, expected(keys, max_age_s=30), nonce, now=float(orjson.loads(att.statement)["time"]) + 31)
    assert stale.check is Check.FRESHNESS and "stale" in stale.detail
    hardware = refused(att, expected(keys, platforms=["tdx", "sev-snp"]), nonce)
    assert hardware.check is Check.PLATFORM and "demands hardware" in hardware.detail
    assert refused(att, expected(keys, model="text"), nonce).check is Check.MODEL


def test_unknown_signer_is_refused(keys, server, tmp_path):
    from onnxguard.trust import keys as trust_keys

    platform, facts = server
    nonce = b"n" * 32
    signer = trust_keys.generate(tmp_path / "signer")
    att = attestation.attest(facts, platform, nonce)
    failed = refused(att, expected(keys, bundle_digests=[], signer_keys=[signer.public_key]), nonce)
    assert failed.check is Check.MODEL and "trusted signer" in failed.detail


def test_another_platform_key_and_tampering_are_refused(keys, server):
    platform, facts = server
    nonce = b"n" * 32
    impostor = SimulationPlatform(load_private_key(keys[1].private_key))
    att = attestation.attest(facts, impostor, nonce)
    failed = refused(att, expected(keys), nonce)
    assert failed.check is Check.QUOTE and "does not trust" in failed.detail
    good = attestation.attest(facts, platform, nonce)
    tampered = Attestation(good.statement.replace(DIGEST.encode(), OTHER.encode()), good.evidence)
    assert refused(tampered, expected(keys, bundle_digests=[OTHER]), nonce).check is Check.BINDING
    forged = Evidence("simulation", tampered.report_data, good.evidence.quote)  # report data swapped, same quote
    assert refused(Attestation(tampered.statement, forged), expected(keys), nonce).check is Check.QUOTE
    relabelled = Evidence("tdx", good.evidence.report_data, good.evidence.quote)
    assert refused(Attestation(good.statement, relabelled), expected(keys, platforms=["tdx"]), nonce).check is \
        Check.QUOTE  # no verifier accepts a simulation quote as hardware


def test_wire_form_round_trips_and_malformed_is_refused(keys, server):
    platform, facts = server
    att = attestation.attest(facts, platform, b"x" * 16)
    assert Attestation.from_dict(orjson.loads(orjson.dumps(att.to_dict()))) == att
    for bad in ({}, {"statement": "!!", "evidence": att.evidence.to_dict()}, {"statement": "", "evidence": {}}):
        with pytest.raises(PlatformError):
            Attestation.from_dict(bad)
    with pytest.raises(InputError):
        attestation.attest(facts, platform, b"short")
    with pytest.raises(PlatformError, match="no tdx quote verifier"):
        verifier("tdx")


def test_policies_that_would_pass_anything_are_refused(keys):
    with pytest.raises(InputError, match="neither a bundle digest nor a trusted signer"):
        expected(keys, bundle_digests=[])
    with pytest.raises(InputError, match="no code measurement"):
        expected(keys, code_measurements=[])
    with pytest.raises(InputError, match="unknown platform"):
        expected(keys, platforms=["sgx"])
    with pytest.raises(InputError, match="not a sha256"):
        expected(keys, bundle_digests=["abc"])


def test_policy_toml(keys, tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'platforms = ["simulation"]\nplatform_keys = ["{keys[0].public_key}"]\n'
                    f'code_measurements = ["local"]\nbundle_digests = ["{DIGEST}"]\nmax_age_s = 30\n')
    pol = ExpectedPolicy.from_toml(path)
    assert pol.bundle_digests == {DIGEST} and pol.max_age_s == 30 and pol.model is None
    assert pol.code_measurements == {attestation.code()["measurement"]}
    path.write_text('platforms = ["simulation"]\nbundle_digest = "x"\n')
    with pytest.raises(InputError, match="unknown setting"):
        ExpectedPolicy.from_toml(path)


def test_the_code_measurement_covers_the_installed_files():
    import onnxruntime

    code = attestation.code()
    assert len(code["measurement"]) == 64 and code["onnxruntime"] == onnxruntime.__version__


def test_simulation_quote_is_bound_to_its_report_data(keys):
    platform = SimulationPlatform(load_private_key(keys[0].private_key))
    ev = platform.quote(b"\x01" * 32)
    trusted = dataclasses.replace(expected(keys).platform)
    assert platform.verify(ev, trusted).report_data == b"\x01" * 32
    doc = orjson.loads(ev.quote)
    doc["signature"] = base64.b64encode(b"\x00" * 64).decode()
    with pytest.raises(PlatformError, match="does not verify"):
        platform.verify(Evidence("simulation", ev.report_data, orjson.dumps(doc)), trusted)
