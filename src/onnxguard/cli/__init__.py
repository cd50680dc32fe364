"""The ``onnxguard`` command: a thin face over the library, one module per verb.

Errors: every ``OnnxguardError`` is caught once, here, and printed as one line on stderr with its exit
code (2 could not run, 1 a check failed). ``--debug`` adds the traceback.
"""

from __future__ import annotations

import sys
import traceback

import typer.main
from typer import exceptions as typer_errors
from typer._click import exceptions as usage_errors  # typer ships its own click: its exceptions, not click's

from onnxguard.cli import (
    apikey,
    audit,
    bench,
    build,
    consistency,
    convert,
    diff,
    inspect,
    keybroker,
    keygen,
    leakage,
    optimize,
    parity,
    predict,
    quantize,
    quickstart,
    render,
    scan,
    seal,
    serve,
    sign,
    target,
    verify,
)
from onnxguard.cli.app import app
from onnxguard.errors import OnnxguardError

__all__ = ["VERBS", "app", "main"]

# The verb modules: importing each one registers its command(s) on ``app`` (defined in onnxguard.cli.app, so that
# no verb imports this package back).
VERBS = (apikey, audit, bench, build, consistency, convert, diff, inspect, keybroker, keygen, leakage, optimize, parity,
         predict, quantize, quickstart, scan, seal, serve, sign, target, verify)


def _verb(group, argv: list[str]):
    """The command that ``argv`` names (after the root's own flags), for naming its flags in errors."""
    command = group
    for token in argv:
        if token == "--":
            break
        if token.startswith("-"):
            continue
        if token not in getattr(command, "commands", {}):
            break
        command = command.commands[token]
    return None if command is group else command


def main(argv: list[str] | None = None) -> None:
    """Run the command; every error ends here as one line on stderr with its exit code (2 could not run,
    1 a check failed); ``--debug`` adds the traceback. A bug is an internal error, exit 2, never exit 1."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv[: argv.index("--")] if "--" in argv else "--debug" in argv
    group = None
    try:
        group = typer.main.get_command(app)
        code = group.main(args=argv, prog_name="onnxguard", standalone_mode=False)
    except usage_errors.NoArgsIsHelpError as e:
        e.show()
        sys.exit(e.exit_code)
    except usage_errors.UsageError as e:
        print(render.usage_error_line(e), file=sys.stderr)
        sys.exit(e.exit_code)
    except typer_errors.TyperException as e:
        print(f"onnxguard: error: {render.one_line(e.format_message())}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer_errors.Abort:
        print("onnxguard: error: aborted", file=sys.stderr)
        sys.exit(2)
    except OnnxguardError as e:
        if debug:
            traceback.print_exc()
        print(render.error_line(e, _verb(group, argv) if group is not None else None), file=sys.stderr)
        sys.exit(e.exit_code)
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 -- the one top-level handler: a bug is one line and exit 2, not exit 1
        if debug:
            traceback.print_exc()
        print(render.internal_error_line(e), file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
