from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.accuracy import consistency as consistency_lib
from onnxguard.accuracy.thresholds import THRESHOLDS
from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.errors import CheckFailed
from onnxguard.trust import TrustPolicy, open_bundle


@app.command()
def consistency(
    source: Annotated[Path, typer.Argument(help="The bundle whose golden set is the contract.")],
    targets: Annotated[list[Path] | None, typer.Argument(
        help="Target directories, other bundles, .onnx files.")] = None,
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the drift per target to this PNG.")] = None,
    json: options.Json = False,
) -> None:
    """Run the golden set through every variant and target; exit 1 when any drifts past its thresholds.

    Bundles (the source and any bundle among the targets) are opened through the trust checks first."""
    policy = TrustPolicy(trusting.signature_policy(public_key, allow_unsigned), trusting.scan_rule(False))
    ids = trusting.identity_source(identity)
    with render.progress_display(enabled=not json and render.err.is_terminal) as progress:
        opened = open_bundle(source, policy, ids, trusting.passphrase(passphrase_env), progress)
        report = consistency_lib.check(opened, list(targets or ()), policy, ids)
    if plot is not None:
        consistency_lib.plot(report, plot)
    if json:
        render.print_json(report.to_dict())
    else:
        show(report)
    if not report.passed:
        raise CheckFailed("a target drifts from the source's outputs past its thresholds")


def show(report: consistency_lib.ConsistencyReport) -> None:
    t = Table(title=f"consistency vs the source framework: {'PASSED' if report.passed else 'FAILED'} "
                    f"({report.items} golden examples)", title_justify="left")
    for col in ("target", "kind", "max |diff|", "mean |diff|", "KL", "top-1", "ms/item", "result"):
        t.add_column(col, justify="left" if col in ("target", "kind", "result") else "right")
    for d in report.targets:
        t.add_row(d.name, d.kind, f"{d.max_abs:.3g}", f"{d.mean_abs:.3g}", "-" if d.kl is None else f"{d.kl:.2g}",
                  "-" if d.top1 is None else f"{d.top1:.2%}", f"{d.ms_per_item:.3f}",
                  "[green]ok[/]" if d.passed else "[red]" + "; ".join(d.failures) + "[/]")
    render.out.print(t)
    limits = ", ".join(f"{k}: |diff| <= {v.max_abs:g}, KL <= {v.max_kl:g}, top-1 >= {v.min_top1:.0%}"
                       for k, v in THRESHOLDS.items())
    render.out.print(f"thresholds: {limits}")
