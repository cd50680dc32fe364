"""model.onnxfile: reading a model from a path never blocks, never follows a link, and refuses a file too large
for protobuf from its size alone; every error names the file."""

from __future__ import annotations

import os
import socket
import threading

import onnx
import pytest
from onnx import TensorProto, helper

from onnxguard.errors import InputError, ModelError
from onnxguard.model import onnxfile


def _relu() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _refusal(path, **kw) -> InputError:
    """The error ``read_file`` raises, from a thread: a read that blocks fails the test instead of hanging it."""
    box: list[BaseException | bytes] = []
    worker = threading.Thread(target=lambda: box.append(_call(path, **kw)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), f"read_file({path}) blocked"
    (result,) = box
    assert isinstance(result, InputError), result
    return result


def _call(path, **kw):
    try:
        return onnxfile.read_file(path, **kw)
    except InputError as e:
        return e


def test_a_regular_file_is_read_whole(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_relu())
    assert onnxfile.read_file(path) == _relu()
    assert onnxfile.load(path).graph.node[0].op_type == "Relu"


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "m.onnx"
    os.mkfifo(path)
    e = _refusal(path)
    assert str(e) == f"{path}: is a FIFO, not a regular file" and e.hint


@pytest.mark.parametrize("kind", ["directory", "symlink", "dangling symlink", "socket", "device"])
def test_what_is_not_a_regular_file_is_named(tmp_path, kind):
    path = tmp_path / "m.onnx"
    says = kind
    if kind == "directory":
        path.mkdir()
    elif kind == "symlink":
        (tmp_path / "real.onnx").write_bytes(_relu())
        path.symlink_to(tmp_path / "real.onnx")
    elif kind == "dangling symlink":
        path.symlink_to(tmp_path / "gone.onnx")
        says = "symlink"
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    else:
        path = "/dev/zero"  # a read would never end
        says = "character device"
    e = _refusal(path)
    assert str(e).startswith(f"{path}: is a {says}"), e
    assert "no such file" not in str(e)


def test_no_such_file_only_when_there_is_none(tmp_path):
    assert str(_refusal(tmp_path / "absent.onnx")) == f"{tmp_path / 'absent.onnx'}: no such file"
    (tmp_path / "plain").write_bytes(b"x")
    assert "plain is not a directory" in str(_refusal(tmp_path / "plain" / "m.onnx"))


def test_the_size_is_checked_before_reading(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.truncate(onnxfile.MAX_MODEL_BYTES + 1)  # sparse: reading it would allocate 2 GiB
    e = _refusal(path)
    assert str(e).startswith(f"{path}: 2.0 GiB, over the 2.0 GiB limit for an .onnx file, not read"), e
    small = tmp_path / "small.onnx"
    small.write_bytes(b"12345")
    assert "over the 4 bytes limit for a test file" in str(_refusal(small, max_bytes=4, what="a test file"))
    assert onnxfile.read_file(small, max_bytes=5) == b"12345"


def test_the_limit_is_protobufs():
    assert onnxfile.MAX_MODEL_BYTES == 2**31 - 1


def test_parse_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"\xff\xfe not a protobuf \x00" * 4)
    with pytest.raises(ModelError, match="bad.onnx: not a valid ONNX file") as e:
        onnxfile.load(path)
    assert e.value.hint == "re-export the model"
    with pytest.raises(ModelError, match="^decrypted/model.onnx: empty file"):
        onnxfile.parse(b"", "decrypted/model.onnx")
    with pytest.raises(ModelError, match="^t.onnx: not"):
        onnxfile.parse(onnx.TensorProto(name="t", dims=[1]).SerializeToString(), "t.onnx")


def test_save_writes_all_at_once_and_never_through_a_link(tmp_path):
    model = onnxfile.parse(_relu(), "relu")
    elsewhere = tmp_path / "elsewhere.onnx"
    elsewhere.write_bytes(b"keep")
    link = tmp_path / "m.onnx"
    link.symlink_to(elsewhere)
    assert onnxfile.save(model, link) == len(_relu())
    assert not link.is_symlink() and link.read_bytes() == _relu() and elsewhere.read_bytes() == b"keep"
    with pytest.raises(InputError, match="cannot write") as e:
        onnxfile.save(model, tmp_path / "absent" / "m.onnx")
    assert e.value.remedy is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.onnx", "m.onnx"]  # no staging file left
