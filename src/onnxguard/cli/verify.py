from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnxguard.cli import options, render, trusting
from onnxguard.cli.app import app
from onnxguard.cli.consistency import show
from onnxguard.errors import CheckFailed, InputError
from onnxguard.trust import Status, TrustPolicy, opening
from onnxguard.trust import verify as verify_lib

_STYLE = {Status.PASSED: "green", Status.FAILED: "red", Status.NOT_CHECKED: "red", Status.WAIVED: "yellow",
          Status.NOT_APPLICABLE: "dim"}


def _print(report: verify_lib.VerifyReport) -> None:
    trust = report.trust
    t = Table(title=f"verify {escape(trust.path)}: {'PASSED' if report.passed else 'FAILED'}",
              show_header=False, title_justify="left")
    if report.name:
        t.add_row("bundle", f"{escape(report.name)} {escape(report.version or '')}")
    if trust.digest:
        t.add_row("digest", f"sha256:{trust.digest}")
    for s in trust.steps:
        t.add_row(f"{s.number}. {s.step.value}", f"[{_STYLE[s.status]}]{s.status.value}[/]: {escape(s.detail)}")
    for f in trust.files:
        if not f.ok:
            t.add_row("", escape(f"{f.file}: {f.status.value} ({f.detail})"))
    t.add_row("golden", escape(report.golden_status.value))
    if trust.waivers:
        t.add_row("[yellow]unsafe[/]", escape(", ".join(trust.waivers)))
    for failure in report.failures:
        t.add_row("[red]failure[/]", escape(failure))
    render.out.print(t)
    if report.golden is not None:
        show(report.golden)


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory.")],
    public_key: trusting.PublicKey = None,
    allow_unsigned: trusting.AllowUnsigned = False,
    allow_unscanned: trusting.AllowUnscanned = False,
    golden: Annotated[bool, typer.Option("--golden", help="Re-run the golden set on this machine's ONNX Runtime "
                                         "and compare with the source's reference outputs.")] = False,
    identity: trusting.Identity = None,
    passphrase_env: trusting.PassphraseEnv = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option("--certificate-chain", help="Check a "
                                 "certificate signature against these PEM certificates, repeatable.")] = None,
    sigstore_identity: Annotated[str | None, typer.Option("--sigstore-identity", help="Check a Sigstore "
                                 "signature for this signer identity (needs --sigstore-issuer and a network).")] = None,
    sigstore_issuer: Annotated[str | None, typer.Option("--sigstore-issuer", help="The signer's OIDC issuer.")] = None,
    target: Annotated[list[Path] | None, typer.Option("--target", help="With --golden: also run the golden set "
                                                      "through this target directory or variant (repeatable).")] = None,
    json: options.Json = False,
) -> None:
    """Check the manifest, every file, the signature, the sealed plaintext and the model scan, in numbered
    steps; with --golden, drift on this runtime (and on each --target). Exit 1 on any failure, and on any step
    not checked unless an --allow-* option waives it."""
    policy = TrustPolicy(trusting.signature_policy(public_key, allow_unsigned, certificate_chain, sigstore_identity,
                                                   sigstore_issuer), trusting.scan_rule(allow_unscanned))
    if target and not golden:
        raise InputError("--target needs --golden: targets are checked against the golden set")
    with render.progress_display(enabled=not json and render.err.is_terminal) as progress:
        report = verify_lib.verify(bundle, policy, golden, list(target or ()), trusting.identity_source(identity),
                                   trusting.passphrase(passphrase_env), progress)
    if json:
        render.print_json(report.to_dict())
    else:
        _print(report)
    if not report.passed:
        raise CheckFailed(f"{bundle}: verification failed: {'; '.join(report.failures)}",
                          remedy=opening.remedy(report.trust))
