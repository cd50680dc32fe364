"""The ``onnxguard`` command: a thin face over the library, one module per verb.

Errors: every ``OnnxguardError`` is caught once, here, and printed as one line on stderr with its exit
code (2 could not run, 1 a check failed). ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback

import typer

from onnxguard import __version__
from onnxguard.errors import OnnxguardError

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


# Registering the verbs: each module adds its command(s) to ``app``.
from onnxguard.cli import bench, build, consistency, convert, inspect, keygen, optimize, parity, quantize, quickstart, scan, seal, sign, target, verify  # noqa: E402,F401,E501


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        # Standalone mode: the parser's own usage errors exit 2 with its message (typer ships its own click).
        app(args=argv, prog_name="onnxguard", standalone_mode=True)
    except OnnxguardError as e:
        if "--debug" in argv:
            traceback.print_exc()
        print(f"onnxguard: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
