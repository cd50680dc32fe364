"""The ``onnxguard`` Typer application and its root options; each verb module registers its command on ``app``."""

from __future__ import annotations

import typer

from onnxguard import __version__

app = typer.Typer(
    name="onnxguard",
    help="From a trained model to a fast, verified, signed and encrypted ONNX bundle.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"onnxguard {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """onnxguard: convert, check, bundle (and later optimize, scan, sign, seal and serve) models."""
