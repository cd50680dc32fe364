"""``server.prepare(ServerConfig) -> Prepared`` then ``server.run(prepared)``: from bundles on disk to a
listening server.

Nothing listens until every bundle passed the door (signature under the policy, every hash, sealed files
decrypted in memory, the model scanned), every model was self-checked on its golden set, the key store and the
audit log opened and the port bound. Any failure before that raises (the command line: one line, exit 2).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette

from onnxguard.errors import InputError, OnnxguardError
from onnxguard.progress import Event, Progress, silent
from onnxguard.serve import app as app_lib
from onnxguard.serve import arrival
from onnxguard.serve import confidential as confidential_lib
from onnxguard.serve import models as models_lib
from onnxguard.serve.apikeys import KeyStore
from onnxguard.serve.audit import AuditLog
from onnxguard.serve.limits import RateLimiter
from onnxguard.trust.opening import TrustFailed, open_bundle
from onnxguard.trust.policy import TrustPolicy
from onnxguard.trust.sealing.identities import IdentitySource

# Seconds a graceful shutdown waits for accepted requests to be answered.
DRAIN_SECONDS = 30


@dataclass(frozen=True)
class ServerConfig:
    """What to serve, under which trust policy, with which key store, audit log, address and limits."""

    bundles: tuple[Path, ...]
    policy: TrustPolicy
    keys: Path  # the API key store (onnxguard apikey create)
    audit: Path  # the audit log
    names: tuple[str | None, ...] = ()  # a name per bundle (default: the manifest's)
    identity: IdentitySource = field(default=None, repr=False)
    passphrase: str | None = field(default=None, repr=False)
    checkpoint_key: Path | None = None  # Ed25519 key that signs the audit log's checkpoints
    audit_sync: str = "normal"  # normal | full: what an acknowledged request's record survives (audit.SYNC_MODES)
    host: str = "127.0.0.1"
    port: int = 8000
    limits_storage: str = "memory://"
    certfile: Path | None = None
    keyfile: Path | None = None
    options: app_lib.ServeOptions = app_lib.ServeOptions()
    confidential: confidential_lib.ConfidentialConfig | None = None  # attestation, sealed requests, key broker
    grpc_port: int | None = None  # also the Open Inference Protocol over gRPC on this port (None: off)


@dataclass
class Prepared:
    """A server ready to run: its app, its self-checked models and its bound socket."""

    config: ServerConfig
    app: Starlette
    models: Sequence[models_lib.ServedModel]
    sock: socket.socket


def prepare(config: ServerConfig, progress: Progress = silent) -> Prepared:
    """Open, check and load every bundle, open the key store and the audit log, bind the port."""
    if not config.bundles:
        raise InputError("no bundle to serve", hint="give at least one bundle directory")
    if (config.certfile is None) != (config.keyfile is None):
        raise InputError("TLS needs both a certificate file and its key file")
    for key, what in (("head_seconds", "a request head"), ("body_seconds", "a request body")):
        seconds = getattr(config.options, key)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= arrival.MAX_SECONDS:
            raise InputError(f"{key} {seconds!r}: give the seconds {what} may take to arrive, more than 0 and at most "
                             f"{arrival.MAX_SECONDS:g}")
    if config.grpc_port is not None and config.grpc_port in (0, config.port):
        raise InputError(f"gRPC port {config.grpc_port}: give a port of its own, other than the HTTP port")
    state, identity = None, config.identity
    if config.confidential is not None:  # with a key broker, the identity comes from it, never from disk
        state, released = confidential_lib.start(config.confidential, config.bundles, config.names, config.policy,
                                                 progress)
        identity = released if released is not None else identity
    served = []
    for i, path in enumerate(config.bundles):
        progress(Event("serve", f"opening {path}", i, len(config.bundles)))
        try:
            opened = open_bundle(path, config.policy, identity, config.passphrase, progress)
        except TrustFailed as e:  # a bundle the policy does not trust is a server that cannot start
            raise InputError(str(e), remedy=e.remedy) from e
        name = config.names[i] if i < len(config.names) else None
        progress(Event("serve", f"{path}: self-check on the golden set"))
        served.append(models_lib.load(opened, name=name, max_batch=config.options.max_request_rows,
                                      allow_nonfinite=config.options.allow_nonfinite, lanes=config.options.lanes,
                                      spin=config.options.spin))
        del opened  # its model bytes are in the session now; the served model keeps the opening without them
    if state is not None:
        state.bind(served)  # the statement names the bundles as opened (those attested to the broker, if any)
    keys = KeyStore(config.keys)
    audit = AuditLog(config.audit, checkpoint_key=config.checkpoint_key, sync=config.audit_sync)
    app = app_lib.create(served, config.options, keys, audit, RateLimiter(config.limits_storage),
                         confidential=state)
    sock = bind(config.host, config.port)
    if config.grpc_port is not None:  # checked free now; gRPC binds it in run(), in the event loop it serves on
        try:
            bind(config.host, config.grpc_port).close()
        except InputError:
            sock.close()
            raise
    progress(Event("serve", f"{len(served)} model(s) ready: " + "; ".join(f"{m.name} ({m.self_check})" for m in served),
                   done=True))
    return Prepared(config, app, served, sock)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before anything is announced (a port in use is an error, not a log line)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise InputError(f"{host}: cannot resolve the address to listen on ({e.strerror})") from e
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise InputError(f"{host}:{port}: cannot listen ({e.strerror})", hint="choose another port") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Stopped(Exception):  # noqa: N818 - a stop asked for, not a failure
    pass


def _stopped(signum: int, _frame: object) -> None:
    raise _Stopped(signum)


def uvicorn_config(prepared: Prepared, app: Any = None) -> uvicorn.Config:
    """How uvicorn serves ``app`` (the prepared app unless given): on uvloop, behind the bounds on a request's
    arrival (arrival.py, its refusals audited), without a ``Server`` header, draining for ``DRAIN_SECONDS``."""
    c = prepared.config
    protocol = arrival.bounded(c.options.head_seconds, c.options.body_seconds, prepared.app.state.refused)
    # proxy_headers off: uvicorn's default believes X-Forwarded-For from 127.0.0.1, so any local process could
    # write another client address into the audit log. The log records the socket's peer (behind a reverse
    # proxy: the proxy's address; the proxy's own log has the client's). ws off: this server has no WebSocket
    # route, and an upgraded connection would leave the protocol above for uvicorn's WebSocket one, unbounded;
    # an upgrade request is answered as the plain request it also is.
    return uvicorn.Config(app or prepared.app, loop="uvloop", http=protocol, ws="none", lifespan="on",
                          log_config=None, proxy_headers=False, access_log=False, server_header=False,
                          timeout_graceful_shutdown=DRAIN_SECONDS,
                          ssl_certfile=str(c.certfile) if c.certfile else None,
                          ssl_keyfile=str(c.keyfile) if c.keyfile else None)


def run(prepared: Prepared) -> None:
    """Serve until SIGINT or SIGTERM; then answer what was accepted (at most ``DRAIN_SECONDS``) and stop. Raises
    ``OnnxguardError`` when the shutdown could not give unspent budget back or close the audit log."""
    c = prepared.config
    app: Any = prepared.app
    front = None
    if c.grpc_port is not None:  # gRPC calls go through the same app, in the same event loop
        from onnxguard.serve.grpc import service as grpc_service

        front = grpc_service.GrpcFront(prepared.app, c.host, c.grpc_port, max_message_bytes=c.options.max_body_bytes,
                                       certfile=c.certfile, keyfile=c.keyfile, drain_seconds=DRAIN_SECONDS)
        app = front.wrap(app)  # started after the app's startup, drained before its shutdown
    config = uvicorn_config(prepared, app)
    server = front.uvicorn(config) if front else uvicorn.Server(config)
    # uvicorn re-raises the SIGINT or SIGTERM that stopped it once it has drained, to the handlers it found: these
    # turn it into an exception here, so that a failure of the app's shutdown is still reported below.
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _stopped) for sig in STOP_SIGNALS} if main else {}
    try:
        server.run(sockets=[prepared.sock])
    except _Stopped:
        pass  # a stop asked for: exit 0 unless the shutdown failed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    failures = getattr(prepared.app.state, "shutdown_failures", [])
    if failures:
        raise OnnxguardError("at shutdown: " + "; ".join(failures),
                             hint="check the key store and audit log files and their disk, then verify the audit log")
