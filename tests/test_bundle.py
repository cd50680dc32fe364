"""The bundle: write/read round trip, and every way a bundle can disagree with its manifest."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxguard import bundle
from onnxguard.bundle import manifest
from onnxguard.bundle.golden import GoldenSet
from onnxguard.bundle.manifest import Golden, Manifest, Model, Source, Tensor
from onnxguard.errors import BundleError, InputError


def tiny_model() -> onnx.ModelProto:
    """y = x @ W + b, with a symbolic batch axis; built with onnx.helper (no framework needed)."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())
    b = helper.make_tensor("b", TensorProto.FLOAT, [2], [0.5, -0.5])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10, producer_name="tests")


def tiny_manifest(**update) -> Manifest:
    fields = dict(
        name="tiny", version="1.0.0", created=manifest.now(), onnxguard_version="0.1.0",
        source=Source(framework="onnx", framework_version="1", identifier="tiny", task=None, exporter="helper",
                      files={}),
        model=Model(file=bundle.MODEL, sha256="0" * 64, size=0, opset={"ai.onnx": 18}, ir_version=10, producer="tests",
                    inputs=[Tensor(name="x", dtype="float32", shape=["batch", 4])],
                    outputs=[Tensor(name="y", dtype="float32", shape=["batch", 2], role="values")]),
        files={}, labels=None, metadata={"owner": "tests"},
        golden=Golden(file=bundle.GOLDEN, batches=1, items=3, origin="npz"))
    fields.update(update)
    return Manifest(**fields)


def tiny_golden() -> GoldenSet:
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    return GoldenSet(({"x": x},), ({"y": x @ w + np.array([0.5, -0.5], np.float32)},))


@pytest.fixture
def assets(tmp_path) -> dict[str, Path]:
    src = tmp_path / "assets"
    (src / "deep").mkdir(parents=True)
    (src / "tokenizer.json").write_text('{"vocab": ["a", "b"]}')
    (src / "deep" / "extra.txt").write_text("x")
    return {"tokenizer/tokenizer.json": src / "tokenizer.json", "tokenizer/deep/extra.txt": src / "deep" / "extra.txt"}


@pytest.fixture
def written(tmp_path, assets) -> bundle.Bundle:
    (tmp_path / "out").mkdir()
    return bundle.write(tmp_path / "out" / "bundle", tiny_manifest(), tiny_model(), tiny_golden(), assets)


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_round_trip(written, tmp_path):
    root = tmp_path / "out" / "bundle"
    assert listing(root) == ["golden.npz", "manifest.json", "model.onnx", "tokenizer/deep/extra.txt",
                             "tokenizer/tokenizer.json"]
    assert os.listdir(root.parent) == ["bundle"]  # no temporary directory left beside it
    b = bundle.read(root)
    assert b.manifest == written.manifest
    m = b.manifest
    assert m.format == "onnxguard-bundle/1" and m.name == "tiny" and m.metadata == {"owner": "tests"}
    assert sorted(m.files) == ["golden.npz", "model.onnx", "tokenizer/deep/extra.txt", "tokenizer/tokenizer.json"]
    import hashlib

    for rel, entry in m.files.items():
        data = (root / rel).read_bytes()
        assert entry.sha256 == hashlib.sha256(data).hexdigest() and entry.size == len(data)
    assert m.model.sha256 == m.files["model.onnx"].sha256 and m.model.size == m.files["model.onnx"].size
    assert b.model_bytes() == tiny_model().SerializeToString()
    g = b.golden()
    np.testing.assert_array_equal(g.inputs[0]["x"], tiny_golden().inputs[0]["x"])
    np.testing.assert_array_equal(g.references[0]["y"], tiny_golden().references[0]["y"])
    assert json.loads((root / "manifest.json").read_text())["model"]["sha256"] == m.model.sha256


@pytest.mark.parametrize("rel", ["model.onnx", "golden.npz", "tokenizer/tokenizer.json"])
@pytest.mark.parametrize("how", ["flip", "append"])
def test_changed_file_is_named(written, rel, how):
    path = written.path / rel
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x01  # same size, one bit different: only the sha256 can tell
    else:
        data += b"\0"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match the sha256") as e:
        bundle.read(written.path)
    assert str(path) in str(e.value)


def test_missing_file_is_named(written):
    (written.path / "golden.npz").unlink()
    with pytest.raises(BundleError, match="missing") as e:
        bundle.read(written.path)
    assert "golden.npz" in str(e.value)


@pytest.mark.parametrize("rel", ["notes.txt", "tokenizer/added.json"])
def test_unexpected_file_is_named(written, rel):
    (written.path / rel).write_text("sneaked in")
    with pytest.raises(BundleError, match="not listed in the manifest") as e:
        bundle.read(written.path)
    assert rel in str(e.value)


