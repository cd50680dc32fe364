"""Metrics in the Prometheus text format (prometheus-client), one registry per server (nothing process-global):
requests by model, status and reason, a latency histogram, a batch size histogram, queue depth and audit lag.
The middleware counts and times every request, refused ones included.

Every label value comes from a set the server fixes: a model label only for a model it serves (a request naming
another, with or without a key, counts under ``model=""`` with its reason), statuses and reasons from the code. A
label value taken from the request path would let any caller, no key needed, add a counter and a 13-bucket
histogram per name it makes up: memory without bound, and a ``/metrics`` page to match (seen here: 100 refused
requests naming made-up models added 1,900 lines)."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from onnxguard.serve import context
from onnxguard.serve.respond import ASGIApp, Receive, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The server's instruments, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("onnxguard_requests", "Requests by model, status and reason",
                                ("model", "status", "reason"), registry=self.registry)
        self.latency = Histogram("onnxguard_request_seconds", "Request latency, arrival to response",
                                 ("model",), buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("onnxguard_batch_rows", "Rows per batch run", ("model",),
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("onnxguard_queue_rows", "Rows waiting in a model's batching queue", ("model",),
                                 registry=self.registry)
        self.audit_lag = Gauge("onnxguard_audit_lag_records", "Audit records queued but not yet durable",
                               registry=self.registry)

    def count(self, model: str, status: int, reason: str, seconds: float) -> None:
        """One request answered."""
        self.requests.labels(model, str(status), reason).inc()
        self.latency.labels(model).observe(seconds)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        histogram = self.batch_size.labels(model)
        return histogram.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every request by model, status and reason, and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics, models: Collection[str]) -> None:
        self.app, self.metrics, self.models = app, metrics, frozenset(models)

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observe(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            ctx = context.of(scope)
            model = ctx.model if ctx.model in self.models else ""  # never a name the caller made up
            self.metrics.count(model, status, ctx.reason, time.perf_counter() - start)
