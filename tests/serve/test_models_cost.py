"""A text model's cost of a run (by rows and width) is measured at load for each session, for the batcher's
grouping by length; other models have none."""

from __future__ import annotations

from dataclasses import replace

import pytest

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


@pytest.mark.parametrize("fixed", [(1, "sequence"), ("batch", 64)])
def test_a_text_model_with_a_fixed_batch_or_sequence_axis_has_none(served_bundles, fixed):
    """Its runs cannot be cut to other widths or rows: not measured (the model would refuse the timing runs)."""
    served = models.load(open_bundle(served_bundles["text"], TrustPolicy(UnsafeUnsigned())))
    specs = tuple(replace(s, shape=fixed) if s.name == "attention_mask" else s for s in served.signature.inputs)
    served.signature = replace(served.signature, inputs=specs)

    def refuse(inputs):
        raise AssertionError("a fixed-shape model is not timed")

    assert models._cost(served, refuse) is None
    assert models._cost(replace(served, signature=replace(served.signature, inputs=tuple(
        replace(s, shape=("batch", "sequence")) if s.name == "attention_mask" else s for s in specs))),
        served.run) is not None
