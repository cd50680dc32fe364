"""The JSON-lines child process protocol the runtime's isolated steps and the build's conversion both use."""

from __future__ import annotations

import sys
import time

import pytest

from onnxguard import childproc

CHILD = """
import json, sys, time
print("not json")
print(json.dumps([1, 2]))
for i in range(3):
    print(json.dumps({"event": i}), flush=True)
print("to stderr", file=sys.stderr)
print(json.dumps({"result": {"ok": True}}), flush=True)
if sys.argv[1] == "hang":
    time.sleep(60)
sys.exit(int(sys.argv[1]) if sys.argv[1] != "hang" else 0)
"""


def test_events_then_the_outcome_and_the_exit_code(tmp_path):
    events = []
    with open(tmp_path / "err", "w+b") as err:
        done = childproc.run([sys.executable, "-c", CHILD, "3"], err, events.append)
        assert childproc.stderr_lines(err) == ["to stderr"]
    assert events == [0, 1, 2] and done.outcome == {"result": {"ok": True}} and done.code == 3 and done.pid > 0


def test_a_caller_that_gives_up_kills_the_child(tmp_path):
    def stop(event):
        if event == 1:
            raise KeyboardInterrupt

    start = time.monotonic()
    with open(tmp_path / "err", "w+b") as err, pytest.raises(KeyboardInterrupt):
        childproc.run([sys.executable, "-c", CHILD, "hang"], err, stop)
    assert time.monotonic() - start < 30  # not the child's 60 s sleep
