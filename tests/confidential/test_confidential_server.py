"""Confidential inference end to end, with real processes on 127.0.0.1: a key broker holding a sealed bundle's
identity, a server that gets it by attesting (``serve --confidential --key-broker``, never ``--identity``), and
clients (``onnxguard.client``, ``onnxguard predict``) that verify before they send anything.

Two broker starts and two server starts in all (one of them refused by its broker before it loads anything).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from confidential_support import start, stop

from onnxguard.client import ConfidentialClient
from onnxguard.confidential import envelope, policy
from onnxguard.confidential.attestation import Attestation
from onnxguard.confidential.platform.simulation import generate_key
from onnxguard.confidential.policy import Check, ExpectedPolicy
from onnxguard.serve import audit as audit_lib

# A request's plaintext marker: a digits row no real image has (pixels are 0..16 integers).
MARKER_ROW = [13.371337 + i / 1000 for i in range(64)]


@dataclass
class World:
    root: Path
    bundle: Path
    digest: str
    model_marker: bytes
    public_key: Path  # the bundle signer's
    platform_public: Path
    other_platform: Path  # another platform key pair's directory
    url: str
    broker_url: str
    secrets: dict[str, str]
    audit_db: Path
    broker_db: Path

    def expected(self, **kw) -> ExpectedPolicy:
        base = dict(platforms=["simulation"], platform_keys=[self.platform_public], code_measurements=["local"],
                    bundle_digests=[self.digest], model="digits")
        return ExpectedPolicy.of(**{**base, **kw})

    def client(self, key: str = "full", **kw) -> ConfidentialClient:
        return ConfidentialClient(self.url, self.expected(**kw.pop("policy", {})), api_key=self.secrets[key], **kw)

    def headers(self, key: str = "full") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[key]}"}


def _policy_toml(path: Path, platform_public: Path, digest: str) -> Path:
    path.write_text(f'platforms = ["simulation"]\nplatform_keys = ["{platform_public}"]\n'
                    f'code_measurements = ["local"]\nbundle_digests = ["{digest}"]\nmax_age_s = 60\n')
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, sklearn_bundle):
    from onnxguard.serve.apikeys import KeyStore
    from onnxguard.trust import keys, sealing, signing

    root = tmp_path_factory.mktemp("confidential")
    k = keys.generate(root / "keys")
    bundle = root / "digits"
    shutil.copytree(sklearn_bundle, bundle)
    plain_model = (bundle / "model.onnx").read_bytes()
    model_marker = plain_model[len(plain_model) // 2:len(plain_model) // 2 + 48]  # inside the weights
    sealing.seal(bundle, [k.recipient])
    signing.sign(bundle, k.private_key)
    digest = hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    platform = generate_key(root / "platform")
    other = generate_key(root / "other-platform")
    with KeyStore(root / "keys.db") as store:
        secrets = {"full": store.create("full")[0], "label": store.create("label", output="label")[0]}
    broker, broker_url = start("keybroker", ["--identity", str(k.age_identity), "--policy",
                                             str(_policy_toml(root / "policy.toml", platform.public_key, digest)),
                                             "--audit", str(root / "broker.db")], root / "broker.log")
    server = None
    try:
        server, url = start("serve", [f"digits={bundle}", "--public-key", str(k.public_key), "--keys",
                                      str(root / "keys.db"), "--audit", str(root / "audit.db"), "--confidential",
                                      "--platform-key", str(platform.private_key), "--key-broker", broker_url],
                            root / "server.log")
        yield World(root, bundle, digest, model_marker, k.public_key, platform.public_key, other.private_key.parent,
                    url, broker_url, secrets, root / "audit.db", root / "broker.db")
    finally:
        if server is not None:
            stop(server)
        stop(broker)


def _records(db: Path) -> list[audit_lib.Record]:
    return [r for _, r in audit_lib.tail(db, 10**6)]


# -- the server got its key from the broker ------------------------------------------------------------------

def test_the_server_got_the_identity_from_the_broker(world):
    log = (world.root / "server.log").read_text()
    assert "SIMULATION" in log
    released = [r for r in _records(world.broker_db) if r.reason == "released"]
    assert len(released) == 1 and released[0].status == 200 and released[0].digest == world.digest


# -- round trips -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suite", [envelope.PQ, envelope.CLASSIC])
def test_round_trips_equal_the_plain_endpoint(world, suite):
    from sklearn.datasets import load_digits

    x = load_digits().data[1200:1208].astype(np.float32)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}
    plain = httpx.post(f"{world.url}/v2/models/digits/infer", json=body, headers=world.headers()).json()
    plain_predictions = httpx.post(f"{world.url}/v1/models/digits:predict", json={"instances": x.tolist()},
                                   headers=world.headers()).json()["predictions"]
    with world.client(suite=suite) as c:
        verification = c.attest()
        assert verification.passed and not verification.hardware
        got = c.infer("digits", {"input": x})
        predictions = c.predict("digits", x.tolist())
    assert set(got) == {o["name"] for o in plain["outputs"]}
    for o in plain["outputs"]:
        want = np.asarray(o["data"]).reshape(o["shape"])
        np.testing.assert_allclose(got[o["name"]], want, rtol=1e-6, atol=1e-7)
    assert [p["label"] for p in predictions] == [p["label"] for p in plain_predictions]
    np.testing.assert_allclose([p["score"] for p in predictions], [p["score"] for p in plain_predictions], rtol=1e-6)


def test_the_keys_output_policy_and_validation_apply_inside_the_envelope(world):
    from onnxguard.client import ServerRefused

    with world.client("label") as c:
        predictions = c.predict("digits", [MARKER_ROW])
        assert predictions == [{"label": predictions[0]["label"]}]
        with pytest.raises(ServerRefused) as e:
            c.predict("digits", [[1.0, 2.0, 3.0]])  # 3 pixels, not 64: the plain route's validation, sealed back
    assert e.value.status == 400 and "HTTP 400" in e.value.message


def test_the_attestation_needs_a_key_and_a_nonce(world):
    assert httpx.get(f"{world.url}/v1/attestation", params={"nonce": "00" * 32}).status_code == 401
    r = httpx.get(f"{world.url}/v1/attestation", params={"nonce": "zz"}, headers=world.headers())
    assert r.status_code == 400 and "nonce" in r.json()["error"]


def test_the_broker_bounds_a_head_and_records_the_socket_peer(world):
    """The broker's protocol is the server's (arrival.py): a head over its limit is 431. Its audit log records the
    connection's address, not an X-Forwarded-For header that any local process could write."""
    from onnxguard.serve.arrival import MAX_HEAD_BYTES

    r = httpx.post(f"{world.broker_url}/v1/nonce", headers={"x-big": "v" * MAX_HEAD_BYTES})
    assert r.status_code == 431 and "over the limit" in r.json()["error"]
    r = httpx.post(f"{world.broker_url}/v1/nonce", headers={"X-Forwarded-For": "203.0.113.9"})
    assert r.status_code == 200
    last = _records(world.broker_db)[-1]
    assert last.client.startswith("127.0.0.1:"), last.client


