"""``loadgen.run(url, model, requests) -> LoadReport``: a bounded HTTP load generator against a running server.

Closed loop: at each concurrency level, N workers on one event loop each send a request, wait for its answer and
send the next, cycling through the given request bodies. Every level stops at whichever comes first, its
``duration`` or its ``max_requests``; a request already sent when the duration ends is still waited for (up to
``timeout``), so a level lasts at most ``duration + timeout``. Before a level, one untimed request per worker
opens the connections (a refusal there, such as a wrong key, stops the run with the server's answer).

Per level: requests sent, answered 2xx, the other answers by status (503 counted apart as shed load), transport
errors by kind, throughput (2xx answers per second of the level) and latency percentiles of the 2xx answers.
``plot`` draws latency and throughput against the offered load (the concurrency) on a figure of its own.

The client is ``httpx``: one ``AsyncClient`` (one keep-alive connection) per worker, on uvloop when installed.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import orjson

from onnxguard.bundle.golden import Batch
from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent

if TYPE_CHECKING:
    import httpx

Endpoint = Literal["infer", "predict"]
ENDPOINTS: tuple[Endpoint, ...] = ("infer", "predict")
SHED = 503  # the status a server answers when it sheds load (bounded queue)


@dataclass(frozen=True)
class Level:
    """One concurrency level: counts, throughput and latency percentiles of the 2xx answers (``None``: none)."""

    concurrency: int
    sent: int
    ok: int
    errors: Mapping[str, int]  # non-2xx answers by status ("503"), transport failures by kind ("ReadTimeout")
    shed: int  # 503 answers (the server's bounded queue refusing work)
    seconds: float  # from the level's first request to its last answer
    throughput: float  # 2xx answers per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    stopped_by: str  # "duration" or "requests"

    def to_dict(self) -> dict[str, Any]:
        """The level as plain JSON data."""
        return {**asdict(self), "errors": dict(self.errors)}


@dataclass(frozen=True)
class LoadReport:
    """A run: what was sent where, its bounds, and one :class:`Level` per concurrency level, in order."""

    url: str  # the endpoint's full URL
    model: str
    endpoint: str
    bodies: int  # distinct request bodies, cycled through
    duration: float
    max_requests: int
    levels: tuple[Level, ...]
    client: Mapping[str, str] = field(default_factory=dict)

    def level(self, concurrency: int) -> Level:
        """The level run at ``concurrency``."""
        for lv in self.levels:
            if lv.concurrency == concurrency:
                return lv
        raise KeyError(concurrency)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {"url": self.url, "model": self.model, "endpoint": self.endpoint, "bodies": self.bodies,
                "duration": self.duration, "max_requests": self.max_requests, "client": dict(self.client),
                "levels": [lv.to_dict() for lv in self.levels]}


def endpoint_url(url: str, model: str, endpoint: Endpoint) -> str:
    """The URL of ``model``'s ``infer`` (Open Inference Protocol v2) or ``predict`` (v1) route on server ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InputError(f"{url!r} is not an http(s) URL of a server", hint="give it as http://HOST:PORT")
    if endpoint not in ENDPOINTS:
        raise InputError(f"unknown endpoint {endpoint!r}", hint=f"use one of {', '.join(ENDPOINTS)}")
    if not model:
        raise InputError("no model name", hint="name the model as the server serves it")
    base = url.rstrip("/")
    name = quote(model, safe="")
    return f"{base}/v2/models/{name}/infer" if endpoint == "infer" else f"{base}/v1/models/{name}:predict"


def infer_bodies(batches: Sequence[Batch]) -> list[dict[str, Any]]:
    """One Open Inference Protocol JSON request per row of ``batches`` (arrays named by input, rows on axis 0)."""
    from onnxguard.serve import protocol

    bodies = []
    for batch in batches:
        if not batch:
            continue
        rows = {len(v) for v in batch.values()}
        if len(rows) != 1:
            raise InputError(f"the input arrays have different numbers of rows ({sorted(rows)})",
                             hint="give arrays that share their first (batch) axis")
        for i in range(rows.pop()):
            bodies.append({"inputs": [{"name": name, "datatype": protocol.datatype_of(arr.dtype.name),
                                       "shape": [1, *arr.shape[1:]], "data": arr[i].reshape(-1).tolist()}
                                      for name, arr in batch.items()]})
    if not bodies:
        raise InputError("no input rows to send", hint="give at least one row")
    return bodies


