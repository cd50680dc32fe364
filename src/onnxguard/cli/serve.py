from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxguard.cli import render, trusting
from onnxguard.cli.app import app
from onnxguard.errors import InputError
from onnxguard.serve import server
from onnxguard.serve.app import ServeOptions
from onnxguard.serve.confidential import ConfidentialConfig
from onnxguard.trust import TrustPolicy

# serve.toml: the same settings as the options, by the option's name with underscores.
CONFIG_KEYS = {"host", "port", "keys", "audit", "audit_key", "audit_sync", "limits_storage", "certfile", "keyfile",
               "max_body_bytes", "max_batch", "max_delay_ms", "max_queue", "public_metrics", "public_docs",
               "cors_origins", "max_request_rows", "allow_nonfinite", "grpc_port", "lanes", "spin", "head_seconds",
               "body_seconds"}


def _config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    from onnxguard.bundle import files

    try:
        data = tomllib.loads(files.read_regular(path, 1 << 20).data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid TOML file ({e})") from e
    unknown = sorted(set(data) - CONFIG_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown setting(s) {unknown}", hint=f"use {', '.join(sorted(CONFIG_KEYS))}")
    return data


@app.command()
def serve(
    bundles: Annotated[list[Path], typer.Argument(help="Bundle directories to serve (each NAME=DIR to rename).")],
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    identity_fd: Annotated[int | None, typer.Option("--identity-fd", help="Read the age identity from this inherited "
                                                    "file descriptor (e.g. 3<identity.txt): no path to name.")] = None,
    passphrase_env: trusting.PassphraseEnv = None,
    keys: Annotated[Path | None, typer.Option("--keys", help="API key store (onnxguard apikey create ... "
                                              "--keys FILE).")] = None,
    audit: Annotated[Path | None, typer.Option("--audit", help="Audit log file (SQLite), made if missing.")] = None,
    audit_key: Annotated[Path | None, typer.Option("--audit-key", help="Ed25519 key signing the audit log's "
                                                   "checkpoints (onnxguard audit keygen).")] = None,
    audit_sync: Annotated[str | None, typer.Option("--audit-sync", help="normal (default): each answered "
                                                   "request's record survives a crash of the server process; "
                                                   "full: also a power loss, an fsync per commit.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="serve.toml with any of these settings.")] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="Rows per batch run (default 32).")] = None,
    max_delay_ms: Annotated[float | None, typer.Option("--max-delay-ms", help="Wait this long for more requests "
                                                       "before a batch that is not full (default 0).")] = None,
    max_queue: Annotated[int | None, typer.Option("--max-queue", help="Rows queued per model before 503.")] = None,
    lanes: Annotated[int | None, typer.Option("--lanes", min=1, help="Batches run side by side under load, each on "
                                              "its share of the cores; a second session per model (default 2 "
                                              "on a host with 2 cores or more, else 1).")] = None,
    no_spin: Annotated[bool, typer.Option("--no-spin", help="The runtime's threads sleep between operators instead "
                                          "of spin-waiting: for a host whose cores other processes need.")] = False,
    limits_storage: Annotated[str | None, typer.Option("--limits-storage", help="Rate limit storage: memory:// "
                                                       "(default) or redis://HOST:PORT shared by replicas.")] = None,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="Serve /metrics without a key.")] = False,
    certfile: Annotated[Path | None, typer.Option("--certfile", help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option("--keyfile", help="TLS private key (PEM).")] = None,
    grpc_port: Annotated[int | None, typer.Option("--grpc-port", help="Also serve the protocol over gRPC on this "
                                                  "port (same host, keys, limits, audit, TLS; default off).")] = None,
    confidential: Annotated[bool, typer.Option("--confidential", help="Attestation (GET /v1/attestation) and "
                                               "end-to-end encrypted requests (docs/confidential.md).")] = False,
    platform_key: Annotated[Path | None, typer.Option("--platform-key", help="The simulation platform's key "
                                                      "that signs attestations (onnxguard keygen --platform).")] = None,
    key_broker: Annotated[str | None, typer.Option("--key-broker", help="Get the sealed bundles' identity from "
                                                   "this key broker by attesting (implies --confidential).")] = None,
) -> None:
    """Serve bundles over the Open Inference Protocol: every bundle opened through the trust checks and
    self-checked on its golden set before anything listens; every caller keyed, limited and audited."""
    conf = _config(config)

    def pick(value: Any, name: str, default: Any) -> Any:
        return value if value not in (None, False) else conf.get(name, default)

    names, paths = [], []
    for b in bundles:
        name, sep, rest = str(b).partition("=")
        names.append(name if sep else None)
        paths.append(Path(rest) if sep else b)
    keys_path, audit_path = pick(keys, "keys", None), pick(audit, "audit", "onnxguard-audit.db")
    if keys_path is None:
        raise InputError("no API key store: every caller needs a key",
                         hint="make one with onnxguard apikey create NAME --keys FILE, then serve with --keys FILE")
    options = ServeOptions(**{k: conf[k] for k in ("max_body_bytes", "max_batch", "max_delay_ms", "max_queue",
                                                  "public_metrics", "public_docs", "max_request_rows",
                                                  "allow_nonfinite", "lanes", "spin", "head_seconds",
                                                  "body_seconds") if k in conf},
                           cors_origins=tuple(conf.get("cors_origins", ())))
    given = (("max_batch", max_batch), ("max_delay_ms", max_delay_ms), ("max_queue", max_queue), ("lanes", lanes))
    overrides = {k: v for k, v in given if v is not None} | ({"public_metrics": True} if public_metrics else {})
    overrides |= {"spin": False} if no_spin else {}
    options = ServeOptions(**{**options.__dict__, **overrides})
    cert, key = pick(certfile, "certfile", None), pick(keyfile, "keyfile", None)
    sealed = None
    if confidential or key_broker:
        if platform_key is None:
            raise InputError("confidential mode needs the platform key that signs its attestations",
                             hint="make one with onnxguard keygen --platform, then serve with --platform-key FILE")
        if key_broker and (identity is not None or identity_fd is not None):
            raise InputError("with a key broker the identity comes from the broker: give no --identity")
        sealed = ConfidentialConfig(platform_key, key_broker)
    cfg = server.ServerConfig(
        bundles=tuple(paths), names=tuple(names),
        policy=TrustPolicy(trusting.signature_policy(public_key, allow_unsigned), trusting.scan_rule(False)),
        identity=(trusting.identity_from_fd(identity_fd) if identity_fd is not None
                  else trusting.identity_source(identity)),
        passphrase=trusting.passphrase(passphrase_env),
        keys=Path(keys_path), audit=Path(audit_path), checkpoint_key=pick(audit_key, "audit_key", None),
        audit_sync=pick(audit_sync, "audit_sync", "normal"),
        host=pick(host, "host", "127.0.0.1"), port=int(pick(port, "port", 8000)),
        limits_storage=pick(limits_storage, "limits_storage", "memory://"),
        certfile=Path(cert) if cert else None, keyfile=Path(key) if key else None, options=options,
        grpc_port=None if (g := pick(grpc_port, "grpc_port", None)) is None else int(g), confidential=sealed)
    with render.progress_display(enabled=render.err.is_terminal) as progress:
        prepared = server.prepare(cfg, progress)
    scheme = "https" if cfg.certfile else "http"
    bound = prepared.sock.getsockname()
    for m in prepared.models:
        render.err.print(f"serving {m.name} {m.version} (sha256:{m.digest[:16]}..., {m.self_check})")
    render.err.print(f"listening on {scheme}://{bound[0]}:{bound[1]} (Ctrl-C stops after answering what was accepted)")
    if sealed is not None:
        render.err.print("confidential: SIMULATION platform, no hardware isolation (docs/confidential.md); "
                         "attestation at /v1/attestation, sealed requests at /v1/models/NAME/confidential")
    if cfg.grpc_port is not None:
        render.err.print(f"gRPC on {bound[0]}:{cfg.grpc_port}" + (" (TLS)" if cfg.certfile else ""))
    server.run(prepared)
