"""Bounded work: models built to stall or blow up each old check finish within their budget and fail; a check
that runs out of budget is a CRITICAL scan.budget finding; the memory bombs are measured, never materialised.

The stall and memory cases run the scan in a child process (``scan_child``), under a wall-clock timeout, and
read the child's peak resident memory (VmHWM) when it is done.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from scan_corpus import (
    concat_doubling_bomb,
    const,
    function_nesting_doubling,
    many_small_ifs,
    many_small_loops,
    model,
    mul_chain_bomb,
    range_bomb,
    range_computed_bomb,
    relu_model,
    save,
    shape_derived_bomb,
    tiny_messages_bomb,
    too_many_nodes,
    vi,
)

from cli_runner import run
from onnxguard.scan import Severity, budget, scan, symbolic
from onnxguard.scan.interface import BaseCheck

# The child must be done well within this (its scan budget is budget.SCAN_SECONDS): a stall is a failure.
CHILD_TIMEOUT_S = 120
# What a scan of a memory bomb may add to the child's peak memory over scanning a one-node model. The old
# scanner grew to 1.2 GB on a 22-step Concat doubling chain and ~20 GB on 26 steps (ONNX's data propagation).
EXTRA_PEAK_MB = 150
# The stall cases are large graphs (tens of thousands of nodes and subgraphs): parsing them and walking them
# takes memory in proportion to the file (a few hundred MB at most); what must never happen is growth past it.
STALL_EXTRA_PEAK_MB = 600

CHILD = textwrap.dedent("""
    import json, sys, time
    from onnxguard import scan
    from onnxguard.scan import Severity
    start = time.perf_counter()
    report = scan.scan(sys.argv[1])
    seconds = time.perf_counter() - start
    hwm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(json.dumps({"seconds": seconds, "peak_mb": hwm_kb / 1024,
                      "failing": sorted({f.check for f in report.at_or_above(Severity.MEDIUM)}),
                      "critical": sorted({f.check for f in report.at_or_above(Severity.CRITICAL)})}))
""")


def scan_child(path: Path) -> dict:
    """Scan ``path`` in a fresh interpreter; its wall time, peak memory and failing checks."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True,
                          timeout=CHILD_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["child_seconds"] = time.perf_counter() - started
    print(f"{path.parent.name}: {result}")
    return result


@pytest.fixture(scope="module")
def baseline_peak_mb(tmp_path_factory) -> float:
    return scan_child(save(relu_model(), tmp_path_factory.mktemp("baseline") / "model.onnx"))["peak_mb"]


STALLS = [
    # (builder, a check that must fail it): each made the old scanner run for minutes or grow to gigabytes
    (concat_doubling_bomb, "resources.allocation"),   # old: ONNX data propagation, ~20 GB
    (mul_chain_bomb, "resources.allocation"),         # 20,000 nodes of shape arithmetic
    (many_small_ifs, "scan.budget"),                  # old: quadratic scope copies, minutes
    (many_small_loops, "scan.budget"),
    (function_nesting_doubling, "functions.depth"),   # old: 2**26 inlined bodies in shape inference
    (too_many_nodes, "scan.budget"),
]


@pytest.mark.slow
@pytest.mark.parametrize("build, check", STALLS, ids=[b.__name__ for b, _ in STALLS])
def test_a_model_built_to_stall_the_scanner_finishes_within_budget_and_fails(build, check, tmp_path,
                                                                              baseline_peak_mb):
    result = scan_child(build(tmp_path))
    assert check in result["failing"], result
    assert result["seconds"] < budget.SCAN_SECONDS, result
    assert result["peak_mb"] < baseline_peak_mb + STALL_EXTRA_PEAK_MB, result


BOMBS = [(range_bomb, "resources.allocation"), (range_computed_bomb, "resources.allocation"),
         (shape_derived_bomb, "resources.allocation"), (concat_doubling_bomb, "resources.allocation"),
         (tiny_messages_bomb, "scan.budget")]


