from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.errors import CheckFailed
from onnxguard.serve import audit as audit_lib

audit_app = typer.Typer(help="The server's tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def verify(
    log: Annotated[Path, typer.Argument(help="The audit log (SQLite).")],
    public_key: Annotated[Path | None, typer.Option("--public-key",
                                                    help="Ed25519 public key of the checkpoints.")] = None,
    json: options.Json = False,
) -> None:
    """Recompute the hash chain and check the signed checkpoints: exit 1 on an edited, inserted, deleted or
    cut-off record."""
    report = audit_lib.verify(log, public_key)
    if json:
        render.print_json({k: (str(v) if isinstance(v, Path) else v) for k, v in report.__dict__.items()})
    else:
        state = "PASSED" if report.passed else "FAILED"
        checked = ", signatures checked" if report.signatures_checked else ""
        render.out.print(f"audit {log}: {state}: {report.records} records, {report.checkpoints} checkpoints "
                         f"({report.signed_checkpoints} signed{checked}), {report.uncovered} after the last checkpoint")
        for note in report.notes:
            render.out.print(f"note: {note}")
        for failure in report.failures:
            render.out.print(f"failure: {failure}")
    if not report.passed:
        raise CheckFailed(f"{log}: the audit log does not verify: {report.failures[0]}")


@audit_app.command("tail")
def tail(
    log: Annotated[Path, typer.Argument(help="The audit log (SQLite).")],
    n: Annotated[int, typer.Option("-n", help="How many records.")] = 20,
    json: options.Json = False,
) -> None:
    """The last records."""
    rows = audit_lib.tail(log, n)
    if json:
        render.print_json({"records": [{"seq": seq, **r.__dict__} for seq, r in rows]})
        return
    t = Table(title=f"last {len(rows)} records of {log}", title_justify="left")
    for col in ("seq", "time", "key", "client", "model", "status", "ms", "batch", "reason"):
        t.add_column(col)
    import datetime

    for seq, r in rows:
        when = datetime.datetime.fromtimestamp(r.time, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        t.add_row(str(seq), when, r.key_id or "-", r.client, r.model or "-", str(r.status), f"{r.latency_ms:.1f}",
                  str(r.batch_id or "-"), r.reason or "")
    render.out.print(t)


@audit_app.command("keygen")
def keygen(out: Annotated[Path, typer.Argument(help="Where to write the Ed25519 private key (PEM).")]) -> None:
    """An Ed25519 key for signing the audit log's checkpoints (its .pub.pem beside it)."""
    path = audit_lib.generate_checkpoint_key(out)
    render.out.print(f"wrote {out} and {path}")
