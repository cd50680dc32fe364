"""End-to-end encryption of requests and responses: HPKE (RFC 9180) to the server's attested ephemeral key.

Suites (named on the wire by ``onnxguard-hpke-suite``)::

    mlkem768x25519-hkdfsha256-aes256gcm   default: hybrid ML-KEM-768 + X25519 KEM, HKDF-SHA256, AES-256-GCM; a
                                          recorded exchange stays secret unless both ML-KEM-768 and X25519 break
                                          (harvest now, decrypt later)
    x25519-hkdfsha256-aes256gcm           compatibility: classical X25519 only

Request: ``HPKE.seal(pk, info = REQUEST_INFO || model name, plaintext)`` where plaintext is one line of JSON,
``{"id", "time", "route", "response_key", "header_length"}``, a newline, then the plain request body (an Open
Inference Protocol infer body, or a ``{"instances": [...]}`` predict body). ``id`` is 16 random bytes: the
server refuses an id it has seen (``ReplayCache``) and a ``time`` outside its window, so a captured ciphertext
cannot be played again. ``response_key`` is a fresh AES-256 key that only the client and the attested server
know (it travels inside the HPKE ciphertext, so it is as post-quantum as the KEM).

Response: ``nonce (12 bytes) || AES-256-GCM(response_key, nonce, plaintext, aad = RESPONSE_INFO || id)``,
plaintext one line of JSON ``{"status", "content_type", "header_length"}``, a newline, then the plain body. A
proxy that terminates TLS sees the model name, the sizes and the status, never an input or an output.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from onnxguard.errors import InputError

PQ = "mlkem768x25519-hkdfsha256-aes256gcm"
CLASSIC = "x25519-hkdfsha256-aes256gcm"
DEFAULT_SUITE = PQ
SUITES: dict[str, hpke.Suite] = {
    PQ: hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
    CLASSIC: hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM),
}
SUITE_HEADER = "onnxguard-hpke-suite"
KEY_HEADER = "onnxguard-hpke-key"  # the first 16 hex digits of the sha256 of the public key sealed to
REQUEST_INFO = b"onnxguard confidential request v1\n"
RESPONSE_INFO = b"onnxguard confidential response v1\n"
ROUTES = ("infer", "predict")
MLKEM768_PUBLIC = 1184
X25519_PUBLIC = 32
# A request's time may differ from the server's clock by this much; ids are remembered this long.
WINDOW_S = 300.0
MAX_REMEMBERED = 1_000_000


class EnvelopeError(InputError):
    """A ciphertext that cannot be opened, or whose contents are malformed (never says which byte)."""


def suite(name: str) -> hpke.Suite:
    """The HPKE suite named ``name``."""
    try:
        return SUITES[name]
    except KeyError:
        raise InputError(f"unknown HPKE suite {name!r}; known: {', '.join(SUITES)}") from None


PublicKey = hpke.MLKEM768X25519PublicKey | x25519.X25519PublicKey
PrivateKey = hpke.MLKEM768X25519PrivateKey | x25519.X25519PrivateKey


def decode_public(name: str, text: str) -> PublicKey:
    """A suite's public key from its base64 wire form (hybrid: ML-KEM-768's 1184 bytes then X25519's 32)."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"the {name} public key is not base64") from None
    try:
        if name == PQ:
            if len(raw) != MLKEM768_PUBLIC + X25519_PUBLIC:
                raise ValueError(f"{len(raw)} bytes, not {MLKEM768_PUBLIC + X25519_PUBLIC}")
            return hpke.MLKEM768X25519PublicKey(mlkem.MLKEM768PublicKey.from_public_bytes(raw[:MLKEM768_PUBLIC]),
                                                x25519.X25519PublicKey.from_public_bytes(raw[MLKEM768_PUBLIC:]))
        if name == CLASSIC:
            return x25519.X25519PublicKey.from_public_bytes(raw)
    except ValueError as e:
        raise InputError(f"the {name} public key is malformed ({e})") from None
    raise InputError(f"unknown HPKE suite {name!r}; known: {', '.join(SUITES)}")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def key_id(public_b64: str) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its base64 form."""
    return hashlib.sha256(public_b64.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ServerKeys:
    """The server process's ephemeral key pairs, one per suite: made at start, never written, gone at exit."""

    private: dict[str, PrivateKey] = field(repr=False)
    public: dict[str, str]  # suite -> base64 public key, as the attestation statement carries them

    @classmethod
    def generate(cls) -> ServerKeys:
        m, x = mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        c = x25519.X25519PrivateKey.generate()  # its own key: no key shared between two KEMs
        private: dict[str, PrivateKey] = {PQ: hpke.MLKEM768X25519PrivateKey(m, x), CLASSIC: c}
        public = {PQ: _b64(m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()),
                  CLASSIC: _b64(c.public_key().public_bytes_raw())}
        return cls(private, public)

    def ids(self) -> dict[str, str]:
        return {name: key_id(pub) for name, pub in self.public.items()}


@dataclass(frozen=True)
class Sealed:
    """A sealed request as the client keeps it: the ciphertext, and what it needs to open the answer."""

    suite: str
    key_id: str
    ciphertext: bytes = field(repr=False)
    request_id: bytes
    response_key: bytes = field(repr=False)


@dataclass(frozen=True)
class Opened:
    """A request as the server opened it."""

    request_id: bytes
    time: float
    route: str
    header_length: int | None
    response_key: bytes = field(repr=False)
    body: bytes = field(repr=False)


