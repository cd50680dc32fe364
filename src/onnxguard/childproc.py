"""``childproc.run(argv, stderr, on_event)``: a child Python process that reports on its stdout in JSON lines.

Each line is an object: ``{"event": ...}`` lines are handed to ``on_event`` as they arrive, and the last other
object (``{"result": ...}`` or ``{"error": ...}``) is the outcome. Lines that are not JSON objects are skipped.
If the caller stops reading (its ``on_event`` raises, an interrupt), the child is killed: no step outlives its
caller. The runtime's isolated steps and the build's conversion process both speak this.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, cast


@dataclass(frozen=True)
class Finished:
    """How the child ended: its outcome message (empty if it sent none), exit code and pid."""

    outcome: dict[str, Any]
    code: int
    pid: int


def run(argv: Sequence[str], stderr: IO[bytes], on_event: Callable[[Any], None], *,
        cwd: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Finished:
    """Run ``argv`` with its stderr in ``stderr`` and read its JSON lines until it exits."""
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=stderr, text=True, encoding="utf-8")
    outcome: dict[str, Any] = {}
    stdout = cast(IO[str], proc.stdout)  # a pipe: stdout=PIPE
    try:
        for line in stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            if "event" in message:
                on_event(message["event"])
            else:
                outcome = message
        code = proc.wait()
    finally:  # the caller gave up: the child goes too
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stdout.close()
    return Finished(outcome, code, proc.pid)


def stderr_lines(stderr: IO[bytes]) -> list[str]:
    """The non-blank lines the child wrote to ``stderr`` (a file it was given), right-stripped."""
    stderr.seek(0)
    return [ln.rstrip() for ln in stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
