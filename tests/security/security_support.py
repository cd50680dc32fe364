"""Helpers for the security tests (a plain module: test files import it, not conftest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from onnxguard.bundle import digest
from onnxguard.bundle import MANIFEST

# The real entry point: the console script installed next to this interpreter.
ONNXGUARD = Path(sys.executable).parent / "onnxguard"
MODEL_SIGNING = Path(sys.executable).parent / "model_signing"


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]

    def __str__(self) -> str:
        return f"onnxguard {' '.join(self.args)} -> {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ONNXGUARD_AGE_")}
    e.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONWARNINGS": ""})
    e.update(extra)
    return e


def og(*args: str | os.PathLike[str], extra_env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """``onnxguard ARGS...`` as a real process, through the console script."""
    argv = tuple(str(a) for a in args)
    proc = subprocess.run([str(ONNXGUARD), *argv], capture_output=True, text=True,
                          env=env(**(extra_env or {})), cwd=cwd, timeout=300, check=False)
    return Run(argv, proc.returncode, proc.stdout, proc.stderr)


# Several command lines through the same main() in one process (saves the interpreter start per command):
# each runs with its own captured stdout/stderr; SystemExit gives the exit code, anything else escaping main()
# is reported as exit 99 with its traceback on stderr.
BATCH = r"""
import contextlib, io, json, sys, traceback
import onnxguard.cli as c
results = []
for argv in json.loads(sys.stdin.read()):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            c.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
    results.append([argv, code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def og_many(*commands: tuple, extra_env: dict[str, str] | None = None) -> list[Run]:
    """Run several ``onnxguard`` command lines through main() in one process; one :class:`Run` each."""
    argvs = [[str(a) for a in cmd] for cmd in commands]
    proc = subprocess.run([sys.executable, "-c", BATCH], input=json.dumps(argvs), capture_output=True, text=True,
                          env=env(**(extra_env or {})), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return [Run(tuple(argv), code, out, err) for argv, code, out, err in json.loads(proc.stdout)]


def one_error(run: Run, code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one line on stderr (the error) naming ``fragments``, no traceback anywhere."""
    assert run.code == code, str(run)
    assert "Traceback" not in run.err + run.out, str(run)
    assert len(run.err_lines) == 1, str(run)
    line = run.err_lines[0]
    assert line.startswith("onnxguard: error: "), str(run)
    for f in fragments:
        assert str(f) in line, f"{f!r} not in {line!r}"
    return line


def reference_verify(bundle: Path, public_key: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The model-signing package's own command: ``model_signing verify key --signature ... --public_key ... BUNDLE``."""
    return subprocess.run([str(MODEL_SIGNING), "verify", "key", "--signature", str(bundle / "model.sig"),
                           "--public_key", str(public_key), str(bundle)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=env())


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Change one byte of ``path`` (in the middle by default)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def relist(bundle: Path, rel: str) -> None:
    """Make the manifest agree with the current content of ``rel`` (what an attacker without the key can do)."""
    mpath = bundle / MANIFEST
    m = json.loads(mpath.read_text())
    p = bundle / rel
    m["files"][rel] = {"sha256": digest.file(p), "size": p.stat().st_size}
    mpath.write_text(json.dumps(m, indent=2) + "\n")
