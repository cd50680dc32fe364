"""``classify`` (what ``:predict`` answers a classifier) against a numpy reference: the plain Python path for small
score arrays and the numpy one for large ones give the same labels, scores and top-k."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from onnxguard.accuracy.parity import SCORES
from onnxguard.serve import models


def reference(scores: np.ndarray, k: int) -> list[tuple[int, list[float], list[int]]]:
    x = scores.reshape(len(scores), -1).astype(np.float64)
    if not ((x >= 0).all() and np.allclose(x.sum(-1), 1.0, atol=1e-3)):
        x = np.exp(x - x.max(-1, keepdims=True))
        x /= x.sum(-1, keepdims=True)
    return [(int(r.argmax()), r.tolist(), np.argsort(-r, kind="stable")[:k].tolist()) for r in x]


@pytest.mark.parametrize("shape", [(1, 2), (3, 5), (2, 1, 4), (4, 100), (32, 1000)])
@pytest.mark.parametrize("kind", ["logits", "probabilities", "ties"])
def test_labels_scores_and_top_k_match_numpy(shape, kind):
    rng = np.random.default_rng(0)
    scores = (rng.normal(0, 3, shape) * (kind != "ties")).astype(np.float32)
    if kind == "probabilities":
        scores = rng.dirichlet(np.ones(int(np.prod(shape[1:]))), shape[0]).reshape(shape).astype(np.float32)
    n = int(np.prod(shape[1:]))
    model = SimpleNamespace(name="m", roles={"y": SCORES}, labels=tuple(f"c{i}" for i in range(n)))
    full = models.classify(model, {"y": scores}, "full")
    top = models.classify(model, {"y": scores}, "topk:3")
    for (best, probs, order), f, t in zip(reference(scores, 3), full, top, strict=True):
        assert f["label"] == t["label"] == f"c{best}"
        assert f["score"] == pytest.approx(probs[best], abs=1e-9)
        assert list(f["scores"].values()) == pytest.approx(probs, abs=1e-9)
        assert [p["label"] for p in t["top"]] == [f"c{i}" for i in order]
        assert [p["score"] for p in t["top"]] == pytest.approx([probs[i] for i in order], abs=1e-9)
