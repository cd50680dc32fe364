"""Helpers for the server tests (a plain module: test files import it, not conftest): starting a real
``onnxguard serve`` process on 127.0.0.1 and waiting until it is ready."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

import cli_runner

ONNXGUARD = Path(sys.executable).parent / "onnxguard"
# How long a server may take to open, check and self-test its bundles before the test gives up.
START_TIMEOUT = 120


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[str]
    keys: dict[str, str]  # key name -> secret
    keys_db: Path
    audit_db: Path
    bundles: dict[str, Path]
    public_key: Path
    log: Path

    def headers(self, key: str = "full") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], port: int, log: Path, scheme: str = "http",
          verify: ssl.SSLContext | bool = True) -> subprocess.Popen[str]:
    """``onnxguard serve ARGS`` on 127.0.0.1:PORT, waited for until ready (or its exit)."""
    with open(log, "w") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(ONNXGUARD), "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, text=True, env=cli_runner.environment())
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{scheme}://127.0.0.1:{port}/v2/health/ready", timeout=1, verify=verify).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server was not ready in {START_TIMEOUT} s:\n{log.read_text()}")


def make_keys(db: Path) -> dict[str, str]:
    from onnxguard.serve.apikeys import KeyStore

    with KeyStore(db) as store:
        made = {
            "full": store.create("full")[0],
            "label": store.create("label", output="label")[0],
            "top2": store.create("top2", output="topk:2")[0],
            "text-only": store.create("text-only", models=["text"])[0],
            "slow": store.create("slow", rate="3/minute")[0],
            "budget": store.create("budget", budget=5)[0],
            "padded": store.create("padded", deadline_ms=300)[0],
        }
    return made


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as cert.pem and key.pem in ``tmp_path``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp_path / "cert.pem", tmp_path / "key.pem"


def serve_fails(tmp_path: Path, *args: object, fragment: str) -> str:
    """``onnxguard serve ARGS`` (key store and audit log in ``tmp_path``) refuses to start: exit 2, one last line
    ``onnxguard: error: ...`` containing ``fragment``, nothing listening. That line."""
    port = free_port()
    r = subprocess.run([str(ONNXGUARD), "serve", *map(str, args), "--keys", str(tmp_path / "k.db"),
                        "--audit", str(tmp_path / "a.db"), "--port", str(port)], capture_output=True, text=True,
                       timeout=120)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and lines and lines[-1].startswith("onnxguard: error: "), r.stderr
    assert fragment in lines[-1], lines[-1]
    assert not listening(port)
    return lines[-1]
