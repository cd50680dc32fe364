from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from onnxguard import scan as scan_lib
from onnxguard.cli import render, trusting
from onnxguard.cli.app import app
from onnxguard.errors import CheckFailed, InputError
from onnxguard.scan import formats
from onnxguard.scan import policy as policy_lib
from onnxguard.scan.interface import Severity
from onnxguard.trust import PublicKeys, scan_bundle

SEVERITIES = tuple(s.label for s in Severity)


@app.command()
def scan(
    path: Annotated[Path, typer.Argument(help="An .onnx file or a bundle directory.")],
    policy: Annotated[Path | None, typer.Option("--policy", help="Policy file (TOML); see docs/scan.md.")] = None,
    profile: Annotated[str | None, typer.Option("--profile", help="Policy profile: default | strict (wins over "
                                                "the policy file's own).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format: text | json | sarif.")] = "text",
    fail_on: Annotated[str, typer.Option("--fail-on", help="Exit 1 when a finding is at or above this severity: "
                                         + " | ".join(SEVERITIES) + ".")] = "medium",
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the report here instead of stdout.")] = None,
    public_key: trusting.PublicKey = None,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
    allow_unscanned: trusting.AllowUnscanned = False,
) -> None:
    """Security scan of a model or bundle against a policy: exit 0 clean, 1 findings at or above --fail-on.

    A bundle is read through the trust checks: its files against the manifest, its signature (checked with
    --public-key, else reported as not checked), and its model decrypted in memory when sealed. A sealed
    model that cannot be decrypted is a critical finding (not scanned) unless --allow-unscanned."""
    if fmt not in formats.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(formats.FORMATS)}")
    if fail_on not in SEVERITIES:
        raise InputError(f"--fail-on {fail_on!r}: use one of {', '.join(SEVERITIES)}")
    pol = policy_lib.load(policy, profile) if policy is not None else policy_lib.for_profile(profile or "default")
    with render.progress_display(enabled=render.err.is_terminal) as progress:
        if path.is_dir() and not path.is_symlink():
            rule = trusting.scan_rule(allow_unscanned, pol, Severity.parse(fail_on))
            report = scan_bundle(path, rule, PublicKeys(tuple(public_key)) if public_key else None,
                                 trusting.identity_source(identity), trusting.passphrase(passphrase_env), progress)
        else:
            report = scan_lib.scan(path, pol, progress)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    text = formats.render(report, fmt, color=color)
    render.write_report(text, output)
    failing = report.at_or_above(Severity.parse(fail_on))
    if failing:
        raise CheckFailed(f"{path}: {len(failing)} finding(s) at or above {fail_on} (worst: "
                          f"{failing[0].severity.label} {failing[0].check})")
