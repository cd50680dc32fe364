"""Interop with the reference `age` command line (Debian package `age`): both directions."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from security_support import relist

from onnxguard import bundle
from onnxguard.trust import sealing

AGE = shutil.which("age")
pytestmark = pytest.mark.skipif(AGE is None, reason="the age command line is not installed (Debian package age)")


def age(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([AGE, *map(str, args)], capture_output=True, timeout=120, check=False, **kw)


def test_age_decrypts_what_onnxguard_sealed(built, sealed_copy, keyset, tmp_path):
    for rel in ("model.onnx", "golden.npz"):
        r = age("-d", "-i", keyset.age_identity, "-o", tmp_path / rel, sealed_copy / f"{rel}.age")
        assert r.returncode == 0, r.stderr
        assert (tmp_path / rel).read_bytes() == (built.path / rel).read_bytes()


def test_age_decrypts_with_an_ssh_key(built, bundle_copy, ssh_keys):
    sealing.seal(bundle_copy, [ssh_keys.ed25519_pub, ssh_keys.rsa_pub])
    for key in (ssh_keys.ed25519, ssh_keys.rsa):
        r = age("-d", "-i", key, bundle_copy / "model.onnx.age")
        assert r.returncode == 0 and r.stdout == (built.path / "model.onnx").read_bytes(), r.stderr


@pytest.mark.parametrize("armor", [False, True])
def test_onnxguard_opens_what_age_encrypted(built, sealed_copy, keyset, ssh_keys, tmp_path, armor):
    """`age -r age1... -o f.age f`, put into a sealed bundle (the manifest updated): onnxguard opens and unseals it."""
    plain = built.path / "model.onnx"
    r = age("-r", keyset.recipient, "-r", ssh_keys.ed25519_pub, *(["-a"] if armor else []),
            "-o", sealed_copy / "model.onnx.age", plain)
    assert r.returncode == 0, r.stderr
    relist(sealed_copy, "model.onnx.age")
    assert sealing.open_model(sealed_copy, keyset.age_identity) == plain.read_bytes()
    assert sealing.open_model(sealed_copy, ssh_keys.ed25519) == plain.read_bytes()
    out = sealing.unseal(sealed_copy, keyset.age_identity, tmp_path / "plain")
    assert (out.path / "model.onnx").read_bytes() == plain.read_bytes()
    assert bundle.read(out.path).manifest.model.sha256 == bundle.read(built.path).manifest.model.sha256


def test_onnxguard_reads_an_age_keygen_identity(sealed_copy, keyset, tmp_path):
    keygen = shutil.which("age-keygen")
    if keygen is None:
        pytest.skip("age-keygen is not installed")
    r = subprocess.run([keygen, "-o", tmp_path / "id.txt"], capture_output=True, text=True, check=True)
    recipient = r.stderr.strip().split()[-1]
    out = sealing.seal(sealing.unseal(sealed_copy, keyset.age_identity, tmp_path / "p").path, [recipient],
                       tmp_path / "s").bundle
    assert sealing.open_model(out, tmp_path / "id.txt")


# age asks for a passphrase on its terminal only: this driver runs it on a pseudo-terminal and answers. It runs
# in its own process, so the fork never happens inside the (multi-threaded) test process.
PTY_DRIVER = r"""
import os, pty, select, sys, time
passphrase, argv = sys.argv[1], sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen, answered, deadline = b"", False, time.monotonic() + 60
while time.monotonic() < deadline:
    if not select.select([fd], [], [], 0.5)[0]:
        continue
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    seen += chunk
    if not answered and b"assphrase" in seen:
        os.write(fd, passphrase.encode() + b"\n")
        answered = True
sys.stderr.write(seen.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def _age_with_passphrase(args: list[str], passphrase: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PTY_DRIVER, passphrase, AGE, *args], capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.mark.slow  # scrypt at rage's calibrated work factor: seconds per passphrase operation
@pytest.mark.skipif(sys.platform != "linux", reason="pseudo-terminal driving tested on Linux")
def test_age_opens_a_passphrase_sealed_bundle(built, bundle_copy, tmp_path):
    """The passphrase key file is an age passphrase-encrypted identity: `age -d -i` reads it after asking."""
    sealing.seal(bundle_copy, [], passphrase="open sesame")
    r = _age_with_passphrase(["-d", "-i", str(bundle_copy / sealing.KEY_FILE), "-o", str(tmp_path / "m.onnx"),
                              str(bundle_copy / "model.onnx.age")], "open sesame")
    assert r.returncode == 0 and "Enter passphrase" in r.stderr, r.stderr
    assert (tmp_path / "m.onnx").read_bytes() == (built.path / "model.onnx").read_bytes()
