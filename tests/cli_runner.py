"""The one way tests run the ``onnxguard`` command line (a plain module: test files import it, not conftest).

In process by default: ``onnxguard.cli.main(argv)`` with stdout and stderr captured and the environment and
working directory the command asks for (restored afterwards), which saves an interpreter start per command.
``process=True`` runs the installed console script as a real process instead, for what only a process shows
(the entry point itself, a hang bounded by a timeout, signals).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

# The console script installed next to this interpreter: the real entry point.
ONNXGUARD = Path(sys.executable).parent / "onnxguard"
# What every command sees: no colours, wide tables, never a network lookup, no age identity from the caller's shell.
BASE_ENV = {"NO_COLOR": "1", "COLUMNS": "250", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": ""}
SCRUBBED = ("ONNXGUARD_AGE_IDENTITY", "ONNXGUARD_AGE_PASSPHRASE")


@dataclass(frozen=True)
class Result:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __str__(self) -> str:  # shown by pytest when an assertion about a result fails
        return f"onnxguard {' '.join(self.args)} -> {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(BASE_ENV)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def _within(env: dict[str, str], cwd: str | os.PathLike[str] | None) -> Iterator[None]:
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    try:
        if cwd is not None:
            os.chdir(cwd)
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def run(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
        process: bool = False, timeout: float = 600) -> Result:
    """``onnxguard ARGS...``: in process (``main``), or with ``process=True`` through the console script."""
    argv = tuple(str(a) for a in args)
    if process:
        proc = subprocess.run([str(ONNXGUARD), *argv], capture_output=True, text=True, cwd=cwd,
                              env=environment(env), timeout=timeout, check=False)
        return Result(argv, proc.returncode, proc.stdout, proc.stderr)
    from onnxguard import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _within(environment(env), cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as the console script runs: a library warning is not a test error here
        try:
            cli.main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - escaping main() is a bug: shown as exit 99 with its traceback
            traceback.print_exc(file=err)
            code = 99
    return Result(argv, code, out.getvalue(), err.getvalue())


def run_many(*commands: tuple[str | os.PathLike[str], ...], env: Mapping[str, str] | None = None) -> list[Result]:
    """Several command lines, one :class:`Result` each."""
    return [run(*cmd, env=env) for cmd in commands]


def expect_error(result: Result, code: int, *fragments: str | os.PathLike[str]) -> str:
    """Exit ``code``; exactly one line on stderr, the error, naming ``fragments``; no traceback anywhere."""
    assert result.code == code, str(result)
    assert "Traceback" not in result.err + result.out, str(result)
    assert len(result.err_lines) == 1, str(result)
    line = result.err_lines[0]
    assert line.startswith("onnxguard: error: "), str(result)
    for f in fragments:
        assert str(f) in line, f"{f!r} not in {line!r}"
    return line
