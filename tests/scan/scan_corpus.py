"""The unsafe half of the scanner's test corpus, generated (never committed as binaries).

Each :class:`Case` builds one hostile or broken file (or bundle) in a directory and names the check that must
flag it. ``python tests/scan/scan_corpus.py OUT_DIR`` writes the whole corpus for manual inspection.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 18)]
F = TensorProto.FLOAT


def model(nodes, inputs, outputs, initializers=(), opsets=OPSET, functions=(), **kw) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=list(opsets), functions=list(functions), **kw)


def vi(name: str, shape, dtype=F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def save(m: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path


def relu_model(**kw) -> onnx.ModelProto:
    return model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", ["n", 4])], [vi("y", ["n", 4])], **kw)


# --- the file itself ----------------------------------------------------------------------------------------

def pickle_file(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    return p


def zip_file(d: Path) -> Path:
    p = d / "model.onnx"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps([1, 2, 3]))
    return p


def tar_file(d: Path) -> Path:
    p = d / "model.onnx"
    data = b"hello"
    with tarfile.open(p, "w") as t:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return p


def empty_file(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(b"")
    return p


def random_bytes(d: Path) -> Path:
    p = d / "model.onnx"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    return p


def oversized_file(d: Path) -> Path:  # scanned with max_file_bytes = 64
    return save(relu_model(), d / "model.onnx")


def unknown_standard_op(d: Path) -> Path:
    return save(model([helper.make_node("NoSuchOp", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])]), d / "model.onnx")


def shape_mismatch(d: Path) -> Path:
    return save(model([helper.make_node("Add", ["a", "b"], ["y"])], [vi("a", [3]), vi("b", [4])], [vi("y", [3])]),
                d / "model.onnx")


# --- external data ------------------------------------------------------------------------------------------

def external_model(d: Path, location: str, **entries: int) -> Path:
    """``model/model.onnx`` whose initializer ``w`` (4 floats, 16 bytes) lives in ``location``; a 16-byte
    sentinel file ``secret.bin`` sits beside the model directory, outside it."""
    (d / "secret.bin").write_bytes(b"S" * 16)
    t = TensorProto(name="w", data_type=F, dims=[4], data_location=TensorProto.EXTERNAL)
    for key, value in {"location": location, **{k: str(v) for k, v in entries.items()}}.items():
        t.external_data.add(key=key, value=value)
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [4])], [vi("y", [4])], [t])
    return save(m, d / "model" / "model.onnx")


def ext_traversal(d: Path) -> Path:
    return external_model(d, "../secret.bin")


def ext_absolute(d: Path) -> Path:
    return external_model(d, str((d / "secret.bin").absolute()))


def ext_backslash_traversal(d: Path) -> Path:
    return external_model(d, "..\\secret.bin")


def ext_symlink(d: Path) -> Path:
    p = external_model(d, "w.bin")
    os.symlink(d / "secret.bin", p.parent / "w.bin")
    return p


def ext_hardlink(d: Path) -> Path:
    p = external_model(d, "w.bin")
    os.link(d / "secret.bin", p.parent / "w.bin")
    return p


def ext_past_end(d: Path) -> Path:
    p = external_model(d, "w.bin", offset=8, length=16)
    (p.parent / "w.bin").write_bytes(b"\0" * 16)
    return p


def ext_missing(d: Path) -> Path:
    return external_model(d, "missing.bin")


# --- domains, operators, functions --------------------------------------------------------------------------

def custom_domain_node(d: Path) -> Path:
    m = model([helper.make_node("Backdoor", ["x"], ["y"], domain="evil.ops")], [vi("x", [4])], [vi("y", [4])],
              opsets=[*OPSET, helper.make_opsetid("evil.ops", 1)])
    return save(m, d / "model.onnx")


def custom_opset_import(d: Path) -> Path:
    return save(relu_model(opsets=[*OPSET, helper.make_opsetid("evil.ops", 1)]), d / "model.onnx")


def branch(name: str, op: str) -> onnx.GraphProto:
    return helper.make_graph([helper.make_node(op, ["x"], [f"{name}_out"])], name, [], [vi(f"{name}_out", [4])])


def if_model() -> onnx.ModelProto:
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg"))
    return model([node], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("y", [4])])


def denied_op_strict(d: Path) -> Path:  # scanned with the strict profile
    return save(if_model(), d / "model.onnx")


def function_shadowing(d: Path) -> Path:
    fake = helper.make_function("", "Relu", ["X"], ["Y"], [helper.make_node("Sigmoid", ["X"], ["Y"])], OPSET)
    return save(relu_model(functions=[fake]), d / "model.onnx")


def function_recursion(d: Path) -> Path:
    local = [*OPSET, helper.make_opsetid("local", 1)]
    f = helper.make_function("local", "f", ["X"], ["Y"], [helper.make_node("g", ["X"], ["Y"], domain="local")], local)
    g = helper.make_function("local", "g", ["X"], ["Y"], [helper.make_node("f", ["X"], ["Y"], domain="local")], local)
    m = model([helper.make_node("f", ["x"], ["y"], domain="local")], [vi("x", [4])], [vi("y", [4])], opsets=local,
              functions=[f, g])
    return save(m, d / "model.onnx")


# --- control flow -------------------------------------------------------------------------------------------

def deep_if(d: Path, depth: int = 12) -> Path:
    inner = branch(f"leaf{depth}", "Relu")
    for level in range(depth, 0, -1):
        node = helper.make_node("If", ["c"], [f"out{level}"], then_branch=inner,
                                else_branch=branch(f"else{level}", "Neg"))
        inner = helper.make_graph([node], f"level{level}", [], [vi(f"out{level}", [4])])
    node = inner.node[0]
    m = model([node], [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi("out1", [4])])
    return save(m, d / "model.onnx")


def many_loops(d: Path, count: int = 1100) -> Path:
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
                             [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL)],
                             [vi("cond_out", [], TensorProto.BOOL)])
    trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
    loops = [helper.make_node("Loop", ["trip", ""], [], body=body, name=f"loop{i}") for i in range(count)]
    m = model([*loops, helper.make_node("Identity", ["x"], ["y"])], [vi("x", [4])], [vi("y", [4])], [trip])
    return save(m, d / "model.onnx")


# --- resource bombs -----------------------------------------------------------------------------------------

def const(name: str, values, dtype=np.int64) -> TensorProto:
    return numpy_helper.from_array(np.array(values, dtype), name)


def constant_of_shape_bomb(d: Path) -> Path:
    m = model([helper.make_node("ConstantOfShape", ["shape"], ["y"])], [], [vi("y", None)],
              [const("shape", [2**20, 2**20])])
    return save(m, d / "model.onnx")


def expand_bomb(d: Path) -> Path:
    m = model([helper.make_node("Expand", ["x", "shape"], ["y"])], [vi("x", [1])], [vi("y", None)],
              [const("shape", [2**16, 2**16, 4])])
    return save(m, d / "model.onnx")


def tile_bomb(d: Path) -> Path:
    m = model([helper.make_node("Tile", ["x", "repeats"], ["y"])], [vi("x", [2, 2])], [vi("y", None)],
              [const("repeats", [2**17, 2**17])])
    return save(m, d / "model.onnx")


def range_bomb(d: Path) -> Path:
    nodes = [helper.make_node("Constant", [], ["limit"], value=const("v", 10**12)),
             helper.make_node("Range", ["start", "limit", "delta"], ["y"])]
    m = model(nodes, [], [vi("y", None, TensorProto.INT64)], [const("start", 0), const("delta", 1)])
    return save(m, d / "model.onnx")


def resize_bomb(d: Path) -> Path:
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])
    m = model([node], [vi("x", [1, 3, 8, 8])], [vi("y", None)], [const("sizes", [1, 3, 2**17, 2**17])])
    return save(m, d / "model.onnx")


def initializer_dims_mismatch(d: Path) -> Path:
    w = TensorProto(name="w", data_type=F, dims=[1000, 1000], raw_data=b"\0" * 16)
    m = model([helper.make_node("Add", ["x", "w"], ["y"])], [vi("x", [1000, 1000])], [vi("y", [1000, 1000])], [w])
    return save(m, d / "model.onnx")


def huge_input_dims(d: Path) -> Path:
    return save(model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 2**30])], [vi("y", [1, 2**30])]),
                d / "model.onnx")


# --- graph structure ----------------------------------------------------------------------------------------

def ssa_violation(d: Path) -> Path:
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])]
    return save(model(nodes, [vi("x", [4])], [vi("y", [4])]), d / "model.onnx")


def cycle(d: Path) -> Path:
    nodes = [helper.make_node("Add", ["x", "c"], ["a"], name="add"),
             helper.make_node("Relu", ["a"], ["c"], name="relu")]
    return save(model(nodes, [vi("x", [4])], [vi("a", [4])]), d / "model.onnx")


def dangling_input(d: Path) -> Path:
    return save(model([helper.make_node("Add", ["x", "ghost"], ["y"])], [vi("x", [4])], [vi("y", [4])]),
                d / "model.onnx")


# --- metadata -----------------------------------------------------------------------------------------------

def oversized_metadata(d: Path) -> Path:
    m = relu_model()
    helper.set_model_props(m, {"notes": "A" * 200_000})
    return save(m, d / "model.onnx")


def control_characters(d: Path) -> Path:
    m = relu_model()
    helper.set_model_props(m, {"author": "alice\x1b[2J\x1b[31m", "license\u202e": "MIT"})
    return save(m, d / "model.onnx")


# --- bundles ------------------------------------------------------------------------------------------------

def small_bundle(d: Path) -> Path:
    """A valid bundle written by onnxguard's own bundle writer, around a tiny model."""
    from onnxguard import __version__, bundle
    from onnxguard.bundle.manifest import Manifest, Model, Source, now

    m = relu_model(doc_string="aaaaaaaa")
    manifest = Manifest(name="tiny", version="0.1.0", created=now(), onnxguard_version=__version__,
                        source=Source(framework="pytorch", framework_version="0", identifier="corpus", task=None,
                                      exporter="corpus", files={}),
                        model=Model(file=bundle.MODEL, sha256="0" * 64, size=0, opset={"ai.onnx": 18},
                                    ir_version=m.ir_version, producer="", inputs=[], outputs=[]),
                        files={})
    return bundle.write(d / "bundle", manifest, m, None).path


