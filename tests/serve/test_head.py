"""The request head is bounded as it arrives: 414 for a request line, 431 for headers, 408 for one too slow to
arrive; the connection closed."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from onnxguard.serve.head import MAX_HEAD_BYTES, MAX_HEADERS


def _exchange(port: int, head: bytes, then: bytes = b"", repeat: int = 0) -> tuple[bytes, int, float]:
    """Send ``head`` (then ``then`` up to ``repeat`` times, as long as the server reads) and read until the server
    closes: its answer, how many of the repeats it took, and the seconds from the first byte sent to the close."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        start = time.monotonic()
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
    return answer, sent, time.monotonic() - start


def _refusal(answer: bytes) -> tuple[int, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_a_request_line_over_the_limit_is_414_and_the_server_goes_on(server):
    answer, _, _ = _exchange(server.port, b"GET /v2/models/" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _refusal(answer) == (414, f"the request line is over the limit of {MAX_HEAD_BYTES:,} bytes")
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_an_endless_request_line_is_cut_off_not_kept(server):
    """The server stops reading at the limit: far less than the 64 MiB offered is taken before it answers."""
    answer, sent, _ = _exchange(server.port, b"GET /v2/models/", b"a" * (1 << 20), repeat=64)
    assert sent < 64
    assert _refusal(answer)[0] == 414


@pytest.mark.parametrize(("headers", "message"), [
    ([(f"x-h{i}", "v") for i in range(MAX_HEADERS + 1)], f"the request has more than {MAX_HEADERS} headers"),
    ([("x-big", "v" * MAX_HEAD_BYTES)], f"the request head is over the limit of {MAX_HEAD_BYTES:,} bytes"),
])
def test_headers_over_the_limits_are_431(server, headers, message):
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    answer, _, _ = _exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert _refusal(answer) == (431, message)


def test_a_head_within_the_limits_is_served(server):
    headers = {f"x-h{i}": "v" * 100 for i in range(MAX_HEADERS - 10)}
    r = httpx.get(f"{server.url}/v2/models/digits/ready", headers={**headers, **server.headers()})
    assert r.status_code == 200 and r.json()["ready"] is True


@pytest.fixture
def quick_head_server(tmp_path, served_bundles):
    """A digits server whose request heads must arrive within 1 s (serve.toml's head_seconds)."""
    from serve_support import free_port, make_keys, start

    from onnxguard.serve.apikeys import KeyStore

    make_keys(tmp_path / "keys.db")
    with KeyStore(tmp_path / "keys.db") as store:
        secret = store.create("held", deadline_ms=2500)[0]  # its answers leave 2.5 s after arrival
    (tmp_path / "serve.toml").write_text(f'keys = "{tmp_path / "keys.db"}"\naudit = "{tmp_path / "audit.db"}"\n'
                                         "head_seconds = 1\nlanes = 1\n")
    port = free_port()
    proc = start([str(served_bundles["digits"]), "--public-key", str(served_bundles["public_key"]), "--config",
                  str(tmp_path / "serve.toml")], port, tmp_path / "log.txt")
    yield port, secret
    proc.terminate()
    proc.wait(60)


@pytest.mark.parametrize("sent", [b"", b"GET /v2/health/li"], ids=["nothing", "half a head"])
def test_a_head_that_does_not_arrive_in_time_is_408_and_the_connection_closed(quick_head_server, sent):
    port, _ = quick_head_server
    answer, _, waited = _exchange(port, sent)
    assert _refusal(answer) == (408, "the request head did not arrive within 1 s")
    assert 0.9 <= waited < 5
    whole, _, _ = _exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert whole.startswith(b"HTTP/1.1 200")


def test_a_slow_pipelined_head_is_refused_only_after_the_answer_before_it(quick_head_server):
    """Half a head pipelined behind a request whose answer is held 2.5 s: that answer arrives whole, then the 408."""
    port, secret = quick_head_server
    first = f"GET /v2/models/digits/ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
    answer, _, waited = _exchange(port, first + b"GET /v2/health/li")
    ok, _, rest = answer.partition(b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), answer
    fields = dict(h.lower().split(b": ", 1) for h in ok.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    assert json.loads(rest[:length])["ready"] is True
    assert _refusal(rest[length:]) == (408, "the request head did not arrive within 1 s")
    assert waited >= 2.5


@pytest.mark.parametrize("value", ["0", "-1", '"soon"', "true", "7200"])
def test_a_head_time_out_of_range_refuses_to_start(tmp_path, served_bundles, value):
    from serve_support import serve_fails

    from onnxguard.serve.apikeys import KeyStore

    KeyStore(tmp_path / "k.db").close()
    (tmp_path / "serve.toml").write_text(f"head_seconds = {value}\n")
    line = serve_fails(tmp_path, served_bundles["digits"], "--public-key", served_bundles["public_key"], "--config",
                       tmp_path / "serve.toml", fragment="head_seconds")
    assert line.startswith("onnxguard: error: head_seconds"), line


def test_a_head_on_a_kept_alive_connection_gets_its_whole_time(quick_head_server):
    """The time runs from the head's first byte: half a head sent 0.6 s into a connection that answered a request
    first still has its full second."""
    port, _ = quick_head_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.6)
        start = time.monotonic()
        s.sendall(b"GET /v2/health/li")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
        waited = time.monotonic() - start
    assert _refusal(answer) == (408, "the request head did not arrive within 1 s")
    assert 0.9 <= waited < 5
