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


# --- the runtime's own surface (issue 15) ----------------------------------------------------------------------

MS = helper.make_opsetid("com.microsoft", 1)


def ep_context_model(d: Path, location: str, embed_mode: int = 0) -> Path:
    """``model/model.onnx`` with one EPContext node whose ep_cache_context is ``location``; ``secret.bin`` lies
    beside the model's folder, ``model/ctx.bin`` inside it."""
    (d / "secret.bin").write_bytes(b"S" * 16)
    node = helper.make_node("EPContext", ["x"], ["y"], domain="com.microsoft", embed_mode=embed_mode,
                            ep_cache_context=location, main_context=1, source="QNNExecutionProvider")
    path = save(model([node], [vi("x", [4])], [vi("y", [4])], opsets=[*OPSET, MS]), d / "model" / "model.onnx")
    (path.parent / "ctx.bin").write_bytes(b"\0" * 16)
    return path


def ep_context_traversal(d: Path) -> Path:
    return ep_context_model(d, "../secret.bin")


def ep_context_inside(d: Path) -> Path:  # clean sibling: a context file inside the model's folder
    return ep_context_model(d, "ctx.bin")


def ep_context_embedded(d: Path) -> Path:  # clean sibling: embed_mode 1, the blob is in the node
    return ep_context_model(d, "../not-a-path-but-a-blob", embed_mode=1)


def session_config_model(props: dict[str, str]) -> onnx.ModelProto:
    m = relu_model()
    helper.set_model_props(m, props)
    return m


def session_config_threads(d: Path) -> Path:
    """ONNX Runtime applies this when ORT_LOAD_CONFIG_FROM_MODEL=1: 300 threads and a profiling file."""
    config = '{"session_options": {"intra_op_num_threads": 300, "enable_profiling": 1}}'
    return save(session_config_model({"ort_config": config}), d / "model.onnx")


def ordinary_metadata(d: Path) -> Path:  # clean sibling
    return save(session_config_model({"author": "alice", "license": "MIT"}), d / "model.onnx")


ML3 = [*OPSET, helper.make_opsetid("ai.onnx.ml", 3)]
ML5 = [*OPSET, helper.make_opsetid("ai.onnx.ml", 5)]


def tree_classifier(**changes) -> onnx.ModelProto:
    """One tree, a split on feature 0 and two leaves, one per class."""
    attrs = dict(nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
                 nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.5, 0.0, 0.0],
                 nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0], class_treeids=[0, 0],
                 class_nodeids=[1, 2], class_ids=[0, 1], class_weights=[1.0, 1.0], classlabels_int64s=[0, 1])
    attrs.update(changes)
    node = helper.make_node("TreeEnsembleClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml", **attrs)
    return model([node], [vi("x", ["n", 2])], [vi("label", ["n"], TensorProto.INT64), vi("scores", ["n", 2])],
                 opsets=ML3)


def tree_child_out_of_range(d: Path) -> Path:
    return save(tree_classifier(nodes_truenodeids=[7, 0, 0]), d / "model.onnx")


def tree_class_out_of_range(d: Path) -> Path:
    return save(tree_classifier(class_ids=[0, 5]), d / "model.onnx")


def tree_loop(d: Path) -> Path:  # the split's false branch points back at itself
    return save(tree_classifier(nodes_falsenodeids=[0, 0, 0], class_nodeids=[1, 1]), d / "model.onnx")


def tree_ok(d: Path) -> Path:  # clean sibling
    return save(tree_classifier(), d / "model.onnx")


def tree_ensemble5(**changes) -> onnx.ModelProto:
    """ai.onnx.ml 5's TreeEnsemble: one split, two leaves, one target."""
    attrs = dict(nodes_featureids=[0], nodes_splits=numpy_helper.from_array(np.array([0.5], np.float32)),
                 nodes_modes=numpy_helper.from_array(np.array([0], np.uint8)), nodes_truenodeids=[0],
                 nodes_trueleafs=[1], nodes_falsenodeids=[1], nodes_falseleafs=[1], tree_roots=[0],
                 leaf_targetids=[0, 0], leaf_weights=numpy_helper.from_array(np.array([1.0, 2.0], np.float32)),
                 n_targets=1, aggregate_function=1, post_transform=0)
    attrs.update(changes)
    node = helper.make_node("TreeEnsemble", ["x"], ["y"], domain="ai.onnx.ml", **attrs)
    return model([node], [vi("x", ["n", 2])], [vi("y", ["n", 1])], opsets=ML5)


