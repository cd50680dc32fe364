"""The load generator (``onnxguard bench --url``) against a real server on 127.0.0.1: counts, bounds, refusals.

Speed is never asserted here (benchmarks/server.py measures it); what is asserted is that every level is
bounded by its request count and by its duration, that every request is counted once, and that under load the
server answers only 2xx or 503.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from serve_support import free_port, make_keys, start

import cli_runner
from onnxguard.errors import InputError
from onnxguard.serve import audit as audit_lib
from onnxguard.speed import loadgen


def _rows(n: int = 8) -> list[dict]:
    rng = np.random.default_rng(0)
    return loadgen.infer_bodies([{"input": rng.random((n, 64), dtype=np.float32) * 16}])


def _check_counts(lv: loadgen.Level) -> None:
    assert lv.sent == lv.ok + sum(lv.errors.values())
    assert lv.shed == lv.errors.get("503", 0)
    if lv.ok:
        assert lv.p50_ms <= lv.p95_ms <= lv.p99_ms <= lv.max_ms
        assert lv.throughput > 0 and lv.seconds > 0


def test_each_level_stops_at_its_request_count(server):
    report = loadgen.run(server.url, "digits", _rows(), headers=server.headers(), concurrency_levels=(1, 4),
                         duration=120.0, max_requests=25)
    assert [lv.concurrency for lv in report.levels] == [1, 4]
    for lv in report.levels:
        _check_counts(lv)
        assert (lv.sent, lv.ok, dict(lv.errors), lv.stopped_by) == (25, 25, {}, "requests")
    assert report.url == f"{server.url}/v2/models/digits/infer" and report.bodies == 8
    d = json.loads(json.dumps(report.to_dict()))
    assert [x["sent"] for x in d["levels"]] == [25, 25] and d["max_requests"] == 25


def test_each_level_stops_at_its_duration(server):
    began = time.monotonic()
    report = loadgen.run(server.url, "text", loadgen.predict_bodies(["a short text", "another short text"]),
                         headers=server.headers(), concurrency_levels=(2,), duration=0.5, max_requests=10**7,
                         endpoint="predict")
    (lv,) = report.levels
    _check_counts(lv)
    assert lv.stopped_by == "duration" and 0 < lv.sent < 10**7 and lv.ok == lv.sent
    assert time.monotonic() - began < 60  # bounded: 0.5 s of load, not ten million requests


def test_under_load_a_small_queue_sheds_with_503_only(tmp_path, served_bundles):
    """A server whose queue holds one row, loaded by 32 workers: every answer is 200 or 503, the server lives on
    and its audit chain verifies."""
    keys_db, audit_db = tmp_path / "keys.db", tmp_path / "audit.db"
    secrets = make_keys(keys_db)
    port = free_port()
    proc = start([f"digits={served_bundles['digits']}", "--public-key", str(served_bundles["public_key"]),
                  "--keys", str(keys_db), "--audit", str(audit_db), "--max-queue", "1"], port, tmp_path / "log")
    try:
        report = loadgen.run(f"http://127.0.0.1:{port}", "digits", _rows(), concurrency_levels=(32,),
                             headers={"Authorization": f"Bearer {secrets['full']}"}, duration=20.0,
                             max_requests=300)
        (lv,) = report.levels
        _check_counts(lv)
        assert set(lv.errors) <= {"503"}, lv.errors
        assert lv.sent == 300 and lv.ok + lv.shed == 300 and lv.ok > 0
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert audit_lib.verify(audit_db).passed


def test_a_refused_first_request_stops_the_run(server):
    with pytest.raises(InputError, match="401"):
        loadgen.run(server.url, "digits", _rows(), headers={"Authorization": "Bearer og_k_0_nope"},
                    concurrency_levels=(2,), duration=5, max_requests=10)
    with pytest.raises(InputError, match="404"):
        loadgen.run(server.url, "nope", _rows(), headers=server.headers(), concurrency_levels=(1,), duration=5,
                    max_requests=10)


def test_no_server_is_one_error():
    with pytest.raises(InputError, match="no answer from"):
        loadgen.run(f"http://127.0.0.1:{free_port()}", "digits", _rows(), concurrency_levels=(1,), duration=5,
                    max_requests=10)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"url": "ftp://127.0.0.1:1"}, "not an http(s) URL"),
    ({"concurrency_levels": (0,)}, ">= 1"),
    ({"duration": 0.0}, "must be positive"),
    ({"max_requests": 0}, "max_requests"),
    ({"requests": []}, "no requests"),
    ({"endpoint": "explain"}, "unknown endpoint"),
])
def test_bad_arguments_are_input_errors(kwargs, fragment):
    args = {"url": "http://127.0.0.1:1", "model": "m", "requests": _rows(1)} | kwargs
    with pytest.raises(InputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        loadgen.run(args.pop("url"), args.pop("model"), args.pop("requests"), **args)


def test_bench_url_command(server, tmp_path, texts_file):
    env = {"OG_TEST_KEY": server.keys["full"]}
    plot = tmp_path / "load.png"
    r = cli_runner.run("bench", "--url", server.url, "--model", "digits", "--key-env", "OG_TEST_KEY", "--inputs",
                       server.bundles["digits"] / "golden.npz", "--concurrency", "1,3", "--duration", "30",
                       "--max-requests", "12", "--plot", plot, "--json", env=env)
    assert r.code == 0, str(r)
    d = json.loads(r.out)
    assert [(x["concurrency"], x["sent"], x["ok"]) for x in d["levels"]] == [(1, 12, 12), (3, 12, 12)]
    assert d["bodies"] == 68 and d["endpoint"] == "infer"  # one request per row of the golden set
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = cli_runner.run("bench", "--url", server.url, "--model", "text", "--key-env", "OG_TEST_KEY", "--texts",
                       texts_file, "--concurrency", "2", "--max-requests", "6", env=env)
    assert r.code == 0, str(r)
    assert "load on" in r.out and ":predict" in r.out and "requests" in r.out
    assert server.keys["full"] not in r.out + r.err


def test_bench_url_command_errors(server, texts_file):
    r = cli_runner.run("bench", "--url", server.url, "--model", "digits", "--key-env", "OG_UNSET_VAR", "--texts",
                       texts_file, env={"OG_UNSET_VAR": ""})
    cli_runner.expect_error(r, 2, "OG_UNSET_VAR")
    r = cli_runner.run("bench", "--url", server.url, "--model", "digits")
    cli_runner.expect_error(r, 2, "--inputs", "--texts")
    r = cli_runner.run("bench", "--url", server.url, "--texts", texts_file)
    cli_runner.expect_error(r, 2, "--model")
    r = cli_runner.run("bench", "--url", server.url, "--model", "text", "--texts", texts_file,
                       "--concurrency", "1,x")
    cli_runner.expect_error(r, 2, "--concurrency")
    r = cli_runner.run("bench")
    cli_runner.expect_error(r, 2, "--url")
    r = cli_runner.run("bench", "--url", server.url, "--model", "text", "--texts", texts_file)  # no key: 401
    cli_runner.expect_error(r, 2, "401")


def test_plot_of_several_reports(server, tmp_path):
    report = loadgen.run(server.url, "digits", _rows(), headers=server.headers(), concurrency_levels=(1, 2),
                         duration=10, max_requests=5)
    path = tmp_path / "two.png"
    loadgen.plot([report, report], path, labels=["a", "b"])
    assert path.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(InputError):
        loadgen.plot([report], path, labels=["a", "b"])


def test_inside_an_event_loop_is_an_input_error():
    import asyncio

    async def inside() -> None:
        loadgen.run("http://127.0.0.1:1", "m", _rows(1), concurrency_levels=(1,), duration=1, max_requests=1)

    with pytest.raises(InputError, match="its own event loop"):
        asyncio.run(inside())