def bundle_tampered(d: Path) -> Path:
    root = small_bundle(d)
    model_file = root / "model.onnx"
    model_file.write_bytes(model_file.read_bytes().replace(b"aaaaaaaa", b"bbbbbbbb"))
    return root


def bundle_extra_file(d: Path) -> Path:
    root = small_bundle(d)
    (root / "payload.so").write_bytes(b"\x7fELF")
    return root


def bundle_symlink(d: Path) -> Path:
    root = small_bundle(d)
    (d / "outside.txt").write_text("secret")
    os.symlink(d / "outside.txt", root / "notes.txt")
    return root


def bundle_bad_manifest(d: Path) -> Path:
    root = small_bundle(d)
    (root / "manifest.json").write_text("{not json")
    return root


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Path], Path]
    check: str
    profile: str = "default"
    policy: dict = field(default_factory=dict)


UNSAFE = [
    Case("pickle", pickle_file, "file.format"),
    Case("zip", zip_file, "file.format"),
    Case("tar", tar_file, "file.format"),
    Case("empty", empty_file, "file.format"),
    Case("random-bytes", random_bytes, "file.decode"),
    Case("oversized-file", oversized_file, "file.size", policy={"max_file_bytes": 64}),
    Case("unknown-standard-op", unknown_standard_op, "file.checker"),
    Case("shape-mismatch", shape_mismatch, "file.shape-inference"),
    Case("ext-traversal", ext_traversal, "external-data.path"),
    Case("ext-absolute", ext_absolute, "external-data.path"),
    Case("ext-backslash-traversal", ext_backslash_traversal, "external-data.path"),
    Case("ext-symlink-escape", ext_symlink, "external-data.path"),
    Case("ext-hardlink", ext_hardlink, "external-data.file"),
    Case("ext-past-end", ext_past_end, "external-data.range"),
    Case("ext-missing", ext_missing, "external-data.file"),
    Case("custom-domain-node", custom_domain_node, "domain.node"),
    Case("custom-opset-import", custom_opset_import, "domain.opset"),
    Case("denied-op-strict", denied_op_strict, "operators.denied", profile="strict"),
    Case("function-shadowing", function_shadowing, "functions.shadowing"),
    Case("function-recursion", function_recursion, "functions.recursion"),
    Case("deep-if", deep_if, "control-flow.depth"),
    Case("many-loops", many_loops, "control-flow.count"),
    Case("constant-of-shape-bomb", constant_of_shape_bomb, "resources.allocation"),
    Case("expand-bomb", expand_bomb, "resources.allocation"),
    Case("tile-bomb", tile_bomb, "resources.allocation"),
    Case("range-bomb", range_bomb, "resources.allocation"),
    Case("resize-bomb", resize_bomb, "resources.allocation"),
    Case("initializer-dims-mismatch", initializer_dims_mismatch, "resources.tensor-dims"),
    Case("huge-input-dims", huge_input_dims, "resources.input-dims"),
    Case("ssa-violation", ssa_violation, "graph.ssa"),
    Case("cycle", cycle, "graph.cycle"),
    Case("dangling-input", dangling_input, "graph.undefined-input"),
    Case("oversized-metadata", oversized_metadata, "metadata.size"),
    Case("control-characters", control_characters, "metadata.control-characters"),
    Case("bundle-tampered", bundle_tampered, "bundle.hash"),
    Case("bundle-extra-file", bundle_extra_file, "bundle.unexpected-file"),
    Case("bundle-symlink", bundle_symlink, "bundle.symlink"),
    Case("bundle-bad-manifest", bundle_bad_manifest, "bundle.manifest"),
]


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "scan-corpus")
    for case in UNSAFE:
        target = out / case.name
        target.mkdir(parents=True, exist_ok=False)
        print(f"{case.name}: {case.build(target)} -> expect {case.check}")


def small_sklearn(d: Path) -> Path:
    """A scikit-learn model saved the way its users save it (.skops), for a real build."""
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    path = d / "logreg.skops"
    sio.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    return path


def scan_any(path: Path, policy=None):
    """What ``onnxguard scan PATH`` does: a file through the scanner, a bundle through the bundle door."""
    from onnxguard import scan, trust

    if path.is_dir():
        return trust.scan_bundle(path, trust.ScanRule(policy) if policy is not None else None)
    return scan.scan(path, policy)
