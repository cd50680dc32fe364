"""The Open Inference Protocol codec and the signature checks, without a server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from onnxguard.serve import protocol, validation
from onnxguard.serve.protocol import ProtocolError
from onnxguard.serve.validation import InputSpec, Signature, ValidationError

SIG = Signature((InputSpec("input_ids", "INT64", ("batch", "sequence")),
                 InputSpec("attention_mask", "INT64", ("batch", "sequence"))), vocab_size=100, max_dim=16)


def _binary(inputs, outputs=None):
    entries, blobs = [], []
    for name, arr, datatype in inputs:
        blob = arr.astype(protocol.DATATYPES[datatype]).tobytes() if datatype != "BYTES" else b"".join(
            struct.pack("<I", len(x)) + x for x in arr.reshape(-1))
        entries.append({"name": name, "datatype": datatype, "shape": list(arr.shape),
                        "parameters": {"binary_data_size": len(blob)}})
        blobs.append(blob)
    head = json.dumps({"inputs": entries, **({"outputs": outputs} if outputs else {})}).encode()
    return head + b"".join(blobs), len(head)


def test_binary_and_json_decode_to_the_same_arrays():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    body, n = _binary([("x", x, "FP32"), ("s", np.array([b"ab", b"", b"\xff"], dtype=object), "BYTES")])
    req = protocol.decode_request(body, n)
    np.testing.assert_array_equal(req.inputs["x"], x)
    assert list(req.inputs["s"]) == [b"ab", b"", b"\xff"]
    nested = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3, 4], "data": x.tolist()}]})
    np.testing.assert_array_equal(protocol.decode_request(nested.encode()).inputs["x"], x)


def test_response_round_trips_through_the_binary_extension():
    req = protocol.decode_request(*_binary([("x", np.zeros((1, 2), np.float32), "FP32")],
                                           outputs=[{"name": "y", "parameters": {"binary_data": True}}]))
    y = np.array([[1.5, -2.0]], np.float32)
    body, n = protocol.encode_response("m", "1", [("y", y), ("z", np.array([7], np.int64))], req)
    head = json.loads(body[:n])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 8 and head["outputs"][1]["data"] == [7]
    np.testing.assert_array_equal(np.frombuffer(body[n:], "<f4").reshape(1, 2), y)


@pytest.mark.parametrize("body, n, fragment", [
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}}]}'
     + b"\0" * 4, 100, "does not fit the binary data"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}', None, "2 values"),
    (b'{"inputs": [{"name": "x", "datatype": "F32", "shape": [1], "data": [1]}]}', None, "datatype 'F32'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]},'
     b' {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', None, "given twice"),
    (b"[" * 100 + b"]" * 100, None, "nests deeper"),
    (b'{"inputs": []}', None, "non-empty"),
])
def test_malformed_requests_name_what_is_wrong(body, n, fragment):
    with pytest.raises(ProtocolError, match=fragment):
        protocol.decode_request(body, n)


def test_bytes_with_a_bad_length_prefix():
    x = np.array([b"abc"], dtype=object)
    body, n = _binary([("s", x, "BYTES")])
    with pytest.raises(ProtocolError, match="longer than the data"):
        protocol.decode_request(body[:n] + struct.pack("<I", 99) + b"abc", n)


def test_signature_checks():
    ok = {"input_ids": np.array([[1, 2, 3]]), "attention_mask": np.array([[1, 1, 0]])}
    assert validation.check(ok, SIG) == 1
    cases = [
        ({**ok, "input_ids": np.array([[1, 2, 300]])}, "token ids"),
        ({**ok, "attention_mask": np.array([[1, 2, 0]])}, "only 0 and 1"),
        ({**ok, "attention_mask": np.array([[1, -1, 0]])}, "only 0 and 1"),
        ({**ok, "attention_mask": np.array([[1, 1]])}, "'sequence'"),
        ({"input_ids": np.ones((1, 20), np.int64), "attention_mask": np.ones((1, 20), np.int64)}, "over the limit"),
        ({**ok, "input_ids": np.array([[1.0, 2.0, 3.0]])}, "datatype FP64"),
        ({"input_ids": ok["input_ids"]}, "missing"),
    ]
    for arrays, fragment in cases:
        with pytest.raises(ValidationError, match=fragment):
            validation.check(arrays, SIG)


def test_a_float_attention_mask_holds_only_zeros_and_ones():
    sig = Signature((InputSpec("attention_mask", "FP32", ("batch", "sequence")),))
    assert validation.check({"attention_mask": np.array([[1.0, 0.0]], np.float32)}, sig) == 1
    with pytest.raises(ValidationError, match="only 0 and 1"):
        validation.check({"attention_mask": np.array([[1.0, 0.5]], np.float32)}, sig)


def test_nonfinite_values_are_refused_unless_allowed():
    sig = Signature((InputSpec("x", "FP32", ("batch", 2)),))
    x = {"x": np.array([[np.inf, 0.0]], np.float32)}
    with pytest.raises(ValidationError, match="NaN or infinity"):
        validation.check(x, sig)
    assert validation.check(x, Signature(sig.inputs, allow_nonfinite=True)) == 1
