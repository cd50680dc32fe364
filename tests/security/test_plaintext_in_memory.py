"""A sealed model loads into ONNX Runtime with no plaintext written anywhere on disk.

The needle: bytes of the plaintext ONNX that occur in no other file of the bundle, sealed or not (the
session's random metadata marker as protobuf encodes it), plus the plaintext's sha256. A child process loads the
sealed bundle and runs it, with its working directory, HOME and TMPDIR in a fresh directory and an audit hook
recording every Python-level open for writing, rename and copy.
Afterwards every file written since the child started, under the usual temporary places and the bundle, is
searched for the marker and the plaintext's sha256. The same harness pointed at ``unseal`` (which does write
plaintext, on purpose) must trip both detectors: that is what shows the check would catch a leak.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cli_runner import environment
from onnxguard import bundle, runtime
from onnxguard.trust import TrustPolicy, UnsafeUnsigned, open_bundle, sealing

CHILD = r"""
import json, os, sys
bundle_dir, identity, mode, work, log_path = sys.argv[1:6]
log = open(log_path, "w")  # opened before the hook: the only file this process may write
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
events = []

def hook(event, args):
    if event == "open" and not isinstance(args[0], int) and args[2] is not None and args[2] & WRITE:
        events.append(["open", str(args[0])])
    elif event in ("os.rename", "os.replace", "shutil.copyfile", "shutil.move", "os.link", "os.symlink",
                   "os.truncate", "tempfile.mkstemp", "tempfile.mkdtemp"):
        events.append([event, repr(args)])

sys.addaudithook(hook)
import numpy as np
from onnxguard import runtime
from onnxguard.trust import TrustPolicy, UnsafeUnsigned, open_bundle, sealing
if mode == "load":  # the bundle door (files, decryption, scan in memory), then a session from the bytes
    opened = open_bundle(bundle_dir, TrustPolicy(UnsafeUnsigned()), sealing.identities(identity))
    sess = runtime.session(opened.model_bytes)
    inp = sess.get_inputs()[0]
    outputs = sess.run(None, {inp.name: np.zeros((2, inp.shape[1]), np.float32)})
    assert len(outputs) == len(sess.get_outputs())
else:  # the positive control: unseal writes plaintext, on purpose
    sealing.unseal(bundle_dir, identity, os.path.join(work, "unsealed"))
json.dump(events, log)
log.close()
"""


def _files_since(roots: list[Path], since: float):
    seen = set()
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if p.is_file() and not p.is_symlink() and st.st_mtime >= since and p not in seen:
                    seen.add(p)
                    yield p


def _holding(paths, needles: list[bytes], sha: str) -> list[str]:
    hits = []
    for p in paths:
        h, tail, found = hashlib.sha256(), b"", False
        try:
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                    found = found or any(n in tail + chunk for n in needles)
                    tail = chunk[-256:]
        except OSError:
            continue
        if found or h.hexdigest() == sha:
            hits.append(str(p))
    return hits


def _needle(built, sealed: Path) -> bytes:
    """Bytes of the plaintext model found in no other file of the plain or the sealed bundle.

    The session's random marker with the protobuf bytes before it (key and length of the metadata entry): unique
    to this session's model, so a copy written by another test session can never be mistaken for a leak.
    """
    plain = (built.path / "model.onnx").read_bytes()
    at = plain.index(built.marker.encode())
    needle = plain[at - 10:at + len(built.marker)]
    others = [p.read_bytes() for d in (built.path, sealed) for p in d.iterdir() if p.name != "model.onnx"]
    assert not any(needle in o for o in others)  # the manifest holds the marker too, as JSON text, not like this
    return needle


def _run_child(mode: str, sealed: Path, identity: Path, tmp_path: Path) -> tuple[list, list[str]]:
    work = tmp_path / f"work-{mode}"
    for d in ("tmp", "home"):
        (work / d).mkdir(parents=True)
    log = tmp_path / f"audit-{mode}.json"
    listing = sorted((p.name, p.stat().st_mtime_ns) for p in sealed.iterdir())
    start = time.time()
    child_env = environment({"TMPDIR": str(work / "tmp"), "HOME": str(work / "home"), "PYTHONDONTWRITEBYTECODE": "1"})
    r = subprocess.run([sys.executable, "-c", CHILD, str(sealed), str(identity), mode, str(work), str(log)],
                       cwd=work, env=child_env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    events = [e for e in json.loads(log.read_text()) if e[0] != "open" or e[1] != str(log)]
    assert sorted((p.name, p.stat().st_mtime_ns) for p in sealed.iterdir()) == listing  # the bundle is untouched
    roots = [work, sealed, Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]
    return events, roots, start


def test_sealed_model_loads_without_writing_plaintext(built, sealed_copy, keyset, tmp_path):
    sha = hashlib.sha256((built.path / "model.onnx").read_bytes()).hexdigest()
    needle = _needle(built, sealed_copy)
    assert bundle.read(sealed_copy).sealed
    events, roots, start = _run_child("load", sealed_copy, keyset.age_identity, tmp_path)
    assert events == [], f"the load wrote or moved files: {events}"
    leaks = _holding(_files_since(roots, start), [needle], sha)
    assert leaks == [], f"plaintext found on disk: {leaks}"


def test_the_detectors_catch_a_plaintext_write(built, sealed_copy, keyset, tmp_path):
    """Positive control: the same harness around ``unseal`` (which writes plaintext) reports it."""
    events, roots, start = _run_child("unseal", sealed_copy, keyset.age_identity, tmp_path)
    assert any(e[0] == "open" and e[1].endswith("model.onnx") for e in events), events
    leaks = _holding(_files_since(roots, start), [_needle(built, sealed_copy)], "no sha: the needle alone must find it")
    assert any(leak.endswith("unsealed/model.onnx") for leak in leaks), leaks


def test_library_open_never_opens_a_file_for_writing(sealed_copy, keyset, monkeypatch):
    """In process too: with every write-mode open refused, the door and a session from its bytes still work."""
    import builtins
    import io


    real_open, real_os_open = builtins.open, os.open
    refused = []

    def no_write_open(file, mode="r", *a, **kw):
        if any(c in mode for c in "wax+"):
            refused.append(file)
            raise PermissionError(f"test: no writing allowed ({file})")
        return real_open(file, mode, *a, **kw)

    def no_write_os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refused.append(path)
            raise PermissionError(f"test: no writing allowed ({path})")
        return real_os_open(path, flags, *a, **kw)

    monkeypatch.setattr(builtins, "open", no_write_open)
    monkeypatch.setattr(io, "open", no_write_open)
    monkeypatch.setattr(os, "open", no_write_os_open)
    data = sealing.open_model(sealed_copy, keyset.age_identity)
    opened = open_bundle(sealed_copy, TrustPolicy(UnsafeUnsigned()), sealing.identities(keyset.age_identity))
    sess = runtime.session(opened.model_bytes)
    assert data == opened.model_bytes and sess.get_outputs() and refused == []
