"""The gRPC front: ``inference.GRPCInferenceService`` served on a second port, every call answered by the HTTP app.

Each RPC becomes the HTTP request it stands for, sent through the same ASGI app in-process (``asgi.call``):
``ModelInfer`` is ``POST /v2/models/{name}[/versions/{v}]/infer`` in the binary tensor extension, the health and
metadata RPCs are the matching ``GET`` routes, the ``authorization`` metadata is the ``Authorization`` header
and the client is the gRPC peer. So keys, scopes, rate limits, budgets, validation, batching, audit and metrics
are the HTTP ones. The answer comes back as the RPC's response, or as a status (``STATUS_CODES``) whose details
are the ``{"error": ...}`` message; ``onnxguard-model-digest`` and ``retry-after`` travel as trailing metadata.

``GrpcFront`` runs it in uvicorn's event loop: started once the app's startup is complete (so that its batchers
run), it stops taking calls when the HTTP server does and answers the calls it took before the app shuts down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
import orjson
import uvicorn

from onnxguard.errors import InputError
from onnxguard.serve import protocol
from onnxguard.serve.app import DIGEST_HEADER
from onnxguard.serve.grpc import asgi, tensors
from onnxguard.serve.grpc import grpc_predict_v2_pb2 as pb
from onnxguard.serve.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from onnxguard.serve.respond import ASGIApp, Receive, Send

# HTTP status -> gRPC status; any other is INTERNAL.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,  # what gRPC itself answers for a message over the size limit
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# HTTP response headers passed on as trailing metadata.
TRAILERS = (DIGEST_HEADER, "retry-after")
# Request metadata passed on as HTTP headers.
FORWARDED = ("authorization",)


def peer_address(peer: str) -> tuple[str, int]:
    """``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` as (host, port); other peers as (peer, 0)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        if port.isdigit():
            return host.removeprefix("[").removesuffix("]").replace("%5B", "").replace("%5D", ""), int(port)
    return peer, 0


def _segment(value: str) -> str:
    # A name is one path segment: a '/' in it must not reach another route (the app answers 404 for the name).
    return value.replace("/", "%2F")


def model_path(name: str, version: str, suffix: str = "") -> str:
    """The HTTP path of a model (and version), with ``suffix`` (``/infer``, ``/ready``)."""
    path = f"/v2/models/{_segment(name)}"
    if version:
        path += f"/versions/{_segment(version)}"
    return path + suffix


async def _abort(context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, details: str,
                 trailers: tuple[tuple[str, str], ...] = ()) -> NoReturn:
    await context.abort(code, details, trailing_metadata=trailers)
    raise AssertionError("ServicerContext.abort returns by raising")


def _settled(task: asyncio.Future[asgi.Answer]) -> None:
    # A call whose caller went away still ends; its outcome is read here so that it is not reported as lost.
    if not task.cancelled():
        task.exception()


class Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Answers each RPC by sending its HTTP equivalent through ``app``."""

    def __init__(self, app: ASGIApp, *, scheme: str = "http", server: tuple[str, int] = ("", 0)) -> None:
        self.app, self.scheme, self.server = app, scheme, server

    async def _call(self, context: grpc.aio.ServicerContext[Any, Any], method: str, path: str, body: bytes = b"",
                    headers: Sequence[tuple[str, str]] = (), accept: tuple[int, ...] = (200,)) -> asgi.Answer:
        """The app's answer to the request; a status in ``accept`` is returned, any other ends the RPC."""
        forwarded = [(m.key, m.value) for m in context.invocation_metadata() or ()
                     if m.key in FORWARDED and isinstance(m.value, str)]
        call = asyncio.ensure_future(asgi.call(self.app, method, path, headers=[*forwarded, *headers], body=body,
                                               client=peer_address(context.peer()), server=self.server,
                                               scheme=self.scheme))
        call.add_done_callback(_settled)
        try:
            # A client that goes away does not stop the request: it is answered and recorded, as over HTTP.
            answer = await asyncio.shield(call)
        except asgi.NoAnswer as e:
            await _abort(context, grpc.StatusCode.INTERNAL, str(e))
        trailers = tuple((k, answer.headers[k]) for k in TRAILERS if k in answer.headers)
        if answer.status not in accept:
            await _abort(context, STATUS_CODES.get(answer.status, grpc.StatusCode.INTERNAL), answer.message(), trailers)
        context.set_trailing_metadata(trailers)
        return answer

    @staticmethod
    async def _json(context: grpc.aio.ServicerContext[Any, Any], answer: asgi.Answer) -> Any:
        try:
            return orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            await _abort(context, grpc.StatusCode.INTERNAL, "the server's answer is not JSON")

    async def ServerLive(self, request: pb.ServerLiveRequest,  # noqa: N802 - the protocol's names
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerLiveResponse:
        """Liveness: ``GET /v2/health/live``."""
        doc = await self._json(context, await self._call(context, "GET", "/v2/health/live"))
        return pb.ServerLiveResponse(live=bool(doc.get("live")))

    async def ServerReady(self, request: pb.ServerReadyRequest,  # noqa: N802
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerReadyResponse:
        """Readiness: ``GET /v2/health/ready`` (not ready is an answer, not an error)."""
        doc = await self._json(context, await self._call(context, "GET", "/v2/health/ready", accept=(200, 503)))
        return pb.ServerReadyResponse(ready=bool(doc.get("ready")))

    async def ModelReady(self, request: pb.ModelReadyRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelReadyResponse:
        """A model's readiness: ``GET /v2/models/{name}[/versions/{v}]/ready``."""
        answer = await self._call(context, "GET", model_path(request.name, request.version, "/ready"))
        return pb.ModelReadyResponse(ready=bool((await self._json(context, answer)).get("ready")))

    async def ServerMetadata(self, request: pb.ServerMetadataRequest,  # noqa: N802
                             context: grpc.aio.ServicerContext[Any, Any]) -> pb.ServerMetadataResponse:
        """The server's name, version and extensions: ``GET /v2``."""
        doc = await self._json(context, await self._call(context, "GET", "/v2"))
        return pb.ServerMetadataResponse(name=doc.get("name", ""), version=doc.get("version", ""),
                                         extensions=doc.get("extensions", []))

    async def ModelMetadata(self, request: pb.ModelMetadataRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelMetadataResponse:
        """A model's metadata: ``GET /v2/models/{name}[/versions/{v}]`` (its digest in the trailing metadata)."""
        doc = await self._json(context, await self._call(context, "GET", model_path(request.name, request.version)))
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=doc.get("name", ""), versions=doc.get("versions", []), platform=doc.get("platform", ""),
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in doc.get("inputs", [])],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in doc.get("outputs", [])])

    async def ModelInfer(self, request: pb.ModelInferRequest,  # noqa: N802
                         context: grpc.aio.ServicerContext[Any, Any]) -> pb.ModelInferResponse:
        """Inference: ``POST /v2/models/{name}[/versions/{v}]/infer`` with the binary tensor extension."""
        body, head = tensors.request_body(request)
        answer = await self._call(context, "POST", model_path(request.model_name, request.model_version, "/infer"),
                                  body, [("content-type", "application/octet-stream"),
                                         (protocol.HEADER_LENGTH, str(head))])
        try:
            return tensors.infer_response(answer)
        except tensors.BadAnswer as e:
            await _abort(context, grpc.StatusCode.INTERNAL, str(e))


class GrpcFront:
    """The gRPC server over ``app``, run in the app's event loop alongside uvicorn."""

    def __init__(self, app: Any, host: str, port: int, *, max_message_bytes: int,
                 certfile: Path | None = None, keyfile: Path | None = None, drain_seconds: float = 30) -> None:
        self.app, self.host, self.port = app, host, port
        self.max_message_bytes, self.certfile, self.keyfile = max_message_bytes, certfile, keyfile
        self.drain_seconds = drain_seconds
        self.failure: InputError | None = None
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Future[None] | None = None

    def _credentials(self) -> grpc.ServerCredentials | None:
        if self.certfile is None or self.keyfile is None:
            return None
        from onnxguard.bundle import files

        cert = files.read_regular(self.certfile, 1 << 20).data
        key = files.read_regular(self.keyfile, 1 << 20).data
        return grpc.ssl_server_credentials([(key, cert)])

    async def start(self) -> None:
        """Bind the port and take calls (``InputError`` when the port cannot be bound)."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port another process holds is an error, not a shared port
        ])
        credentials = self._credentials()
        servicer = Servicer(self.app, scheme="https" if credentials else "http", server=(self.host, self.port))
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        address = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        try:
            if credentials is not None:
                server.add_secure_port(address, credentials)
            else:
                server.add_insecure_port(address)
        except RuntimeError as e:
            raise InputError(f"{self.host}:{self.port}: gRPC cannot listen ({e})", hint="choose another port") from e
        await server.start()
        self._server = server

    def begin_stop(self) -> None:
        """Stop taking calls now; those taken are answered (at most ``drain_seconds``)."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.ensure_future(self._server.stop(self.drain_seconds))

    async def stop(self) -> None:
        """Stop taking calls and wait until the calls taken are answered."""
        self.begin_stop()
        if self._stopping is not None:
            await self._stopping

    def wrap(self, app: Any) -> ASGIApp:
        """``app`` with gRPC started at the end of its startup and drained before its shutdown."""

        async def wrapped(scope: dict[str, Any], receive: Receive, send: Send) -> None:
            if scope["type"] != "lifespan":
                await app(scope, receive, send)
                return

            async def receiving() -> dict[str, Any]:
                message = await receive()
                if message["type"] == "lifespan.shutdown":
                    await self.stop()
                return message

            async def sending(message: dict[str, Any]) -> None:
                if message["type"] == "lifespan.startup.complete":
                    try:
                        await self.start()
                    except InputError as e:
                        self.failure = e  # the server stops (see uvicorn()) and run() raises it
                await send(message)

            await app(scope, receiving, sending)

        return wrapped

    def uvicorn(self, config: uvicorn.Config) -> uvicorn.Server:
        """A uvicorn server that stops taking gRPC calls when it stops taking HTTP requests."""
        return _Server(config, self)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, front: GrpcFront) -> None:
        super().__init__(config)
        self.front = front

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.front.failure is not None:
            self.should_exit = True

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.front.begin_stop()  # both fronts drain at once; the app shuts down after both (GrpcFront.wrap)
        await super().shutdown(sockets)

    def run(self, sockets: list[Any] | None = None) -> None:
        super().run(sockets)
        if self.front.failure is not None:
            raise self.front.failure