def predict_bodies(instances: Sequence[Any]) -> list[dict[str, Any]]:
    """One ``:predict`` request (``{"instances": [x]}``) per instance: a text, or a row as nested lists."""
    if not instances:
        raise InputError("no instances to send", hint="give at least one text or row")
    return [{"instances": [x.tolist() if isinstance(x, np.ndarray) else x]} for x in instances]


def encode(requests: Sequence[bytes | Mapping[str, Any]]) -> list[bytes]:
    """Request bodies as bytes: bytes as they are, JSON objects serialized."""
    if not requests:
        raise InputError("no requests to send", hint="give at least one request body")
    out = []
    for r in requests:
        if isinstance(r, bytes | bytearray | memoryview):
            out.append(bytes(r))
        elif isinstance(r, Mapping):
            out.append(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY))
        else:
            raise InputError(f"a request body is a {type(r).__name__}", hint="give bytes or a JSON object (dict)")
    return out


def require_httpx() -> Any:
    """The ``httpx`` module, or an error saying to install it."""
    try:
        import httpx
    except ImportError:
        raise InputError("the load generator needs httpx, which is not installed",
                         hint="install httpx (pip install httpx)") from None
    return httpx


def loop_factory() -> Any:
    """uvloop's event loop when installed (the client must not be the bottleneck), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _percentiles(latencies: list[float]) -> tuple[float | None, ...]:
    if not latencies:
        return None, None, None, None, None
    a = np.asarray(latencies)
    p50, p95, p99 = (float(x) for x in np.percentile(a, [50, 95, 99]))
    return p50, p95, p99, float(a.mean()), float(a.max())


def refusal(r: httpx.Response) -> str:
    """What a refusing server said: its ``{"error": ...}`` message, or the start of its body."""
    try:
        doc = r.json()
    except ValueError:
        return r.text[:200]
    return str(doc.get("error", doc))[:200] if isinstance(doc, dict) else str(doc)[:200]


async def _warm_up(client: httpx.AsyncClient, httpx: Any, url: str, body: bytes) -> None:
    """One untimed request, opening the worker's connection; a 4xx or no answer at all stops the run."""
    try:
        r = await client.post(url, content=body)
    except httpx.TransportError as e:
        raise InputError(f"no answer from {url} ({type(e).__name__}: {e})",
                         hint="check that the server is running and listening at that address") from None
    if 400 <= r.status_code < 500:
        raise InputError(f"{url} refused the first request: {r.status_code} {refusal(r)}",
                         hint="check the API key, the model name and the request bodies")


async def _level(httpx: Any, url: str, bodies: list[bytes], headers: Mapping[str, str], concurrency: int,
                 duration: float, max_requests: int, timeout: float) -> Level:
    # One client (one keep-alive connection) per worker: a client's connection pool shared by many workers costs
    # more than the requests themselves on a small host (httpx: 127 answers/s at 64 workers against a server that
    # answers 1,000/s). One TLS context for all of them: making one is the expensive part of a client.
    tls = ssl.create_default_context()
    clients = [httpx.AsyncClient(headers={"content-type": "application/json", **headers}, verify=tls,
                                 limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                                 timeout=httpx.Timeout(timeout)) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(_warm_up(c, httpx, url, bodies[0]) for c in clients))
        sent = 0
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        start = time.perf_counter()
        deadline = start + duration
        last = start

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal sent, last
            while sent < max_requests and time.perf_counter() < deadline:
                body = bodies[sent % len(bodies)]
                sent += 1  # no await between the check and here: workers share one loop, so no race
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, content=body)
                except httpx.TransportError as e:
                    errors[type(e).__name__] += 1
                else:
                    t1 = time.perf_counter()
                    if 200 <= r.status_code < 300:
                        latencies.append((t1 - t0) * 1e3)
                    else:
                        errors[str(r.status_code)] += 1
                last = max(last, time.perf_counter())

        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    seconds = max(last - start, 1e-9)
    p50, p95, p99, mean, worst = _percentiles(latencies)
    return Level(concurrency=concurrency, sent=sent, ok=len(latencies), errors=dict(sorted(errors.items())),
                 shed=errors.get(str(SHED), 0), seconds=seconds, throughput=len(latencies) / seconds, p50_ms=p50,
                 p95_ms=p95, p99_ms=p99, mean_ms=mean, max_ms=worst,
                 stopped_by="requests" if sent >= max_requests else "duration")