@pytest.mark.parametrize("build, check", BOMBS, ids=[b.__name__ for b, _ in BOMBS])
def test_memory_bombs_are_measured_not_materialised(build, check, tmp_path, baseline_peak_mb):
    """A Range of 10**12 elements from constants (the case that grew the old scan to 19.7 GB came from
    constants too), one whose limit is a Mul chain, a Shape-derived Expand, a Concat doubling chain, and a 20 MB
    file that parses into 2 GB: each is flagged, in seconds, without the child's peak memory moving (beyond the
    file itself, read once)."""
    path = build(tmp_path)
    result = scan_child(path)
    assert check in result["failing"], result
    assert result["seconds"] < 10, result
    assert result["peak_mb"] < baseline_peak_mb + EXTRA_PEAK_MB + path.stat().st_size / 2**20, result


def test_docs_carry_every_budget_with_its_value():
    docs = (Path(__file__).parents[2] / "docs" / "scan.md").read_text()
    for name in ("CHECK_SECONDS", "SCAN_SECONDS", "MAX_MODEL_NODES", "MAX_NODES_VISITED", "MAX_FOLD_ELEMENTS",
                 "MAX_FOLDED_ELEMENTS", "MAX_WALK_DEPTH", "MAX_PARSE_OVERHEAD", "MAX_WIRE_FIELDS", "INFERENCE_NODES",
                 "INFERENCE_SCOPE_NAMES", "INFERENCE_SHAPE_DATA"):
        value = getattr(budget, name)
        shown = f"{value:.0f} s" if name.endswith("SECONDS") else f"{value:,}"
        assert f"| `{name}` | {shown} |" in docs, name


def test_a_budget_overrun_fails_at_every_level_on_the_command_line(tmp_path):
    path = concat_doubling_bomb(tmp_path)
    r = run("scan", path, "--fail-on", "critical")
    assert r.code == 1, r
    assert "scan.budget" in r.out


class Looping(BaseCheck):
    id = "test.looping"
    severity = Severity.LOW
    title = "walks forever"

    def run(self, ctx):
        while True:
            budget.current().visit(1000)
        yield  # pragma: no cover


class Sleeping(BaseCheck):
    id = "test.sleeping"
    severity = Severity.LOW
    title = "takes its time, reading the clock"

    def run(self, ctx):
        yield self.finding(ctx, "found before stalling")
        while True:
            time.sleep(0.01)
            budget.current().tick()


def test_a_check_that_loops_runs_out_of_budget_and_fails_closed(tmp_path):
    report = scan(save(relu_model(), tmp_path / "m.onnx"), checks=(Looping(),))
    assert [(f.check, f.severity) for f in report.findings] == [("scan.budget", Severity.CRITICAL)]
    assert "test.looping" in report.findings[0].message and "nodes visited" in report.findings[0].message


def test_a_check_past_its_deadline_keeps_what_it_found_and_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "CHECK_SECONDS", 0.2)
    start = time.perf_counter()
    report = scan(save(relu_model(), tmp_path / "m.onnx"), checks=(Sleeping(),))
    assert time.perf_counter() - start < 5
    assert sorted((f.check, f.severity) for f in report.findings) == [("scan.budget", Severity.CRITICAL),
                                                                      ("test.sleeping", Severity.LOW)]
    assert "wall time" in next(f.message for f in report.findings if f.check == "scan.budget")


def test_when_the_scan_deadline_is_spent_the_remaining_checks_fail(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "SCAN_SECONDS", 0.0)
    report = scan(save(relu_model(), tmp_path / "m.onnx"))
    assert report.findings and {f.check for f in report.findings} == {"scan.budget"}
    assert all("was not run" in f.message for f in report.findings)


