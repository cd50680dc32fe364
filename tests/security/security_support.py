"""Helpers for the security tests (a plain module: test files import it, not conftest)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cli_runner import environment
from onnxguard.bundle import MANIFEST, digest

MODEL_SIGNING = Path(sys.executable).parent / "model_signing"


def reference_verify(bundle: Path, public_key: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The model-signing package's own command: ``model_signing verify key --signature ... --public_key ... BUNDLE``."""
    return subprocess.run([str(MODEL_SIGNING), "verify", "key", "--signature", str(bundle / "model.sig"),
                           "--public_key", str(public_key), str(bundle)],
                          capture_output=True, text=True, timeout=120, check=False, cwd=cwd, env=environment())


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
