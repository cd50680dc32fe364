"""Benchmark E: the inference server against the in-process ceiling and the source documents' design, one run.

    .venv/bin/python benchmarks/server.py                       # tiny DistilBERT + digits, 8 s per level
    .venv/bin/python benchmarks/server.py --size base --duration 10
    .venv/bin/python benchmarks/server.py --size base --duration 10 --text fp32   # the FP32 build of the same model

Three signed bundles built by the real CLI (a random-weight DistilBERT text classifier, tiny or base config, the
quickstart's digits CNN trained in seconds on scikit-learn's bundled digits, and the scikit-learn logistic
regression on the same digits), then, in one run:

* the in-process ceiling: the bundle's own session, one caller, tokenize + run (text) or run (images, rows), padded to
  the longest text of the batch, best items/s over batch sizes 1..32 (at the start, and again at the end for the
  record). This host's speed drifts by a tenth or more within a minute, so each figure is taken against the
  in-process figure measured beside it, every server stopped meanwhile: under load, the ceiling at its best batch
  just before and after the level, its share of their mean (``beside``); at concurrency 1, the bare call of an
  item alternates with the same item sent to the server, request by request, "over bare" the median of the paired
  differences (``paired_level``);
* the source documents' seed design: a FastAPI app (in this file) that pads every text to 128 tokens and calls
  session.run once per request (no batching, no keys, no validation, no audit), on uvicorn on 127.0.0.1;
* plain FastAPI: the same app without the padding (a text runs at its own length) and with sessions that stop
  spinning after each run (as the bare calls paired with its requests), issue 13's "plain FastAPI, one run per
  request" row: what a server with none of the checks costs on this host (text only; ``--no-plain`` skips it);
* ``onnxguard serve`` with everything on: API key with a rate limit and a query budget, validation, dynamic
  batching, the audit log (durable before each answer);

* the anchor: LitServe 0.2.19 (benchmarks/anchors/litserve_app.py, in its own venv: ``make bench-anchors``) with
  dynamic batching 32 / 2 ms over the same model.onnx and tokenizer.json (text only; ``--no-anchor`` skips it);

each server loaded (the others stopped with SIGSTOP meanwhile: LitServe's idle workers poll) with wrk (or
``onnxguard.speed.loadgen``; concurrency 1: one kept-alive connection of this process), one short text or one digit
per request, at concurrency 1, 4, 16, 64, each level bounded by ``--duration`` seconds and ``--max-requests``,
the servers taking turns going first level by level. The load generator runs on the same 2 cores as the server. Results:
benchmarks/results/E_server.json, and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np
from common import free_port, wait_ready

from onnxguard.serve.app import default_lanes
from onnxguard.speed.bench import machine

HERE = Path(__file__).parent
CACHE = HERE / ".cache" / "server"
RESULTS = HERE / "results"
ONNXGUARD = Path(sys.executable).parent / "onnxguard"
ANCHOR = "LitServe 0.2.19"
PLAIN = "plain FastAPI"
SEED_LENGTH = 128  # the seed design pads every text to this many tokens
BATCHES = (1, 2, 4, 8, 16, 32)
# After SIGCONT, before the request of a pair (a server whose idle workers poll): a resumed process's threads wake
# once (epoll_wait returns EINTR), which is no part of a request. Stopping and resuming still costs: measured on
# every server (tiny models), 0.1-0.4 ms more "over bare" than not stopping, so only a polling server is stopped.
RESUME_SECONDS = 0.001
ANCHORS_PYTHON = HERE.parent / ".venv-anchors" / "bin" / "python"


def text_tokenizer(opened):
    """The bundle's tokenizer (a text model), else None (images and table rows go in as arrays)."""
    from onnxguard.preprocess import tokenizer

    m = opened.manifest
    if not m.preprocessing or m.preprocessing.get("kind", "tokenizer") != "tokenizer":
        return None
    return tokenizer.load(dict(opened.contents), m.preprocessing, input_names=[t.name for t in m.model.inputs])


# -- the source documents' seed design ------------------------------------------------------------------------------

