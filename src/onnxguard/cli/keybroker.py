from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from onnxguard.cli import render
from onnxguard.cli.app import app
from onnxguard.confidential.policy import ExpectedPolicy


@app.command()
def keybroker(
    identity: Annotated[Path, typer.Option("--identity", help="The sealed bundles' age identity "
                                           "(age-identity.txt) the broker holds and releases.")],
    policy: Annotated[Path, typer.Option("--policy", help="The owner's policy (TOML): platforms, platform_keys, "
                                         "code_measurements, bundle_digests or signers, max_age_s.")],
    audit: Annotated[Path, typer.Option("--audit", help="Audit log of every release and refusal (SQLite), made "
                                        "if missing.")] = Path("onnxguard-keybroker-audit.db"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port.")] = 8100,
) -> None:
    """Hold a sealed bundle's age identity and release it, wrapped to the server's attested ephemeral key, only
    to a server whose fresh attestation matches the owner's policy (code measurement, bundle digest, platform).
    Every release and refusal is audited."""
    import uvicorn

    from onnxguard.bundle import files
    from onnxguard.confidential import keybroker as broker_lib
    from onnxguard.serve import arrival, auditing
    from onnxguard.serve.audit import AuditLog
    from onnxguard.serve.server import bind
    from onnxguard.trust.sealing.identities import MAX_IDENTITY_BYTES

    expected = ExpectedPolicy.from_toml(policy)
    broker = broker_lib.Broker(files.read_regular(identity, MAX_IDENTITY_BYTES, what="identity").data, expected)
    sock = bind(host, port)
    log = AuditLog(audit)
    try:
        app_ = broker_lib.create_app(broker, log)
        render.err.print(f"key broker: policy {policy} (platforms {', '.join(sorted(expected.platforms))}; "
                         f"{len(expected.code_measurements)} code measurement(s), "
                         f"{len(expected.bundle_digests)} bundle digest(s), {len(expected.signers)} signer(s))")
        render.err.print(f"listening on http://{sock.getsockname()[0]}:{sock.getsockname()[1]}")
        # As the server's (serve.server.uvicorn_config): the bounds on a request's arrival (arrival.py), its
        # refusals audited, no WebSocket upgrade, and the socket's peer in the audit log, not an X-Forwarded-For
        # any local process could write (uvicorn believes one from 127.0.0.1).
        protocol = arrival.bounded(refused=functools.partial(auditing.record_refusal, log))
        config = uvicorn.Config(app_, loop="uvloop", http=protocol, ws="none", lifespan="off", log_config=None,
                                proxy_headers=False, access_log=False, server_header=False)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        log.close()