def tree5_leaf_out_of_range(d: Path) -> Path:
    return save(tree_ensemble5(nodes_falsenodeids=[9]), d / "model.onnx")


def tree5_ok(d: Path) -> Path:  # clean sibling
    return save(tree_ensemble5(), d / "model.onnx")


def loop_model(trip: str, cond: str, body_cond: str = "identity", extra=(), inits=(), inputs=()) -> onnx.ModelProto:
    """A Loop carrying one float; its body passes ``cond`` through (``identity``) or computes it from the
    carried value (``computed``: keep going while v < 100)."""
    if body_cond == "identity":
        cond_nodes = [helper.make_node("Identity", ["cond_in"], ["cond_out"])]
    else:
        cond_nodes = [helper.make_node("Less", ["v_out", "hundred"], ["cond_out"])]
    body = helper.make_graph([helper.make_node("Add", ["v_in", "one"], ["v_out"]), *cond_nodes], "body",
                             [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [])],
                             [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [])])
    loop = helper.make_node("Loop", [trip, cond, "v0"], ["v"], body=body, name="loop")
    consts = [const("one", 1.0, np.float32), const("hundred", 100.0, np.float32), const("v0", 0.0, np.float32)]
    return model([*extra, loop], [*inputs], [vi("v", [])], [*consts, *inits])


def loop_never_ends(d: Path) -> Path:
    return save(loop_model("", "go", inits=[const("go", True, np.bool_)]), d / "model.onnx")


def loop_without_bounds(d: Path) -> Path:
    return save(loop_model("", "go", "computed", inputs=[vi("go", [], TensorProto.BOOL)]), d / "model.onnx")


def loop_absurd_trip_count(d: Path) -> Path:  # 10**6 * 10**6 iterations: a Mul of constants
    mul = helper.make_node("Mul", ["a", "b"], ["trip"])
    m = loop_model("trip", "", extra=[mul], inits=[const("a", 10**6), const("b", 10**6)])
    return save(m, d / "model.onnx")


def loop_bounded(d: Path) -> Path:  # clean sibling: ten iterations
    return save(loop_model("trip", "", inits=[const("trip", 10)]), d / "model.onnx")


def function_chain(depth: int, calls_per_level: int = 1) -> onnx.ModelProto:
    """Local functions f0..f{depth}: f{k} calls f{k-1} ``calls_per_level`` times in a row; f0 is a Relu."""
    local = [*OPSET, helper.make_opsetid("local", 1)]
    fs = [helper.make_function("local", "f0", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])], local)]
    for k in range(1, depth + 1):
        names = ["X", *[f"t{j}" for j in range(1, calls_per_level)], "Y"]
        body = [helper.make_node(f"f{k - 1}", [names[j]], [names[j + 1]], domain="local")
                for j in range(calls_per_level)]
        fs.append(helper.make_function("local", f"f{k}", ["X"], ["Y"], body, local))
    return model([helper.make_node(f"f{depth}", ["x"], ["y"], domain="local")], [vi("x", [4])], [vi("y", [4])],
                 opsets=local, functions=fs)


def function_nesting_deep(d: Path) -> Path:
    return save(function_chain(24), d / "model.onnx")


def function_nesting_doubling(d: Path, depth: int = 26) -> Path:
    """Each level calls the next twice: 2**26 inlined Relu nodes from a file of 53 nodes."""
    return save(function_chain(depth, 2), d / "model.onnx")


def function_nesting_shallow(d: Path) -> Path:  # clean sibling
    return save(function_chain(3, 2), d / "model.onnx")


# --- models built to stall or blow up the scanner (each old check had one) ----------------------------------------

def concat_doubling_bomb(d: Path, steps: int = 26) -> Path:
    """Shape(x) doubled by Concat ``steps`` times feeds ConstantOfShape: a shape vector of 2**26 entries. ONNX's
    data propagation (the old file.shape-inference) expanded it to ~20 GB of protobuf; it is never expanded now."""
    nodes = [helper.make_node("Shape", ["x"], ["s0"])]
    nodes += [helper.make_node("Concat", [f"s{k}", f"s{k}"], [f"s{k + 1}"], axis=0) for k in range(steps)]
    nodes.append(helper.make_node("ConstantOfShape", [f"s{steps}"], ["y"]))
    return save(model(nodes, [vi("x", [2])], [vi("y", None)]), d / "model.onnx")


