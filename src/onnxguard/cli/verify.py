from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from onnxguard.trust import verify as verify_lib
from onnxguard.errors import CheckFailed, InputError
from onnxguard.cli import app, options, render
from onnxguard.cli.consistency import show
from onnxguard.cli.seal import PassphraseEnv
from onnxguard.cli.sign import env_secret


def _print(report: verify_lib.VerifyReport) -> None:
    t = Table(title=f"verify {escape(report.bundle)}: {'PASSED' if report.passed else 'FAILED'}",
              show_header=False, title_justify="left")
    if report.name:
        t.add_row("bundle", f"{escape(report.name)} {escape(report.version or '')}")
    sig = report.signature + (f" ({report.signature_method})" if report.signature_method else "")
    t.add_row("signature", escape(sig if report.signature_detail in ("verified", "") else
                                  f"{sig}: {report.signature_detail}"))
    bad = [f for f in report.files if f.status != "ok"]
    t.add_row("files", escape(f"{len(report.files) - len(bad)} of {len(report.files)} match the manifest"))
    for f in bad:
        t.add_row("", escape(f"{f.file}: {f.status} ({f.detail})"))
    t.add_row("sealed", escape(f"yes, plaintext {report.plaintext}" if report.sealed else "no"))
    t.add_row("golden", escape(report.golden_status))
    for failure in report.failures:
        t.add_row("[red]failure[/]", escape(failure))
    render.out.print(t)
    if report.golden is not None:
        render.parity_report(report.golden, title="golden set on this runtime vs the source's references")
        if report.build_max_abs:
            render.out.print("at build: " + ", ".join(f"{k} max |diff| {v:.3g}" for k, v in report.build_max_abs.items()))


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="The bundle directory.")],
    public_key: Annotated[Path | None, typer.Option("--public-key", help="EC public key (PEM) to check "
                                                    "model.sig with.")] = None,
    golden: Annotated[bool, typer.Option("--golden", help="Re-run the golden set on this machine's ONNX Runtime "
                                         "and compare with the source's reference outputs.")] = False,
    identity: Annotated[Path | None, typer.Option("--identity", "-i", help="age identity or ssh private key, for "
                                                  "a sealed bundle (default: $ONNXGUARD_AGE_IDENTITY).")] = None,
    passphrase_env: PassphraseEnv = None,
    certificate_chain: Annotated[list[Path] | None, typer.Option("--certificate-chain", help="Check a "
                                 "certificate signature against these PEM certificates, repeatable.")] = None,
    sigstore_identity: Annotated[str | None, typer.Option("--sigstore-identity", help="Check a Sigstore "
                                 "signature for this signer identity (needs --sigstore-issuer and a network).")] = None,
    sigstore_issuer: Annotated[str | None, typer.Option("--sigstore-issuer", help="The signer's OIDC issuer.")] = None,
    target: Annotated[list[Path] | None, typer.Option("--target", help="With --golden: also run the golden set "
                                                      "through this target directory or variant (repeatable).")] = None,
    json: options.Json = False,
) -> None:
    """Check the signature, every hash and, with --golden, drift on this runtime (and on each --target);
    exit 1 on any failure."""
    if target and not golden:
        raise InputError("--target needs --golden: targets are checked against the golden set")
    with render.progress_display(enabled=not json and render.err.is_terminal) as progress:
        report = verify_lib.verify(bundle, public_key, golden, identity,
                                   env_secret(passphrase_env, "--passphrase-env"), certificate_chain or None,
                                   sigstore_identity, sigstore_issuer, progress)
    drift = None
    if target and report.passed:
        from onnxguard import bundle as bundle_lib
        from onnxguard.accuracy import consistency
        from onnxguard.trust import sealing

        ids = sealing.identities(identity) if identity is not None else None
        drift = consistency.check(bundle_lib.read(bundle), list(target), ids)
    if json:
        render.print_json({**report.to_dict(), **({"consistency": drift.to_dict()} if drift else {})})
    else:
        _print(report)
        if drift is not None:
            show(drift)
    if not report.passed:
        raise CheckFailed(f"{bundle}: verification failed: {'; '.join(report.failures)}")
    if drift is not None and not drift.passed:
        raise CheckFailed(f"{bundle}: a target drifts from the source's outputs past its thresholds")
