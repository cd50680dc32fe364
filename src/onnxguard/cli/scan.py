from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from onnxguard import scan as scan_lib
from onnxguard.trust import sealing, signing
from onnxguard.errors import CheckFailed, InputError
from onnxguard.scan import formats, policy as policy_lib
from onnxguard.scan.interface import Severity
from onnxguard.cli import app, render

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
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the report here instead of stdout.")] = None,
    public_key: Annotated[Path | None, typer.Option("--public-key", help="Verify the bundle's signature with this PEM key.")] = None,
    identity: Annotated[Path | None, typer.Option("--identity", help="age identity file: scan a sealed bundle's model in "
                                                  "memory (default: $ONNXGUARD_AGE_IDENTITY).")] = None,
) -> None:
    """Security scan of a model or bundle against a policy: exit 0 clean, 1 findings at or above --fail-on."""
    if fmt not in formats.FORMATS:
        raise InputError(f"--format {fmt!r}: use one of {', '.join(formats.FORMATS)}")
    if fail_on not in SEVERITIES:
        raise InputError(f"--fail-on {fail_on!r}: use one of {', '.join(SEVERITIES)}")
    pol = policy_lib.load(policy, profile) if policy is not None else policy_lib.for_profile(profile or "default")
    with render.progress_display(enabled=render.err.is_terminal) as progress:
        key = None
        if public_key is not None:
            signing.load_public_key(public_key)  # a missing or malformed key is a usage error, not a finding
            key = public_key.read_bytes()
        ids = sealing.identities(identity) if identity is not None or os.environ.get(sealing.IDENTITY_ENV) else None
        report = scan_lib.scan(path, pol, progress, public_key=key, identity=ids)
    color = fmt == "text" and output is None and sys.stdout.isatty()
    text = formats.render(report, fmt, color=color)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{output}: cannot write the report ({e.strerror}); choose a writable path") from e
    failing = report.at_or_above(Severity.parse(fail_on))
    if failing:
        raise CheckFailed(f"{path}: {len(failing)} finding(s) at or above {fail_on} (worst: "
                          f"{failing[0].severity.label} {failing[0].check})")
