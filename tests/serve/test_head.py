"""The request head is bounded as it arrives: 414 for a request line, 431 for headers, the connection closed."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from onnxguard.serve.head import MAX_HEAD_BYTES, MAX_HEADERS


def _exchange(server, head: bytes, then: bytes = b"", repeat: int = 0) -> tuple[bytes, int]:
    """Send ``head`` (then ``then`` up to ``repeat`` times, as long as the server reads); the server's answer and how
    many of the repeats it took before closing."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(head)
        sent = 0
        try:
            for _ in range(repeat):
                s.sendall(then)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer, sent


def _refusal(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_a_request_line_over_the_limit_is_414_and_the_server_goes_on(server):
    answer, _ = _exchange(server, b"GET /v2/models/" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _refusal(answer) == (414, f"the request line is over the limit of {MAX_HEAD_BYTES:,} bytes")
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_an_endless_request_line_is_cut_off_not_kept(server):
    """The server stops reading at the limit: far less than the 64 MiB offered is taken before it answers."""
    answer, sent = _exchange(server, b"GET /v2/models/", b"a" * (1 << 20), repeat=64)
    assert sent < 64
    assert _refusal(answer)[0] == 414


@pytest.mark.parametrize(("headers", "message"), [
    ([(f"x-h{i}", "v") for i in range(MAX_HEADERS + 1)], f"the request has more than {MAX_HEADERS} headers"),
    ([("x-big", "v" * MAX_HEAD_BYTES)], f"the request head is over the limit of {MAX_HEAD_BYTES:,} bytes"),
])
def test_headers_over_the_limits_are_431(server, headers, message):
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    answer, _ = _exchange(server, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert _refusal(answer) == (431, message)


def test_a_head_within_the_limits_is_served(server):
    headers = {f"x-h{i}": "v" * 100 for i in range(MAX_HEADERS - 10)}
    r = httpx.get(f"{server.url}/v2/models/digits/ready", headers={**headers, **server.headers()})
    assert r.status_code == 200 and r.json()["ready"] is True
