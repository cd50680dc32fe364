"""What the verbs that load a running server share (``bench --url``, ``leakage``): the API key from the
environment, request bodies from an ``.npz`` or a texts file, and ``bench --url`` itself.

The key is read from the environment variable the user names, never from the command line (where other users
of the machine and the shell's history would see it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from onnxguard.bundle import golden
from onnxguard.cli import render
from onnxguard.errors import InputError
from onnxguard.speed import loadgen

Url = Annotated[str | None, typer.Option("--url", help="Load a running server instead (http://HOST:PORT): "
                                         "throughput and latency per concurrency level.")]
Model = Annotated[str | None, typer.Option("--model", help="With --url: the model's name on the server.")]
KeyEnv = Annotated[str | None, typer.Option("--key-env", help="Environment variable holding the API key "
                                            "(never the key itself on the command line).")]
Concurrency = Annotated[str, typer.Option("--concurrency", help="With --url: comma-separated concurrency levels.")]
Duration = Annotated[float, typer.Option("--duration", help="With --url: seconds per level at most.")]
MaxRequests = Annotated[int, typer.Option("--max-requests", help="With --url: requests per level at most.")]
Texts = Annotated[Path | None, typer.Option("--texts", help="Texts to send, one per line (through :predict).")]


def headers(key_env: str | None) -> dict[str, str]:
    """The ``Authorization`` header from the variable ``key_env`` names (none when no variable is named)."""
    if key_env is None:
        return {}
    secret = os.environ.get(key_env, "").strip()
    if not secret:
        raise InputError(f"the environment variable {key_env} is not set or empty",
                         hint=f"export {key_env}=<the key printed by onnxguard apikey create>")
    return {"Authorization": f"Bearer {secret}"}


def bodies(inputs: Path | None, texts: Path | None, *, infer_single: bool = True) -> tuple[list[dict[str, Any]],
                                                                                          loadgen.Endpoint]:
    """Request bodies and their endpoint: one ``:predict`` request per text of ``texts``; one request per row of
    the ``.npz`` ``inputs`` (an infer request, or with ``infer_single=False`` and one input, a ``:predict``
    request, whose answer names the label)."""
    if (inputs is None) == (texts is None):
        raise InputError("give the requests to send: --inputs FILE.npz (arrays named by input) or --texts FILE "
                         "(one text per line)", hint="e.g. the golden.npz of the served bundle")
    if texts is not None:
        return loadgen.predict_bodies(golden.read_texts(texts)), "predict"
    assert inputs is not None
    batches = golden.load(inputs).inputs
    if not infer_single and len(batches[0]) == 1:
        rows = [row for b in batches for row in next(iter(b.values()))]
        return loadgen.predict_bodies(rows), "predict"
    return loadgen.infer_bodies(batches), "infer"


def levels(text: str) -> tuple[int, ...]:
    """Concurrency levels from ``1,4,16``."""
    try:
        values = tuple(int(x) for x in text.split(","))
    except ValueError as e:
        raise InputError(f"--concurrency {text!r}: expected comma-separated integers, e.g. 1,4,16,64") from e
    if not values or min(values) < 1:
        raise InputError(f"--concurrency {text!r}: values must be >= 1")
    return values


def bench_url(url: str, model: str | None, key_env: str | None, concurrency: str, duration: float,
              max_requests: int, inputs: Path | None, texts: Path | None, plot: Path | None, json: bool) -> None:
    """``onnxguard bench --url``: the load generator against a running server, as a table or JSON."""
    if model is None:
        raise InputError("--url needs --model NAME (the model's name on the server)")
    if not duration > 0 or max_requests < 1:
        raise InputError("--duration must be > 0 and --max-requests >= 1")
    reqs, endpoint = bodies(inputs, texts)
    with render.progress_display(not json) as progress:
        report = loadgen.run(url, model, reqs, headers=headers(key_env), concurrency_levels=levels(concurrency),
                             duration=duration, max_requests=max_requests, endpoint=endpoint, progress=progress)
    if plot is not None:
        loadgen.plot(report, plot)
    if json:
        render.print_json(report.to_dict())
        return
    t = Table(title=f"load on {report.url} ({report.bodies} distinct bodies; each level at most {duration:g} s "
                    f"and {max_requests} requests)", title_justify="left")
    for col in ("concurrency", "sent", "ok", "503 shed", "other errors", "answers/s", "p50 ms", "p95 ms", "p99 ms",
                "stopped by"):
        t.add_column(col, justify="right")

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for lv in report.levels:
        other = ", ".join(f"{k}: {v}" for k, v in lv.errors.items() if k != "503") or "-"
        t.add_row(str(lv.concurrency), str(lv.sent), str(lv.ok), str(lv.shed), other, f"{lv.throughput:,.1f}",
                  ms(lv.p50_ms), ms(lv.p95_ms), ms(lv.p99_ms), lv.stopped_by)
    render.out.print(t)
    if plot is not None:
        render.out.print(f"plot: {plot}")
