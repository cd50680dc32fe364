"""Streaming: sealing and unsealing a large model take a few MB of memory, not the model's size."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import bundle
from onnxguard.bundle import manifest
from onnxguard.bundle.manifest import Manifest, Model, Source

SIZE_MB = 300

CHILD = r"""
import json, sys, time
import pyrage
from onnxguard.trust import sealing

def peak():
    # VmHWM: this process's own peak RSS (ru_maxrss would carry the parent's high-water mark across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

src, work, step = sys.argv[1:4]
ident = pyrage.x25519.Identity.generate() if step == "seal" else None
base, t = peak(), time.perf_counter()
if step == "seal":
    sealing.seal(src, [str(ident.to_public())], work + "/sealed")
    open(work + "/id.txt", "w").write(str(ident) + "\n")
elif step == "unseal":
    sealing.unseal(work + "/sealed", work + "/id.txt", work + "/unsealed")
else:
    data = sealing.open_model(work + "/sealed", work + "/id.txt")
print(json.dumps({"step": step, "baseline_mib": base, "peak_mib": peak(), "seconds": time.perf_counter() - t}))
"""


def _big_bundle(path) -> int:
    n = SIZE_MB * 1024 * 1024 // 4
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(n, dtype=np.float32).reshape(-1, 1024), "W")
    graph = helper.make_graph([helper.make_node("Identity", ["W"], ["y"])], "big", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    m = Manifest(name="big", version="1", created=manifest.now(), onnxguard_version="0.1.0",
                 source=Source(framework="onnx", framework_version="1", identifier="big", task=None, exporter="helper",
                               files={}),
                 model=Model(file=bundle.MODEL, sha256="0" * 64, size=0, opset={"ai.onnx": 18}, ir_version=10,
                             producer="tests", inputs=[], outputs=[]),
                 files={})
    return bundle.write(path, m, model, None).manifest.model.size


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak RSS read from /proc/self/status")
def test_seal_and_unseal_stream(tmp_path):
    size = _big_bundle(tmp_path / "big") / 2**20
    runs = {}
    for step in ("seal", "open", "unseal"):
        r = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "big"), str(tmp_path), step],
                           capture_output=True, text=True, timeout=600, check=False)
        assert r.returncode == 0, r.stderr
        runs[step] = json.loads(r.stdout)
    extra = {k: v["peak_mib"] - v["baseline_mib"] for k, v in runs.items()}
    print(json.dumps({"model_mib": round(size), **{k: round(v, 1) for k, v in extra.items()}}))
    assert extra["seal"] < 64, runs  # a 300 MB model: a few MB, not 300
    assert extra["unseal"] < 64, runs
    assert extra["open"] < size + 64, runs  # in memory by design: the plaintext once, no second copy
    assert (tmp_path / "unsealed" / "model.onnx").read_bytes() == (tmp_path / "big" / "model.onnx").read_bytes()