def range_computed_bomb(d: Path) -> Path:
    """Range whose limit is a Mul chain of constants (10**12 int64 elements: 8 TB); never materialised."""
    nodes = [helper.make_node("Mul", ["a", "b"], ["ab"]), helper.make_node("Mul", ["ab", "c"], ["limit"]),
             helper.make_node("Range", ["start", "limit", "delta"], ["y"])]
    m = model(nodes, [], [vi("y", ["n"], TensorProto.INT64)],
              [const("a", 10**4), const("b", 10**4), const("c", 10**4), const("start", 0), const("delta", 1)])
    return save(m, d / "model.onnx")


def shape_derived_bomb(d: Path) -> Path:
    """Expand to a shape computed from the input's shape: Shape(x)[1] * 2**20, twice over."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
             helper.make_node("Mul", ["d", "big"], ["n"]), helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "n1"], ["shape"], axis=0),
             helper.make_node("Expand", ["x2", "shape"], ["y"])]
    m = model(nodes, [vi("x", ["b", 16]), vi("x2", [1])], [vi("y", None)],
              [const("one", 1), const("big", 2**20), const("axes", [0])])
    return save(m, d / "model.onnx")


def mul_chain_bomb(d: Path, length: int = 20_000) -> Path:
    """A long chain of shape arithmetic (``length`` Mul/Add nodes) computing the size of a ConstantOfShape:
    2 doubled 40 times over a chain of Mul-by-1 and Add-0 steps."""
    nodes, prev = [], "c0"
    for k in range(length):
        factor = "two" if k % (length // 40) == 0 and k // (length // 40) < 40 else "one"
        op = "Mul" if k % 2 == 0 or factor == "two" else "Add"
        nodes.append(helper.make_node(op, [prev, factor if op == "Mul" else "zero"], [f"c{k + 1}"]))
        prev = f"c{k + 1}"
    nodes.append(helper.make_node("ConstantOfShape", [prev], ["y"]))
    m = model(nodes, [], [vi("y", None)], [const("c0", [1]), const("two", [2]), const("one", [1]),
                                           const("zero", [0])])
    return save(m, d / "model.onnx")


def many_small_ifs(d: Path, count: int = 20_000) -> Path:
    """``count`` tiny If nodes in a chain: the old graph checks copied the outer scope into every branch
    (quadratic: minutes), and so does ONNX's shape inference."""
    nodes, prev = [], "x"
    for k in range(count):
        then = helper.make_graph([helper.make_node("Relu", [prev], [f"t{k}"])], f"t{k}", [], [vi(f"t{k}", [4])])
        other = helper.make_graph([helper.make_node("Neg", [prev], [f"e{k}"])], f"e{k}", [], [vi(f"e{k}", [4])])
        nodes.append(helper.make_node("If", ["c"], [f"h{k}"], then_branch=then, else_branch=other))
        prev = f"h{k}"
    return save(model(nodes, [vi("c", [], TensorProto.BOOL), vi("x", [4])], [vi(prev, [4])]), d / "model.onnx")


def many_small_loops(d: Path, count: int = 20_000) -> Path:
    """``count`` tiny Loop nodes in a chain, each carrying the value through its body."""
    nodes, prev = [], "x"
    for k in range(count):
        body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                                  helper.make_node("Relu", ["v_in"], ["v_out"])], f"b{k}",
                                 [vi("i", [], TensorProto.INT64), vi("cond_in", [], TensorProto.BOOL), vi("v_in", [4])],
                                 [vi("cond_out", [], TensorProto.BOOL), vi("v_out", [4])])
        nodes.append(helper.make_node("Loop", ["trip", "", prev], [f"h{k}"], body=body))
        prev = f"h{k}"
    return save(model(nodes, [vi("x", [4])], [vi(prev, [4])], [const("trip", 1)]), d / "model.onnx")


def tiny_messages_bomb(d: Path, count: int = 10_000_000) -> Path:
    """One node holding ``count`` empty attributes: 2 bytes each on disk, about 200 bytes each parsed. A 20 MB
    file that parses into 2 GB; refused from its wire format, before parsing."""
    from google.protobuf.internal import encoder

    node = helper.make_node("Relu", ["x"], ["y"]).SerializeToString() + (encoder.TagBytes(5, 2) + b"\0") * count
    graph = (encoder.TagBytes(1, 2) + encoder._VarintBytes(len(node)) + node
             + helper.make_graph([], "g", [vi("x", [4])], [vi("y", [4])]).SerializeToString())
    head = helper.make_model(helper.make_graph([], "g", [], []), opset_imports=OPSET)
    head.ClearField("graph")
    path = d / "model.onnx"
    path.write_bytes(head.SerializeToString() + encoder.TagBytes(7, 2) + encoder._VarintBytes(len(graph)) + graph)
    return path


