"""``demo.run(bundle, signer, identity, workdir, rows)``: confidential inference in one process, on 127.0.0.1,
for ``onnxguard quickstart``: a key broker holding the sealed bundle's identity, a server that gets it from the
broker by attesting, a client that verifies the attestation and gets predictions through HPKE, and a client that
is refused because it expected another model. The simulation platform throughout, and it says so.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxguard.bundle import files
from onnxguard.confidential import keybroker
from onnxguard.confidential.platform import simulation
from onnxguard.confidential.policy import AttestationRefused, ExpectedPolicy
from onnxguard.errors import InputError
from onnxguard.progress import Event, Progress, silent


@dataclass(frozen=True)
class ConfidentialDemo:
    """What the demo showed: the answers, the refusal, and the broker's audit of its releases and refusals."""

    url: str
    broker_url: str
    checks: int  # checks the client passed before it sent anything
    answers: tuple[tuple[str, str], ...]  # (true label, label through the sealed endpoint)
    refusal: str  # the refused client's error
    broker_records: tuple[tuple[int, str], ...]  # (status, reason) per broker request


def _start(app: Any, sock: Any) -> tuple[Any, threading.Thread]:
    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_config=None, access_log=False))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(600):
        if uv.started:
            break
        threading.Event().wait(0.05)
    return uv, thread


def run(bundle_dir: Path, signer_public: Path, identity_file: Path, workdir: Path, rows: list[Any],
        truths: list[str], progress: Progress = silent) -> ConfidentialDemo:
    """Broker, confidential server and two clients on 127.0.0.1 over the sealed, signed ``bundle_dir``."""
    from onnxguard.client import ConfidentialClient
    from onnxguard.serve import audit as audit_lib
    from onnxguard.serve import server
    from onnxguard.serve.apikeys import KeyStore
    from onnxguard.serve.confidential import ConfidentialConfig
    from onnxguard.trust import PublicKeys, TrustPolicy
    from onnxguard.trust.sealing.identities import MAX_IDENTITY_BYTES

    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("keys.db", "audit.db", "broker.db"):  # the example's own files, made anew each run
        for suffix in ("", "-wal", "-shm"):
            (workdir / (name + suffix)).unlink(missing_ok=True)
    platform_dir = workdir / "platform"
    if not (platform_dir / simulation.PRIVATE_KEY).is_file():
        simulation.generate_key(platform_dir)
    platform_public = platform_dir / simulation.PUBLIC_KEY
    digest = hashlib.sha256(files.read_regular(bundle_dir / "manifest.json", 1 << 24).data).hexdigest()
    owner = ExpectedPolicy.of(platforms=["simulation"], platform_keys=[platform_public], code_measurements=["local"],
                              bundle_digests=[digest])
    broker = keybroker.Broker(files.read_regular(identity_file, MAX_IDENTITY_BYTES, what="identity").data, owner)
    with KeyStore(workdir / "keys.db") as store:
        secret, _ = store.create("data-owner", rate="100/minute", budget=1000)
    broker_log = audit_lib.AuditLog(workdir / "broker.db")
    broker_sock = server.bind("127.0.0.1", 0)
    broker_url = f"http://127.0.0.1:{broker_sock.getsockname()[1]}"
    progress(Event("confidential", f"key broker on {broker_url}"))
    broker_uv, broker_thread = _start(keybroker.create_app(broker, broker_log), broker_sock)
    uv = thread = None
    try:
        progress(Event("confidential", "confidential server: attesting to the key broker for the model key"))
        prepared = server.prepare(server.ServerConfig(
            bundles=(bundle_dir,), policy=TrustPolicy(PublicKeys((signer_public,))), keys=workdir / "keys.db",
            audit=workdir / "audit.db", host="127.0.0.1", port=0,
            confidential=ConfidentialConfig(platform_dir / simulation.PRIVATE_KEY, broker_url)), progress)
        url = f"http://127.0.0.1:{prepared.sock.getsockname()[1]}"
        uv, thread = _start(prepared.app, prepared.sock)
        name = prepared.models[0].name
        expected = ExpectedPolicy.of(platforms=["simulation"], platform_keys=[platform_public],
                                     code_measurements=["local"], bundle_digests=[digest], model=name)
        with ConfidentialClient(url, expected, api_key=secret) as client:
            checks = len(client.attest().steps)
            labels = [p["label"] for p in client.predict(name, rows)]
        other = ExpectedPolicy.of(platforms=["simulation"], platform_keys=[platform_public],
                                  code_measurements=["local"], bundle_digests=["0" * 64], model=name)
        with ConfidentialClient(url, other, api_key=secret) as client:
            try:
                client.attest()
            except AttestationRefused as e:
                refusal = e.message
            else:
                raise InputError("the client that expected another model was not refused")
    finally:
        for server_, thread_ in ((uv, thread), (broker_uv, broker_thread)):
            if server_ is not None and thread_ is not None:
                server_.should_exit = True
                thread_.join(60)
        broker_log.close()
    records = tuple((r.status, r.reason) for _, r in audit_lib.tail(workdir / "broker.db"))
    progress(Event("confidential", "done", done=True))
    return ConfidentialDemo(url, broker_url, checks, tuple(zip(truths, labels, strict=True)), refusal, records)
