from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from onnxguard import diff as diff_lib
from onnxguard.bundle import golden as golden_lib
from onnxguard.cli import render, trusting
from onnxguard.cli.app import app
from onnxguard.errors import CheckFailed, InputError
from onnxguard.progress import Progress
from onnxguard.scan.interface import Severity

SEVERITIES = tuple(s.label for s in Severity)


def _side(path: Path, progress: Progress, public_key: list[Path] | None, allow_unsigned: bool,
          identity: Path | None, passphrase_env: str | None) -> diff_lib.Subject:
    """A bundle through the door with the verb's trust options; an .onnx file through the one reader."""
    if path.is_dir() and not path.is_symlink():
        opened = trusting.open_from_cli(path, public_key=public_key, allow_unsigned=allow_unsigned, identity=identity,
                                        passphrase_env=passphrase_env, progress=progress)
        return diff_lib.from_bundle(opened)
    return diff_lib.from_file(path)


@app.command()
def diff(
    reference: Annotated[Path, typer.Argument(help="The known-clean model: an .onnx file or a bundle directory.")],
    candidate: Annotated[Path, typer.Argument(help="The model to check against it: an .onnx file or a bundle.")],
    golden: Annotated[Path | None, typer.Option(
        "--golden", help="Golden inputs as .npz (keys: input names); default: the reference bundle's golden set, "
        "else the candidate's, else inputs generated from the signature.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format: text | json | sarif.")] = "text",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the report here instead of stdout.")] = None,
    fail_on: Annotated[str, typer.Option("--fail-on", help="Exit 1 when a finding is at or above this severity: "
                                         + " | ".join(SEVERITIES) + ".")] = "medium",
    max_abs: Annotated[float, typer.Option("--max-abs", help="Largest |diff| an output may show on the golden "
                                           "inputs.")] = 1e-3,
    max_flips: Annotated[int, typer.Option("--max-flips", help="Golden examples whose label may change.")] = 0,
    weight_atol: Annotated[float, typer.Option("--weight-atol", help="Largest change of a weight element not "
                                               "reported.")] = 1e-6,
    trigger_share: Annotated[float, typer.Option(
        "--trigger-share", help="Report a trigger that flips at least this share of the inputs it was tried on "
        "(in the candidate only).")] = 0.25,
    trigger_texts: Annotated[int, typer.Option("--trigger-texts", help="Golden texts each token is tried in.")] = 8,
    vocab_size: Annotated[int | None, typer.Option(
        "--vocab-size", help="Token ids to try when neither a tokenizer nor an embedding says.")] = None,
    no_triggers: Annotated[bool, typer.Option("--no-triggers", help="Skip the trigger search.")] = False,
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
) -> None:
    """Compare a candidate model with a known-clean reference: exit 0 same, 1 findings at or above --fail-on.

    Structure (ops, weights, new branches on input-derived conditions, rewired outputs), behaviour on the golden
    inputs (max |diff|, label flips) and a trigger search (every vocabulary token inserted into golden texts;
    small patches on golden images). Bundles are opened through the trust checks (--public-key or
    --allow-unsigned, --identity for sealed ones)."""
    if fmt not in diff_lib.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(diff_lib.FORMATS)}")
    if fail_on not in SEVERITIES:
        raise InputError(f"--fail-on {fail_on!r}: use one of {', '.join(SEVERITIES)}")
    if max_abs < 0 or weight_atol < 0 or max_flips < 0:
        raise InputError("--max-abs, --weight-atol and --max-flips must not be negative")
    if not 0 < trigger_share <= 1:
        raise InputError(f"--trigger-share {trigger_share}: give a share in (0, 1]")
    if trigger_texts < 1 or (vocab_size is not None and vocab_size < 1):
        raise InputError("--trigger-texts and --vocab-size must be positive")
    options = diff_lib.DiffOptions(golden=golden_lib.load(golden) if golden is not None else None, max_abs=max_abs,
                                   max_flips=max_flips, weight_atol=weight_atol, triggers=not no_triggers,
                                   trigger_share=trigger_share, trigger_texts=trigger_texts, vocab_size=vocab_size)
    with render.progress_display(enabled=render.err.is_terminal) as progress:
        ref = _side(reference, progress, public_key, allow_unsigned, identity, passphrase_env)
        cand = _side(candidate, progress, public_key, allow_unsigned, identity, passphrase_env)
        report = diff_lib.diff(ref, cand, options, progress)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    text = diff_lib.render(report, fmt, color=color)
    render.write_report(text, output)
    failing = report.at_or_above(Severity.parse(fail_on))
    if failing:
        raise CheckFailed(f"{candidate}: departs from {reference}: {len(failing)} finding(s) at or above {fail_on} "
                          f"(worst: {failing[0].severity.label} {failing[0].check})")