def _frame(header: dict[str, Any], body: bytes) -> bytes:
    return orjson.dumps(header) + b"\n" + body


def _unframe(plaintext: bytes) -> tuple[dict[str, Any], bytes]:
    head, sep, body = plaintext.partition(b"\n")
    try:
        header = orjson.loads(head) if sep else None
    except orjson.JSONDecodeError:
        header = None
    if not isinstance(header, dict):
        raise EnvelopeError("the decrypted envelope has no header")
    return header, body


def seal_request(suite_name: str, public_b64: str, model: str, route: str, body: bytes,
                 header_length: int | None = None, now: float | None = None) -> Sealed:
    """Encrypt a request body for ``model`` to the attested key of ``suite_name``."""
    if route not in ROUTES:
        raise InputError(f"unknown route {route!r}; one of {', '.join(ROUTES)}")
    request_id, response_key = os.urandom(16), AESGCM.generate_key(256)
    header = {"id": request_id.hex(), "time": time.time() if now is None else now, "route": route,
              "response_key": base64.b64encode(response_key).decode(), "header_length": header_length}
    ciphertext = suite(suite_name).encrypt(_frame(header, body), decode_public(suite_name, public_b64),
                                           info=REQUEST_INFO + model.encode())
    return Sealed(suite_name, key_id(public_b64), ciphertext, request_id, response_key)


def open_request(keys: ServerKeys, suite_name: str, model: str, ciphertext: bytes) -> Opened:
    """Decrypt and parse a request (``EnvelopeError`` when it does not open or is malformed)."""
    private = keys.private.get(suite_name)
    if private is None:
        raise EnvelopeError(f"unknown HPKE suite {suite_name!r}; this server takes {', '.join(keys.private)}")
    try:
        plaintext = SUITES[suite_name].decrypt(ciphertext, private, info=REQUEST_INFO + model.encode())
    except (InvalidTag, ValueError):
        raise EnvelopeError("the request does not decrypt with this server's attested key (sealed to another "
                            "key or model, or altered); fetch a fresh attestation") from None
    header, body = _unframe(plaintext)
    try:
        request_id = bytes.fromhex(header["id"])
        response_key = base64.b64decode(header["response_key"], validate=True)
        sent, route, length = float(header["time"]), header["route"], header.get("header_length")
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise EnvelopeError("the decrypted envelope's header is malformed") from None
    if len(request_id) != 16 or len(response_key) != 32 or route not in ROUTES or \
            (length is not None and (not isinstance(length, int) or not 0 <= length <= len(body))):
        raise EnvelopeError("the decrypted envelope's header is malformed")
    return Opened(request_id, sent, route, length, response_key, body)


def seal_response(opened: Opened, status: int, content_type: str, body: bytes,
                  header_length: int | None = None) -> bytes:
    """Encrypt the answer to ``opened`` under its response key."""
    nonce = os.urandom(12)
    header = {"status": status, "content_type": content_type, "header_length": header_length}
    return nonce + AESGCM(opened.response_key).encrypt(nonce, _frame(header, body), RESPONSE_INFO + opened.request_id)


@dataclass(frozen=True)
class Reply:
    """A decrypted answer: the status the server's route gave, its content type and body."""

    status: int
    content_type: str
    header_length: int | None
    body: bytes = field(repr=False)


def open_response(sealed: Sealed, data: bytes) -> Reply:
    """Decrypt the answer to ``sealed`` (``EnvelopeError`` when it was altered or answers another request)."""
    try:
        plaintext = AESGCM(sealed.response_key).decrypt(data[:12], data[12:], RESPONSE_INFO + sealed.request_id)
    except (InvalidTag, ValueError):
        raise EnvelopeError("the response does not decrypt: altered, or the answer to another request") from None
    header, body = _unframe(plaintext)
    status, ctype, length = header.get("status"), header.get("content_type"), header.get("header_length")
    if not isinstance(status, int) or not isinstance(ctype, str) or not (length is None or isinstance(length, int)):
        raise EnvelopeError("the decrypted response's header is malformed")
    return Reply(status, ctype, length, body)


class Replayed(EnvelopeError):  # noqa: N818 - a refusal, named for what happened
    """A request id seen before, or a request outside the time window."""


class ReplayCache:
    """Request ids seen within the last ``window`` seconds (bounded: when full, requests are refused, never
    forgotten early). Thread-safe."""

    def __init__(self, window: float = WINDOW_S, capacity: int = MAX_REMEMBERED) -> None:
        self.window, self.capacity = window, capacity
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, opened: Opened, now: float | None = None) -> None:
        """Remember the request's id; ``Replayed`` when it was seen, or its time is outside the window."""
        now = time.time() if now is None else now
        if abs(now - opened.time) > self.window:
            raise Replayed(f"the request was sealed {now - opened.time:+.0f} s from now, outside the "
                           f"{self.window:.0f} s window (replayed, or a clock is wrong)")
        with self._lock:
            while self._seen:
                oldest, at = next(iter(self._seen.items()))
                if now - at <= 2 * self.window:
                    break
                del self._seen[oldest]
            if opened.request_id in self._seen:
                raise Replayed("this request id was already used: a replayed request is refused")
            if len(self._seen) >= self.capacity:
                raise Replayed("too many requests in the replay window to remember another; retry later")
            self._seen[opened.request_id] = now

    def __len__(self) -> int:
        return len(self._seen)
