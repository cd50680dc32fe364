"""The Open Inference Protocol (KServe v2 / Triton) over HTTP: requests in, responses out, JSON and binary.

``decode_request(body, header_length, ...)`` turns an infer request into named numpy arrays; ``encode_response``
turns outputs into a response body. Both handle the binary tensor data extension, which Triton's and KServe's
clients use: the request starts with ``Inference-Header-Content-Length`` bytes of JSON, and every input whose
``parameters.binary_data_size`` is set has its raw little-endian bytes after it, in order; the response does the
same for outputs asked for with ``binary_data`` (or ``binary_data_output`` for all). ``BYTES`` elements are
each a 4-byte little-endian length followed by the bytes.

Nothing here loops over elements in Python for numeric tensors: JSON ``data`` goes through one ``np.asarray``
and binary data through ``np.frombuffer``. Every malformed request is a ``ProtocolError`` (a 400 naming what is
wrong), never an exception of another kind.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from onnxguard.errors import InputError

HEADER_LENGTH = "inference-header-content-length"

# Open Inference Protocol datatypes and their numpy types (BYTES: numpy object arrays of bytes).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32), "UINT64": np.dtype(np.uint64), "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16), "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16), "FP32": np.dtype(np.float32), "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
# numpy dtype names (as the manifest and onnxfile.dtype_name write them) -> protocol datatypes.
FROM_NUMPY = {dt.name: name for name, dt in DATATYPES.items() if name != "BYTES"} | {"object": "BYTES", "str": "BYTES"}

# A request whose JSON nests deeper than this is refused before it is turned into arrays: nesting is how a
# small body becomes a deep recursion (the JSON parser itself caps depth at 1024; this is far below it).
MAX_JSON_DEPTH = 64


class ProtocolError(InputError):
    """The request does not follow the Open Inference Protocol (HTTP 400)."""


@dataclass(frozen=True)
class InferRequest:
    """A decoded infer request: named input arrays and what outputs to send, and how."""

    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...] | None  # the outputs asked for; None: all
    binary_outputs: frozenset[str]  # outputs to send as binary data
    binary_all: bool
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


def datatype_of(dtype_name: str) -> str:
    """The protocol datatype of a numpy dtype name (``float32`` -> ``FP32``)."""
    try:
        return FROM_NUMPY[dtype_name]
    except KeyError:
        raise InputError(f"the model uses dtype {dtype_name!r}, which the protocol has no datatype for") from None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping as soon as it passes ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list) and v and isinstance(v[0], list | dict):
            stack.extend((x, d + 1) for x in v)
    return deepest


def parse_json(data: bytes, what: str = "the request") -> Any:
    """Parse JSON, refusing what is not JSON or nests deeper than ``MAX_JSON_DEPTH``."""
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise ProtocolError(f"{what} is not valid JSON ({e})") from None
    if _depth(parsed, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise ProtocolError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return parsed


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise ProtocolError(f"input {name!r}: 'shape' has a negative dimension")
    return tuple(value)


def _decode_bytes_tensor(raw: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):  # BYTES elements are length-prefixed: there is no way around one step per element
        if offset + 4 > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + n > len(raw):
            raise ProtocolError(f"input {name!r}: BYTES element {i} is longer than the data")
        out[i] = bytes(raw[offset:offset + n])
        offset += n
    if offset != len(raw):
        raise ProtocolError(f"input {name!r}: BYTES data has {len(raw) - offset} bytes after its elements")
    return out


def _from_binary(raw: memoryview, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        return _decode_bytes_tensor(raw, count, name).reshape(shape)
    dtype = DATATYPES[datatype].newbyteorder("<")
    if len(raw) != count * dtype.itemsize:
        raise ProtocolError(f"input {name!r}: {len(raw)} bytes of binary data for shape {list(shape)} of "
                            f"{datatype} ({count * dtype.itemsize} expected)")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _from_json(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    count = int(np.prod(shape, dtype=np.int64))
    if datatype == "BYTES":
        flat = np.asarray(data, dtype=object).reshape(-1)
        if not all(isinstance(x, str) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings in JSON")
        arr = np.array([x.encode() for x in flat], dtype=object)
    else:
        try:
            arr = np.asarray(data, dtype=DATATYPES[datatype]).reshape(-1)
        except (ValueError, TypeError, OverflowError) as e:
            why = str(e).splitlines()[0]
            raise ProtocolError(f"input {name!r}: data is not all {datatype} values ({why})") from None
    if arr.size != count:
        raise ProtocolError(f"input {name!r}: {arr.size} values for shape {list(shape)} ({count} expected)")
    return arr.reshape(shape)


def decode_request(body: bytes, header_length: int | None = None) -> InferRequest:
    """An infer request body (JSON, or JSON followed by binary data) as named arrays."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length} is outside the body ({len(body)} bytes)")
        head, tail = body[:header_length], memoryview(body)[header_length:]
    else:
        head, tail = body, memoryview(b"")
    req = parse_json(head)
    if not isinstance(req, dict):
        raise ProtocolError("the request must be a JSON object")
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for item in inputs:
        if not isinstance(item, dict):
            raise ProtocolError("each input must be a JSON object")
        name, datatype = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError("an input has no 'name'")
        if name in arrays:
            raise ProtocolError(f"input {name!r} is given twice")
        if datatype not in DATATYPES:
            raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
        shape = _shape(item.get("shape"), name)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(tail):
                raise ProtocolError(f"input {name!r}: binary_data_size {size!r} does not fit the binary data "
                                    f"({len(tail) - offset} bytes left)")
            arrays[name] = _from_binary(tail[offset:offset + size], datatype, shape, name)
            offset += size
        elif "data" in item:
            arrays[name] = _from_json(item["data"], datatype, shape, name)
        else:
            raise ProtocolError(f"input {name!r} has neither 'data' nor binary data")
    if offset != len(tail):
        raise ProtocolError(f"{len(tail) - offset} bytes of binary data are not claimed by any input")
    params = req.get("parameters") or {}
    outputs_req = req.get("outputs")
    names: tuple[str, ...] | None = None
    binary: set[str] = set()
    if outputs_req is not None:
        if not isinstance(outputs_req, list):
            raise ProtocolError("'outputs' must be a list")
        names_list = []
        for o in outputs_req:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise ProtocolError("each requested output must be an object with a 'name'")
            names_list.append(o["name"])
            if (o.get("parameters") or {}).get("binary_data"):
                binary.add(o["name"])
        names = tuple(names_list)
    binary_all = bool(isinstance(params, dict) and params.get("binary_data_output"))
    rid = req.get("id")
    return InferRequest(arrays, names, frozenset(binary), binary_all, rid if isinstance(rid, str) else None,
                        params if isinstance(params, dict) else {})


def _json_data(arr: np.ndarray, datatype: str) -> Any:
    if datatype == "BYTES":
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    if datatype == "FP16":
        return arr.astype(np.float32).reshape(-1)
    return arr.reshape(-1)


def _binary(arr: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=DATATYPES[datatype].newbyteorder("<")).tobytes()


def encode_response(model: str, version: str, outputs: Sequence[tuple[str, np.ndarray]], request: InferRequest,
                    parameters: Mapping[str, Any] | None = None) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length (for the response header)."""
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in outputs:
        datatype = "BYTES" if arr.dtype.kind in "OUS" else datatype_of(arr.dtype.name)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if request.binary_all or name in request.binary_outputs:
            blob = _binary(arr, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(arr, datatype)
        entries.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        doc["id"] = request.id
    if parameters:
        doc["parameters"] = dict(parameters)
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
