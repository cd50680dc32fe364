"""``app.create(models, ServeOptions, ...)``: the inference server as an ASGI app.

The app is this list of middleware, outermost first, one concern per file, then the routes::

    metrics     every request counted by model, status and reason, and timed          (metrics.py)
    auditing    every request recorded; its response leaves once the record is durable (auditing.py, audit.py)
    body limit  the body's size enforced before it is read                              (bodylimit.py)
    auth        the API key: 401 without a valid one, 403 outside its models            (auth.py, apikeys.py)
    rate limit  the key's request rate: 429 with Retry-After                            (ratelimit.py, limits.py)
    confidential  (serve --confidential) the attestation; sealed requests opened, admitted once, handed to
                the routes below, their answers sealed                                 (confidential.py)
    routes      validation (validation.py), the key's query budget, dynamic batching (batching.py), the key's
                output policy and deadline padding, the Open Inference Protocol (protocol.py); the OpenAPI
                description is made from them (openapi.py)

Plain Starlette routes: FastAPI's per-route machinery (dependency solving, its own middleware) cost about 0.1 ms
of the event loop per request here, a fifth of the server's whole CPU per request on a small model.

Every response carries ``onnxguard-model-digest`` when it concerns a model. Bad input is a 4xx with
``{"error": ...}``; a full queue is 503 with ``Retry-After``; never an unhandled 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.applications import Starlette
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from onnxguard import __version__
from onnxguard.errors import InputError, OnnxguardError
from onnxguard.preprocess import image as image_lib
from onnxguard.preprocess import table as table_lib
from onnxguard.serve import auditing, context, openapi, protocol, validation
from onnxguard.serve.apikeys import KeyStore
from onnxguard.serve.arrival import BODY_SECONDS, HEAD_SECONDS
from onnxguard.serve.audit import AuditLog
from onnxguard.serve.auth import Auth
from onnxguard.serve.batching import Batcher, Overloaded
from onnxguard.serve.bodylimit import MAX_BODY_BYTES, BodyLimit
from onnxguard.serve.budgets import Budgets
from onnxguard.serve.confidential import Confidential, State
from onnxguard.serve.limits import RateLimiter
from onnxguard.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from onnxguard.serve.models import ServedModel, check_policy, predictions, restrict
from onnxguard.serve.ratelimit import RateLimit
from onnxguard.serve.validation import MAX_BATCH

SERVER = "onnxguard"
DIGEST_HEADER = "onnxguard-model-digest"


def default_lanes() -> int:
    """Two lanes on a host with two cores or more, else one. Measured through the server with wrk on the same cores
    (2-core AMD EPYC, AVX2 only, DistilBERT-base INT8, one short text per request, benchmarks/server_ab.py, 3
    rounds): two lanes answered 176-181 texts/s at concurrency 16 against 161-166 for one, a lone request as fast
    (p50 7.8-8.3 ms against 8.0-8.4), for a second session's memory (75-110 MB for this model). More lanes than
    two were not measured."""
    return min(2, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeOptions:
    """How the server batches, limits and exposes; defaults suit a small CPU host."""

    max_body_bytes: int = MAX_BODY_BYTES
    max_batch: int = 32  # rows per batch run
    max_delay_ms: float = 0.0  # wait for more requests before a batch that is not full (0: batch what is queued)
    max_queue: int = 512  # rows queued per model before 503
    lanes: int = field(default_factory=default_lanes)  # batches run side by side under load (batching.py)
    spin: bool = True  # the runtime's threads spin-wait between operators (its default; models.py has the figures)
    public_metrics: bool = False
    public_docs: bool = False
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call; none: CORS off
    max_request_rows: int = MAX_BATCH  # rows one request may carry
    allow_nonfinite: bool = False  # accept NaN and infinity in float inputs
    head_seconds: float = HEAD_SECONDS  # a request head not whole within this: 408 (arrival.py)
    body_seconds: float = BODY_SECONDS  # a body not whole within this and 1 s per 500 bytes: 408 (arrival.py)


class _Refused(Exception):  # noqa: N818 - an HTTP answer, not a failure
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.reason = status, message, dict(headers or {}), reason


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers=dict(headers or {}),
                    media_type="application/json")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _json({"error": message}, status, headers)


INFER_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"],
                                              "properties": {"name": {"type": "string"},
                                                             "datatype": {"type": "string"},
                                                             "shape": {"type": "array", "items": {"type": "integer"}},
                                                             "data": {}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}}}}
PREDICT_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["instances"], "properties": {"instances": {"type": "array"}}}}}}


def create(models: Sequence[ServedModel], options: ServeOptions, keys: KeyStore, audit: AuditLog,
           limiter: RateLimiter, metrics: Metrics | None = None, confidential: State | None = None) -> Starlette:
    """The server over ``models`` (already opened through the door and self-checked)."""
    by_name = {m.name: m for m in models}
    if len(by_name) != len(models):
        raise InputError("two bundles are served under the same model name", hint="give each a distinct name")
    metrics = metrics or Metrics()
    budgets = Budgets(keys)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.shutdown_failures = []
        for m in models:
            m.batcher = Batcher(m.run, max_batch=options.max_batch, max_delay=options.max_delay_ms / 1e3,
                                max_queue=options.max_queue, pad_id=m.tokenizer.pad_id if m.tokenizer else 0,
                                on_batch=metrics.batch_observer(m.name), run_lane=m.run_lane, lanes=m.lanes,
                                name=m.name, cost=m.cost, lane_cost=m.lane_cost)
            m.batcher.start()
        try:
            yield
        finally:  # graceful: what was accepted is answered, then the audit log is closed
            # A failure here is reported by server.run once uvicorn has stopped (one line, exit 2), each step
            # still taken: uvicorn would print the first one as a traceback and skip the rest.
            await asyncio.gather(*(m.batcher.close() for m in models if m.batcher))
            try:
                budgets.close()  # unspent leases back to the key store
            except OnnxguardError as e:
                app.state.shutdown_failures.append(f"unspent budget not given back to the key store: {e}")
            await limiter.close()
            try:
                await asyncio.get_running_loop().run_in_executor(None, audit.close)
            except OnnxguardError as e:
                app.state.shutdown_failures.append(f"the audit log did not close cleanly: {e}")

    middleware = [
        Middleware(MetricsMiddleware, metrics=metrics, models=by_name),
        Middleware(auditing.Auditing, log=audit),
        Middleware(BodyLimit, max_bytes=options.max_body_bytes),
        Middleware(Auth, keys=keys, public_metrics=options.public_metrics, public_docs=options.public_docs),
        Middleware(RateLimit, limiter=limiter),
    ]
    if confidential is not None:  # innermost: a sealed request then takes the plain routes, keyed and limited
        middleware.append(Middleware(Confidential, state=confidential))
    if options.cors_origins:  # off unless the operator names the origins (outermost: preflights need no key)
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(options.cors_origins),
                                        allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type",
                                                                                      protocol.HEADER_LENGTH]))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        context.of(request.scope).reason = "no such route" if exc.status_code == 404 else str(exc.detail)
        return _error(exc.status_code, str(exc.detail).lower() if exc.status_code == 404 else str(exc.detail))

    def model(request: Request, with_version: bool = False) -> ServedModel:
        name = request.path_params["name"]
        m = by_name.get(name)
        if m is None:
            context.of(request.scope).reason = "unknown model"
            raise _Refused(404, f"no model named {name!r}; served: {', '.join(sorted(by_name))}")
        version = request.path_params["version"] if with_version else None
        if version is not None and version != m.version:
            raise _Refused(404, f"model {name!r} has no version {version!r}; it has {m.version!r}")
        context.of(request.scope).digest = m.digest
        return m

    def answer(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """Turn refusals into their status with ``{"error": ...}`` and add the model digest header."""
        @functools.wraps(fn)
        async def wrapper(request: Request) -> Response:
            ctx = context.of(request.scope)
            try:
                response = await fn(request)
            except _Refused as e:
                ctx.reason = ctx.reason or e.reason or "refused"
                response = _error(e.status, e.message, e.headers)
            except Overloaded as e:
                ctx.reason = "overloaded"
                response = _error(503, str(e), {"Retry-After": str(int(max(1, e.retry_after)))})
            except InputError as e:
                ctx.reason = ctx.reason or "bad input"
                response = _error(400, e.message)
            except OnnxguardError as e:  # a store the answer depends on (key budgets) is unavailable: fail closed
                ctx.reason = "unavailable"
                response = _error(503, f"the request cannot be answered now ({e.message})", {"Retry-After": "5"})
            if ctx.digest:
                response.headers[DIGEST_HEADER] = ctx.digest
            await _pad(ctx)
            return response
        return wrapper

    async def _pad(ctx: context.Context) -> None:
        """Deadline padding: no answer before the key's deadline after arrival (timing side channels)."""
        if ctx.key is not None and ctx.key.deadline_ms:
            wait = ctx.arrival + ctx.key.deadline_ms / 1e3 - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    async def charge(request: Request, m: ServedModel, rows: int) -> None:
        ctx = context.of(request.scope)
        ctx.rows = rows
        if ctx.key is not None and ctx.key.budget is not None:
            # Mostly from the key's lease in memory; one UPDATE of the key store (WAL, synchronous=NORMAL: tens of
            # microseconds, cheaper than a thread hop) when a new lease is taken.
            allowed, remaining = budgets.charge(ctx.key, rows)
            if not allowed:
                raise _Refused(429, f"the query budget of this key is spent ({remaining or 0} rows left, "
                                    f"{rows} asked)", {"Retry-After": "86400"}, reason="budget")

    async def run(request: Request, m: ServedModel, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        await charge(request, m, rows)
        assert m.batcher is not None
        outputs, batch_id = await m.batcher.submit(inputs, rows)
        context.of(request.scope).batch_id = batch_id
        return outputs

    def policy_of(request: Request) -> str:
        key = context.of(request.scope).key
        return key.output if key is not None else "full"

    async def live(request: Request) -> Response:
        """Liveness: the process answers."""
        return _json({"live": True})

    async def ready(request: Request) -> Response:
        """Readiness: every model opened, self-checked and batching."""
        ok = all(m.batcher is not None for m in models)
        return _json({"ready": ok}, 200 if ok else 503)

    async def server_metadata(request: Request) -> Response:
        """The server's name, version and protocol extensions."""
        return _json({"name": SERVER, "version": __version__, "extensions": ["binary_tensor_data"]})

    @answer
    async def model_metadata(request: Request) -> Response:
        """A model's inputs, outputs, versions and bundle digest."""
        return _json(model(request).metadata())

    @answer
    async def model_version_metadata(request: Request) -> Response:
        """A model's metadata for one version."""
        return _json(model(request, with_version=True).metadata())

    @answer
    async def model_ready(request: Request) -> Response:
        """Whether the model answers."""
        m = model(request)
        return _json({"name": m.name, "ready": m.batcher is not None})

    @answer
    async def model_version_ready(request: Request) -> Response:
        """Whether that version of the model answers."""
        m = model(request, with_version=True)
        return _json({"name": m.name, "ready": m.batcher is not None})

    async def infer_request(request: Request, m: ServedModel) -> Response:
        body = await request.body()
        header = request.headers.get(protocol.HEADER_LENGTH)
        try:
            length = int(header) if header is not None else None
        except ValueError:
            raise _Refused(400, f"{protocol.HEADER_LENGTH} is not a number", reason="bad header") from None
        req = protocol.decode_request(body, length)
        rows = validation.check(req.inputs, m.signature)
        given = [o.name for o in m.outputs]
        unknown = [n for n in req.outputs or () if n not in given]
        if unknown:
            raise _Refused(400, f"unknown output(s) {unknown}; the model gives {sorted(given)}")
        check_policy(m, policy_of(request), req.outputs if req.outputs is not None else given)
        outputs = await run(request, m, req.inputs, rows)
        if req.outputs is not None:
            outputs = {n: outputs[n] for n in req.outputs}
        shown = restrict(m, outputs, policy_of(request))
        payload, head = protocol.encode_response(m.name, m.version, shown, req)
        headers = {protocol.HEADER_LENGTH: str(head)} if head is not None else {}
        media = "application/octet-stream" if head is not None else "application/json"
        return Response(payload, 200, headers=headers, media_type=media)

    @answer
    async def infer(request: Request) -> Response:
        """Open Inference Protocol inference: JSON tensors, or the binary tensor data extension."""
        return await infer_request(request, model(request))

    @answer
    async def infer_version(request: Request) -> Response:
        """Inference on one version of a model."""
        return await infer_request(request, model(request, with_version=True))

    @answer
    async def predict(request: Request) -> Response:
        """Raw inputs (texts, images, table rows) in, predictions out, under the key's output policy."""
        m = model(request)
        doc = protocol.parse_json(await request.body())
        instances = doc.get("instances") if isinstance(doc, dict) else None
        if not isinstance(instances, list) or not instances:
            raise _Refused(400, "the request needs a non-empty 'instances' list")
        if len(instances) > m.signature.max_batch:
            raise _Refused(400, f"{len(instances)} instances, over the limit of {m.signature.max_batch}")
        if m.tokenizer is not None:  # texts (or text pairs) through the bundle's tokenizer
            texts = validation.pairs(instances) if m.pairs else validation.texts(instances)
            inputs, encodings = m.tokenizer.encode_full(texts)
        else:
            texts, encodings, inputs = [], [], _prepare(m, instances)
        rows = validation.check(inputs, m.signature)
        check_policy(m, policy_of(request))
        outputs = await run(request, m, inputs, rows)
        return _json({"predictions": predictions(m, outputs, policy_of(request), encodings, texts)})

    async def prometheus(request: Request) -> Response:
        """Prometheus metrics: requests, latency, batch sizes, queue depth, audit lag."""
        for m in models:
            metrics.queue_depth.labels(m.name).set(m.batcher.queued_rows if m.batcher else 0)
        metrics.audit_lag.set(audit.lag)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/{name}", model_metadata, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_version_metadata, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_version_ready, methods=["GET"]),
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer_version, methods=["POST"]),
        Route("/v1/models/{name}:predict", predict, methods=["POST"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]
    described = orjson.dumps(openapi.document(routes, title="onnxguard", version=__version__, bodies={
        "/v2/models/{name}/infer": INFER_BODY, "/v2/models/{name}/versions/{version}/infer": INFER_BODY,
        "/v1/models/{name}:predict": PREDICT_BODY}))

    async def openapi_json(request: Request) -> Response:
        """This description."""
        return Response(described, media_type="application/json")

    routes.append(Route("/openapi.json", openapi_json, methods=["GET"], include_in_schema=False))
    if options.public_docs:
        async def docs(request: Request) -> Response:
            """The description, browsable."""
            return get_swagger_ui_html(openapi_url="/openapi.json", title="onnxguard")

        routes.append(Route("/docs", docs, methods=["GET"], include_in_schema=False))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                    exception_handlers={StarletteHTTPException: http_error})

    async def refused(client: str, status: int, reason: str, seconds: float) -> None:
        """A request refused by the protocol before this app (arrival.py): counted and recorded like the others."""
        metrics.count("", status, reason, seconds)
        await auditing.record_refusal(audit, client, status, reason, seconds)

    app.state.refused = refused  # for arrival.bounded (server.run)
    return app


