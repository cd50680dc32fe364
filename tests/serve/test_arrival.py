"""A request is bounded as it arrives: its head 414 for a request line, 431 for headers, 408 for one too slow to
arrive, the connection closed; its body 408 when too slow, and 499 in the audit log when its client goes away."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

from onnxguard.errors import OnnxguardError
from onnxguard.serve import arrival, audit
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


def _last_record(db) -> audit.Record:
    """The audit log's last record: a refusal's is durable before its answer leaves."""
    return audit.tail(db, 1)[-1][1]


def _refused_record(db, status: int, reason: str) -> audit.Record:
    record = _last_record(db)
    assert (record.status, record.reason, record.key_id, record.model) == (status, reason, None, None), record
    assert record.client.startswith("127.0.0.1:")
    return record


def test_a_request_line_over_the_limit_is_414_audited_and_the_server_goes_on(server):
    answer, _, _ = _exchange(server.port, b"GET /v2/models/" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _refusal(answer) == (414, f"the request line is over the limit of {MAX_HEAD_BYTES:,} bytes")
    _refused_record(server.audit_db, 414, "request line too long")
    assert httpx.get(f"{server.url}/v2/health/live").status_code == 200


def test_a_request_that_is_not_http_is_400_in_json_audited_and_counted(server):
    answer, _, _ = _exchange(server.port, b"HELLO \x00 THERE\r\n\r\n")
    assert _refusal(answer) == (400, "the request is not valid HTTP/1.1")
    _refused_record(server.audit_db, 400, "malformed request")
    metrics = httpx.get(f"{server.url}/metrics", headers=server.headers()).text
    assert 'onnxguard_requests_total{model="",reason="malformed request",status="400"}' in metrics
    assert "Invalid HTTP" not in server.log.read_text()  # recorded, not logged: any client could fill the output


def test_a_websocket_upgrade_is_answered_as_the_plain_request_it_is(server):
    """No WebSocket here: the request stays with this protocol and its middleware (a 401 without a key), where
    uvicorn's WebSocket protocol would have taken the connection over; and nothing is written to the log."""
    head = (b"GET /v2/models/digits HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nConnection: close\r\n\r\n")
    answer, _, _ = _exchange(server.port, head)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 401"), answer
    assert "API key" in json.loads(body)["error"]
    assert "upgrade" not in server.log.read_text().lower()


def test_an_endless_request_line_is_cut_off_not_kept(server):
    """The server stops reading at the limit: far less than the 64 MiB offered is taken before it answers."""
    answer, sent, _ = _exchange(server.port, b"GET /v2/models/", b"a" * (1 << 20), repeat=64)
    assert sent < 64
    assert _refusal(answer)[0] == 414


