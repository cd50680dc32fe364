"""Benchmark G: what confidential inference costs, on one server, against its own plain endpoint.

    .venv/bin/python benchmarks/confidential.py                  # 6 s per cell, about 2 minutes
    .venv/bin/python benchmarks/confidential.py --duration 10

One sealed, signed digits bundle (the scikit-learn logistic regression on the bundled digits: the model costs
~0.01 ms a row, so what is measured is the per-request cost of the protocol), a key broker holding its identity
(``onnxguard keybroker``), and one ``onnxguard serve --confidential --key-broker`` process that got its key from
it. Then, in one run:

* the time to release the key: ``keybroker.request_identity`` (nonce, attest, verify on the broker, wrap, unwrap)
  against the running broker, N times;
* the time to attest: ``ConfidentialClient.attest`` (fetch with a fresh nonce, every check) against the server;
* latency and throughput of one digits row per request at concurrency 1 and 16, closed loop on one event loop:
  the plain ``/v1/models/digits:predict`` and the confidential endpoint with each suite (every request sealed
  afresh, its answer opened: the client's crypto is inside the timing), in 1-second bursts taking turns, so that
  the load of a shared host drifts over every cell alike.

The client runs on the same 2 cores as the server. Results: benchmarks/results/G_confidential.json and a
markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from common import free_port, wait_ready

from onnxguard.speed.bench import machine

HERE = Path(__file__).parent
CACHE = HERE / ".cache" / "confidential"
RESULTS = HERE / "results"
ONNXGUARD = Path(sys.executable).parent / "onnxguard"


def cli(*args: str | Path) -> None:
    print("$ onnxguard", " ".join(str(a) for a in args), flush=True)
    subprocess.run([str(ONNXGUARD), *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def start(verb: str, args: list[str | Path], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(ONNXGUARD), verb, *map(str, args), "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, "/v2/health/ready", log=log)
    return proc, url


def prepare(root: Path) -> dict:
    """The sealed, signed digits bundle, the keys, the broker's policy (rebuilt every run: seconds)."""
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from onnxguard.serve.apikeys import KeyStore

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    x, y = load_digits(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=300).fit(x[:1200], y[:1200]), root / "digits.skops")
    cli("build", root / "digits.skops", "-o", root / "digits")
    cli("keygen", "-o", root / "keys")
    cli("keygen", "--platform", "-o", root / "platform")
    cli("seal", root / "digits", "--recipients-file", root / "keys" / "age-recipient.txt")
    cli("sign", root / "digits", "--key", root / "keys" / "signing-key.pem")
    digest = hashlib.sha256((root / "digits" / "manifest.json").read_bytes()).hexdigest()
    (root / "policy.toml").write_text(
        f'platforms = ["simulation"]\nplatform_keys = ["platform/platform-key.pub.pem"]\n'
        f'code_measurements = ["local"]\nbundle_digests = ["{digest}"]\n')
    with KeyStore(root / "keys.db") as store:
        secret = store.create("bench")[0]
    return {"digest": digest, "secret": secret, "rows": x[1200:1456].astype(np.float32).tolist()}


