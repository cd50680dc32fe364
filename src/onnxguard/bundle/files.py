"""A bundle's files against its manifest: the one check, reading each file once and hashing what it read.

``read_regular`` is how any untrusted file is read: opened without following a symlink and without blocking
(a FIFO can never stall a reader), ``fstat`` on the open descriptor so the file checked is the file read,
regular files only, the size compared with the limit before a single byte is read, then read once.

``check`` walks a bundle directory (never following symlinks), reads every file the manifest lists exactly
once, hashes those bytes and compares them with the manifest. It reports every problem (a changed, missing,
unexpected, symlinked or non-regular file) and hands back the bytes it hashed, so whoever uses them uses what
was checked, not a later read of the disk.
"""

from __future__ import annotations

import enum
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from onnxguard.bundle.manifest import Manifest
from onnxguard.errors import InputError

# Files that are not listed in the manifest's ``files``: the manifest itself, and the signature over it.
MANIFEST = "manifest.json"
SIGNATURE = "model.sig"
UNLISTED = (MANIFEST, SIGNATURE)

# manifest.json and model.sig are small (kilobytes); anything far larger is hostile, and is not read.
MAX_METADATA_BYTES = 16 << 20
# One bundle file: protobuf caps a single-file ONNX model at 2 GiB, and a sealed one adds age's overhead
# (16 bytes per 64 KiB chunk and a header); the golden set and tokenizer are far smaller.
MAX_FILE_BYTES = (2 << 30) + (64 << 20)

_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def size_text(n: int) -> str:
    """A size in bytes for a message: ``512 bytes``, ``3.0 KiB``, ``2.0 GiB``."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _limit(max_bytes: int, what: str | None) -> str:
    return f"the {size_text(max_bytes)} limit" + (f" for {what}" if what else "")


@dataclass(frozen=True)
class Read:
    """A file's bytes as read once, and their sha256."""

    data: bytes
    sha256: str


def open_regular(path: str | os.PathLike[str], max_bytes: int, *, what: str | None = None,
                 too_large: str | None = None) -> tuple[BinaryIO, int]:
    """Open a regular file for reading: without following a symlink, without blocking (a FIFO cannot stall it),
    checked with ``fstat`` on the open descriptor (the file checked is the file read) and refused, before a
    byte is read, when larger than ``max_bytes``. Returns the open file and its size.

    ``what`` is what the file was expected to be ("an .onnx file"): the errors name it in their hint and in the
    size limit; ``too_large`` is the hint for a file over the limit. A FIFO, directory, device, socket or
    symlink is an ``InputError`` saying what it is; "no such file" means exactly that."""
    p = Path(path)
    hint = f"give the path of {what}" if what else None
    try:
        fd = os.open(p, _OPEN_FLAGS)
    except FileNotFoundError as e:
        raise InputError(f"{p}: no such file", hint=hint) from e
    except OSError as e:
        try:
            mode: int | None = os.lstat(p).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):  # ELOOP (a symlink), ENXIO (a socket), EISDIR, ...
            raise InputError(f"{p}: is {kind_of(mode)}, not a regular file", hint=hint) from e
        if e.errno == errno.ENOTDIR:
            raise InputError(f"{p}: no such file ({p.parent} is not a directory)", hint=hint) from e
        raise InputError(f"{p}: cannot read ({e.strerror or e})",
                         hint=f"give the path of {what} you can read" if what else None) from e
    try:  # fstat before fdopen: a file object cannot even be made for a directory
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: is {kind_of(st.st_mode)}, not a regular file", hint=hint)
        if st.st_size > max_bytes:
            raise InputError(f"{p}: {size_text(st.st_size)}, over {_limit(max_bytes, what)}, not read",
                             hint=too_large)
        f = os.fdopen(fd, "rb", buffering=0)
    except OSError as e:
        os.close(fd)
        raise InputError(f"{p}: cannot read ({e.strerror or e})") from e
    except InputError:
        os.close(fd)
        raise
    return f, st.st_size


class HashingReader:
    """Reads through to a file, hashing and counting every byte read, refusing to go past ``max_bytes``."""

    def __init__(self, f: BinaryIO, max_bytes: int, where: Path, what: str | None = None) -> None:
        self.f, self.max_bytes, self.where, self.what = f, max_bytes, where, what
        self.sha, self.size = hashlib.sha256(), 0

    def read(self, n: int = -1) -> bytes:
        want = self.max_bytes + 1 - self.size if n is None or n < 0 else min(n, self.max_bytes + 1 - self.size)
        data = self.f.read(max(want, 0)) or b""
        self.sha.update(data)
        self.size += len(data)
        if self.size > self.max_bytes:
            raise InputError(f"{self.where}: grew past {_limit(self.max_bytes, self.what)} while it was read")
        return data


def read_regular(path: str | os.PathLike[str], max_bytes: int, keep: bool = True, *, what: str | None = None,
                 too_large: str | None = None) -> Read:
    """Read a regular file once, within ``max_bytes``, hashing it as it is read; ``keep=False`` streams it (the
    digest only, in constant memory). ``InputError`` naming the file for anything else; ``what`` and
    ``too_large`` as for ``open_regular``. This is how any untrusted file is read."""
    f, size = open_regular(path, max_bytes, what=what, too_large=too_large)
    with f:
        reader = HashingReader(f, max_bytes, Path(path), what)
        chunks: list[bytes] = []
        # Kept, the file is asked for whole (one buffer, no copy to join); streamed, a megabyte at a time.
        step = min(size, max_bytes) + 1 if keep else 1 << 20
        try:
            while chunk := reader.read(step):
                if keep:
                    chunks.append(chunk)
                step = 1 << 20
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from e
    return Read(b"".join(chunks), reader.sha.hexdigest())


