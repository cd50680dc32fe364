"""A/B of server settings: several ``onnxguard serve`` configurations (and LitServe) on the cached benchmark E
text bundle, loaded by wrk in interleaved rounds, medians per configuration and level.

    .venv/bin/python benchmarks/server_ab.py --levels 1,4,16 --rounds 3 \\
        "spin=" "nospin=--no-spin" "lanes=--lanes 2" "litserve=@litserve"

Each argument is NAME=SERVE-OPTIONS (split on spaces), or NAME=@litserve for the anchor. NAME=VAR=VALUE,...::OPTIONS
runs that server with more environment, e.g. another commit's code against this one:

    git worktree add /tmp/before HEAD~3
    .venv/bin/python benchmarks/server_ab.py "before=PYTHONPATH=/tmp/before/src::" "now="

With ``--pairs N``, a lone request instead of wrk: N rounds, each sending one text to every server in turn (the
order reversed every other round), each request right after the bare in-process tokenize + run of the same text
(as benchmark E's concurrency-1 pairs). It prints each server's median over bare and, for every server after the
first, the median of its paired differences from the first with a 95 % bootstrap interval: changes of a tenth of a
millisecond show through a host whose speed moves by more than that within seconds.

    .venv/bin/python benchmarks/server_ab.py --pairs 1500 "before=PYTHONPATH=/tmp/before/src::" "now="

Needs the bundles of ``benchmarks/server.py --size base`` (run it once) and, for the anchor, ``make bench-anchors``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import server as bench
from common import free_port, wait_ready

from onnxguard.speed.bench import machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("configs", nargs="+", help="NAME=SERVE-OPTIONS or NAME=@litserve")
    ap.add_argument("--levels", default="1,16")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--size", choices=("tiny", "base"), default="base")
    ap.add_argument("--text", choices=("auto", "fp32"), default="auto", help="the text bundle (see server.py)")
    ap.add_argument("--pairs", type=int, default=0, help="rounds of lone requests paired with bare calls (no wrk)")
    args = ap.parse_args()
    if args.pairs and any(c.endswith("@litserve") for c in args.configs):
        ap.error("--pairs compares onnxguard servers only (LitServe's polling workers need benchmarks/server.py)")
    info = bench.prepare(args.size)
    if args.text == "fp32":
        info["text"] = info["text_fp32"]
    run = bench.CACHE / args.size / f"ab-{int(time.time())}"
    run.mkdir()
    secret = json.loads(bench.cli("apikey", "create", "bench", "--keys", run / "keys.db", "--rate", "100000/minute",
                                  "--budget", str(10**9), "--json", capture=True))["secret"]
    bodies = [{"instances": [t]} for t in bench.short_texts(256, seed=2)]
    servers: dict[str, tuple[str, subprocess.Popen, dict, str]] = {}
    try:
        for config in args.configs:
            name, _, options = config.partition("=")
            extra, _, options = options.rpartition("::")
            env = {**os.environ, **dict(kv.split("=", 1) for kv in extra.split(",") if kv)}
            port = free_port()
            log = open(run / f"{name}.log", "w")
            if options == "@litserve":
                proc = subprocess.Popen([str(bench.ANCHORS_PYTHON), str(bench.HERE / "anchors" / "litserve_app.py"),
                                         info["text"], "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
                servers[name] = (f"http://127.0.0.1:{port}", proc, {}, "/health")
            else:
                proc = subprocess.Popen([str(bench.ONNXGUARD), "serve", f"text={info['text']}", "--public-key",
                                         info["public_key"], "--keys", str(run / "keys.db"), "--audit",
                                         str(run / f"audit-{name}.db"), "--host", "127.0.0.1", "--port", str(port),
                                         *options.split()], stdout=log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
                servers[name] = (f"http://127.0.0.1:{port}", proc, {"Authorization": f"Bearer {secret}"},
                                 "/v2/health/ready")
        for url, proc, _, probe in servers.values():
            wait_ready(url, proc, probe)
        if args.pairs:
            report_pairs(paired(servers, info, args.pairs))
            return
        results: dict[tuple[str, int], list[dict]] = {}
        for r in range(args.rounds):
            for c in (int(x) for x in args.levels.split(",")):
                names = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in names:
                    url, _, headers, _ = servers[name]
                    level = bench.wrk_level(url, "/v1/models/text:predict", bodies, headers, c, args.duration, run)
                    results.setdefault((name, c), []).append(level)
    finally:
        for _, proc, _, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    print(f"machine: {machine()}")
    print("| config | concurrency | texts/s per round | median texts/s | p50 ms per round |\n|---|---|---|---|---|")
    for (name, c), levels in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rates = [lv["throughput"] for lv in levels]
        p50s = ", ".join(f"{lv['p50_ms']:.2f}" for lv in levels)
        print(f"| {name} | {c} | {', '.join(f'{x:.0f}' for x in rates)} | {statistics.median(rates):.0f} | {p50s} |")


def paired(servers: dict, info: dict, rounds: int) -> dict[str, np.ndarray]:
    """Each server's time over the bare call before it, in ms, round by round."""
    texts = bench.short_texts(256, seed=2)
    bare = bench.InProcess(Path(info["text"]), Path(info["public_key"]), texts)
    bodies = [json.dumps({"instances": [t]}).encode() for t in texts]
    clients = {name: bench.KeptAlive(url, "/v1/models/text:predict", headers)
               for name, (url, _, headers, _) in servers.items()}
    over: dict[str, list[float]] = {name: [] for name in servers}
    for i in range(-30, rounds):  # 30 rounds of warm-up
        for name in (list(clients) if i % 2 == 0 else list(reversed(clients))):
            t0 = time.perf_counter()
            bare.once(i)
            t1 = time.perf_counter()
            status = clients[name].post(bodies[i % len(bodies)])
            t2 = time.perf_counter()
            if status != 200:
                raise SystemExit(f"{name} answered {status}")
            if i >= 0:
                over[name].append(((t2 - t1) - (t1 - t0)) * 1e3)
    for client in clients.values():
        client.close()
    return {name: np.asarray(v) for name, v in over.items()}


def report_pairs(over: dict[str, np.ndarray]) -> None:
    print(f"machine: {machine()}")
    names = list(over)
    for name in names:
        print(f"{name}: over bare p50 {np.median(over[name]):.3f} ms ({len(over[name])} pairs)")
    rng = np.random.default_rng(0)
    for name in names[1:]:
        d = over[name] - over[names[0]]
        boot = np.median(rng.choice(d, (2000, len(d))), axis=1)
        low, high = np.percentile(boot, [2.5, 97.5])
        print(f"{name} - {names[0]}: median {np.median(d):+.3f} ms, 95 % interval {low:+.3f} to {high:+.3f} ms")


if __name__ == "__main__":
    main()
