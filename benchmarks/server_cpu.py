"""Where a lone request's time goes: the CPU time ``onnxguard serve`` spends per request, by thread, beside the wall
time it adds over the bare in-process call (benchmark E's concurrency-1 pairs).

    .venv/bin/python benchmarks/server_cpu.py                  # base DistilBERT bundle of benchmark E, 800 pairs
    .venv/bin/python benchmarks/server_cpu.py --requests 400 --serve-options "--lanes 1"

One ``onnxguard serve`` of benchmark E's text bundle (built by ``benchmarks/server.py --size base`` on first use)
with its key, rate limit, budget, validation, batching and audit log on. Request by request, the bare in-process
tokenize + run of an item (a session that spins during a run and stops at its end, as the server's lone requests
run) alternates with the same item sent to the server over one kept-alive connection. The server's CPU time is
read from /proc for each of its threads before and after, user and system apart. The event loop is the main
thread; the two busiest other threads are ONNX Runtime's run (the lane's thread and its intra-op worker); the
rest (the audit writer, other lanes and pools) are summed. Results: benchmarks/results/E_server_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import server as bench
from common import free_port, wait_ready

from onnxguard.speed import loadgen
from onnxguard.speed.bench import machine

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """Each thread's (user, system) CPU seconds so far."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(tid)] = (int(fields[11]) / TICK, int(fields[12]) / TICK)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=800, help="pairs timed (after 20 of warm-up)")
    ap.add_argument("--serve-options", default="", help="more onnxguard serve options")
    ap.add_argument("--save-as", default="E_server_cpu")
    args = ap.parse_args()
    info = bench.prepare("base")
    root, pub = Path(info["root"]), info["public_key"]
    run = root / f"cpu-{int(time.time())}"
    run.mkdir()
    secret = json.loads(bench.cli("apikey", "create", "bench", "--keys", run / "keys.db", "--rate", "100000/minute",
                                  "--budget", str(10**9), "--json", capture=True))["secret"]
    texts = bench.short_texts(256, seed=2)
    bare_calls = bench.InProcess(Path(info["text"]), Path(pub), texts)
    port = free_port()
    proc = subprocess.Popen([str(bench.ONNXGUARD), "serve", f"text={info['text']}", "--public-key", pub,
                             "--keys", str(run / "keys.db"), "--audit", str(run / "audit.db"), "--host", "127.0.0.1",
                             "--port", str(port), *args.serve_options.split()],
                            stdout=open(run / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, "/v2/health/ready")
        bodies = [json.dumps(b).encode() for b in loadgen.predict_bodies(texts)]
        client = bench.KeptAlive(url, "/v1/models/text:predict", {"Authorization": f"Bearer {secret}"})
        for i in range(20):  # warm-up
            bare_calls.once(i)
            client.post(bodies[i % len(bodies)])
        bare, served, bare_cpu = [], [], []
        before = thread_cpu(proc.pid)
        for i in range(args.requests):
            c0, t0 = time.process_time(), time.perf_counter()
            bare_calls.once(i)
            bare.append(time.perf_counter() - t0)
            bare_cpu.append(time.process_time() - c0)
            t1 = time.perf_counter()
            status = client.post(bodies[i % len(bodies)])
            served.append(time.perf_counter() - t1)
            if status != 200:
                raise SystemExit(f"the server answered {status}; see {run / 'server.log'}")
        after = thread_cpu(proc.pid)
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    n = args.requests
    per = {tid: tuple((a - b) * 1e3 / n for a, b in zip(after[tid], before.get(tid, (0.0, 0.0)), strict=True))
           for tid in after}
    loop = per.pop(proc.pid)
    busiest = sorted(per, key=lambda t: -sum(per[t]))
    run_threads = [per[t] for t in busiest[:2]]
    rest = [per[t] for t in busiest[2:]]
    over = np.asarray(served) - np.asarray(bare)
    result = {
        "benchmark": "E_server_cpu", "command": "python benchmarks/server_cpu.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine(), "pairs": n,
        "bare_p50_ms": float(np.median(bare) * 1e3), "served_p50_ms": float(np.median(served) * 1e3),
        "over_bare_p50_ms": float(np.median(over) * 1e3),
        "bare_cpu_ms_per_call": float(np.mean(bare_cpu) * 1e3),
        "server_cpu_ms_per_request": {
            "event_loop_user": loop[0], "event_loop_system": loop[1],
            "run_threads": sum(sum(t) for t in run_threads),
            "other_threads_user": sum(t[0] for t in rest), "other_threads_system": sum(t[1] for t in rest)},
    }
    bench.RESULTS.mkdir(exist_ok=True)
    (bench.RESULTS / f"{args.save_as}.json").write_text(json.dumps(result, indent=2) + "\n")
    cpu = result["server_cpu_ms_per_request"]
    print(f"bare p50 {result['bare_p50_ms']:.2f} ms, served p50 {result['served_p50_ms']:.2f} ms, over bare p50 "
          f"{result['over_bare_p50_ms']:.2f} ms ({n} pairs)")
    print(f"server CPU per request: event loop {cpu['event_loop_user']:.2f} ms user + "
          f"{cpu['event_loop_system']:.2f} ms system; ONNX Runtime's run threads {cpu['run_threads']:.2f} ms "
          f"(the bare call: {result['bare_cpu_ms_per_call']:.2f} ms in all); other threads "
          f"{cpu['other_threads_user']:.2f} + {cpu['other_threads_system']:.2f} ms")


if __name__ == "__main__":
    main()
