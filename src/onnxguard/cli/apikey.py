from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.cli import options, render
from onnxguard.cli.app import app
from onnxguard.serve import apikeys

apikey_app = typer.Typer(help="API keys of the inference server: stored hashed, shown once.", no_args_is_help=True)
app.add_typer(apikey_app, name="apikey")

Keys = Annotated[Path, typer.Option("--keys", help="The key store file (SQLite), made if missing.")]


@apikey_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="A label for the key (unique).")],
    keys: Keys,
    models: Annotated[str | None, typer.Option("--models", help="Comma-separated model names it may call "
                                               "(default: all).")] = None,
    rate: Annotated[str | None, typer.Option("--rate", help="Request rate, e.g. 100/minute.")] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Total rows it may ever run (kept across "
                                               "restarts).")] = None,
    output: Annotated[str, typer.Option("--output", help="full | topk:K | label.")] = "full",
    deadline_ms: Annotated[float | None, typer.Option("--deadline-ms", help="Answer no earlier than this after "
                                                      "arrival (against timing side channels).")] = None,
    json: options.Json = False,
) -> None:
    """Create a key; its secret is printed once and stored only as a hash."""
    with apikeys.KeyStore(keys) as store:
        secret, key = store.create(name, models=models.split(",") if models else None,
                                   rate=apikeys.parse_rate(rate) if rate else None, budget=budget,
                                   output=apikeys.parse_output(output), deadline_ms=deadline_ms)
    if json:
        render.print_json({"secret": secret, "id": key.id, "name": key.name})
        return
    render.out.print(secret)
    render.err.print(f"key {key.name} ({key.id}): the secret above is shown once; keep it, it is stored hashed")


@apikey_app.command("list")
def list_keys(keys: Keys, json: options.Json = False) -> None:
    """The keys, their scope and limits (never a secret)."""
    with apikeys.KeyStore(keys) as store:
        found = store.list()
        used = {k.id: store.usage(k.id) for k in found}
    if json:
        render.print_json({"keys": [{**k.__dict__, "used": used[k.id]} for k in found]})
        return
    t = Table(title=f"API keys in {keys}", title_justify="left")
    for col in ("name", "id", "models", "rate", "budget used", "output", "deadline", "revoked"):
        t.add_column(col)
    for k in found:
        t.add_row(k.name, k.id, ",".join(k.models) if k.models else "all", k.rate or "-",
                  f"{used[k.id]}/{k.budget}" if k.budget is not None else str(used[k.id]), k.output,
                  f"{k.deadline_ms:g} ms" if k.deadline_ms else "-", "yes" if k.revoked else "no")
    render.out.print(t)


@apikey_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The key's label.")], keys: Keys) -> None:
    """Revoke a key: it is refused from the next request on."""
    with apikeys.KeyStore(keys) as store:
        key = store.revoke(name)
    render.out.print(f"revoked {key.name} ({key.id})")