# -- the client refuses before it sends ----------------------------------------------------------------------

def _confidential_records(world) -> int:
    return sum(1 for r in _records(world.audit_db) if r.model == "digits")


def test_the_cli_predicts_and_refuses_naming_the_check(world, cli, expect_err, tmp_path):
    from onnxguard.trust import keys

    inputs = tmp_path / "rows.json"
    inputs.write_bytes(orjson.dumps({"instances": [MARKER_ROW]}))
    env = {"ONNXGUARD_TEST_KEY": world.secrets["full"]}
    base = ["predict", world.url, inputs, "--model", "digits", "--key-env", "ONNXGUARD_TEST_KEY"]
    trusted = ["--accept-platform", "simulation", "--platform-key", world.platform_public, "--expect-code", "local"]
    r = cli(*base, *trusted, "--expect-digest", world.digest, env=env)
    assert r.code == 0, str(r)
    assert "label" in orjson.loads(r.out.splitlines()[0]) and "SIMULATION" in r.err
    r = cli(*base, *trusted, "--expect-signer", world.public_key, "--json", env=env)  # a trusted signer suffices
    assert r.code == 0 and orjson.loads(r.out)["verification"]["passed"], str(r)
    arrays = tmp_path / "rows.npz"
    np.savez(arrays, input=np.asarray([MARKER_ROW], dtype=np.float32))
    r = cli(*base[:2], arrays, *base[3:], *trusted, "--expect-digest", world.digest, "--suite", envelope.CLASSIC,
            "--json", env=env)
    assert r.code == 0, str(r)
    assert set(orjson.loads(r.out)["outputs"]) == {"label", "probabilities"}

    stranger = keys.generate(tmp_path / "stranger")
    before = _confidential_records(world)
    refusals = [
        ("model", [*trusted, "--expect-digest", "ab" * 32]),  # another model expected
        ("model", [*trusted, "--expect-signer", stranger.public_key]),  # an unknown signer
        ("code", ["--accept-platform", "simulation", "--platform-key", world.platform_public, "--expect-code",
                  "cd" * 32, "--expect-digest", world.digest]),
        ("platform", ["--platform-key", world.platform_public, "--expect-code", "local", "--expect-digest",
                      world.digest]),  # the default demands hardware
        ("quote", ["--accept-platform", "simulation", "--platform-key", world.other_platform / "platform-key.pub.pem",
                   "--expect-code", "local", "--expect-digest", world.digest]),  # another platform key
    ]
    for check, flags in refusals:
        line = expect_err(cli(*base, *flags, env=env), 1, f"({check})", "nothing was sent")
        assert "attestation refused" in line
    assert _confidential_records(world) == before  # nothing reached the model endpoint


