"""Helpers for the confidential tests (a plain module): real ``onnxguard keybroker`` and ``onnxguard serve``
processes on 127.0.0.1, waited for until ready."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import cli_runner

ONNXGUARD = Path(sys.executable).parent / "onnxguard"
START_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(verb: str, args: list[str], log: Path, *, wait: bool = True) -> tuple[subprocess.Popen[str], str]:
    """``onnxguard VERB ARGS --host 127.0.0.1 --port P``; waited for until /v2/health/ready answers (or its exit)."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ONNXGUARD), verb, *args, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=cli_runner.environment())
    url = f"http://127.0.0.1:{port}"
    if not wait:
        return proc, url
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"onnxguard {verb} exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"onnxguard {verb} was not ready in {START_TIMEOUT} s:\n{log.read_text()}")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
