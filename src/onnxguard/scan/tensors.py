"""Sizes of ONNX element types and of the tensors a model stores, computed from declared dims only."""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto

# Element types packed below one byte; every other fixed-size type takes its numpy itemsize.
_PACKED_BITS: dict[int, int] = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                                TensorProto.INT2: 2, TensorProto.UINT2: 2, TensorProto.FLOAT6E2M3: 6,
                                TensorProto.FLOAT6E3M2: 6}
_TWO_VALUES = (TensorProto.COMPLEX64, TensorProto.COMPLEX128)  # stored as (real, imaginary) pairs


def element_bits(data_type: int) -> int | None:
    """Bits per element; ``None`` for strings and undefined or unknown types (no fixed size)."""
    if data_type in _PACKED_BITS:
        return _PACKED_BITS[data_type]
    if data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize * 8
    except (KeyError, TypeError, ValueError):
        return None


def nbytes(data_type: int, elements: int) -> int | None:
    """Bytes ``elements`` values of ``data_type`` take in ``raw_data`` or an external file."""
    bits = element_bits(data_type)
    return None if bits is None else math.ceil(elements * bits / 8)


def element_count(tensor: onnx.TensorProto) -> int | None:
    """Elements the tensor declares; ``None`` when a dim is negative."""
    if any(d < 0 for d in tensor.dims):
        return None
    return math.prod(tensor.dims)


def stored_count(tensor: onnx.TensorProto) -> tuple[str, int, tuple[int, ...]] | None:
    """For a tensor with inline data: the field holding it, the count found, and the counts its dims allow.

    ``None`` when the tensor keeps its data externally or the type has no fixed layout.
    """
    n = element_count(tensor)
    if n is None or tensor.data_location == TensorProto.EXTERNAL:
        return None
    if tensor.HasField("raw_data"):
        expected = nbytes(tensor.data_type, n)
        return None if expected is None else ("raw_data", len(tensor.raw_data), (expected,))
    if tensor.data_type == TensorProto.UNDEFINED:
        return None
    try:
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    except (KeyError, TypeError, ValueError):
        return None
    count = len(getattr(tensor, field))
    if tensor.data_type in _TWO_VALUES:
        return field, count, (2 * n,)
    if tensor.data_type in _PACKED_BITS:
        return field, count, (n, math.ceil(n * _PACKED_BITS[tensor.data_type] / 8))
    return field, count, (n,)