def timed(fn, n: int) -> dict:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return {"n": n, "p50_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def key_release(root: Path, broker_url: str, n: int) -> dict:
    from onnxguard.confidential import attestation, envelope, keybroker
    from onnxguard.confidential.attestation import ModelFacts
    from onnxguard.confidential.platform import SimulationPlatform
    from onnxguard.confidential.platform.simulation import load_private_key

    manifest = json.loads((root / "digits" / "manifest.json").read_text())
    digest = hashlib.sha256((root / "digits" / "manifest.json").read_bytes()).hexdigest()
    plat = SimulationPlatform(load_private_key(root / "platform" / "platform-key.pem"))
    keys = envelope.ServerKeys.generate()
    facts = attestation.facts(plat, [ModelFacts("digits", digest, manifest["model"]["sha256"], None)], keys.public)
    return timed(lambda: keybroker.request_identity(broker_url, facts, plat, keys), n)


async def burst(clients: list, url: str, secret: str, rows: list, suite: str | None, public: str | None,
                seconds: float) -> tuple[list[float], int, float]:
    """One closed-loop burst, one worker per client (kept-alive connections): latencies (ms), errors, wall s."""
    from onnxguard.confidential import envelope

    concurrency = len(clients)

    headers = {"Authorization": f"Bearer {secret}"}
    latencies: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def worker(i: int) -> None:
        nonlocal errors
        client, k = clients[i], i
        while time.monotonic() < end:
            body = orjson.dumps({"instances": [rows[k % len(rows)]]})
            k += concurrency
            t = time.perf_counter()
            if suite is None:
                r = await client.post(f"{url}/v1/models/digits:predict", content=body,
                                      headers={**headers, "Content-Type": "application/json"})
                ok = r.status_code == 200
            else:
                sealed = envelope.seal_request(suite, public, "digits", "predict", body)
                r = await client.post(f"{url}/v1/models/digits/confidential", content=sealed.ciphertext,
                                      headers={**headers, envelope.SUITE_HEADER: suite,
                                               "Content-Type": "application/octet-stream"})
                ok = r.status_code == 200 and envelope.open_response(sealed, r.content).status == 200
            latencies.append((time.perf_counter() - t) * 1e3)
            errors += not ok

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return latencies, errors, time.perf_counter() - start


def cells(url: str, secret: str, rows: list, policy, concurrency: int, seconds: float) -> list[dict]:
    """Plain and each suite at one concurrency, in 1-second bursts taking turns (the host's load drifts: every
    cell sees the same drift), ``seconds`` per cell in all."""
    from onnxguard.client import ConfidentialClient
    from onnxguard.confidential import envelope

    suites: list[str | None] = [None, envelope.PQ, envelope.CLASSIC]
    public: dict[str | None, str | None] = {None: None}
    for suite in suites[1:]:
        with ConfidentialClient(url, policy, api_key=secret, suite=suite) as c:
            c.attest()
            public[suite] = c.session.public_key
    got: dict[str | None, list] = {s: [[], 0, 0.0] for s in suites}

    async def rounds() -> None:
        import httpx

        clients = [httpx.AsyncClient(timeout=30) for _ in range(concurrency)]
        try:
            await burst(clients, url, secret, rows, None, None, 0.5)  # connections open, not timed
            for r in range(max(1, round(seconds))):
                for suite in suites[r % 3:] + suites[:r % 3]:
                    lat, err, wall = await burst(clients, url, secret, rows, suite, public[suite], 1.0)
                    got[suite][0] += lat
                    got[suite][1] += err
                    got[suite][2] += wall
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(rounds())
    return [{"suite": s or "plain", "concurrency": concurrency, "requests": len(lat), "errors": err,
             "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
             "per_s": len(lat) / wall} for s, (lat, err, wall) in got.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per cell")
    ap.add_argument("--n", type=int, default=50, help="key releases and attestations timed")
    args = ap.parse_args()

    from onnxguard.confidential.policy import ExpectedPolicy

    root = CACHE
    setup = prepare(root)
    broker, broker_url = start("keybroker", ["--identity", root / "keys" / "age-identity.txt", "--policy",
                                             root / "policy.toml", "--audit", root / "broker.db"], root / "broker.log")
    server = None
    try:
        t = time.perf_counter()
        server, url = start("serve", [f"digits={root / 'digits'}",
                                      "--public-key", root / "keys" / "signing-key.pub.pem",
                                      "--keys", root / "keys.db", "--audit", root / "audit.db", "--confidential",
                                      "--platform-key", root / "platform" / "platform-key.pem",
                                      "--key-broker", broker_url], root / "server.log")
        server_start_s = time.perf_counter() - t
        policy = ExpectedPolicy.of(platforms=["simulation"], platform_keys=[root / "platform" / "platform-key.pub.pem"],
                                   code_measurements=["local"], bundle_digests=[setup["digest"]], model="digits")
        from onnxguard.client import ConfidentialClient

        release = key_release(root, broker_url, args.n)
        with ConfidentialClient(url, policy, api_key=setup["secret"]) as c:
            attest = timed(c.attest, args.n)
        measured = []
        for concurrency in (1, 16):
            measured += cells(url, setup["secret"], setup["rows"], policy, concurrency, args.duration)
            print(measured[-3:], flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
        broker.terminate()
        broker.wait()
    out = {"machine": machine(), "duration_s": args.duration, "server_start_s": server_start_s,
           "key_release_ms": release, "attest_ms": attest, "cells": measured}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "G_confidential.json").write_text(json.dumps(out, indent=2) + "\n")
    print(table(out))


def table(out: dict) -> str:
    lines = [f"key release (nonce, attest, broker checks, wrap, unwrap): p50 {out['key_release_ms']['p50_ms']:.2f} ms",
             f"attest (fetch with a fresh nonce, 10 checks): p50 {out['attest_ms']['p50_ms']:.2f} ms", "",
             "| endpoint | conc. | p50 ms | p99 ms | req/s | p50 over plain | req/s vs plain | errors |",
             "|---|---|---|---|---|---|---|---|"]
    plain = {c["concurrency"]: c for c in out["cells"] if c["suite"] == "plain"}
    for c in sorted(out["cells"], key=lambda c: (c["concurrency"], c["suite"] != "plain", c["suite"])):
        base = plain[c["concurrency"]]
        lines.append(f"| {c['suite']} | {c['concurrency']} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} | "
                     f"{c['per_s']:.0f} | {c['p50_ms'] - base['p50_ms']:+.2f} ms | {c['per_s'] / base['per_s']:.2f} | "
                     f"{c['errors']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
