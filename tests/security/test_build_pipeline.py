"""build --recipient / --sign-key: scan, seal, then sign, published atomically; and a failing scan stops the build."""

from __future__ import annotations

import json
import subprocess

import pytest
from security_support import MODEL_SIGNING

from onnxguard import bundle, runtime
from onnxguard.trust import sealing


@pytest.fixture(scope="module")
def skops_model(tmp_path_factory):
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    path = tmp_path_factory.mktemp("pipeline-src") / "iris.skops"
    x, y = load_iris(return_X_y=True)
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path


def test_build_scans_seals_then_signs(cli, skops_model, keyset, tmp_path):
    out = tmp_path / "b"
    r = cli("build", skops_model, "-o", out, "--optimize", "none", "--recipient", keyset.recipient,
            "--sign-key", keyset.private_key)
    assert r.code == 0, r
    stages = [line.split("│")[1].strip() for line in r.out.splitlines() if line.startswith("│ ")]
    assert stages.index("scan") < stages.index("seal") < stages.index("sign") < stages.index("publish")
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz.age", "manifest.json", "model.onnx.age", "model.sig"]
    m = json.loads((out / bundle.MANIFEST).read_text())
    assert m["scan"]["counts"]["critical"] == 0 and m["scan"]["profile"] == "default"
    assert m["sealed"]["recipients"] == [keyset.recipient]
    # The reference verifier accepts the signature over the sealed files; onnxguard verify checks everything.
    ref = subprocess.run([str(MODEL_SIGNING), "verify", "key", "--signature", str(out / "model.sig"),
                          "--public_key", str(keyset.public_key), str(out)], capture_output=True, text=True)
    assert ref.returncode == 0, ref.stdout + ref.stderr
    v = cli("verify", out, "--public-key", keyset.public_key, "--golden", "--identity", keyset.age_identity)
    assert v.code == 0, v
    sess = runtime.session(sealing.open_model(bundle.read(out), keyset.age_identity))
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no staging directory left


def test_a_scan_finding_stops_the_build_and_leaves_nothing(cli, skops_model, tmp_path):
    policy = tmp_path / "policy.toml"
    policy.write_text('allowed_domains = ["", "ai.onnx"]\n')  # no ai.onnx.ml: the classifier's ops are refused
    out = tmp_path / "b"
    r = cli("build", skops_model, "-o", out, "--optimize", "none", "--policy", policy)
    assert r.code == 1, r
    assert r.err_lines[-1].startswith("onnxguard: error: scan: ") and "no bundle was written" in r.err_lines[-1], r
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.toml"]


def test_a_bad_recipient_fails_the_build_without_leaving_a_bundle(cli, skops_model, tmp_path):
    out = tmp_path / "b"
    r = cli("build", skops_model, "-o", out, "--optimize", "none", "--recipient", "age1notarecipient")
    assert r.code == 2, r
    assert "age1notarecipient" in r.err_lines[-1] and "Traceback" not in r.err
    assert list(tmp_path.iterdir()) == []
