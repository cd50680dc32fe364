from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.cli import loadtest, options, render
from onnxguard.cli.app import app
from onnxguard.errors import InputError
from onnxguard.speed import leakage as leakage_lib


@app.command()
def leakage(
    url: Annotated[str, typer.Argument(help="The running server, http://HOST:PORT.")],
    model: Annotated[str, typer.Option("--model", help="The model's name on the server.")],
    key_env: loadtest.KeyEnv = None,
    n: Annotated[int, typer.Option("--n", help="Requests to time, one at a time.")] = 400,
    inputs: Annotated[Path | None, typer.Option("--inputs", help="Inputs as .npz (arrays named by input, one "
                                                "request per row), e.g. the bundle's golden.npz.")] = None,
    texts: loadtest.Texts = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sending order and the shuffles.")] = 0,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write each label's latency to this PNG.")] = None,
    json: options.Json = False,
) -> None:
    """What a response's latency tells about its label (the timing side channel), measured: N requests one at a
    time, then the mutual information between latency and label and the accuracy of guessing the label from the
    latency alone, each against chance. Inputs must get different labels; texts of different lengths do."""
    if n < 10:
        raise InputError(f"--n {n}: at least 10 requests (5-fold cross-validation)")
    reqs, endpoint = loadtest.bodies(inputs, texts, infer_single=False)
    with render.progress_display(not json) as progress:
        report = leakage_lib.measure(url, model, reqs, headers=loadtest.headers(key_env), n=n, endpoint=endpoint,
                                     seed=seed, progress=progress)
    if plot is not None:
        leakage_lib.plot(report, plot)
    if json:
        render.print_json(report.to_dict())
        return
    a = report.analysis
    t = Table(title=f"latency by label, {a.n} requests one at a time to {report.url}", title_justify="left")
    for col in ("label", "answers", "median ms", "p95 ms", "mean ms"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for c in a.classes:
        t.add_row(c.label, str(c.count), f"{c.median_ms:.2f}", f"{c.p95_ms:.2f}", f"{c.mean_ms:.2f}")
    render.out.print(t)
    render.out.print(f"mutual information: {a.mutual_information_bits:.4f} bits of {a.label_entropy_bits:.3f} "
                     f"(shuffled labels give {a.mi_chance_bits:.4f}; p = {a.mi_p_value:.3f}, {a.bins} latency bins)")
    render.out.print(f"label guessed from latency alone: {a.accuracy:.1%} (chance, the majority label: "
                     f"{a.chance:.1%}; p = {a.accuracy_p_value:.3f}, {a.folds}-fold cross-validated)")
    render.out.print("verdict: the latency tells something about the label (p < "
                     f"{leakage_lib.ALPHA:g})" if a.leaks else
                     "verdict: no relation between latency and label found at this sample size")
    if plot is not None:
        render.out.print(f"plot: {plot}")