@pytest.mark.parametrize(("headers", "message", "reason"), [
    ([(f"x-h{i}", "v") for i in range(MAX_HEADERS + 1)], f"the request has more than {MAX_HEADERS} headers",
     "too many headers"),
    ([("x-big", "v" * MAX_HEAD_BYTES)], f"the request head is over the limit of {MAX_HEAD_BYTES:,} bytes",
     "head too large"),
])
def test_headers_over_the_limits_are_431_and_audited(server, headers, message, reason):
    lines = b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
    answer, _, _ = _exchange(server.port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert _refusal(answer) == (431, message)
    _refused_record(server.audit_db, 431, reason)


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
def test_a_head_that_does_not_arrive_in_time_is_408_audited_and_the_connection_closed(quick_head_server, sent,
                                                                                        tmp_path):
    port, _ = quick_head_server
    answer, _, waited = _exchange(port, sent)
    assert _refusal(answer) == (408, "the request head did not arrive within 1 s")
    assert 0.9 <= waited < 5
    assert _refused_record(tmp_path / "audit.db", 408, "head too slow").latency_ms >= 900
    whole, _, _ = _exchange(port, b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert whole.startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize(("after", "refusal"), [
    (b"GET /v2/health/li", (408, "the request head did not arrive within 1 s")),
    (b"HELLO \x00\r\n\r\n", (400, "the request is not valid HTTP/1.1")),
], ids=["half a head", "not HTTP"])
def test_a_refusal_pipelined_behind_an_answer_on_its_way_comes_after_it(quick_head_server, after, refusal):
    """Behind a request whose answer is held 2.5 s (deadline padding): that answer arrives whole, then the refusal."""
    port, secret = quick_head_server
    first = f"GET /v2/models/digits/ready HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\n\r\n".encode()
    answer, _, waited = _exchange(port, first + after)
    ok, _, rest = answer.partition(b"\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200"), answer
    fields = dict(h.lower().split(b": ", 1) for h in ok.split(b"\r\n")[1:])
    length = int(fields[b"content-length"])
    assert json.loads(rest[:length])["ready"] is True
    assert _refusal(rest[length:]) == refusal
    assert waited >= 2.5


def test_a_malformed_body_is_refused_at_once(server):
    """A chunk size that is not hex: the request in flight can never be whole, so its 400 does not wait for it."""
    head = (f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {server.keys['full']}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode()
    answer, _, waited = _exchange(server.port, head + b"5\r\n{\"inp\r\nzz\r\n")
    assert _refusal(answer) == (400, "the request is not valid HTTP/1.1")
    assert waited < 5


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


def _first_record(db) -> audit.Record:
    """The first record of a new audit log, waited for."""
    deadline = time.monotonic() + 10
    while not (records := audit.tail(db, 1)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return records[-1][1]


LATE_BODY = "the request body did not arrive within 1 s and a second for every 500 bytes received"


def test_a_body_that_stops_is_408_audited_and_the_connection_closed(quick_head_server, tmp_path):
    port, secret = quick_head_server
    answer, _, waited = _exchange(port, _infer(secret, 400) + b'{"inputs": [')
    assert _refusal(answer) == (408, LATE_BODY)
    assert 0.9 <= waited < 5
    record = _first_record(tmp_path / "audit.db")
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
    record = _first_record(tmp_path / "audit.db")
    assert (record.status, record.reason) == (499, "client closed")
    assert "Traceback" not in (tmp_path / "log.txt").read_text()


def test_a_body_that_stops_after_its_refusal_has_its_connection_closed(quick_head_server):
    """Refused without a key (401) before its body was read: the rest of the body is not waited for past its time."""
    port, _ = quick_head_server
    answer, _, waited = _exchange(port, _infer(None, 400) + b'{"inputs": [')
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert 0.9 <= waited < 5


# -- the protocol in process: an answer leaves only once its refusal is recorded -----------------------------------

class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written, self.closed, self.paused = bytearray(), False, False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


async def _no_app(scope, receive, send) -> None:
    raise AssertionError("a refused request reaches no app")


def _refuse_in_process(refused) -> tuple[_Transport, bytes, BaseException | None]:
    """Feed a malformed request to the protocol: its transport, what it had written before ``refused`` returned, and
    what the refusal's task raised."""
    import uvicorn
    from uvicorn.server import ServerState

    async def main() -> tuple[_Transport, bytes, BaseException | None]:
        release = asyncio.Event()
        before: list[bytes] = []

        async def recording(*args: object) -> None:
            await release.wait()
            before.append(bytes(transport.written))
            await refused(*args)

        protocol = arrival.bounded(refused=recording)(config=uvicorn.Config(_no_app, log_config=None),
                                                      server_state=ServerState(), app_state={})
        transport = _Transport()
        protocol.connection_made(transport)
        protocol.data_received(b"HELLO \x00\r\n\r\n")
        protocol.data_received(b"MORE\r\n\r\n")  # taken no further once the refusal is under way
        await asyncio.sleep(0.01)
        assert transport.paused and not transport.written
        release.set()
        for _ in range(100):
            if transport.closed:
                break
            await asyncio.sleep(0.01)
        protocol.connection_lost(None)
        assert protocol._answering is not None and protocol._answering.done()
        return transport, before[0], protocol._answering.exception()  # taken, not reported as never retrieved

    return asyncio.run(main())


def test_a_refusal_leaves_once_recorded():
    seen = []

    async def record(*args: object) -> None:
        seen.append(args)

    transport, before, failure = _refuse_in_process(record)
    assert before == b"" and transport.closed and failure is None
    assert _refusal(bytes(transport.written)) == (400, "the request is not valid HTTP/1.1")
    assert [a[:3] for a in seen] == [("127.0.0.1:5555", 400, "malformed request")]


def test_a_refusal_the_audit_log_cannot_record_is_503():
    async def failing(*args: object) -> None:
        raise OnnxguardError("disk full")

    transport, _, _ = _refuse_in_process(failing)
    assert _refusal(bytes(transport.written)) == (503, "the audit log cannot record this request; nothing was answered")


def test_a_refusal_whose_record_fails_by_a_bug_still_closes_the_connection():
    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    transport, _, failure = _refuse_in_process(broken)
    assert transport.closed and not transport.written
    assert isinstance(failure, RuntimeError)  # raised out of the refusal's task (asyncio reports it), not swallowed
