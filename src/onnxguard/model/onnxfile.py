"""Reading and writing ONNX files, with errors a user can act on.

Reading never follows external-data references: ``load`` parses the protobuf only, so a hostile
``location`` cannot make onnxguard open a file outside the model's directory (CVE-2024-27318,
CVE-2025-51480 and the 2026 external-data advisories). Loading weights is the runtime's job, after a scan.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxguard import staging
from onnxguard.bundle import files
from onnxguard.errors import InputError, ModelError, Remedy

# Protobuf cannot serialise a message of 2 GiB or more; larger models must use external data.
PROTOBUF_LIMIT = 2**31 - 1
# A single-file ONNX model is one protobuf message, which protobuf caps at 2 GiB: a bigger file cannot be a
# model we can parse, so it is refused from its size alone, before a single byte is read or allocated
# (`truncate -s 3G m.onnx` must not cost 3 GiB of memory to reject).
MAX_MODEL_BYTES = PROTOBUF_LIMIT

@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; a dim is an int, a symbol, or None."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_MODEL_BYTES, what: str = "an .onnx file") -> bytes:
    """The bytes of the regular file ``path``, read once, refused before reading when over ``max_bytes``.

    Read through ``bundle.files.read_regular``, the one reader of untrusted files: never blocks and never follows
    a link, and ``fstat`` of the open file decides, so what was checked is what is read. A FIFO, directory,
    device, socket or symlink is an ``InputError`` saying what it is; "no such file" means exactly that; every
    error names the file and, in its hint, ``what`` was expected.
    """
    too_large = ("a model over protobuf's 2 GiB limit keeps its weights in external data"
                 if max_bytes == MAX_MODEL_BYTES else None)
    return files.read_regular(path, max_bytes, what=what, too_large=too_large).data


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse an ONNX file without loading external data. Raises ``InputError`` or ``ModelError`` naming the file."""
    return parse(read_file(path), name=str(path))


def parse(data: bytes, name: str) -> onnx.ModelProto:
    """Parse serialised ONNX bytes (for example a model decrypted in memory); ``name`` is the file they came
    from, which every error names."""
    if not data:
        raise ModelError(f"{name}: empty file, not an ONNX model")
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except DecodeError as e:
        raise ModelError(f"{name}: not a valid ONNX file (protobuf decode failed: {e})",
                         hint="re-export the model") from e
    if not model.HasField("graph") or model.ir_version == 0:
        raise ModelError(f"{name}: not an ONNX model (no graph or IR version)", hint="check the file is a .onnx export")
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike[str]) -> int:
    """Write ``model`` to ``path`` as a single file, all at once, and return its size in bytes.

    The bytes go to a new file beside ``path`` that is renamed over it when complete: a reader never sees half
    a model, and an existing link at ``path`` is replaced, never written through."""
    p = Path(path)
    data = model.SerializeToString()
    if len(data) > PROTOBUF_LIMIT:
        raise ModelError(f"{p}: model is {len(data)} bytes, over protobuf's 2 GiB limit",
                         hint="external data is not supported yet")
    tmp = p.with_name(f".{p.name}.staging-{os.getpid()}-{secrets.token_hex(6)}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"{p}: cannot write ({e.strerror})", remedy=Remedy.OUTPUT) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(data)


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail early, before a long export, when ``path`` cannot be written as a file (``staging.check_output``)."""
    staging.check_output(path, kind="file", overwrite=True)


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
    """The graph outputs."""
    return [_spec(v) for v in model.graph.output]
