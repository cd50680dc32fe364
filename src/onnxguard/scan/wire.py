"""How much memory parsing a file would take, measured on the protobuf wire format before parsing it.

Parsing is the one step every scan takes before any check runs, and its memory is not the file's size: every
message, string and repeated number in the file becomes an object in memory. A NodeProto of 14 bytes costs
about 350 bytes parsed, an empty message of 2 bytes about 200: a file of a few tens of MB made of tiny messages
parses into gigabytes (the kernel's OOM killer, not a finding). Tensor payloads (``raw_data``, packed floats)
cost about their own size and are bounded by ``max_file_bytes``; what has to be bounded is the rest.

:func:`overhead` walks the wire format with the schema of ``onnx.ModelProto`` (every message type it nests,
from the protobuf descriptors), counting messages, strings and repeated numbers, and stops as soon as the
estimate passes the budget. It skips over payloads without reading them and never recurses (an explicit
stack), so it is linear in the number of fields and bounded by the budget. A file at or under
``WALK_ABOVE_BYTES`` is not walked: however it is made, it cannot parse into more than the budget.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from google.protobuf.descriptor import Descriptor, FieldDescriptor

# Bytes one parsed object takes beyond its payload, measured on the installed protobuf (upb): an empty message
# ~200, a short string in a repeated field ~40, a repeated number 8 (16 while its array grows).
MESSAGE_BYTES = 200
STRING_BYTES = 40
NUMBER_BYTES = 16
# The worst expansion of the wire format: an empty message is 2 bytes on the wire and ~200 parsed.
WORST_RATIO = MESSAGE_BYTES // 2

# Kinds of field, per (message type, field number).
_MESSAGE, _STRING, _VARINT, _FIXED32, _FIXED64 = range(5)
_FIXED32_TYPES = (FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT)
_FIXED64_TYPES = (FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE)
_CHUNK = 1 << 24


class Malformed(Exception):
    """The bytes are not a well-formed protobuf (the parser will say why)."""


@functools.cache
def _fields(descriptor: Descriptor) -> dict[int, tuple[int, Descriptor | None]]:
    kinds: dict[int, tuple[int, Descriptor | None]] = {}
    for number, f in descriptor.fields_by_number.items():
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            kinds[number] = (_MESSAGE, f.message_type)
        elif f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            kinds[number] = (_STRING, None)
        elif f.type in _FIXED32_TYPES:
            kinds[number] = (_FIXED32, None)
        elif f.type in _FIXED64_TYPES:
            kinds[number] = (_FIXED64, None)
        else:
            kinds[number] = (_VARINT, None)
    return kinds


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise Malformed("varint too long")


def _count_varints(data: bytes, start: int, end: int) -> int:
    """Varints packed in ``data[start:end]``: the bytes without their continuation bit (counted in chunks)."""
    view = np.frombuffer(data, dtype=np.uint8)
    return sum(int(np.count_nonzero(view[p:min(p + _CHUNK, end)] < 0x80)) for p in range(start, end, _CHUNK))


def overhead(data: bytes, limit: int, max_fields: int) -> tuple[int, int]:
    """``(bytes, fields)``: what parsing ``data`` as an ``onnx.ModelProto`` would take beyond its payloads, and
    the fields walked, counted until either passes its limit (then returned at once). Raises :class:`Malformed`
    for bytes that are not a protobuf."""
    total = MESSAGE_BYTES
    fields_seen = 0
    stack: list[tuple[int, int, Descriptor]] = [(0, len(data), onnx.ModelProto.DESCRIPTOR)]
    try:
        while stack:
            pos, end, descriptor = stack.pop()
            fields = _fields(descriptor)
            while pos < end:
                fields_seen += 1
                key = data[pos]
                if key < 0x80:
                    pos += 1
                else:
                    key, pos = _varint(data, pos)
                number, wire = key >> 3, key & 7
                if wire == 2:
                    length = data[pos]
                    if length < 0x80:
                        pos += 1
                    else:
                        length, pos = _varint(data, pos)
                    stop = pos + length
                    if stop > end:
                        raise Malformed("a field runs past its message")
                    kind, sub = fields.get(number, (_STRING, None))  # an unknown field is kept as bytes
                    if kind == _MESSAGE and sub is not None:
                        total += MESSAGE_BYTES
                        if length:
                            stack.append((pos, stop, sub))
                    elif kind == _VARINT:
                        total += NUMBER_BYTES * _count_varints(data, pos, stop)
                    else:
                        total += STRING_BYTES  # strings, bytes, packed floats: about their own size beyond this
                    pos = stop
                elif wire == 0:
                    _, pos = _varint(data, pos)
                    total += NUMBER_BYTES
                elif wire == 1:
                    pos += 8
                    total += NUMBER_BYTES
                elif wire == 5:
                    pos += 4
                    total += NUMBER_BYTES
                else:
                    raise Malformed(f"wire type {wire}")
                if total > limit or fields_seen > max_fields:
                    return total, fields_seen
            if pos != end:
                raise Malformed("a field runs past its message")
    except IndexError:
        raise Malformed("truncated") from None
    return total, fields_seen
