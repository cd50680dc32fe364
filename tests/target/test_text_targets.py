"""A random-weight DistilBERT through every target: ORT format for mobile and edge, and the browser."""

from __future__ import annotations

import json

from onnxguard.target.web import browser


def test_distilbert_through_every_target(distilbert_bundle, cli, tmp_path, chromium):
    for kind in ("mobile", "edge", "web"):
        r = cli("target", "--allow-unsigned", distilbert_bundle, "--to", kind, "-o", tmp_path / kind)
        assert r.code == 0, r
    ops = json.loads((tmp_path / "mobile" / "manifest.json").read_text())["operators"]
    assert "ai.onnx" in ops
    page = browser.run_page(tmp_path / "web")
    assert page["passed"] and page["metrics"]["top1"] == 1
    assert "Tokenization happens outside this page" in page["text"] and "Try one" not in page["text"]
    assert "\tLABEL_" in page["text"]  # predictions by the bundle's label names
    r = cli("consistency", "--allow-unsigned", distilbert_bundle, tmp_path / "mobile", tmp_path / "edge",
            tmp_path / "web", "--json")
    assert r.code == 0, r
    targets = json.loads(r.out)["targets"]
    assert len(targets) == 6 and all(t["passed"] and t["kind"] == "fp32" and t["top1"] == 1.0 for t in targets)
    assert max(t["max_abs"] for t in targets) < 1e-4
    fused = json.loads((tmp_path / "web" / "manifest.json").read_text())["operators"]
    assert "com.microsoft" in fused  # the transformer fusions run in the browser's WASM build too
