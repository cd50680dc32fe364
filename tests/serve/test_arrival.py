"""A request is bounded as it arrives: its head 414 for a request line, 431 for headers, 408 for one too slow to
arrive, the connection closed; its body 408 when too slow, and 499 in the audit log when its client goes away."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from onnxguard.serve import audit
from onnxguard.serve.arrival import MAX_HEAD_BYTES, MAX_HEADERS


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
    """A digits server whose request heads, and bodies, must arrive within 1 s (serve.toml's head_seconds and
    body_seconds); its audit log at ``tmp_path / "audit.db"``, its output at ``tmp_path / "log.txt"``."""
    from serve_support import free_port, make_keys, start

    from onnxguard.serve.apikeys import KeyStore

    make_keys(tmp_path / "keys.db")
    with KeyStore(tmp_path / "keys.db") as store:
        secret = store.create("held", deadline_ms=2500)[0]  # its answers leave 2.5 s after arrival
    (tmp_path / "serve.toml").write_text(f'keys = "{tmp_path / "keys.db"}"\naudit = "{tmp_path / "audit.db"}"\n'
                                         "head_seconds = 1\nbody_seconds = 1\nlanes = 1\n")
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


@pytest.mark.parametrize("key", ["head_seconds", "body_seconds"])
@pytest.mark.parametrize("value", ["0", "-1", '"soon"', "true", "7200"])
def test_a_time_out_of_range_refuses_to_start(tmp_path, served_bundles, key, value):
    from serve_support import serve_fails

    from onnxguard.serve.apikeys import KeyStore

    KeyStore(tmp_path / "k.db").close()
    (tmp_path / "serve.toml").write_text(f"{key} = {value}\n")
    line = serve_fails(tmp_path, served_bundles["digits"], "--public-key", served_bundles["public_key"], "--config",
                       tmp_path / "serve.toml", fragment=key)
    assert line.startswith(f"onnxguard: error: {key}"), line


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


def _infer(secret: str | None, length: int) -> bytes:
    """The head of a digits inference with a body of ``length`` bytes."""
    key = f"Authorization: Bearer {secret}\r\n" if secret else ""
    return (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _last_record(tmp_path) -> audit.Record:
    deadline = time.monotonic() + 10
    while not (records := audit.tail(tmp_path / "audit.db", 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return records[-1][1]


LATE_BODY = "the request body did not arrive within 1 s and a second for every 500 bytes received"


def test_a_body_that_stops_is_408_audited_and_the_connection_closed(quick_head_server, tmp_path):
    port, secret = quick_head_server
    answer, _, waited = _exchange(port, _infer(secret, 400) + b'{"inputs": [')
    assert _refusal(answer) == (408, LATE_BODY)
    assert 0.9 <= waited < 5
    record = _last_record(tmp_path)
    assert (record.status, record.reason) == (408, "body too slow")
    assert record.key_id is not None and record.model == "digits"
    assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live").status_code == 200


def test_a_body_slower_than_its_seconds_but_above_the_least_rate_is_served(quick_head_server):
    """1,500 bytes over 1.4 s: past body_seconds, within it and a second for every 500 bytes received."""
    port, secret = quick_head_server
    doc = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]})
    body = doc.encode().ljust(1500)  # JSON allows the trailing spaces
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_infer(secret, len(body)))
        for i in range(3):
            s.sendall(body[i * 500:(i + 1) * 500])
            time.sleep(0.7 if i < 2 else 0)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer


def test_a_client_gone_before_its_body_is_audited_as_499_without_a_traceback(quick_head_server, tmp_path):
    port, secret = quick_head_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(_infer(secret, 400) + b'{"inputs": [')
        time.sleep(0.3)
    record = _last_record(tmp_path)
    assert (record.status, record.reason) == (499, "client closed")
    assert "Traceback" not in (tmp_path / "log.txt").read_text()


def test_a_body_that_stops_after_its_refusal_has_its_connection_closed(quick_head_server):
    """Refused without a key (401) before its body was read: the rest of the body is not waited for past its time."""
    port, _ = quick_head_server
    answer, _, waited = _exchange(port, _infer(None, 400) + b'{"inputs": [')
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert 0.9 <= waited < 5
