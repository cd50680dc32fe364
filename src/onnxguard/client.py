"""``onnxguard.client``: the data owner's side of confidential inference.

::

    from onnxguard.client import ConfidentialClient
    from onnxguard.confidential.policy import ExpectedPolicy

    expected = ExpectedPolicy.of(platforms=["simulation"], platform_keys=["platform-key.pub.pem"],
                                 code_measurements=["<sha256>"], bundle_digests=["<sha256>"], model="digits")
    with ConfidentialClient("https://host:8000", expected, api_key=secret) as c:
        c.attest()                                # every check of policy.py, or AttestationRefused (nothing sent)
        outputs = c.infer("digits", {"input": x})  # sealed with HPKE to the attested key, answer decrypted

Before anything is sent the client fetches the attestation with a fresh random nonce and verifies it against
the expected policy; a failed check raises ``AttestationRefused`` naming it, and nothing of the request leaves
the process. The verified key is reused until the attestation is older than the policy's maximum age, then
the client attests again. Each request carries a fresh id and response key inside the ciphertext.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import orjson

from onnxguard.confidential import envelope, policy
from onnxguard.confidential.attestation import Attestation
from onnxguard.confidential.envelope import Reply
from onnxguard.confidential.platform import PlatformError
from onnxguard.errors import InputError, OnnxguardError

ATTESTATION = "/v1/attestation"
CONFIDENTIAL = "/v1/models/{name}/confidential"
SEALED_HEADER = "onnxguard-confidential"  # "sealed" on a response whose body is encrypted to the client
STALE_KEY_PREFIX = "sealed to another key"  # the server's 409 when the process that attested is gone


class ServerRefused(OnnxguardError):
    """The server answered with an error (its status and message)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Session:
    """A verified attestation: the checks, the statement's key for the suite, and when it was verified."""

    verification: policy.Verification
    public_key: str
    verified_at: float  # time.monotonic()
    statement: dict[str, Any]


class ConfidentialClient:
    """A client that sends nothing to a server whose attestation fails ``expected``."""

    def __init__(self, url: str, expected: policy.ExpectedPolicy, *, api_key: str | None = None,
                 suite: str = envelope.DEFAULT_SUITE, timeout: float = 30.0, verify_tls: bool | str = True,
                 http: httpx.Client | None = None) -> None:
        envelope.suite(suite)  # an unknown suite is an error now
        self.url, self.policy, self.suite = url.rstrip("/"), expected, suite
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = http or httpx.Client(timeout=timeout, verify=verify_tls)
        self._owns_http = http is None
        self.session: Session | None = None

    def __enter__(self) -> ConfidentialClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def fetch(self, nonce: bytes) -> Attestation:
        """The server's attestation for ``nonce`` (not verified)."""
        r = self._get(ATTESTATION, {"nonce": nonce.hex()})
        try:
            return Attestation.from_dict(_json(r))
        except PlatformError as e:
            raise ServerRefused(f"{self.url}: the attestation is malformed ({e.message})", r.status_code) from None

    def attest(self) -> policy.Verification:
        """Fetch the attestation with a fresh nonce and verify it; ``AttestationRefused`` names a failed check."""
        nonce = secrets.token_bytes(32)
        att = self.fetch(nonce)
        verification = policy.check(att, self.policy, nonce, suite=self.suite)
        assert verification.statement is not None
        self.session = Session(verification, verification.statement["keys"][self.suite], time.monotonic(),
                               verification.statement)
        return verification

    def _fresh(self) -> Session:
        if self.session is None or time.monotonic() - self.session.verified_at > self.policy.max_age_s:
            self.attest()
        assert self.session is not None
        return self.session

    def send(self, model: str, route: str, body: bytes, header_length: int | None = None) -> Reply:
        """Seal ``body`` for ``model``'s ``route`` (infer or predict), send it, open the answer."""
        if self.policy.model is not None and model != self.policy.model:
            raise InputError(f"the attestation is checked for model {self.policy.model!r}, not {model!r}")
        for attempt in range(2):
            session = self._fresh()
            sealed = envelope.seal_request(self.suite, session.public_key, model, route, body, header_length)
            r = self._post(CONFIDENTIAL.format(name=model), sealed)
            if attempt == 0 and r.status_code == 409 and r.headers.get(SEALED_HEADER) != "sealed" and \
                    _error(r).startswith(STALE_KEY_PREFIX):
                self.session = None  # another server process: attest it (every check again), then send once more
                continue
            break
        if r.headers.get(SEALED_HEADER) != "sealed":
            raise ServerRefused(f"{self.url}: the server refused (HTTP {r.status_code}): {_error(r)}", r.status_code)
        return envelope.open_response(sealed, r.content)

    def infer(self, model: str, inputs: Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Open Inference Protocol inference, end to end encrypted: named arrays in, named arrays out."""
        from onnxguard.serve.protocol import DATATYPES, FROM_NUMPY

        doc: dict[str, Any] = {"inputs": [{"name": n, "datatype": FROM_NUMPY[np.asarray(a).dtype.name],
                                           "shape": list(np.shape(a)), "data": np.asarray(a).ravel().tolist()}
                                          for n, a in inputs.items()]}
        if outputs is not None:
            doc["outputs"] = [{"name": n} for n in outputs]
        reply = self._ok(self.send(model, "infer", orjson.dumps(doc)))
        out = {}
        for o in orjson.loads(reply.body).get("outputs", []):
            out[o["name"]] = np.asarray(o["data"], dtype=DATATYPES[o["datatype"]]).reshape(o["shape"])
        return out

    def predict(self, model: str, instances: Sequence[Any]) -> list[dict[str, Any]]:
        """Raw instances (texts, table rows) in, predictions out, end to end encrypted."""
        reply = self._ok(self.send(model, "predict", orjson.dumps({"instances": list(instances)})))
        predictions: list[dict[str, Any]] = orjson.loads(reply.body)["predictions"]
        return predictions

    def _ok(self, reply: Reply) -> Reply:
        if reply.status != 200:
            try:
                message = orjson.loads(reply.body).get("error", "")
            except (orjson.JSONDecodeError, AttributeError):
                message = ""
            raise ServerRefused(f"{self.url}: the server refused (HTTP {reply.status}): {message}", reply.status)
        return reply

    def _get(self, path: str, params: Mapping[str, str]) -> httpx.Response:
        try:
            return self._http.get(self.url + path, params=params, headers=self._headers)
        except httpx.HTTPError as e:
            raise InputError(f"{self.url}: cannot reach the server ({e})") from None

    def _post(self, path: str, sealed: envelope.Sealed) -> httpx.Response:
        headers = {**self._headers, "Content-Type": "application/octet-stream",
                   envelope.SUITE_HEADER: sealed.suite, envelope.KEY_HEADER: sealed.key_id}
        try:
            return self._http.post(self.url + path, content=sealed.ciphertext, headers=headers)
        except httpx.HTTPError as e:
            raise InputError(f"{self.url}: cannot reach the server ({e})") from None


def _error(r: httpx.Response) -> str:
    try:
        doc = r.json()
    except ValueError:
        return r.text[:200]
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)[:200]


def _json(r: httpx.Response) -> Any:
    if r.status_code != 200:
        raise ServerRefused(f"{r.request.url.scheme}://{r.request.url.netloc.decode()}: the server refused the "
                            f"attestation request (HTTP {r.status_code}): {_error(r)}", r.status_code)
    try:
        return r.json()
    except ValueError:
        raise ServerRefused("the attestation is not JSON", r.status_code) from None