def seed_app(bundles: dict[str, Path], public_key: Path, pad: bool = True):
    """FastAPI, one session.run per request, texts padded to 128 tokens (``pad``; else to the longest text of the
    request, as tokenized), no batching (what the source documents describe), serving :predict for each bundle. No
    keys, no validation, no audit. Unpadded (plain FastAPI), its sessions stop spinning at the end of each run, as the
    bare calls paired with its requests do: ONNX Runtime's threads spinning on after a run took the cores from the
    bare call that followed (plain FastAPI read 3.99 ms *faster* than bare at concurrency 1, 22:45 UTC)."""
    from fastapi import FastAPI

    from onnxguard import runtime
    from onnxguard.trust import PublicKeys, TrustPolicy, open_bundle

    models = {}
    for name, path in bundles.items():
        opened = open_bundle(path, TrustPolicy(PublicKeys((public_key,))))
        config = {} if pad else {runtime.SPIN_STOP: "1"}
        models[name] = (runtime.session(opened.model_bytes, config=config), text_tokenizer(opened),
                        list(opened.manifest.labels or ()))
    app = FastAPI()

    @app.post("/v1/models/{name}:predict")
    def predict(name: str, body: dict) -> dict:  # a plain def: FastAPI runs it in its thread pool
        session, tok, labels = models[name]
        if tok is not None:
            encoded = tok.encode(body["instances"])
            feed = {k: np.pad(v, ((0, 0), (0, SEED_LENGTH - v.shape[1]))) for k, v in encoded.items()} if pad \
                else encoded
            scores = session.run(None, feed)[0]
        else:
            feed = {session.get_inputs()[0].name: np.asarray(body["instances"], np.float32)}
            scores = session.run(None, feed)[-1]
        best = scores.reshape(len(body["instances"]), -1).argmax(-1)
        return {"predictions": [{"label": labels[i] if labels else str(i)} for i in best]}

    return app


# -- building the bundles -------------------------------------------------------------------------------------------

def cli(*args: str | Path, capture: bool = False) -> str:
    cmd = [str(ONNXGUARD), *map(str, args)]
    print("$ onnxguard", " ".join(map(str, args)), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=capture)
    if done.returncode != 0:
        raise SystemExit(f"onnxguard {args[0]} exited {done.returncode}: {done.stderr}")
    return done.stdout


def short_texts(n: int, seed: int = 0) -> list[str]:
    """Short review-like texts of 12..17 words (14..19 tokens with [CLS] and [SEP]), as in MEASURED.md E."""
    from onnxguard.examples.text import WORDS

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, int(rng.integers(12, 18)))) for _ in range(n)]


def cnn_bundle(root: Path, key: Path) -> Path:
    """The quickstart's digits CNN, trained in seconds, built with ``--quantize auto`` (calibrated on training
    images) as the quickstart builds it."""
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.examples import digits as digits_cnn

    data = digits_cnn.load_data()
    model, _ = digits_cnn.train(data)
    digits_cnn.save_program(model, root / "digits_cnn.pt2")
    GoldenSet(tuple(digits_cnn.golden_batches(data))).save(root / "cnn_golden.npz")
    GoldenSet(tuple({"image": data.x_train[i : i + 64]} for i in range(0, 512, 64))).save(root / "cnn_calib.npz")
    cli("build", root / "digits_cnn.pt2", "-o", root / "cnn", "--overwrite", "--task", "classification", "--golden",
        root / "cnn_golden.npz", "--quantize", "auto", "--calibration", root / "cnn_calib.npz", "--batch-size", "32",
        "--sign-key", key)
    return root / "cnn"


def fp32_bundle(root: Path, hf: Path, key: Path) -> Path:
    """The same text model built without quantization (``--quantize none``): the FP32 workload MEASURED.md E ran
    the other servers on (``--text fp32``)."""
    cli("build", hf, "-o", root / "text-fp32", "--overwrite", "--texts", root / "texts.txt", "--quantize", "none",
        "--sign-key", key)
    return root / "text-fp32"