def test_stale_replayed_and_tampered_attestations_are_refused(world):
    nonce, other = b"\x01" * 32, b"\x02" * 32
    with world.client() as c:
        att = c.fetch(nonce)
    pol = world.expected()
    assert policy.verify(att, pol, nonce).passed
    assert policy.verify(att, pol, other).failed.check is Check.NONCE  # a statement made for someone else's nonce
    made = orjson.loads(att.statement)["time"]
    assert policy.verify(att, pol, nonce, now=made + 61).failed.check is Check.FRESHNESS
    tampered = Attestation(att.statement.replace(b'"payload_logging":"never"', b'"payload_logging":"always"'),
                           att.evidence)
    assert tampered.statement != att.statement
    assert policy.verify(tampered, pol, nonce).failed.check is Check.BINDING


# -- the server refuses a replayed ciphertext ----------------------------------------------------------------

def test_a_replayed_ciphertext_is_refused(world):
    with world.client() as c:
        c.attest()
        key = c.session.public_key
    sealed = envelope.seal_request(envelope.PQ, key, "digits", "predict", orjson.dumps({"instances": [MARKER_ROW]}))
    headers = {**world.headers(), envelope.SUITE_HEADER: envelope.PQ, "Content-Type": "application/octet-stream"}
    first = httpx.post(f"{world.url}/v1/models/digits/confidential", content=sealed.ciphertext, headers=headers)
    assert first.status_code == 200 and first.headers["onnxguard-confidential"] == "sealed"
    assert envelope.open_response(sealed, first.content).status == 200
    again = httpx.post(f"{world.url}/v1/models/digits/confidential", content=sealed.ciphertext, headers=headers)
    assert again.status_code == 409 and "already used" in again.json()["error"]
    elsewhere = httpx.post(f"{world.url}/v1/models/other/confidential", content=sealed.ciphertext, headers=headers)
    assert elsewhere.status_code == 400  # sealed for digits: opens for no other model
    refused = [r for r in _records(world.audit_db) if r.reason == "replayed"]
    assert refused and refused[-1].request_sha256 == hashlib.sha256(sealed.ciphertext).hexdigest()


# -- the broker refuses a server whose bundle its policy does not name ----------------------------------------

def test_the_broker_refuses_another_bundle_and_the_server_does_not_start(world, tmp_path):
    toml = _policy_toml(tmp_path / "policy.toml", world.platform_public, "ef" * 32)
    broker, url = start("keybroker", ["--identity", str(world.root / "keys" / "age-identity.txt"), "--policy",
                                      str(toml), "--audit", str(tmp_path / "broker.db")], tmp_path / "broker.log")
    try:
        server, _ = start("serve", [f"digits={world.bundle}", "--public-key", str(world.public_key), "--keys",
                                    str(world.root / "keys.db"), "--audit", str(tmp_path / "audit.db"),
                                    "--confidential", "--platform-key",
                                    str(world.root / "platform" / "platform-key.pem"), "--key-broker", url],
                          tmp_path / "server.log", wait=False)
        assert server.wait(timeout=120) == 2
    finally:
        stop(broker)
    log = (tmp_path / "server.log").read_text()
    assert "key broker refused" in log and "(model)" in log and "Traceback" not in log
    records = _records(tmp_path / "broker.db")
    assert [(r.status, r.reason, r.digest) for r in records if r.reason.startswith("refused")] == \
        [(403, "refused: model", world.digest)]



def test_a_request_sealed_to_a_stale_key_is_refused_and_the_client_attests_again(world):
    import dataclasses

    gone = envelope.ServerKeys.generate()  # the keys of a server process that is no more
    with world.client() as c:
        c.attest()
        live = c.session.public_key
        c.session = dataclasses.replace(c.session, public_key=gone.public[envelope.PQ])
        assert c.predict("digits", [MARKER_ROW])[0]["label"]  # refused (409), attested again, sent again
        assert c.session.public_key == live
    sealed = envelope.seal_request(envelope.PQ, gone.public[envelope.PQ], "digits", "predict", b"{}")
    r = httpx.post(f"{world.url}/v1/models/digits/confidential", content=sealed.ciphertext,
                   headers={**world.headers(), envelope.SUITE_HEADER: envelope.PQ, envelope.KEY_HEADER: sealed.key_id})
    assert r.status_code == 409 and "fetch a fresh attestation" in r.json()["error"]


# -- nothing in plaintext on disk ----------------------------------------------------------------------------

def test_no_plaintext_of_the_model_or_of_a_request_on_disk(world, sklearn_bundle):
    row = np.asarray(MARKER_ROW, dtype=np.float32)
    markers = {"model": world.model_marker, "request (JSON)": b"13.371337", "request (float32)": row.tobytes(),
               "request (float64)": np.asarray(MARKER_ROW).tobytes()}
    assert world.model_marker in (sklearn_bundle / "model.onnx").read_bytes()  # the search finds what is there
    with world.client() as c:  # one more request with the marker, then every file the run left
        c.predict("digits", [MARKER_ROW])
    found = []
    for path in sorted(p for p in world.root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{name} in {path}" for name, m in markers.items() if m in data]
    assert not found
