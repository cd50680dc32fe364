"""Reading and writing ONNX files, with errors a user can act on.

Reading never follows external-data references: ``load`` parses the protobuf only, so a hostile
``location`` cannot make onnxguard open a file outside the model's directory (CVE-2024-27318,
CVE-2025-51480 and the 2026 external-data advisories). Loading weights is the runtime's job, after a scan.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxguard.errors import InputError, ModelError

# Protobuf cannot serialise a message of 2 GiB or more; larger models must use external data.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; a dim is an int, a symbol, or None."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse an ONNX file without loading external data. Raises ``ModelError`` naming the file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an .onnx file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from e
    return parse(data, name=str(p))


def parse(data: bytes, name: str = "<bytes>") -> onnx.ModelProto:
    """Parse serialised ONNX bytes (for example a model decrypted in memory)."""
    if not data:
        raise ModelError(f"{name}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        raise ModelError(f"{name}: not a valid ONNX file (protobuf decode failed: {e}); re-export the model") from e
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{name}: not an ONNX model (no graph or IR version); check the file is a .onnx export")
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Write ``model`` to ``path`` as a single file and return its size in bytes."""
    p = Path(path)
    data = model.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise ModelError(f"{p}: model is {len(data)} bytes, over protobuf's 2 GiB limit; external data is not supported yet")
    try:
        p.write_bytes(data)
    except OSError as e:
        raise InputError(f"{p}: cannot write ({e.strerror}); choose a writable output path") from e
    return len(data)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early, before a long export, when ``path`` cannot be written as a file."""
    p = Path(path)
    parent = p.absolute().parent
    if p.is_dir():
        raise InputError(f"{p}: is a directory; give the path of the .onnx file to write")
    if not parent.is_dir():
        raise InputError(f"{p}: cannot write ({parent} is not a directory); choose a writable output path")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{p}: cannot write ({parent} is not writable); choose a writable output path")


def dtype_name(elem_type: int) -> str:
    """``onnx.TensorProto.FLOAT`` -> ``"float32"``; unknown types keep their ONNX name."""
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type"):
        return TensorSpec(value.name, value.type.WhichOneof("value") or "unknown", None)
    shape = None
    if t.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
            for d in t.shape.dim
        )
    return TensorSpec(value.name, dtype_name(t.elem_type), shape)


def inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph inputs a caller must feed (initializers listed as inputs are left out)."""
    init = {i.name for i in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in init]


def outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    return [_spec(v) for v in model.graph.output]
