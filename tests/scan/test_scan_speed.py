"""Scanning a 250 MB model takes seconds: the scanner parses once and never copies weights needlessly."""

from __future__ import annotations

import time

import numpy as np
import pytest
from onnx import helper, numpy_helper
from scan_corpus import model, save, vi

from onnxguard.scan import Severity, scan

LIMIT_S = 20


@pytest.mark.slow
def test_scan_of_a_250mb_model_takes_seconds(tmp_path):
    side = 4000  # 4 x (4000 x 4000 float32) = 256 MB of initializers
    weights = [numpy_helper.from_array(np.full((side, side), i, np.float32), f"w{i}") for i in range(4)]
    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i}", f"w{i}"], [f"h{i + 1}"]) for i in range(4)]
    path = save(model(nodes, [vi("x", ["n", side])], [vi("h4", ["n", side])], weights), tmp_path / "big.onnx")
    del weights
    assert path.stat().st_size > 250 * 10**6
    start = time.perf_counter()
    report = scan(path)
    seconds = time.perf_counter() - start
    print(f"scanned {path.stat().st_size / 1e6:.0f} MB in {seconds:.2f} s")
    assert report.at_or_above(Severity.MEDIUM) == (), report.findings
    assert seconds < LIMIT_S
