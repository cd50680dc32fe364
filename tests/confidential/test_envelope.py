"""HPKE envelopes: both suites round trip; a request opens only for its model and key, once; the answer opens
only for the request it answers."""

from __future__ import annotations

import time

import pytest

from onnxguard.confidential import envelope
from onnxguard.confidential.envelope import CLASSIC, PQ, EnvelopeError, ReplayCache, Replayed, ServerKeys


@pytest.fixture(scope="module")
def keys():
    return ServerKeys.generate()


@pytest.mark.parametrize("suite", [PQ, CLASSIC])
def test_round_trip_and_response(keys, suite):
    body = b'{"instances": [[1, 2, 3]]}'
    sealed = envelope.seal_request(suite, keys.public[suite], "digits", "predict", body)
    assert body not in sealed.ciphertext
    opened = envelope.open_request(keys, suite, "digits", sealed.ciphertext)
    assert (opened.body, opened.route, opened.request_id) == (body, "predict", sealed.request_id)
    answer = envelope.seal_response(opened, 200, "application/json", b'{"predictions": []}')
    reply = envelope.open_response(sealed, answer)
    assert (reply.status, reply.content_type, reply.body) == (200, "application/json", b'{"predictions": []}')
    other = envelope.seal_request(suite, keys.public[suite], "digits", "predict", body)
    with pytest.raises(EnvelopeError, match="another request"):
        envelope.open_response(other, answer)  # an answer cannot be moved to another request


def test_the_hybrid_suite_carries_an_ml_kem_ciphertext(keys):
    now = 1_800_000_000.5  # the same time: the same plaintext length
    pq = envelope.seal_request(PQ, keys.public[PQ], "m", "infer", b"x", now=now).ciphertext
    classic = envelope.seal_request(CLASSIC, keys.public[CLASSIC], "m", "infer", b"x", now=now).ciphertext
    assert len(pq) - len(classic) == 1120 - 32  # ML-KEM-768's 1088-byte ciphertext rides with X25519's 32


def test_a_request_opens_only_for_its_model_key_and_suite(keys):
    sealed = envelope.seal_request(PQ, keys.public[PQ], "digits", "infer", b"{}")
    with pytest.raises(EnvelopeError, match="does not decrypt"):
        envelope.open_request(keys, PQ, "text", sealed.ciphertext)
    with pytest.raises(EnvelopeError, match="does not decrypt"):
        envelope.open_request(ServerKeys.generate(), PQ, "digits", sealed.ciphertext)
    with pytest.raises(EnvelopeError, match="unknown HPKE suite"):
        envelope.open_request(keys, "aes-only", "digits", sealed.ciphertext)
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(EnvelopeError, match="does not decrypt"):
        envelope.open_request(keys, PQ, "digits", bytes(flipped))


def test_replay_cache_admits_an_id_once_and_only_in_its_window(keys):
    cache = ReplayCache(window=60, capacity=3)
    sealed = envelope.seal_request(PQ, keys.public[PQ], "digits", "infer", b"{}")
    opened = envelope.open_request(keys, PQ, "digits", sealed.ciphertext)
    cache.admit(opened)
    with pytest.raises(Replayed, match="already used"):
        cache.admit(envelope.open_request(keys, PQ, "digits", sealed.ciphertext))
    old = envelope.open_request(keys, PQ, "digits", envelope.seal_request(
        PQ, keys.public[PQ], "digits", "infer", b"{}", now=time.time() - 120).ciphertext)
    with pytest.raises(Replayed, match="outside"):
        cache.admit(old)
    for _ in range(2):
        cache.admit(envelope.open_request(keys, PQ, "digits", envelope.seal_request(
            PQ, keys.public[PQ], "digits", "infer", b"{}").ciphertext))
    with pytest.raises(Replayed, match="too many"):  # full: refused, never forgotten early
        cache.admit(envelope.open_request(keys, PQ, "digits", envelope.seal_request(
            PQ, keys.public[PQ], "digits", "infer", b"{}").ciphertext))
    later = time.time() + 200  # the first ids expired: room again
    cache.admit(envelope.open_request(keys, PQ, "digits", envelope.seal_request(
        PQ, keys.public[PQ], "digits", "infer", b"{}", now=later).ciphertext), now=later)
