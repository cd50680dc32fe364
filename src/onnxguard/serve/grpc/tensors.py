"""gRPC infer messages to and from the HTTP binary tensor extension (``protocol.py``), without per-element
Python loops for numeric tensors.

``request_body(ModelInferRequest)`` is the HTTP body the same request would have had: a JSON header naming each
input with its ``binary_data_size``, then the raw bytes, every output asked for as binary. Inputs given in the
typed ``contents`` fields become raw bytes through numpy when the field's type is the datatype's (``fp32_contents``
for FP32) and the count fits the shape, and JSON ``data`` otherwise (``int_contents`` for INT8), so that the app
converts, range-checks and names what is wrong exactly as for HTTP. Nothing is refused here: every malformed
request reaches the app, which answers it (and records it) as it answers HTTP. ``infer_response(answer)`` turns
the app's binary answer back into a ``ModelInferResponse`` whose outputs are ``raw_output_contents``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
import orjson

from onnxguard.serve import protocol
from onnxguard.serve.grpc import grpc_predict_v2_pb2 as pb
from onnxguard.serve.grpc.asgi import Answer

# The typed contents fields, by the datatypes they carry, and the numpy type of their elements.
FIELDS: dict[str, tuple[str, np.dtype[Any]]] = {
    "bool_contents": ("BOOL", np.dtype(np.bool_)),
    "int_contents": ("INT8 INT16 INT32", np.dtype(np.int32)),
    "int64_contents": ("INT64", np.dtype(np.int64)),
    "uint_contents": ("UINT8 UINT16 UINT32", np.dtype(np.uint32)),
    "uint64_contents": ("UINT64", np.dtype(np.uint64)),
    "fp32_contents": ("FP32", np.dtype(np.float32)),
    "fp64_contents": ("FP64", np.dtype(np.float64)),
    "bytes_contents": ("BYTES", np.dtype(object)),
}
FIELD_OF = {datatype: name for name, (datatypes, _) in FIELDS.items() for datatype in datatypes.split()}


class BadAnswer(Exception):  # noqa: N818 - the app's answer does not follow the protocol (a server fault)
    """The app answered 200 with a body that is not an infer response."""


def parameters_in(params: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """gRPC parameters as JSON values."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        which = p.WhichOneof("parameter_choice")
        if which is not None:
            out[key] = getattr(p, which)
    return out


def parameters_out(params: Mapping[str, Any], target: Any) -> None:
    """JSON values into a gRPC parameters map (values of other kinds as strings)."""
    for key, value in params.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = value if isinstance(value, str) else orjson.dumps(value).decode()


def _bytes_elements(values: Any) -> bytes:
    # BYTES elements are length-prefixed: one step per element, as in protocol.py
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _packed(contents: pb.InferTensorContents, field: str) -> np.ndarray | None:
    """A float field's elements read from its packed wire form, without a Python float per element; None unless
    it is the only field set (its tag, the payload's length as a varint, the little-endian payload)."""
    wire = contents.SerializeToString()
    if not wire or wire[0] != (contents.DESCRIPTOR.fields_by_name[field].number << 3) | 2:
        return None
    length, pos, shift = 0, 1, 0
    while pos < len(wire) and shift < 64:
        byte = wire[pos]
        length |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            break
    dtype = FIELDS[field][1].newbyteorder("<")
    if pos + length != len(wire) or length % dtype.itemsize:
        return None
    return np.frombuffer(wire, dtype=dtype, offset=pos)


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> bytes | Any:
    """An input's typed contents: raw bytes when its field holds the datatype's elements, else JSON ``data``."""
    contents = tensor.contents
    field = FIELD_OF.get(tensor.datatype)
    if field is None or not len(getattr(contents, field)):  # the datatype's field is empty: whichever has values
        field = next((name for name in FIELDS if len(getattr(contents, name))), field)
    if field is None:
        return []
    values = getattr(contents, field)
    if field == "bytes_contents":
        if tensor.datatype == "BYTES":
            return _bytes_elements(values)
        return [v.decode("utf-8", "replace") for v in values]  # the app refuses them as not numbers
    arr = _packed(contents, field) if field in ("fp32_contents", "fp64_contents") else None
    if arr is None:
        arr = np.asarray(values, dtype=FIELDS[field][1])
    count = int(np.prod(tensor.shape, dtype=np.int64)) if all(d >= 0 for d in tensor.shape) else -1
    if protocol.DATATYPES.get(tensor.datatype) == arr.dtype and arr.size == count:
        return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
    return arr


def request_body(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The binary-extension HTTP body of an infer request and the length of its JSON header."""
    raw = request.raw_input_contents
    inputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if i < len(raw):
            blob: bytes | Any = raw[i]
        elif tensor.HasField("contents"):
            blob = _typed(tensor)
        else:
            blob = None  # neither: the app says so
        if isinstance(blob, bytes):
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif blob is not None:
            entry["data"] = blob
        inputs.append(entry)
    blobs.extend(raw[len(request.inputs):])  # raw contents with no input: the app refuses them as unclaimed
    doc: dict[str, Any] = {"inputs": inputs,
                           "parameters": {**parameters_in(request.parameters), "binary_data_output": True}}
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs]
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([head, *blobs]), len(head)


def _raw(entry: Mapping[str, Any]) -> bytes:
    """An output the app sent as JSON ``data`` (it sends binary when asked; this is the fallback) as raw bytes."""
    datatype, data = entry.get("datatype"), entry.get("data", [])
    if datatype == "BYTES":
        return _bytes_elements([str(x).encode() for x in data])
    dtype = protocol.DATATYPES.get(str(datatype))
    if dtype is None:
        raise BadAnswer(f"output {entry.get('name')!r} has datatype {datatype!r}")
    return np.asarray(data, dtype=dtype.newbyteorder("<")).tobytes()


def infer_response(answer: Answer) -> pb.ModelInferResponse:
    """The app's 200 answer to an infer request (binary extension) as a ``ModelInferResponse``."""
    body = answer.body
    try:
        length = int(answer.headers.get(protocol.HEADER_LENGTH, len(body)))
        doc = orjson.loads(body[:length])
        outputs = doc["outputs"]
    except (ValueError, KeyError, TypeError) as e:
        raise BadAnswer(f"the infer answer cannot be read ({e})") from None
    tail = memoryview(body)[length:]
    response = pb.ModelInferResponse(model_name=str(doc.get("model_name", "")),
                                     model_version=str(doc.get("model_version", "")), id=str(doc.get("id", "")))
    parameters_out(doc.get("parameters") or {}, response.parameters)
    offset = 0
    for entry in outputs:
        response.outputs.add(name=entry["name"], datatype=entry["datatype"], shape=entry["shape"])
        size = (entry.get("parameters") or {}).get("binary_data_size")
        if size is None:
            response.raw_output_contents.append(_raw(entry))
        else:
            if offset + size > len(tail):
                raise BadAnswer(f"output {entry['name']!r} claims more binary data than the answer has")
            response.raw_output_contents.append(tail[offset:offset + size].tobytes())
            offset += size
    return response
