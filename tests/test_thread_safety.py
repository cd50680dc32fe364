"""Library calls may run in threads of a server: none may change process-global state while it runs.

Quantization (dynamic, static), the ORT-format conversion, transformer fusions, graph optimization and a
benchmark run together in threads, while a watcher samples what belongs to the whole process: the working
directory, the root logger's level and handlers, sys.stdout / sys.stderr, sys.path, the warnings filters and
torch's thread count. Nothing may change, even for a moment, and nothing may be left in the working directory.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import runtime
from onnxguard.progress import silent
from onnxguard.speed import bench, optimize, quantize
from onnxguard.target import ortformat


def _cnn() -> onnx.ModelProto:
    """Conv -> Relu -> Reshape -> MatMul: something for every quantizer and the ORT-format converter."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 1, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal((8 * 8 * 8, 10)).astype(np.float32), "M"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["f"]), helper.make_node("MatMul", ["f", "M"], ["y"])]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


try:  # imported up front: importing torch sets warnings filters of its own
    import torch
except ImportError:
    torch = None


def _torch_threads():
    return None if torch is None else torch.get_num_threads()


def _state() -> dict:
    root = logging.getLogger()
    return {"cwd": os.getcwd(), "root level": root.level, "root handlers": list(root.handlers),
            "stdout": id(sys.stdout), "stderr": id(sys.stderr), "sys.path": list(sys.path),
            "warnings filters": list(warnings.filters), "torch threads": _torch_threads(),
            "logging disabled": logging.root.manager.disable}


class Watcher(threading.Thread):
    def __init__(self, before: dict):
        super().__init__(daemon=True)
        self.before, self.changes, self.stop = before, [], threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            now = _state()
            self.changes += [(k, self.before[k], now[k]) for k in now if now[k] != self.before[k]]
            time.sleep(0.0005)


def test_library_calls_in_threads_leave_process_state_alone(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = _cnn()
    data = model.SerializeToString()
    rng = np.random.default_rng(1)
    calibration = tuple({"x": rng.standard_normal((4, 1, 8, 8)).astype(np.float32)} for _ in range(3))

    def ort_format(kind: str):
        stage = tmp_path / f"{kind}-out"
        stage.mkdir()
        ortformat._convert(data, stage, kind, silent)
        return stage

    def timing():
        return bench.bench([bench.onnx_variant("cnn", model)], {"x": calibration[0]["x"]},
                           bench.BenchOptions(batch_sizes=(1, 4), threads=(1, 2), warmup=1, runs=5, memory=False))

    jobs = {
        "dynamic": lambda: quantize.quantize(model, quantize.QuantizeOptions("dynamic")),
        "static": lambda: quantize.quantize(model, quantize.QuantizeOptions("static", calibration=calibration)),
        "fp16": lambda: quantize.quantize(model, quantize.QuantizeOptions("fp16")),
        "mobile": lambda: ort_format("mobile"),
        "edge": lambda: ort_format("edge"),
        "optimize": lambda: optimize.optimize(model, optimize.OptimizeOptions(level="all")),
        "fusions": lambda: optimize.fuse(model, "bert"),
        "bench": timing,
    }
    before = _state()
    watcher = Watcher(before)
    watcher.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = {name: pool.submit(job) for name, job in jobs.items()}
            results = {name: f.result() for name, f in futures.items()}
    finally:
        watcher.stop.set()
        watcher.join()
    assert watcher.changes == []
    assert _state() == before
    assert list(cwd.iterdir()) == []  # no scratch file of any tool landed in the working directory

    # ... and each call did its work
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in results["static"].model.graph.node}
    assert results["static"].preprocessed and not results["dynamic"].preprocessed
    assert "ConvInteger" in {n.op_type for n in results["dynamic"].model.graph.node}
    assert results["fp16"].size_after < results["fp16"].size_before
    x = {"x": calibration[0]["x"]}
    (ref,) = runtime.run(runtime.session(model), [x])
    for kind in ("mobile", "edge"):
        stage = results[kind]
        assert sorted(p.name for p in stage.iterdir()) == ["model.ort", "model.with_runtime_opt.ort",
                                                           "required_operators.config",
                                                           "runtime_opt.required_operators.config"]
        assert "ai.onnx;" in (stage / "required_operators.config").read_text()
        (out,) = runtime.run(runtime.session((stage / "model.ort").read_bytes()), [x])
        np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-4, atol=1e-4)
    assert results["fusions"][1] == {}  # not a transformer: nothing to fuse, and the call still ran in isolation
    assert len(results["bench"].timings) == 4


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_a_quantizer_failure_is_one_model_error_line_and_prints_nothing(mode, capfd):
    """The child's stderr stays with the child; the caller gets one line."""
    from onnxguard.errors import ModelError

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    calibration = ({"wrong_name": np.zeros(2, np.float32)},)
    options = quantize.QuantizeOptions(mode, calibration=calibration)
    if mode == "dynamic":
        model.graph.node[0].input[0] = "undefined"  # the quantizer cannot order the graph
    with pytest.raises(ModelError, match=f"^{mode} quantization failed: ") as e:
        quantize.quantize(model, options)
    assert "\n" not in str(e.value)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
