"""A/B of server settings: several ``onnxguard serve`` configurations (and LitServe) on the cached benchmark E
text bundle, loaded by wrk in interleaved rounds, medians per configuration and level.

    .venv/bin/python benchmarks/server_ab.py --levels 1,4,16 --rounds 3 \\
        "spin=" "nospin=--no-spin" "lanes=--lanes 2" "litserve=@litserve"

Each argument is NAME=SERVE-OPTIONS (split on spaces), or NAME=@litserve for the anchor. NAME=VAR=VALUE,...::OPTIONS
runs that server with more environment, e.g. another commit's code against this one:

    git worktree add /tmp/before HEAD~3
    .venv/bin/python benchmarks/server_ab.py "before=PYTHONPATH=/tmp/before/src::" "now="

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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
