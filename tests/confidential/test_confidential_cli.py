"""The confidential verbs' refusals before any network: one line on stderr, exit 2; and no framework imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from onnxguard.confidential.platform.simulation import generate_key


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    return generate_key(tmp_path_factory.mktemp("platform") / "keys")


def test_predict_refuses_a_policy_that_would_pass_anything(cli, expect_err, tmp_path, platform):
    rows = tmp_path / "rows.json"
    rows.write_text("[[0.0]]")
    base = ["predict", "http://127.0.0.1:9", rows, "--model", "digits", "--accept-platform", "simulation",
            "--platform-key", platform.public_key]
    expect_err(cli(*base, "--expect-digest", "ab" * 32), 2, "no code measurement")
    expect_err(cli(*base, "--expect-code", "local"), 2, "neither a bundle digest nor a trusted signer")
    expect_err(cli(*base, "--expect-code", "local", "--expect-digest", "xyz"), 2, "not a sha256")
    expect_err(cli(*base, "--expect-code", "local", "--expect-digest", "ab" * 32, "--accept-platform", "sgx"), 2,
               "unknown platform")
    expect_err(cli(*base, "--expect-code", "local", "--expect-digest", "ab" * 32, "--suite", "aes"), 2,
               "unknown HPKE suite")
    odd = tmp_path / "rows.csv"
    odd.write_text("1,2")
    expect_err(cli(*base[:2], odd, *base[3:], "--expect-code", "local", "--expect-digest", "ab" * 32), 2,
               "rows.csv", ".npz")
    # a valid policy and nobody listening: the attestation cannot be fetched, nothing is sent
    expect_err(cli(*base, "--expect-code", "local", "--expect-digest", "ab" * 32), 2, "cannot reach the server")


def test_keybroker_refuses_a_bad_policy_or_identity(cli, expect_err, tmp_path, platform):
    policy = tmp_path / "policy.toml"
    policy.write_text('platforms = ["simulation"]\ncode_measurements = ["local"]\n')
    identity = tmp_path / "identity.txt"
    identity.write_text("AGE-SECRET-KEY-1 not really\n")
    expect_err(cli("keybroker", "--identity", identity, "--policy", policy), 2, "policy.toml",
               "neither a bundle digest nor a trusted signer")
    policy.write_text(f'platforms = ["simulation"]\ncode_measurements = ["local"]\nbundle_digests = ["{"ab" * 32}"]\n'
                      f'platform_keys = ["{platform.public_key}"]\n')
    expect_err(cli("keybroker", "--identity", identity, "--policy", policy), 2, "not a valid age identity")
    policy.write_text("platforms = [")
    expect_err(cli("keybroker", "--identity", identity, "--policy", policy), 2, "not a valid TOML file")


def test_keygen_platform_never_overwrites(cli, expect_err, tmp_path):
    r = cli("keygen", "--platform", "-o", tmp_path / "k", "--json")
    assert r.code == 0, str(r)
    made = json.loads(r.out)
    assert made["fingerprint"].startswith("sha256:")
    assert (tmp_path / "k" / "platform-key.pem").stat().st_mode & 0o77 == 0
    expect_err(cli("keygen", "--platform", "-o", tmp_path / "k"), 2, "already exists")


def test_the_client_and_the_confidential_server_import_no_framework():
    code = ("import sys, onnxguard.client, onnxguard.serve.confidential, onnxguard.confidential.keybroker; "
            "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'skl2onnx', 'matplotlib') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_confidential_needs_a_platform_key_and_takes_no_identity_with_a_broker(cli, expect_err, tmp_path,
                                                                                     platform):
    base = ["serve", tmp_path / "bundle", "--keys", tmp_path / "keys.db"]
    expect_err(cli(*base, "--confidential"), 2, "platform key")
    expect_err(cli(*base, "--key-broker", "http://127.0.0.1:9", "--platform-key", platform.private_key,
                   "--identity", tmp_path / "id.txt"), 2, "from the broker")