def test_walks_outside_a_scan_are_not_budgeted(tmp_path):
    """The runtime's external-data guard walks models outside any scan: it must never see a budget."""
    from onnxguard.scan import walk

    m = onnx.load(str(many_small_ifs(tmp_path, count=100)))
    assert budget.current() is budget.UNBOUNDED
    assert len(list(walk.bodies(m))) == 201


def test_walks_shared_within_a_scan_charge_each_check_what_the_first_walk_cost(tmp_path):
    """bodies and stored_tensors are walked once per scan; every later check is charged as if it walked them."""
    from onnxguard.scan import walk

    m = onnx.load(str(many_small_ifs(tmp_path, count=100)))
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(3, np.float32), "w"))
    charges = []
    with budget.scan_memo():
        for _ in range(3):
            with budget.charged_to(budget.Budget()) as b:
                assert len(list(walk.bodies(m))) == 201
                tensors = list(walk.stored_tensors(m))
            charges.append(b.visited)
    assert [t.tensor.name for t in tensors] == ["w"]
    assert charges[0] == charges[1] == charges[2] == 2 * (100 * 3 + 201) + 1  # nodes + 1 per body, twice; one tensor
    with budget.scan_memo(), budget.charged_to(budget.Budget(max_nodes=600)), \
            pytest.raises(budget.BudgetExceeded, match="nodes visited"):
        list(walk.bodies(m))
        list(walk.stored_tensors(m))


# --- the symbolic pass -------------------------------------------------------------------------------------------

def _values(nodes, inputs=(), inits=()) -> dict[str, symbolic.Value]:
    found = symbolic.analyse(model(nodes, list(inputs), [], list(inits)))
    return next(iter(found.envs.values())).values


def test_shape_arithmetic_is_followed():
    values = _values([helper.make_node("Shape", ["x"], ["s"]),
                      helper.make_node("Gather", ["s", "one"], ["d"], axis=0),
                      helper.make_node("Mul", ["d", "four"], ["n"]),
                      helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
                      helper.make_node("Concat", ["s", "n1"], ["shape"], axis=0),
                      helper.make_node("Slice", ["shape", "starts", "ends"], ["tail"]),
                      helper.make_node("Reshape", ["x", "minus_one"], ["flat"])],
                     [vi("x", ["batch", 3, 5])],
                     [const("one", 1), const("four", 4), const("axes", [0]), const("starts", [1]),
                      const("ends", [2**62]), const("minus_one", [-1])])
    assert values["s"].entries == (None, 3, 5)
    assert values["n"].ints() == [12]
    assert values["shape"].entries == (None, 3, 5, 12)
    assert values["tail"].entries == (3, 5, 12)
    assert values["flat"].dims == (None,)


def test_a_range_is_sized_never_built():
    values = _values([helper.make_node("Mul", ["a", "b"], ["limit"]),
                      helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
                      helper.make_node("Range", ["zero", "ten", "one"], ["small"])],
                     inits=[const("a", 10**6), const("b", 10**6), const("zero", 0), const("one", 1),
                            const("ten", 10)])
    assert values["r"].dims == (10**12,) and values["r"].data is None
    assert values["small"].ints() == list(range(10))


def test_int64_arithmetic_wraps_as_the_runtime_does():
    values = _values([helper.make_node("Mul", ["big", "big"], ["square"])], inits=[const("big", [2**32])])
    assert values["square"].ints() == [0]


def test_folding_is_charged_to_the_budget():
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["c0"], value=helper.make_tensor("v", TensorProto.INT64,
                                                                                             [1], [1]))]
    nodes += [helper.make_node("Add", [f"c{k}", "c0"], [f"c{k + 1}"]) for k in range(50)]
    m = model(nodes, [], [], [const("shape", [4000])])
    tight = budget.Budget(max_elements=100_000)
    with budget.charged_to(tight), pytest.raises(budget.BudgetExceeded, match="elements folded"):
        symbolic.analyse(m)
    assert np.array_equal(_values(nodes, inits=[const("shape", [4000])])["c50"].data, np.full(4000, 51))
