"""A text model's cost of a run (by rows and width) is measured at load for each session, for the batcher's
grouping by length; other models have none."""

from __future__ import annotations

from onnxguard.serve import models
from onnxguard.trust import TrustPolicy, open_bundle
from onnxguard.trust.policy import UnsafeUnsigned


def test_a_text_model_gets_a_measured_cost_for_each_session(served_bundles):
    served = models.load(open_bundle(served_bundles["text"], TrustPolicy(UnsafeUnsigned())), lanes=2)
    for cost in (served.cost, served.lane_cost):
        assert cost is not None
        assert cost.overhead_ms >= 0 and cost.token_ms + cost.token2_ms > 0
        assert cost(4, 32) > cost(1, 32) > cost(1, 4)


def test_a_table_model_has_none(served_bundles):
    served = models.load(open_bundle(served_bundles["digits"], TrustPolicy(UnsafeUnsigned())), lanes=2)
    assert served.cost is None and served.lane_cost is None
