"""sha256 of files and bytes, streamed so large models need no extra memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 1 << 20


def file(path: str | Path) -> str:
    """The sha256 (hex) of our own file at ``path``, streamed in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def data(b: bytes) -> str:
    """The sha256 (hex) of ``b``."""
    return hashlib.sha256(b).hexdigest()


def files(paths: tuple[Path, ...] | list[Path]) -> dict[str, str]:
    """sha256 of each file, keyed by path; directories are walked."""
    out: dict[str, str] = {}
    for p in paths:
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                out[str(f)] = file(f)
    return out