class FileStatus(enum.Enum):
    """The verdict on one file of a bundle against its manifest."""

    OK = "ok"
    CHANGED = "changed"
    MISSING = "missing"
    UNEXPECTED = "unexpected"
    SYMLINK = "symlink"
    NOT_REGULAR = "not regular"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class FileCheck:
    """One file's verdict, and what was found when it is not OK."""

    file: str
    status: FileStatus
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status is FileStatus.OK

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "status": self.status.value, "detail": self.detail}


@dataclass(frozen=True)
class Contents:
    """What ``check`` found: every file's verdict, and the bytes of each file that matched the manifest."""

    checks: tuple[FileCheck, ...]
    data: dict[str, bytes]  # relative path -> bytes exactly as hashed; files whose check is OK and that were kept
    digests: dict[str, str]  # relative path -> sha256 of every regular file that was read (OK, changed, unexpected)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.file}: {c.detail}" for c in self.checks if not c.ok]


def entries(root: Path) -> dict[str, os.stat_result]:
    """Every entry under ``root`` by POSIX relative path with its lstat; symlinked directories are not entered."""
    found: dict[str, os.stat_result] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            try:
                found[p.relative_to(root).as_posix()] = os.lstat(p)
            except FileNotFoundError:
                continue  # removed while walking: it is not there
    return found


def check(root: Path, manifest: Manifest, keep: Callable[[str], bool] = lambda rel: True) -> Contents:
    """Every file of the bundle at ``root`` against ``manifest``, all reported; listed files read once. The
    bytes of the files ``keep`` names are kept; the others are streamed (hashed in constant memory)."""
    checks: list[FileCheck] = []
    data: dict[str, bytes] = {}
    digests: dict[str, str] = {}
    found = entries(root)
    for rel, st in found.items():
        if stat.S_ISLNK(st.st_mode):
            checks.append(FileCheck(rel, FileStatus.SYMLINK, "is a symlink; a bundle holds only regular files"))
        elif not stat.S_ISDIR(st.st_mode) and not stat.S_ISREG(st.st_mode):
            checks.append(FileCheck(rel, FileStatus.NOT_REGULAR, f"is {kind_of(st.st_mode)}"))
        elif stat.S_ISREG(st.st_mode) and rel not in manifest.files and rel not in UNLISTED:
            checks.append(FileCheck(rel, FileStatus.UNEXPECTED,
                                    "not listed in the manifest; remove it or rebuild the bundle"))
            try:  # its digest lets a signature check name it as unsigned
                digests[rel] = read_regular(root / rel, MAX_FILE_BYTES).sha256
            except InputError:
                pass  # already a failure; too large or gone to be named in the signature check too
    flagged = {c.file for c in checks}
    for rel, entry in sorted(manifest.files.items()):
        listed_st = found.get(rel)
        if rel in flagged:
            continue
        if listed_st is None:
            checks.append(FileCheck(rel, FileStatus.MISSING, "listed in the manifest but missing from the bundle"))
            continue
        if listed_st.st_size != entry.size:
            checks.append(FileCheck(rel, FileStatus.CHANGED, f"does not match the sha256 in the manifest "
                                    f"({listed_st.st_size:,} bytes, the manifest says {entry.size:,})"))
            continue
        try:
            read = read_regular(root / rel, min(entry.size, MAX_FILE_BYTES), keep=keep(rel))
        except InputError as e:
            checks.append(FileCheck(rel, FileStatus.UNREADABLE, str(e).removeprefix(f"{root / rel}: ")))
            continue
        digests[rel] = read.sha256
        if read.sha256 != entry.sha256:
            checks.append(FileCheck(rel, FileStatus.CHANGED, "does not match the sha256 in the manifest"))
        else:
            checks.append(FileCheck(rel, FileStatus.OK))
            if keep(rel):
                data[rel] = read.data
    return Contents(tuple(sorted(checks, key=lambda c: (c.ok, c.file))), data, digests)


def regular_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` (a directory being written) by POSIX relative path; symlinks refused."""
    found: dict[str, Path] = {}
    for rel, st in entries(root).items():
        if stat.S_ISLNK(st.st_mode):
            raise InputError(f"{root / rel}: is a symlink; a bundle holds only regular files")
        if stat.S_ISREG(st.st_mode):
            found[rel] = root / rel
    return found


def digests(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` but the signature, each streamed once: what a signature is
    checked against when there is no readable manifest to go by."""
    found: dict[str, str] = {}
    for rel, st in entries(root).items():
        if stat.S_ISREG(st.st_mode) and rel != SIGNATURE:
            try:
                found[rel] = read_regular(root / rel, MAX_FILE_BYTES, keep=False).sha256
            except InputError:
                continue  # unreadable: it cannot match a signed digest, and the signature check says so
    return found
