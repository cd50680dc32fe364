"""build records a text model's bucket plan and, without --texts, judges it on the built-in sentences;
runtime.load(bundle, policy).run(...) runs it through the door,
length-aware, with the plain padded run's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxguard import runtime
from onnxguard.errors import InputError
from onnxguard.trust import TrustFailed, TrustPolicy, UnsafeUnsigned


@pytest.fixture(scope="module")
def text_bundle(cli, tiny_text_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lengths") / "b"
    r = cli("build", tiny_text_dir, "-o", out, "--optimize", "none")
    assert r.code == 0, r
    return out


@pytest.mark.slow
def test_a_text_build_records_the_bucket_plan(text_bundle):
    m = json.loads((text_bundle / "manifest.json").read_text())
    plan = m["lengths"]
    assert plan["mask"] == "attention_mask" and plan["max_buckets"] >= 2
    assert plan["shift_free"] is False  # DistilBERT's positions are absolute: measured, not assumed
    assert set(plan["cost"]) == {"overhead_ms", "token_ms", "token2_ms"} and plan["cost"]["overhead_ms"] >= 0
    assert len(plan["measured"]["points"]) >= 4 and plan["measured"]["threads"] >= 1


@pytest.mark.slow
def test_a_text_build_without_texts_judges_on_the_builtin_sentences(text_bundle):
    from onnxguard.bundle.golden import builtin_texts

    texts = builtin_texts()
    assert len(texts) >= 200 and any("é" in t for t in texts) and any("ß" in t or "ü" in t for t in texts)
    m = json.loads((text_bundle / "manifest.json").read_text())
    assert m["golden"]["origin"] == "builtin"
    assert m["golden"]["items"] > 2 * len(texts)  # each sentence padded right and left, then the edge cases


@pytest.mark.slow
def test_load_runs_length_aware_with_the_padded_run_outputs(text_bundle):
    model = runtime.load(text_bundle, TrustPolicy(UnsafeUnsigned()))
    assert model.lengths.plan.cost.token_ms > 0 or model.lengths.plan.cost.token2_ms > 0
    golden = model.opened.golden()
    for batch in golden.inputs:  # right- and left-padded batches, one token, the longest row
        out, plain = model.run(batch), model.plain(batch)
        assert out.keys() == {"logits"}
        np.testing.assert_allclose(out["logits"], plain["logits"], rtol=0, atol=1e-5)


@pytest.mark.slow
def test_load_goes_through_the_door(text_bundle, tmp_path):
    with pytest.raises(TrustFailed):  # unsigned, and the policy names no waiver: refused
        runtime.load(text_bundle, TrustPolicy(None))
    with pytest.raises(InputError, match="TrustPolicy"):
        runtime.load(text_bundle)


@pytest.mark.slow
def test_bench_reports_plain_and_length_aware(cli, text_bundle):
    r = cli("bench", text_bundle, "--allow-unsigned", "--batch-sizes", "8", "--runs", "3", "--warmup", "1",
            "--no-memory", "--json")
    assert r.code == 0, r
    names = [t["variant"] for t in json.loads(r.out)["timings"]]
    assert len(names) == 2 and names[1] == names[0] + " length-aware"
