"""The golden set file format (.npz) and the texts file."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest

from onnxguard.bundle import golden
from onnxguard.bundle.golden import GoldenSet
from onnxguard.errors import InputError


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_round_trip_keeps_batches_and_references(tmp_path):
    ids = np.arange(12, dtype=np.int64).reshape(2, 6)
    gs = GoldenSet(({"input_ids": ids, "mask": np.ones_like(ids)},
                    {"input_ids": ids[:1], "mask": np.ones_like(ids[:1])}),
                   ({"logits": np.full((2, 3), 0.5, np.float32)}, {"logits": np.zeros((1, 3), np.float32)}))
    path = tmp_path / "g.npz"
    gs.save(path)
    back = golden.load(path)
    assert back.items == 3 and len(back.inputs) == 2 and len(back.references) == 2
    for a, b in zip(gs.inputs + gs.references, back.inputs + back.references, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
            assert a[k].dtype == b[k].dtype
    with np.load(path) as npz:
        assert sorted(npz.files) == ["b0:in:input_ids", "b0:in:mask", "b0:out:logits", "b1:in:input_ids",
                                     "b1:in:mask", "b1:out:logits"]


def test_plain_npz_is_one_batch_of_inputs():
    gs = golden.from_bytes(_npz(image=np.zeros((4, 1, 8, 8), np.float32)))
    assert gs.references is None and gs.items == 4 and list(gs.inputs[0]) == ["image"]


def test_pickled_object_arrays_are_refused():
    data = _npz(x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        golden.from_bytes(data, "evil.npz")


@pytest.mark.parametrize(("data", "message"), [
    (b"not a zip", "bad.npz: not a readable .npz"),
    (_npz(), "bad.npz: holds no arrays"),
    (_npz(**{"b0:in:x": np.zeros(2), "stray": np.zeros(2)}), "unexpected key 'stray'"),
    (_npz(**{"b0:in:x": np.zeros(2), "b2:in:x": np.zeros(2)}), "not numbered 0..2"),
    (_npz(**{"b0:in:x": np.zeros(2), "b1:in:x": np.zeros(2), "b0:out:y": np.zeros(2)}), "not numbered 0..1"),
])
def test_malformed_golden_files(data, message):
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        golden.from_bytes(data, "bad.npz")


def test_npy_instead_of_npz(tmp_path):
    path = tmp_path / "inputs.npy"
    np.save(path, np.zeros((2, 3), np.float32))
    with pytest.raises(InputError, match=r"inputs\.npy: a single array, not an \.npz"):
        golden.load(path)


def test_missing_golden_file(tmp_path):
    with pytest.raises(InputError, match="nope.npz: no such file"):
        golden.load(tmp_path / "nope.npz")


def test_split():
    batches = golden.split({"x": np.arange(10), "y": np.arange(10) * 2}, 4)
    assert [len(b["x"]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(batches[2]["y"], [16, 18])


def test_read_texts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  first text \n\n\nsecond\n   \nthird ünïcode\n", encoding="utf-8")
    assert golden.read_texts(path) == ["first text", "second", "third ünïcode"]


@pytest.mark.parametrize(("content", "message"), [(None, "no such file"), (b"\n  \n", "holds no texts"),
                                                  (b"\xff\xfe\xfa bad", "cannot read as UTF-8")])
def test_bad_texts_file(tmp_path, content, message):
    path = tmp_path / "texts.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as e:
        golden.read_texts(path)
    assert "texts.txt" in str(e.value)


def test_build_with_a_golden_npz(cli, torch_nets, tmp_path):
    """--golden inputs.npz becomes the bundle's golden set, with the source's outputs added as references."""
    from onnxguard import bundle

    x = np.random.default_rng(5).standard_normal((7, 10)).astype(np.float32)
    np.savez(tmp_path / "inputs.npz", x=x)
    out = tmp_path / "b"
    r = cli("build", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "--golden", tmp_path / "inputs.npz", "-o", out)
    assert r.code == 0, str(r)
    b = bundle.read(out)
    assert (b.manifest.golden.origin, b.manifest.golden.items, b.manifest.golden.batches) == ("npz", 7, 1)
    gs = b.golden()
    np.testing.assert_array_equal(gs.inputs[0]["x"], x)
    assert gs.references[0]["output"].shape == (7, 3)


def _bounded(call):
    """The ``InputError`` ``call`` raises, from a thread: a read that blocks fails the test instead of hanging it."""
    box: list[BaseException | object] = []

    def target():
        try:
            box.append(call())
        except InputError as e:
            box.append(e)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the read blocked"
    (result,) = box
    assert isinstance(result, InputError), result
    return result


@pytest.mark.parametrize("reader", [golden.load, golden.read_texts])
def test_a_fifo_is_refused_without_blocking(tmp_path, reader):
    """--golden, --calibration and --texts read like any untrusted file: a FIFO with no writer cannot stall them."""
    path = tmp_path / "inputs"
    os.mkfifo(path)
    e = _bounded(lambda: reader(path))
    assert str(e) == f"{path}: is a FIFO, not a regular file" and e.hint


@pytest.mark.parametrize(("reader", "limit"), [(golden.load, golden.MAX_GOLDEN_BYTES),
                                               (golden.read_texts, golden.MAX_TEXTS_BYTES)])
def test_a_huge_file_is_refused_before_it_is_read(tmp_path, reader, limit):
    path = tmp_path / "huge"
    with open(path, "wb") as f:
        f.truncate(limit + 1)  # sparse: reading it would allocate the whole size
    e = _bounded(lambda: reader(path))
    assert str(e).startswith(f"{path}: ") and "limit for" in str(e) and str(e).endswith("not read"), e