def prepare(size: str) -> dict:
    root = CACHE / size
    done = root / "ready.json"
    if done.exists():
        info = json.loads(done.read_text())
        key = root / "keys" / "signing-key.pem"
        if "cnn" not in info:  # a cache from before the CNN joined the benchmark
            info["cnn"] = str(cnn_bundle(root, key))
        if "text_fp32" not in info:  # ... or before the FP32 text bundle did
            info["text_fp32"] = str(fp32_bundle(root, Path(info["text"]).parent / f"distilbert-{size}", key))
        done.write_text(json.dumps(info))
        return info
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    from onnxguard.examples.text import save_random_model

    cli("keygen", "--out", root / "keys")
    key = root / "keys" / "signing-key.pem"
    texts = root / "texts.txt"
    texts.write_text("\n".join(short_texts(64, seed=1)) + "\n")
    hf = save_random_model(root / f"distilbert-{size}", "distilbert", size, "text-classification", num_labels=2)
    t0 = time.perf_counter()
    cli("build", hf, "-o", root / "text", "--texts", texts, "--quantize", "auto", "--sign-key", key)
    build_s = time.perf_counter() - t0
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=2000).fit(x[:1200], y[:1200]), root / "digits.skops")
    cli("build", root / "digits.skops", "-o", root / "digits", "--sign-key", key)
    cnn_bundle(root, key)
    fp32_bundle(root, hf, key)
    info = {"root": str(root), "text": str(root / "text"), "text_fp32": str(root / "text-fp32"),
            "digits": str(root / "digits"), "cnn": str(root / "cnn"),
            "public_key": str(root / "keys" / "signing-key.pub.pem"), "text_build_seconds": build_s}
    done.write_text(json.dumps(info))
    return info


# -- in process ---------------------------------------------------------------------------------------------------