def too_many_nodes(d: Path, count: int = 310_000) -> Path:
    """More nodes than any check may walk (budget.MAX_MODEL_NODES): a few MB of Relu nodes."""
    nodes = [helper.make_node("Relu", [f"h{k}"], [f"h{k + 1}"]) for k in range(count)]
    return save(model(nodes, [vi("h0", [4])], [vi(f"h{count}", [4])]), d / "model.onnx")


def ort_level99_cnn(d: Path) -> Path:
    """A small CNN saved by ONNX Runtime after its level-99 (ORT_ENABLE_ALL) optimization: com.microsoft.nchwc
    Conv/MaxPool/ReorderOutput nodes, and every domain the runtime registers in opset_import."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("MaxPool", ["r2"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    weights = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(np.zeros(16, np.float32), "b1"),
               numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32), "w2")]
    source = save(model(nodes, [vi("x", [1, 3, 32, 32])], [vi("y", [1, 16, 16, 16])], weights,
                        opsets=[helper.make_opsetid("", 17)]), d / "cnn-source.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(d / "cnn-level99.onnx")
    options.log_severity_level = 3  # its warning that the graph is CPU specific is the point here
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return d / "cnn-level99.onnx"


def ort_level99_bundle(d: Path) -> Path:
    """The level-99 CNN as a bundle, with a golden set (its own outputs as references), for a target."""
    import onnxruntime as ort

    from onnxguard import __version__, bundle
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.bundle.manifest import Golden, Manifest, Model, Source, now

    path = ort_level99_cnn(d)
    m = onnx.load(str(path))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    manifest = Manifest(name="cnn99", version="0.1.0", created=now(), onnxguard_version=__version__,
                        source=Source(framework="onnx", framework_version="0", identifier="corpus", task=None,
                                      exporter="onnxruntime", files={}),
                        model=Model(file=bundle.MODEL, sha256="0" * 64, size=0, opset={"ai.onnx": 17},
                                    ir_version=m.ir_version, producer="onnxruntime", inputs=[], outputs=[]),
                        golden=Golden(file=bundle.GOLDEN, batches=1, items=1, origin="npz"), files={})
    return bundle.write(d / "bundle", manifest, m, GoldenSet(({"x": x},), ({"y": y},))).path


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
    # the runtime's own surface
    Case("ep-context-traversal", ep_context_traversal, "ep-context.path"),
    Case("session-config-threads", session_config_threads, "metadata.session-config"),
    Case("tree-child-out-of-range", tree_child_out_of_range, "ml.tree-ensemble"),
    Case("tree-class-out-of-range", tree_class_out_of_range, "ml.tree-ensemble"),
    Case("tree-loop", tree_loop, "ml.tree-ensemble"),
    Case("tree5-leaf-out-of-range", tree5_leaf_out_of_range, "ml.tree-ensemble"),
    Case("loop-never-ends", loop_never_ends, "control-flow.loop-trip"),
    Case("loop-without-bounds", loop_without_bounds, "control-flow.loop-trip"),
    Case("loop-absurd-trip-count", loop_absurd_trip_count, "control-flow.loop-trip"),
    Case("function-nesting-deep", function_nesting_deep, "functions.depth"),
    Case("function-nesting-doubling", function_nesting_doubling, "functions.depth"),
    # allocations computed from constants and shapes, and models built to stall the scanner
    Case("range-computed-bomb", range_computed_bomb, "resources.allocation"),
    Case("shape-derived-bomb", shape_derived_bomb, "resources.allocation"),
    Case("concat-doubling-bomb", concat_doubling_bomb, "resources.allocation"),
    Case("mul-chain-bomb", mul_chain_bomb, "resources.allocation"),
    Case("many-small-ifs", many_small_ifs, "scan.budget"),
    Case("too-many-nodes", too_many_nodes, "scan.budget"),
    Case("tiny-messages-bomb", tiny_messages_bomb, "scan.budget"),
]

# Clean siblings of the runtime-surface cases: ordinary uses of the same features, with no finding at or above
# medium.
CLEAN = [
    ("ep-context-inside", ep_context_inside),
    ("ep-context-embedded", ep_context_embedded),
    ("ordinary-metadata", ordinary_metadata),
    ("tree-ok", tree_ok),
    ("tree5-ok", tree5_ok),
    ("loop-bounded", loop_bounded),
    ("function-nesting-shallow", function_nesting_shallow),
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