def run(url: str, model: str, requests: Sequence[bytes | Mapping[str, Any]], *,
        headers: Mapping[str, str] | None = None, concurrency_levels: Sequence[int] = (1, 4, 16, 64),
        duration: float = 10.0, max_requests: int = 100_000, endpoint: Endpoint = "infer", timeout: float = 30.0,
        progress: Progress = silent) -> LoadReport:
    """Load ``model`` on the server at ``url`` at each concurrency level in turn, each bounded by ``duration``
    seconds and ``max_requests`` requests. ``requests``: bodies (bytes, sent as they are, or JSON objects) for
    the ``endpoint`` (``infer``: Open Inference Protocol v2; ``predict``: ``/v1/models/NAME:predict``), cycled
    through; ``headers``: sent with every request (the API key). Runs its own event loop: call it from
    synchronous code."""
    httpx = require_httpx()
    target = endpoint_url(url, model, endpoint)
    levels = tuple(concurrency_levels)
    if not levels or min(levels) < 1:
        raise InputError(f"concurrency levels {list(levels)}: give at least one, each >= 1")
    if not duration > 0 or not timeout > 0:
        raise InputError(f"duration {duration} and timeout {timeout} must be positive")
    if max_requests < 1:
        raise InputError(f"max_requests {max_requests} must be >= 1")
    bodies = encode(requests)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise InputError("the load generator runs its own event loop and was called from inside one",
                         hint="call it from synchronous code, or from a thread (asyncio.to_thread)")

    async def main() -> list[Level]:
        done = []
        for i, c in enumerate(levels):
            progress(Event("load", f"concurrency {c}", i, len(levels)))
            lv = await _level(httpx, target, bodies, dict(headers or {}), c, duration, max_requests, timeout)
            done.append(lv)
            progress(Event("load", f"concurrency {c}: {lv.ok}/{lv.sent} answered, {lv.throughput:,.0f}/s",
                           i + 1, len(levels)))
        return done

    factory = loop_factory()
    with asyncio.Runner(loop_factory=factory) as runner:
        done = runner.run(main())
    progress(Event("load", f"{len(levels)} level(s), {sum(lv.sent for lv in done)} requests", len(levels),
                   len(levels), done=True))
    return LoadReport(url=target, model=model, endpoint=endpoint, bodies=len(bodies), duration=duration,
                      max_requests=max_requests, levels=tuple(done),
                      client={"httpx": httpx.__version__, "loop": "uvloop" if factory else "asyncio"})


def plot(reports: LoadReport | Sequence[LoadReport], path: str | Path,
         labels: Sequence[str] | None = None) -> None:
    """Latency (p50 solid, p99 dashed) and throughput against the offered load (concurrency), one line per
    report (``labels`` name them; default: the model), on a figure of its own (no pyplot state), written to
    ``path``."""
    from matplotlib.figure import Figure

    runs = [reports] if isinstance(reports, LoadReport) else list(reports)
    if not runs:
        raise InputError("no load report to plot")
    names = list(labels) if labels is not None else [r.model for r in runs]
    if len(names) != len(runs):
        raise InputError(f"{len(names)} label(s) for {len(runs)} report(s)")
    fig = Figure(figsize=(11, 4))
    lat, thr = fig.subplots(1, 2)
    for r, name, color in zip(runs, names, _colors(len(runs)), strict=True):
        pts = [lv for lv in r.levels if lv.p50_ms is not None]
        cs = [lv.concurrency for lv in pts]
        lat.plot(cs, [lv.p50_ms for lv in pts], marker="o", color=color, label=f"{name} p50")
        lat.plot(cs, [lv.p99_ms for lv in pts], marker="x", linestyle="--", color=color, label=f"{name} p99")
        thr.plot([lv.concurrency for lv in r.levels], [lv.throughput for lv in r.levels], marker="o", color=color,
                 label=name)
        for lv in r.levels:
            if lv.shed:
                thr.annotate(f"{lv.shed} shed", (lv.concurrency, lv.throughput), fontsize=7)
    for ax in (lat, thr):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("offered load (concurrent requests)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    lat.set_yscale("log")
    lat.set_ylabel("latency (ms)")
    lat.set_title("latency of answered requests")
    thr.set_ylabel("answered requests / s")
    thr.set_title("throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _colors(n: int) -> list[str]:
    return [f"C{i % 10}" for i in range(n)]
