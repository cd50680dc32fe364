"""The served model keeps the session, not the model's bytes: once the session is made from the bytes the door
hashed, nothing the server holds keeps them alive (for FP32 DistilBERT-base, 260 MB of RSS; see
docs/benchmarks.md E)."""

from __future__ import annotations

import pytest

from onnxguard.errors import InputError
from onnxguard.runtime.core import SPIN_STOP, SPINNING
from onnxguard.serve import models
from onnxguard.trust import TrustPolicy, open_bundle
from onnxguard.trust.policy import UnsafeUnsigned
from references import reaches


@pytest.mark.parametrize("lanes", [1, 2])
def test_served_model_lets_go_of_the_model_bytes(sklearn_bundle, lanes):
    opened = open_bundle(sklearn_bundle, TrustPolicy(UnsafeUnsigned()))
    data = opened.model_bytes
    assert reaches(opened, data)  # the check sees a holder
    served = models.load(opened, lanes=lanes)
    assert not reaches(served, data)
    assert served.self_check.startswith("golden set passed")  # the self-check ran on the session, before
    assert served.opened.digest and served.opened.golden().items  # the rest of the opening is still there
    with pytest.raises(InputError, match="let go once its session was made"):
        served.opened.model_bytes  # noqa: B018


def test_the_caller_keeps_its_own_opening_whole(sklearn_bundle):
    """``load`` does not change the opened bundle it was given (frozen; the caller may still use its bytes)."""
    opened = open_bundle(sklearn_bundle, TrustPolicy(UnsafeUnsigned()))
    models.load(opened)
    assert opened.model_bytes[:2] and "model.onnx" in opened.contents


def _entry(session, key: str) -> str | None:
    try:
        return session.get_session_options().get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime's answer for an entry that was never set
        return None


@pytest.mark.parametrize(("lanes", "spin", "stops"), [(1, True, None), (2, True, "1"), (2, False, None)])
def test_with_lanes_the_session_on_every_core_stops_spinning_after_each_run(sklearn_bundle, lanes, spin, stops):
    """Its spinning threads would hold the cores the lanes' batches need (serve.models, docs/benchmarks.md E)."""
    served = models.load(open_bundle(sklearn_bundle, TrustPolicy(UnsafeUnsigned())), lanes=lanes, spin=spin)
    assert _entry(served.session, SPIN_STOP) == stops
    assert _entry(served.session, SPINNING) == (None if spin else "0")
    if lanes > 1:
        assert _entry(served.lane_session, SPINNING) == "0", "one lane's threads never spin"
