"""The audit middleware on its own: a record for every request, durable before its response leaves, a fault in the
app included."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from onnxguard.serve.audit import AuditLog, Record, tail
from onnxguard.serve.auditing import Auditing
from onnxguard.serve.respond import error

pytestmark = pytest.mark.timeout(60)
PATH = "/v2/models/m/infer"


def call(log: AuditLog, app: Any) -> list[tuple[dict[str, Any], list[Record]]]:
    """Send one request through the middleware around ``app``; each message sent with the records durable then."""
    scope = {"type": "http", "path": PATH, "headers": [], "client": ("127.0.0.1", 5000)}
    sent: list[tuple[dict[str, Any], list[Record]]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append((message, [r for _, r in tail(log.path, 10)]))

    async def main() -> None:
        await Auditing(app, log)(scope, receive, send)
    asyncio.run(main())
    return sent


def answering(status: int, *, fault: bool = False) -> Any:
    """An app that reads the body, then answers ``status`` or fails."""
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        if fault:
            raise RuntimeError("a bug while serialising")
        await error(send, status, "answer")
    return app


def test_the_record_is_durable_before_the_answer_leaves(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db") as log:
        sent = call(log, answering(200))
    (start, records), (body, _) = sent
    assert start["status"] == 200 and body["type"] == "http.response.body"
    assert [(r.status, r.model, r.reason) for r in records] == [(200, "m", "")]
    assert records[0].request_sha256 is not None and records[0].client == "127.0.0.1:5000"


def test_a_fault_in_the_app_is_recorded_as_a_500_before_it_is_raised_on(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.db") as log:
        with pytest.raises(RuntimeError, match="a bug"):
            call(log, answering(200, fault=True))
    records = [r for _, r in tail(tmp_path / "audit.db", 10)]
    assert [(r.status, r.reason) for r in records] == [(500, "internal error")]
