"""Reading and writing ONNX files, with errors a user can act on.

Reading never follows external-data references: ``load`` parses the protobuf only, so a hostile
``location`` cannot make onnxguard open a file outside the model's directory (CVE-2024-27318,
CVE-2025-51480 and the 2026 external-data advisories). Loading weights is the runtime's job, after a scan.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from onnxguard import staging
from onnxguard.errors import InputError, ModelError, Remedy

# Protobuf cannot serialise a message of 2 GiB or more; larger models must use external data.
PROTOBUF_LIMIT = 2**31 - 1
# A single-file ONNX model is one protobuf message, which protobuf caps at 2 GiB: a bigger file cannot be a
# model we can parse, so it is refused from its size alone, before a single byte is read or allocated
# (`truncate -s 3G m.onnx` must not cost 3 GiB of memory to reject).
MAX_MODEL_BYTES = PROTOBUF_LIMIT

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink"))


@dataclass(frozen=True)
class TensorSpec:
    """Name, element type and shape of a graph input or output; a dim is an int, a symbol, or None."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...] | None

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def read_file(path: str | os.PathLike[str], max_bytes: int = MAX_MODEL_BYTES, what: str = "an .onnx file") -> bytes:
    """The bytes of the regular file ``path``, read once, refused before reading when over ``max_bytes``.

    Never blocks and never follows a link: the file is opened non-blocking without following a symlink
    (a FIFO would otherwise wait for a writer forever), then ``fstat`` of the open file decides, so what
    was checked is what is read. A FIFO, directory, device, socket or symlink is an ``InputError`` saying
    what it is; "no such file" means exactly that.
    """
    p = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError as e:
        raise InputError(f"{p}: no such file", hint=f"give the path of {what}") from e
    except OSError as e:
        try:
            mode = os.lstat(p).st_mode
        except OSError:
            mode = None
        if mode is not None and not stat.S_ISREG(mode):  # ELOOP (symlink), ENXIO (socket), ...
            raise InputError(f"{p}: is {_kind(mode)}, not a regular file", hint=f"give the path of {what}") from e
        if e.errno == errno.ENOTDIR:
            raise InputError(f"{p}: no such file ({p.parent} is not a directory)",
                             hint=f"give the path of {what}") from e
        raise InputError(f"{p}: cannot read ({e.strerror})", hint=f"give the path of {what} you can read") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{p}: is {_kind(st.st_mode)}, not a regular file", hint=f"give the path of {what}")
        if st.st_size > max_bytes:
            raise InputError(f"{p}: {_size(st.st_size)}, over the {_size(max_bytes)} limit for {what}, not read",
                             hint="a model over protobuf's 2 GiB limit keeps its weights in external data"
                             if max_bytes == MAX_MODEL_BYTES else None)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)  # one read of the whole file; a file growing meanwhile is still capped
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from e
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise InputError(f"{p}: grew past the {_size(max_bytes)} limit for {what} while it was read")
    return data


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Parse an ONNX file without loading external data. Raises ``InputError`` or ``ModelError`` naming the file."""
    return parse(read_file(path), name=str(path))


def parse(data: bytes, name: str = "<bytes>") -> onnx.ModelProto:
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