class InProcess:
    """The bundle's own sessions in this process, one caller, tokenize + run (text) or run (images, rows), padded to
    the batch's longest text; each with ONNX Runtime's default (spin-waiting threads) and without spinning
    (onnxguard serve --no-spin), the better of the two kept, so that the ceiling is the best this host does."""

    def __init__(self, bundle: Path, public_key: Path, items: list) -> None:
        from onnxguard import runtime
        from onnxguard.trust import PublicKeys, TrustPolicy, open_bundle

        opened = open_bundle(bundle, TrustPolicy(PublicKeys((public_key,))))
        self.tok, self.items = text_tokenizer(opened), items
        self.sessions = {label: runtime.session(opened.model_bytes, config=config) for label, config in (
            ("spinning", {}), ("no spinning", {"session.intra_op.allow_spinning": "0"}))}
        # For the pairs of paired_level: threads that spin during a run and stop at its end (as the server's lone
        # requests run), or they would take the cores from the server's request that follows.
        self.paired = runtime.session(opened.model_bytes, config={runtime.SPIN_STOP: "1"})

    def _call(self, session, batch: list) -> None:
        feed = self.tok.encode(batch) if self.tok is not None else {
            session.get_inputs()[0].name: np.asarray(batch, np.float32)}
        session.run(None, feed)

    def _batch(self, label: str, b: int, seconds: float) -> dict:
        batches = [[self.items[(i * b + j) % len(self.items)] for j in range(b)] for i in range(max(1, 64 // b))]
        for x in batches[:3]:
            self._call(self.sessions[label], x)  # warm-up
        times, end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < end or len(times) < 5:
            t0 = time.perf_counter()
            self._call(self.sessions[label], batches[i % len(batches)])
            times.append(time.perf_counter() - t0)
            i += 1
        return {"calls": len(times), "p50_ms": float(np.median(times) * 1e3),
                "items_per_s": b * len(times) / sum(times)}

    def ceiling(self, seconds: float) -> dict:
        """Best items/s over batch sizes, and the latency of one item at batch 1 (``bare_p50_ms``)."""
        results = {label: {b: self._batch(label, b, seconds) for b in BATCHES} for label in self.sessions}
        best_label, best = max(((lbl, b) for lbl, pb in results.items() for b in pb),
                               key=lambda lb: results[lb[0]][lb[1]]["items_per_s"])
        bare = min(results[lbl][1]["p50_ms"] for lbl in results)
        return {"ceiling_items_per_s": results[best_label][best]["items_per_s"], "best_batch": best,
                "ceiling_config": best_label, "bare_p50_ms": bare, "batches": results}

    def throughput(self, label: str, b: int, seconds: float) -> float:
        """Items/s at batch ``b`` with session ``label`` now, for ``beside``."""
        return float(self._batch(label, b, seconds)["items_per_s"])

    def once(self, i: int) -> None:
        """Item ``i`` alone, as the pairs of ``paired_level`` run it."""
        self._call(self.paired, [self.items[i % len(self.items)]])


# -- wrk: the C load generator MEASURED.md E used ----------------------------------------------------------------

WRK_SCRIPT = r"""
local bodies = {}
for line in io.lines(os.getenv("WRK_BODIES")) do bodies[#bodies + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth ~= nil and auth ~= "" then wrk.headers["Authorization"] = auth end
request = function()
  i = i % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %d, "us": %d, "status": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"timeout": %d, "p50": %d, "p95": %d, "p99": %d, "mean": %f, "max": %d}\n', summary.requests,
    summary.duration, e.status, e.connect, e.read, e.write, e.timeout, latency:percentile(50),
    latency:percentile(95), latency:percentile(99), latency.mean, latency.max))
end
"""


def wrk_level(url: str, path: str, bodies: list[dict], headers: dict, concurrency: int, duration: float,
              work: Path) -> dict:
    """One level under wrk (one thread, ``concurrency`` keep-alive connections, 30 s timeout): the same fields as
    ``loadgen.Level``. wrk counts non-2xx answers without their status, so they are all under "non-2xx"."""
    script, lines = work / "wrk.lua", work / "bodies.jsonl"
    script.write_text(WRK_SCRIPT)
    lines.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    env = {**os.environ, "WRK_BODIES": str(lines), "WRK_AUTH": headers.get("Authorization", "")}
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "30s",
                           "-s", str(script), url + path], capture_output=True, text=True, env=env, check=True)
    r = json.loads(next(line[4:] for line in done.stdout.splitlines() if line.startswith("WRK ")))
    errors = {k: r[k] for k in ("connect", "read", "write", "timeout") if r[k]}
    if r["status"]:
        errors["non-2xx"] = r["status"]
    seconds, ok = r["us"] / 1e6, r["requests"] - r["status"]
    return {"concurrency": concurrency, "sent": r["requests"], "ok": ok, "errors": errors, "shed": None,
            "seconds": seconds, "throughput": ok / seconds, "p50_ms": r["p50"] / 1e3, "p95_ms": r["p95"] / 1e3,
            "p99_ms": r["p99"] / 1e3, "mean_ms": r["mean"] / 1e3, "max_ms": r["max"] / 1e3,
            "stopped_by": "duration"}


def measure(args: argparse.Namespace, url: str, name: str, bodies: list[dict], headers: dict, concurrency: int,
            work: Path, loadgen) -> dict:
    """One level on one server with the chosen client."""
    if args.client == "wrk":
        return wrk_level(url, f"/v1/models/{name}:predict", bodies, headers, concurrency, args.duration, work)
    report = loadgen.run(url, name, bodies, headers=headers, concurrency_levels=(concurrency,),
                         duration=args.duration, max_requests=args.max_requests, endpoint="predict")
    return report.levels[0].to_dict()


def beside(args: argparse.Namespace, url: str, name: str, bodies: list[dict], headers: dict, concurrency: int,
           work: Path, loadgen, proc: subprocess.Popen, in_process: InProcess, ceiling: dict) -> dict:
    """A level under load with the in-process ceiling at its best batch measured just before and just after it
    (every server stopped, one second each): the host's speed drifts by a tenth or more within a minute (ceilings of
    154 and 182 texts/s at the start and the end of one run), so the share is of the mean of those two."""
    def ceiling_now() -> float:
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            return in_process.throughput(ceiling["ceiling_config"], ceiling["best_batch"], 1.0)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)

    before = ceiling_now()
    lv = measure(args, url, name, bodies, headers, concurrency, work, loadgen)
    settle(proc)
    around = [before, ceiling_now()]
    return {**lv, "ceiling_beside_items_per_s": around, "share_of_ceiling": lv["throughput"] / float(np.mean(around))}