def test_symlink_is_refused_even_to_identical_content(written, tmp_path):
    outside = tmp_path / "golden-copy.npz"
    outside.write_bytes((written.path / "golden.npz").read_bytes())
    (written.path / "golden.npz").unlink()
    (written.path / "golden.npz").symlink_to(outside)
    with pytest.raises(BundleError, match="symlink") as e:
        bundle.read(written.path)
    assert "golden.npz" in str(e.value)


def test_symlinked_directory_is_refused(written, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (written.path / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(BundleError, match="symlink"):
        bundle.read(written.path)


def _edit_manifest(root: Path, edit) -> None:
    path = root / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(("edit", "where"), [
    (lambda d: d.update(format="onnxguard-bundle/2"), "format"),
    (lambda d: d.update(surprise=True), "(top level)"),
    (lambda d: d.pop("model"), "(top level)"),
    (lambda d: d["model"].update(sha256="not-a-digest"), "model/sha256"),
    (lambda d: d["files"]["model.onnx"].update(size="big"), "files/model.onnx/size"),
    (lambda d: d.update(labels="cat,dog"), "labels"),
])
def test_manifest_that_violates_the_schema(written, edit, where):
    _edit_manifest(written.path, edit)
    with pytest.raises(BundleError, match="does not match the manifest schema") as e:
        bundle.read(written.path)
    assert f"at {where}" in str(e.value) and "manifest.json" in str(e.value)


def test_manifest_that_is_not_json(written):
    (written.path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        bundle.read(written.path)


def test_directory_without_manifest(tmp_path):
    (tmp_path / "b").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        bundle.read(tmp_path / "b")
    with pytest.raises(InputError, match="no such bundle"):
        bundle.read(tmp_path / "nothing-here")


def test_model_file_must_be_among_the_files(written):
    _edit_manifest(written.path, lambda d: d["model"].update(file="other.onnx"))
    with pytest.raises(BundleError, match="other.onnx"):
        bundle.read(written.path)


def test_shipped_schema_is_the_generated_schema():
    shipped = json.loads(resources.files("onnxguard").joinpath("schemas/manifest-1.schema.json").read_text())
    assert shipped == manifest.json_schema()
    assert shipped["properties"]["format"]["const"] == manifest.FORMAT
    assert shipped["additionalProperties"] is False


def test_existing_target_is_refused_unless_overwrite(written, tmp_path):
    target = written.path
    with pytest.raises(InputError, match="already exists"):
        bundle.write(target, tiny_manifest(name="second"), tiny_model(), tiny_golden())
    assert bundle.read(target).manifest.name == "tiny"
    b = bundle.write(target, tiny_manifest(name="second"), tiny_model(), tiny_golden(), overwrite=True)
    assert b.manifest.name == "second"
    assert listing(target) == ["golden.npz", "manifest.json", "model.onnx"]  # the old assets are gone
    assert os.listdir(target.parent) == ["bundle"]


@pytest.mark.parametrize("rel", ["../escape.txt", "/abs/x.txt", "model.onnx", "manifest.json"])
def test_asset_that_escapes_or_clashes_leaves_nothing(tmp_path, assets, rel):
    target = tmp_path / "out" / "b"
    target.parent.mkdir()
    with pytest.raises(BundleError, match="escapes the bundle or clashes"):
        bundle.write(target, tiny_manifest(), tiny_model(), tiny_golden(), {rel: assets["tokenizer/tokenizer.json"]})
    assert os.listdir(target.parent) == []
    assert not (tmp_path / "out" / "escape.txt").exists()


def test_unwritable_target(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        bundle.write(tmp_path / "file" / "b", tiny_manifest(), tiny_model(), tiny_golden())


@pytest.mark.parametrize("rel", ["model.onnx", "golden.npz"])
def test_cli_names_the_changed_file(cli, expect_err, sklearn_bundle, copy_tree, rel):
    root = copy_tree(sklearn_bundle)
    path = root / rel
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    # A bundle that does not match its manifest is a failed check (exit 1) naming the file, before anything runs.
    expect_err(cli("inspect", root), 1, str(path), "sha256")
    expect_err(cli("parity", root, "--allow-unsigned"), 1, str(path))


def test_cli_reads_an_intact_copy(cli, sklearn_bundle, copy_tree):
    r = cli("inspect", copy_tree(sklearn_bundle), "--json")
    assert r.code == 0, str(r)
    assert json.loads(r.out)["bundle"]["files"] == ["golden.npz", "model.onnx"]
