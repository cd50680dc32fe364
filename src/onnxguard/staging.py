"""Writing an output all at once: checked before any work, staged beside the target, renamed into place.

``check_output`` refuses, before a long export or build starts, an output that could never be written or that
would destroy an input. ``atomic_dir`` yields a private staging directory beside the target
(``.NAME.staging-PID-RANDOM``), renames it into place when the block succeeds and removes it when the block
fails, so a reader never sees half an output. A process killed with SIGKILL cannot clean up after itself:
the next ``atomic_dir`` for the same target removes the staging directories whose process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from onnxguard.errors import InputError, Remedy

__all__ = ["FORBIDDEN_ROOTS", "atomic_dir", "check_output", "clean_stale", "publish", "staging_prefix"]

# Kernel pseudo-file systems: writing an output there is never what was meant, and /dev holds devices
# (an output of /dev/sda must be refused, not replaced or written through).
FORBIDDEN_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))

_STAGING = ".staging-"
_active: set[Path] = set()  # staging directories this process is using now (never cleaned as stale)
_active_lock = threading.Lock()


def staging_prefix(target: Path) -> str:
    """``.NAME.staging-``: how every staging directory of ``target`` begins."""
    return f".{Path(target).name}{_STAGING}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def _stale_pattern(target: Path) -> re.Pattern[str]:
    # One or more leading dots: a staging directory of a staging directory (a bundle sealed in place while
    # it is being built) belongs to the same output and the same first process.
    return re.compile(r"^\.+" + re.escape(target.name) + re.escape(_STAGING) + r"(\d+)-")


def clean_stale(target: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging directories of ``target`` left by processes that no longer run; returns them."""
    target = Path(target)
    parent, pattern = target.absolute().parent, _stale_pattern(target)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed  # an unreadable parent is reported by check_output / mkdir, not here
    with _active_lock:
        active = {p.name.lstrip(".") for p in _active if p.parent == parent}
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if any(entry.name.lstrip(".").startswith(name) for name in active):
            continue  # ours, in use now (or staged inside one of ours)
        pid = int(match.group(1))
        if pid == os.getpid() or not _alive(pid):  # our own pid and not in use: an earlier process's
            shutil.rmtree(parent / entry.name, ignore_errors=True)
            removed.append(parent / entry.name)
    return removed


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def _already_exists(target: Path) -> InputError:
    return InputError(f"{target}: already exists", hint="choose another output", remedy=Remedy.OVERWRITE)


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False, mode: int = 0o755) -> Iterator[Path]:
    """Yield a new, empty, private staging directory beside ``target``; on success it becomes ``target``
    (with ``mode``), replacing an existing one only with ``overwrite``; on any failure it is removed."""
    target = Path(target)
    parent = target.absolute().parent
    clean_stale(target)
    if _exists(target) and not overwrite:
        raise _already_exists(target)
    staging = parent / f"{staging_prefix(target)}{os.getpid()}-{secrets.token_hex(6)}"
    try:
        os.mkdir(staging, 0o700)
    except OSError as e:
        raise InputError(f"{target}: cannot write ({e.strerror} in {parent})", remedy=Remedy.OUTPUT) from e
    with _active_lock:
        _active.add(staging)
    try:
        yield staging
        os.chmod(staging, mode)
        publish(staging, target, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        with _active_lock:
            _active.discard(staging)


def publish(staging: Path, target: Path, overwrite: bool) -> None:
    """Rename the finished ``staging`` directory to ``target``.

    An existing target is moved aside first (under a staging name, so a kill between the two renames leaves
    nothing that the next run does not clean) and removed after; put back if the second rename fails."""
    try:
        if not _exists(target):
            os.rename(staging, target)
            return
        if not overwrite:
            raise _already_exists(target)
        old = staging.with_name(staging.name + "-old")
        os.rename(target, old)
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(old, target)  # put the previous output back
            raise
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    except OSError as e:
        raise InputError(f"{target}: cannot put the output in place ({e.strerror or e})", remedy=Remedy.OUTPUT) from e


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(target: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]] = (),
                 overwrite: bool = False, kind: Literal["directory", "file"] = "directory") -> None:
    """Refuse, before any work, an output that cannot be written or would harm an input.

    The parent must be a writable directory; the target must not be under /proc, /sys or /dev, nor be,
    contain or lie inside any of ``inputs`` (compared after resolving links); an existing target needs
    ``overwrite`` and must be of the same kind (a file output never replaces a directory, FIFO or device).
    """
    target = Path(target)
    absolute = Path(os.path.abspath(target))
    resolved = target.resolve()
    for root in FORBIDDEN_ROOTS:
        if _under(absolute, root) or _under(resolved, root):
            raise InputError(f"{target}: is under {root}, a kernel file system, not a place for an output",
                             remedy=Remedy.OUTPUT)
    parent = absolute.parent
    try:
        pst = os.stat(parent)
    except OSError as e:
        why = "no such directory" if e.errno == errno.ENOENT else ("not a directory" if e.errno == errno.ENOTDIR
                                                                    else e.strerror)
        raise InputError(f"{target}: cannot write ({parent}: {why})", remedy=Remedy.OUTPUT) from e
    if not stat.S_ISDIR(pst.st_mode):
        raise InputError(f"{target}: cannot write ({parent}: not a directory)", remedy=Remedy.OUTPUT)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{target}: cannot write ({parent}: not writable)", remedy=Remedy.OUTPUT)
    for given in inputs:
        source = Path(given).resolve()
        if resolved == source:
            what = "is also an input of this command"
        elif source in resolved.parents:
            what = f"is inside the input {given}"
        elif resolved in source.parents:
            what = f"contains the input {given}"
        else:
            continue
        raise InputError(f"{target}: {what}; writing it would destroy what is being read", remedy=Remedy.OUTPUT)
    if not _exists(target):
        return
    st = os.lstat(target)
    if kind == "file" and stat.S_ISDIR(st.st_mode):
        raise InputError(f"{target}: is a directory, not a file to write", remedy=Remedy.OUTPUT)
    if kind == "file" and not stat.S_ISREG(st.st_mode):
        raise InputError(f"{target}: exists and is not a regular file; it is never written through",
                         remedy=Remedy.OUTPUT)
    if kind == "directory" and (stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode)):
        raise InputError(f"{target}: exists and is not a directory", remedy=Remedy.OUTPUT)
    if not overwrite:
        raise _already_exists(target)


def private_file(path: Path, what: str) -> None:
    """Make sure ``path`` is a regular file only its owner can read: refuse a link or a non-file, create a missing
    one with mode 0600 (never through a link), whatever the umask. ``what`` names it in errors ("the audit log")."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            private_file(path, what)  # made by another process meanwhile: check what it is
            return
        except FileNotFoundError:
            raise InputError(f"{path}: the directory of {what} does not exist", hint="create the directory first",
                             remedy=Remedy.OUTPUT) from None
        except OSError as e:
            raise InputError(f"{path}: cannot create {what}: {e.strerror}", remedy=Remedy.OUTPUT) from None
        try:
            os.fchmod(fd, 0o600)  # exactly 0600: a key store and an audit log name keys and clients
        finally:
            os.close(fd)
        return
    except OSError as e:
        raise InputError(f"{path}: cannot read {what}: {e.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{path}: {what} is a symbolic link", hint="give the path of the file itself, a regular file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {what} is not a regular file", hint="give the path of a regular file")