def settle(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Wait until the server is done with the requests the client left in flight (its processes use less than a
    fifth of a core over 0.2 s; LitServe's idle workers poll), at most ``timeout`` seconds: that work would
    otherwise run in the next measurement."""
    def cpu() -> float:
        ticks = sum(int(fields[11]) + int(fields[12]) for _, fields in _proc_stats()
                    if int(fields[2]) == proc.pid)  # its process group (started in a session of its own)
        return ticks / os.sysconf("SC_CLK_TCK")

    end, last = time.monotonic() + timeout, cpu()
    while time.monotonic() < end:
        time.sleep(0.2)
        now = cpu()
        if now - last < 0.2 * 0.2:
            return
        last = now


def paired_level(args: argparse.Namespace, url: str, name: str, bodies: list[dict], headers: dict,
                 proc: subprocess.Popen, in_process: InProcess, polls: bool) -> dict:
    """Concurrency 1, request by request: the bare in-process call of an item, then the same item sent to the server
    over one kept-alive connection, alternating for ``--duration`` seconds. This host's speed drifts by a tenth
    within a second or two (bare p50 6.4-10.9 ms in consecutive one-second windows), more than the overhead to be
    measured, so each server latency is paired with the bare latency measured milliseconds before it, every other
    server stopped; the server measured is idle meanwhile, but one whose idle workers ``polls`` (LitServe) is
    stopped too, or it would slow the bare call down. "over bare" is the median of the differences. Latencies and
    throughput are the server's requests alone."""
    path, payloads = f"/v1/models/{name}:predict", [json.dumps(b).encode() for b in bodies]
    client = KeptAlive(url, path, headers)
    bare: list[float] = []
    served: list[float] = []
    over: list[float] = []
    errors: dict[str, int] = {}

    def post(payload: bytes) -> int | None:
        """The response's status, or None (counted as wrk counts it) when the server dropped the connection, which
        is then opened again; ConnectionError when it cannot be."""
        nonlocal client
        try:
            return client.post(payload)
        except OSError:
            errors["read"] = errors.get("read", 0) + 1
            client.close()
            client = KeptAlive(url, path, headers)
            return None

    i = 0
    try:
        for i in range(3):  # warm-up
            in_process.once(i)
            post(payloads[i % len(payloads)])
        end, i = time.perf_counter() + args.duration, 0
        while time.perf_counter() < end and i < args.max_requests:
            if polls:
                os.killpg(proc.pid, signal.SIGSTOP)
            try:
                t0 = time.perf_counter()
                in_process.once(i)
                t1_bare = time.perf_counter()
            finally:
                if polls:
                    os.killpg(proc.pid, signal.SIGCONT)
                    time.sleep(RESUME_SECONDS)
            t1 = time.perf_counter()
            status = post(payloads[i % len(payloads)])
            t2 = time.perf_counter()
            i += 1
            bare.append(t_bare := t1_bare - t0)
            if status == 200:
                served.append(t2 - t1)
                over.append((t2 - t1) - t_bare)
            elif status is not None:
                errors[str(status)] = errors.get(str(status), 0) + 1
    except OSError:  # the server is gone (it could not be connected to again): the level ends with what it has
        errors["connect"] = errors.get("connect", 0) + 1
    finally:
        client.close()
    ms = np.asarray(served) * 1e3
    return {"concurrency": 1, "sent": i + 3, "ok": len(served), "errors": errors, "shed": None,
            "seconds": float(sum(served)), "throughput": len(served) / sum(served) if served else 0.0,
            "p50_ms": float(np.median(ms)) if served else None,
            **{f"p{q}_ms": float(np.percentile(ms, q)) if served else None for q in (95, 99)},
            "mean_ms": float(ms.mean()) if served else None, "max_ms": float(ms.max()) if served else None,
            "stopped_by": "duration" if i < args.max_requests else "requests", "client_runs": 0,
            "bare_p50_ms": float(np.median(bare) * 1e3) if bare else None,
            "p50_over_bare_ms": float(np.median(over) * 1e3) if over else None}


class KeptAlive:
    """One kept-alive HTTP/1.1 connection with the request head made once: the least client work between the two
    timings of a pair (responses must carry Content-Length, as every server here sends)."""

    def __init__(self, url: str, path: str, headers: dict) -> None:
        u = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((u.hostname, u.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        lines = [f"POST {path} HTTP/1.1", f"Host: {u.netloc}", "Content-Type: application/json",
                 *(f"{k}: {v}" for k, v in headers.items())]
        self.head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode()

    def post(self, body: bytes) -> int:
        """Send one request and read its whole response; its status."""
        self.sock.sendall(self.head + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += self._recv()
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines[1:])
                      if k.strip().lower() == b"content-length")
        while len(rest) < length:
            rest += self._recv()
        return int(lines[0].split(b" ", 2)[1])

    def _recv(self) -> bytes:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        self.sock.close()


# -- servers ------------------------------------------------------------------------------------------------------

def _proc_stats():
    """Every process's pid and the fields of its /proc stat after the command name (state, ppid, pgrp, ...)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(stat.parent.name), stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue


def rss_mb(pid: int) -> float:
    """Resident memory of a server: the process and its descendants (LitServe runs its model in worker
    processes)."""
    children: dict[int, list[int]] = {}
    for child, fields in _proc_stats():
        children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total or float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=("tiny", "base"), default="tiny")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per level and server at most")
    ap.add_argument("--max-requests", type=int, default=20_000, help="requests per level and server at most")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--text", choices=("auto", "fp32"), default="auto",
                    help="the text bundle: what build --quantize auto chose (default), or the FP32 build")
    ap.add_argument("--no-anchor", action="store_true", help="skip the LitServe anchor")
    ap.add_argument("--no-plain", action="store_true", help="skip plain FastAPI (the seed design without its padding)")
    ap.add_argument("--serve-options", default="", help="more onnxguard serve options, e.g. '--lanes 2 --no-spin'")
    ap.add_argument("--save-as", help="results name in benchmarks/results/ (default E_server, E_server_fp32)")
    ap.add_argument("--client", choices=("wrk", "loadgen"), default="wrk",
                    help="wrk (C, as MEASURED.md E; apt install wrk) or onnxguard's own Python load generator")
    ap.add_argument("--seed-app", nargs=4, metavar=("TEXT", "CNN", "DIGITS", "PUBLIC_KEY"), help=argparse.SUPPRESS)
    ap.add_argument("--unpadded", action="store_true", help=argparse.SUPPRESS)  # the child: plain FastAPI
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed_app:  # the child process: the seed design on uvicorn
        import uvicorn

        text, cnn, digits, pub = map(Path, args.seed_app)
        uvicorn.run(seed_app({"text": text, "cnn": cnn, "digits": digits}, pub, pad=not args.unpadded),
                    host="127.0.0.1", port=args.port, log_level="warning")
        return

    from onnxguard.serve import audit as audit_lib
    from onnxguard.speed import loadgen

    command = "python benchmarks/server.py " + " ".join(sys.argv[1:])
    levels = tuple(int(x) for x in args.levels.split(","))
    info = prepare(args.size)
    if args.text == "fp32":
        info["text"] = info["text_fp32"]
    root, pub = Path(info["root"]), Path(info["public_key"])
    run_dir = root / f"run-{int(time.time())}"
    run_dir.mkdir()
    texts = short_texts(256, seed=2)
    from sklearn.datasets import load_digits

    images = load_digits().images[1200:1456].astype(np.float32) / 16.0
    digits = load_digits().data[1200:1456].astype(np.float32).tolist()
    work = {"text": texts, "cnn": images[:, None].tolist(), "digits": digits}

    print("in-process ceilings ...", flush=True)
    in_process = {name: InProcess(Path(info[name]), pub, items) for name, items in work.items()}
    ceilings = {name: in_process[name].ceiling(2.0) for name in work}
    for name, c in ceilings.items():
        print(f"  {name}: {c['ceiling_items_per_s']:.0f}/s at batch {c['best_batch']}, bare p50 "
              f"{c['bare_p50_ms']:.2f} ms", flush=True)

    keys_db, audit_db = run_dir / "keys.db", run_dir / "audit.db"
    secret = json.loads(cli("apikey", "create", "bench", "--keys", keys_db, "--rate", "100000/minute",
                            "--budget", str(10**9), "--json", capture=True))["secret"]
    if not args.no_anchor and not ANCHORS_PYTHON.exists():
        raise SystemExit("the LitServe anchor needs its venv: make bench-anchors (or pass --no-anchor)")
    og_port, seed_port, plain_port, anchor_port = free_port(), free_port(), free_port(), free_port()
    logs = {name: open(run_dir / f"{name}.log", "w") for name in ("onnxguard", "seed", "plain", "litserve")}
    og = subprocess.Popen([str(ONNXGUARD), "serve", f"text={info['text']}", f"cnn={info['cnn']}",
                           f"digits={info['digits']}",
                           "--public-key", str(pub), "--keys", str(keys_db), "--audit", str(audit_db),
                           "--host", "127.0.0.1", "--port", str(og_port), *args.serve_options.split()],
                          stdout=logs["onnxguard"], stderr=subprocess.STDOUT, start_new_session=True)

    def fastapi(port: int, log: str, *more: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--seed-app", info["text"], info["cnn"], info["digits"],
                                 str(pub), "--port", str(port), *more], stdout=logs[log], stderr=subprocess.STDOUT,
                                start_new_session=True)

    servers = {"seed design": (f"http://127.0.0.1:{seed_port}", fastapi(seed_port, "seed"), {}),
               "onnxguard serve": (f"http://127.0.0.1:{og_port}", og, {"Authorization": f"Bearer {secret}"})}
    if not args.no_plain:
        servers[PLAIN] = (f"http://127.0.0.1:{plain_port}", fastapi(plain_port, "plain", "--unpadded"), {})
    if not args.no_anchor:
        anchor = subprocess.Popen([str(ANCHORS_PYTHON), str(HERE / "anchors" / "litserve_app.py"), info["text"],
                                   "--port", str(anchor_port)], stdout=logs["litserve"], stderr=subprocess.STDOUT,
                                  start_new_session=True)
        servers[ANCHOR] = (f"http://127.0.0.1:{anchor_port}", anchor, {})
    try:
        wait_ready(servers["onnxguard serve"][0], og, "/v2/health/ready")
        for s in ("seed design", PLAIN):
            if s in servers:
                wait_ready(servers[s][0], servers[s][1], "/docs")
        if ANCHOR in servers:
            wait_ready(servers[ANCHOR][0], servers[ANCHOR][1], "/health")
        # LitServe serves the text model only; plain FastAPI differs from the seed design on texts only
        results: dict = {name: {s: [] for s in servers if name == "text" or s not in (ANCHOR, PLAIN)} for name in work}
        for name, items in work.items():
            bodies = loadgen.predict_bodies(items)
            for i, c in enumerate(levels):
                names = list(results[name])
                order = names[i % len(names):] + names[:i % len(names)]  # take turns going first
                for s in order:
                    url, proc, headers = servers[s]
                    others = [p for n, (_, p, _) in servers.items() if n != s]
                    for p in others:  # stopped while another is measured: LitServe's idle workers poll
                        os.killpg(p.pid, signal.SIGSTOP)
                    try:
                        if c == 1:  # request by request, in pairs with the bare latency
                            lv = paired_level(args, url, name, bodies, headers, proc, in_process[name],
                                              polls=s == ANCHOR)
                        else:  # the in-process ceiling measured just before and after
                            lv = beside(args, url, name, bodies, headers, c, run_dir, loadgen, proc, in_process[name],
                                        ceilings[name])
                    finally:
                        for p in others:
                            os.killpg(p.pid, signal.SIGCONT)
                    row = {"bare_p50_ms": None, "p50_over_bare_ms": None,
                           "share_of_ceiling": lv["throughput"] / ceilings[name]["ceiling_items_per_s"], **lv,
                           "rss_mb": rss_mb(proc.pid)}
                    results[name][s].append(row)
                    print(f"  {name:6} {s:15} c{c:<3} {lv['ok']:6}/{lv['sent']:<6} ok  {lv['throughput']:8.1f}/s  "
                          f"p50 {lv['p50_ms'] or float('nan'):8.2f} ms  p99 {lv['p99_ms'] or float('nan'):8.2f} ms  "
                          f"errors {lv['errors']}  rss {row['rss_mb']:.0f} MB", flush=True)
        answered_og = sum(r["ok"] for name in work for r in results[name]["onnxguard serve"])
        # at most: every answered request, and at each run of the client the requests in flight when it stopped
        # (one per connection; a warm-up's too); requests in flight that the server had not read yet are never recorded
        sent_og = sum(r["sent"] + r["concurrency"] * r.get("client_runs", 1) for name in work
                      for r in results[name]["onnxguard serve"])
        print("in-process ceilings again, every server stopped ...", flush=True)
        for _, proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGSTOP)
        for name in work:  # the better of the two: every share is of the best this host did in the run
            again = in_process[name].ceiling(2.0)
            ceilings[name]["start_and_end_items_per_s"] = [ceilings[name]["ceiling_items_per_s"],
                                                           again["ceiling_items_per_s"]]
            ceilings[name]["ceiling_items_per_s"] = max(ceilings[name]["start_and_end_items_per_s"])
            for rows in results[name].values():
                for row in rows:
                    if "ceiling_beside_items_per_s" not in row:  # concurrency 1 (under load: beside's)
                        row["share_of_ceiling"] = row["throughput"] / ceilings[name]["ceiling_items_per_s"]
        for _, proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGCONT)
    finally:
        for _, proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in servers.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()
    verified = audit_lib.verify(audit_db)
    records = len(audit_lib.tail(audit_db, 10**7))
    out = {"benchmark": "E_server", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command,
           "machine": machine(), "size": args.size, "text_bundle": args.text, "duration": args.duration,
           "max_requests": args.max_requests,
           "levels": levels, "text_build_seconds": info.get("text_build_seconds"),
           "workload": {"text": "one short text (12-17 words, 14-19 tokens) per :predict request",
                        "cnn": "one 1x8x8 digit image per :predict request (the quickstart's CNN)",
                        "digits": "one 64-pixel digit row per :predict request (logistic regression)"},
           "onnxguard_serve": "API key with rate limit 100000/minute and budget 1e9, validation, dynamic batching "
                              "(max batch 32, no delay, text split by length at the cost measured at start, "
                              f"{default_lanes()} lane(s) by default, spinning threads), each request's audit record "
                              "committed before its answer (--audit-sync normal, the default)"
                              + (f"; with {args.serve_options}" if args.serve_options else ""),
           "client": ("wrk -t1 -cN (one thread, N keep-alive connections, C), on the same cores" if args.client == "wrk"
                      else "onnxguard.speed.loadgen (httpx, one client per worker, uvloop) on the same cores")
                     + "; concurrency 1: one kept-alive connection from the benchmark process, each request after the "
                       "bare call of the same item (paired_level)",
           "plain": None if args.no_plain else f"{PLAIN}: the seed design without its padding, its sessions "
                                               "stopping their spinning at the end of each run (text only)",
           "anchor": None if args.no_anchor else f"{ANCHOR}, dynamic batching 32 / 2 ms, same model.onnx and "
                                                 "tokenizer, ONNX Runtime's default session settings",
           "ceilings": ceilings, "results": results,
           "audit": {"verified": verified.passed, "records": records, "requests_sent_incl_warmup": sent_og,
                     "answered_2xx": answered_og}}
    RESULTS.mkdir(exist_ok=True)
    name = f"{args.save_as}.json" if args.save_as else "E_server.json" if args.text == "auto" else (
        f"E_server_{args.text}.json")
    (RESULTS / name).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(table(out))


def table(out: dict) -> str:
    lines = []
    for name, by_server in out["results"].items():
        c = out["ceilings"][name]
        both = c.get("start_and_end_items_per_s")
        when = f", the better of {both[0]:,.0f} at the start and {both[1]:,.0f} at the end" if both else ""
        lines += [f"\n{name}: in-process ceiling {c['ceiling_items_per_s']:,.0f}/s (batch {c['best_batch']}{when}; "
                  "each share under load: of the ceiling measured just before and after it), "
                  f"bare p50 at batch 1 {c['bare_p50_ms']:.2f} ms (each concurrency-1 row: the median difference "
                  "between each request and the bare call of the same item just before it)\n",
                  "| server | concurrency | answered/s | share of ceiling | p50 ms | p99 ms | p50 over bare | "
                  "errors | server RSS |", "|---|---|---|---|---|---|---|---|---|"]
        for s, rows in by_server.items():
            for r in rows:
                errs = ", ".join(f"{k}: {v}" for k, v in r["errors"].items()) or "none"
                p50 = "-" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
                p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}"
                over = "-" if r["p50_over_bare_ms"] is None else f"{r['p50_over_bare_ms']:+.2f} ms"
                lines.append(f"| {s} | {r['concurrency']} | {r['throughput']:,.1f} | {r['share_of_ceiling']:.2f} | "
                             f"{p50} | {p99} | {over} | {errs} | {r['rss_mb']:.0f} MB |")
    a = out["audit"]
    answered = f"{a['answered_2xx']} answered (2xx) and " if "answered_2xx" in a else ""
    lines.append(f"\naudit log: {a['records']} records for {answered}at most {a['requests_sent_incl_warmup']} "
                 f"requests sent (warm-ups and those in flight at each level's end included); chain verifies: "
                 f"{a['verified']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
