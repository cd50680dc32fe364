from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from onnxguard.cli import render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.build import candidates, summary
from onnxguard.cli.consistency import show as show_consistency
from onnxguard.examples import quickstart as quickstart_lib
from onnxguard.model import info as inspect_lib


@app.command()
def quickstart(
    workdir: Annotated[Path, typer.Option(
        "--workdir", help="Where the example writes its files.")] = Path("onnxguard-quickstart"),
) -> None:
    """Train a small CNN on scikit-learn's digits and build a bundle from it: the whole path in one run."""
    render.out.rule("onnxguard quickstart: digits CNN -> ONNX bundle")
    with render.progress_display() as progress:
        result = quickstart_lib.run(workdir, progress)
    render.out.print(f"trained DigitsCNN: test accuracy [bold]{result.accuracy:.1%}[/], saved {result.program}")
    render.parity_report(result.build.parity, "parity of the export, ONNX Runtime vs PyTorch")
    if result.build.selection:
        candidates(result.build.selection)
    opened = trusting.open_from_cli(result.build.bundle.path, public_key=[result.keys.public_key], allow_unsigned=False,
                                    identity=result.keys.age_identity)
    render.model_info(inspect_lib.describe_bundle(opened))
    t = Table(title="predictions on test images", title_justify="left")
    for col in ("true", "predicted", "confidence", ""):
        t.add_column(col)
    for p in result.predictions:
        t.add_row(p.truth, p.label, f"{p.confidence:.1%}", "[green]ok[/]" if p.label == p.truth else "[red]wrong[/]")
    render.out.print(t)
    summary(result.build)
    v = result.verify
    render.out.print(f"verify (signature, every hash, golden set on this runtime): "
                     f"{'[green]PASSED[/]' if v.passed else '[red]FAILED[/]'}  keys: {result.keys.private_key.parent}")
    show_consistency(result.consistency)
    if result.browser_skipped:
        render.out.print(f"[yellow]skipped[/]: {result.browser_skipped}")
    if result.serving is not None:
        s = result.serving
        right = sum(truth == label for truth, label in s.answers)
        render.out.print(f"served on {s.url}: {right}/{len(s.answers)} test images right through "
                         f"/v1/models/digits-cnn:predict with an API key; without one: {s.refused_status}; "
                         f"audit log {s.audit_path}: {s.audit.records} records, "
                         f"{'[green]verified[/]' if s.audit.passed else '[red]FAILED[/]'}")
        _confidential(result, workdir)
    b, k = result.build.bundle.path, result.keys
    render.out.print(f"bundle: [bold]{b.resolve()}[/] (sealed and signed)\n"
                     f"try:   onnxguard inspect {b} --identity {k.age_identity}\n"
                     f"       onnxguard verify {b} --public-key {k.public_key} --golden --identity {k.age_identity}\n"
                     f"       model_signing verify key --signature {b}/model.sig --public_key {k.public_key} {b}\n"
                     f"       onnxguard consistency {b} {b.parent / 'targets'}/* --public-key {k.public_key} "
                     f"--identity {k.age_identity}\n"
                     f"       onnxguard apikey create me --keys {b.parent / 'serve' / 'keys.db'}\n"
                     f"       onnxguard serve {b} --public-key {k.public_key} --identity {k.age_identity} "
                     f"--keys {b.parent / 'serve' / 'keys.db'} --audit {b.parent / 'serve' / 'audit.db'}")


def _confidential(result: quickstart_lib.QuickstartResult, workdir: Path) -> None:
    """A key broker, a server that gets the model key from it, a client that verifies and predicts, one refused."""
    from rich.markup import escape

    from onnxguard.confidential import demo
    from onnxguard.examples import digits

    data = digits.load_data()
    with render.progress_display() as progress:
        c = demo.run(result.build.bundle.path, result.keys.public_key, result.keys.age_identity,
                     workdir / "confidential", data.x_test[-4:].tolist(), [str(t) for t in data.y_test[-4:]], progress)
    right = sum(truth == label for truth, label in c.answers)
    released = sum(reason == "released" for _, reason in c.broker_records)
    render.out.print(f"confidential ([bold]SIMULATION[/] platform, no hardware isolation; docs/confidential.md): "
                     f"the key broker on {c.broker_url} released the model key to the attested server "
                     f"({released} release, audited); a client passed {c.checks} checks, then got {right}/"
                     f"{len(c.answers)} test images right end to end encrypted (HPKE, ML-KEM-768 + X25519); a client "
                     f"expecting another model: {escape(c.refusal)}")
