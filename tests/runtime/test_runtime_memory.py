"""Sessions do not keep the model bytes they were made from (ONNX Runtime's Python session would, for as long as
it lives), ``runtime.load`` keeps the opening without them, and ``memory.give_back`` trims the C heap."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import runtime
from onnxguard.errors import InputError
from onnxguard.runtime import memory
from onnxguard.trust import TrustPolicy, open_bundle
from onnxguard.trust.policy import UnsafeUnsigned
from references import reaches


def _add_bytes() -> bytes:
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(np.arange(1, 5, dtype=np.float32), "W")])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    return model.SerializeToString()


def test_a_session_does_not_keep_its_bytes():
    data = _add_bytes()
    sess = runtime.session(data)
    assert not reaches(sess, data)
    (y,) = sess.run(None, {"x": np.zeros((1, 4), np.float32)})
    np.testing.assert_array_equal(y, [[1, 2, 3, 4]])


def test_runtime_load_keeps_the_opening_without_the_model(sklearn_bundle):
    opened = open_bundle(sklearn_bundle, TrustPolicy(UnsafeUnsigned()))
    data = opened.model_bytes
    loaded = runtime.load(opened)
    assert reaches(opened, data) and not reaches(loaded, data)
    golden = loaded.opened.golden()
    out = loaded.run(golden.inputs[0])
    assert set(out) == set(loaded.outputs)
    with pytest.raises(InputError, match="let go once its session was made"):
        loaded.opened.model_bytes  # noqa: B018


def test_without_model_keeps_everything_else(sklearn_bundle):
    opened = open_bundle(sklearn_bundle, TrustPolicy(UnsafeUnsigned()))
    kept = opened.without_model()
    assert opened.model_name in opened.contents  # the original is frozen and whole
    assert set(kept.contents) == set(opened.contents) - {opened.model_name}
    assert all(kept.contents[rel] is opened.contents[rel] for rel in kept.contents)  # nothing re-read
    assert (kept.digest, kept.report, kept.manifest) == (opened.digest, opened.report, opened.manifest)
    assert kept.without_model() is kept
    with pytest.raises(InputError, match="not a file of the bundle"):
        kept.file("no-such-file")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_give_back_trims_on_glibc():
    assert memory.give_back() is True
