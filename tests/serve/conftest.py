"""A real ``onnxguard serve`` process on 127.0.0.1, over two signed bundles (a scikit-learn digits classifier
and a tiny random-weight DistilBERT text classifier), with API keys of every kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_support import Server, free_port, make_keys, start


@pytest.fixture(scope="session")
def served_bundles(tmp_path_factory, sklearn_bundle, hf_model, texts_file) -> dict[str, Path]:
    """Two bundles signed by one key: digits (a table of 64 pixels) and text (DistilBERT, tokenized on the server)."""
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.convert import ConvertOptions
    from onnxguard.trust import keys, signing

    root = tmp_path_factory.mktemp("served")
    k = keys.generate(root / "keys")
    digits = root / "digits"
    shutil.copytree(sklearn_bundle, digits)
    options = BuildOptions(convert=ConvertOptions(max_length=64), texts=texts_file, optimize="none")
    text = build.build(str(hf_model("distilbert", "text-classification")), root / "text", options).bundle.path
    for b in (digits, text):
        signing.sign(b, k.private_key)
    return {"digits": digits, "text": text, "public_key": k.public_key, "private_key": k.private_key}


@pytest.fixture(scope="session")
def server(tmp_path_factory, served_bundles) -> Server:
    root = tmp_path_factory.mktemp("server")
    keys_db, audit_db = root / "keys.db", root / "audit.db"
    secrets = make_keys(keys_db)
    port = free_port()
    b = served_bundles
    log = root / "server.log"
    proc = start([f"digits={b['digits']}", f"text={b['text']}", "--public-key", str(b["public_key"]),
                  "--keys", str(keys_db), "--audit", str(audit_db)], port, log)
    s = Server(f"http://127.0.0.1:{port}", port, proc, secrets, keys_db, audit_db,
               {"digits": b["digits"], "text": b["text"]}, b["public_key"], log)
    yield s
    s.stop()


@pytest.fixture
def fresh_server(tmp_path, served_bundles):
    """``fresh_server(keys_db=None, audit_db=None)``: a server of its own (stopped after the test)."""
    started: list[Server] = []

    def make(keys_db: Path | None = None, audit_db: Path | None = None) -> Server:
        keys_db = keys_db or tmp_path / "keys.db"
        secrets = make_keys(keys_db) if not keys_db.exists() else {}
        audit_db = audit_db or tmp_path / "audit.db"
        port = free_port()
        log = tmp_path / f"server-{port}.log"
        b = served_bundles
        proc = start([f"digits={b['digits']}", "--public-key", str(b["public_key"]), "--keys", str(keys_db),
                      "--audit", str(audit_db)], port, log)
        s = Server(f"http://127.0.0.1:{port}", port, proc, secrets, keys_db, audit_db, {"digits": b["digits"]},
                   b["public_key"], log)
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(timeout=30)