def _prepare(m: ServedModel, instances: list[Any]) -> dict[str, np.ndarray]:
    """Raw instances (not texts) as model inputs through the bundle's recorded preprocessing: images (pixel values,
    or ``{"b64": PNG}``) resized and normalised, table rows by column; otherwise the rows of the model's one
    input."""
    if m.image is not None:
        return image_lib.prepare_raw([_image(x, i) for i, x in enumerate(instances)], m.image)
    if m.table is not None:
        return table_lib.prepare(instances, m.table)
    if len(m.signature.inputs) != 1:
        raise validation.ValidationError(f"model {m.name!r} takes {len(m.signature.inputs)} inputs; send them "
                                         "through /v2/models/{name}/infer")
    spec = m.signature.inputs[0]
    try:
        arr = np.asarray(instances, dtype=protocol.DATATYPES[spec.datatype])
    except (ValueError, TypeError, OverflowError) as e:
        raise validation.ValidationError(f"instances are not {spec.datatype} arrays of one shape "
                                         f"({str(e).splitlines()[0]})") from None
    return {spec.name: arr}


def _image(instance: Any, i: int) -> Any:
    """An image instance: pixel values as given, or the bytes of ``{"b64": "..."}`` (the KServe v1 convention)."""
    if not isinstance(instance, dict):
        return instance
    if set(instance) != {"b64"} or not isinstance(instance["b64"], str):
        raise validation.ValidationError(f"instance {i}: an image is pixel values or {{\"b64\": \"<base64 PNG>\"}}")
    try:
        return base64.b64decode(instance["b64"], validate=True)
    except binascii.Error:
        raise validation.ValidationError(f"instance {i}: 'b64' is not valid base64") from None
