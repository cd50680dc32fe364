"""runtime.LengthAware: a padded batch run without its padding gives the plain padded run's outputs, in the
caller's order, for left and right padding, one row, rows of equal length and a row of length 1; and
speed.lengths decides from measurement whether left padding may be moved."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import runtime
from onnxguard.bundle.golden import GoldenSet
from onnxguard.runtime.lengths import Cost, LengthAware, LengthPlan, buckets, rows
from onnxguard.speed import lengths

VOCAB, DIM, LABELS, WIDTH = 50, 16, 3, 24
SPLIT = Cost(0.0, 1.0, 0.0)  # no overhead: every distinct width is worth its own bucket


def toy_transformer(positions: bool, seed: int = 0) -> onnx.ModelProto:
    """One masked self-attention layer, masked mean pooling and a classifier: ``logits`` [batch, 3] and the
    sequence output ``hidden`` [batch, sequence, 16]; ``positions`` adds absolute position embeddings (BERT's
    kind, so where the padding sits changes the answer)."""
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)

    inits = [w("emb", VOCAB, DIM), w("wq", DIM, DIM), w("wk", DIM, DIM), w("wv", DIM, DIM), w("wo", DIM, LABELS),
             numpy_helper.from_array(np.array(DIM ** -0.5, np.float32), "scale"),
             numpy_helper.from_array(np.array(-1e9, np.float32), "neg"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["tok"])]
    if positions:
        inits += [w("pos", 64, DIM), numpy_helper.from_array(np.array(0, np.int64), "zero"),
                  numpy_helper.from_array(np.array(1, np.int64), "step"),
                  numpy_helper.from_array(np.array(1, np.int64), "i1")]
        nodes += [helper.make_node("Shape", ["input_ids"], ["shape"]),
                  helper.make_node("Gather", ["shape", "i1"], ["seq"]),
                  helper.make_node("Range", ["zero", "seq", "step"], ["idx"]),
                  helper.make_node("Gather", ["pos", "idx"], ["p"]),
                  helper.make_node("Add", ["tok", "p"], ["x"])]
    else:
        nodes.append(helper.make_node("Identity", ["tok"], ["x"]))
    nodes += [
        helper.make_node("MatMul", ["x", "wq"], ["q"]), helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"]), helper.make_node("Mul", ["s0", "scale"], ["s1"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m"], ["inv"]), helper.make_node("Mul", ["inv", "neg"], ["bias0"]),
        helper.make_node("Unsqueeze", ["bias0", "axis1"], ["bias"]),
        helper.make_node("Add", ["s1", "bias"], ["s2"]), helper.make_node("Softmax", ["s2"], ["a"], axis=-1),
        helper.make_node("MatMul", ["a", "v"], ["h0"]), helper.make_node("Add", ["h0", "x"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["hidden"]),
        helper.make_node("Unsqueeze", ["m", "axis2"], ["m3"]), helper.make_node("Mul", ["hidden", "m3"], ["hm"]),
        helper.make_node("ReduceSum", ["hm", "axis1"], ["sum"], keepdims=0),
        helper.make_node("ReduceSum", ["m3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["sum", "count"], ["pooled"]),
        helper.make_node("MatMul", ["pooled", "wo"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
                       for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", LABELS]),
         helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "sequence", DIM])], inits)
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def padded(lengths: list[int], side: str, width: int = WIDTH, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, cols] = rng.integers(1, VOCAB, n)
        mask[i, cols] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _assert_equal(la: LengthAware, batch: dict[str, np.ndarray]) -> None:
    plain, aware = la.plain(batch), la.run(batch)
    np.testing.assert_allclose(aware["logits"], plain["logits"], rtol=0, atol=1e-5)
    real = batch["attention_mask"] != 0
    np.testing.assert_allclose(aware["hidden"][real], plain["hidden"][real], rtol=0, atol=1e-5)
    assert not aware["hidden"][~real].any()  # padding positions of a sequence output are 0


@pytest.fixture(scope="module")
def sessions():
    return {p: runtime.session(toy_transformer(p)) for p in (False, True)}


SPREAD = [5, 24, 1, 12, 7, 24, 3, 18]  # out of order on purpose: outputs must come back in this order


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("lens", [SPREAD, [9], [11] * 5, [1, 20, 1]], ids=["spread", "one-row", "equal", "len-1"])
def test_equal_to_the_padded_run(sessions, side, positions, lens):
    shift_free = not positions  # what speed.lengths measures (below): true only without position embeddings
    la = LengthAware(sessions[positions], LengthPlan(cost=SPLIT, shift_free=shift_free))
    _assert_equal(la, padded(lens, side))


def test_right_padding_really_runs_in_buckets(sessions):
    la = LengthAware(sessions[True], LengthPlan(cost=SPLIT, max_buckets=3))
    batch = padded(SPREAD, "right")
    groups = la.plan_for(batch["attention_mask"])
    assert len(groups) == 3 and max(g.width for g in groups) == 24 and min(g.width for g in groups) < 24
    assert sorted(int(i) for g in groups for i in g.rows) == list(range(len(SPREAD)))


def test_left_padding_moves_only_when_shift_free(sessions):
    batch = padded(SPREAD, "left")
    kept = LengthAware(sessions[True], LengthPlan(cost=SPLIT)).plan_for(batch["attention_mask"])
    assert [g.width for g in kept] == [WIDTH]  # absolute positions: left-padded rows keep their width
    moved = LengthAware(sessions[False], LengthPlan(cost=SPLIT, shift_free=True)).plan_for(batch["attention_mask"])
    assert min(g.width for g in moved) < WIDTH


def test_moving_left_padding_of_a_positional_model_is_wrong(sessions):
    """The check that decides shift_free can fail: the positional model's answers do move."""
    la = LengthAware(sessions[True], LengthPlan(cost=SPLIT, shift_free=True))
    batch = padded(SPREAD, "left")
    assert np.abs(la.run(batch)["logits"] - la.plain(batch)["logits"]).max() > 1e-3


def test_the_cost_model_decides_the_buckets():
    needs = np.array([4, 4, 5, 60, 64])
    assert len(buckets(needs, Cost(1000.0, 1.0, 0.0))) == 1  # overhead dominates: one run
    assert [b.width for b in buckets(needs, Cost(0.0, 1.0, 0.0), 2)] == [5, 64]
    assert Cost.fit([(1, 8, 1.0 + 8), (1, 16, 1.0 + 16), (4, 16, 1.0 + 64), (4, 32, 1.0 + 128)]).overhead_ms == (
        pytest.approx(1.0, abs=1e-6))


def _partitions(m: int, k: int):
    """Every way to cut ``m`` sorted items into at most ``k`` consecutive non-empty runs (as cut points)."""
    from itertools import combinations

    for parts in range(1, min(k, m) + 1):
        for cuts in combinations(range(1, m), parts - 1):
            yield (0, *cuts, m)


@pytest.mark.parametrize("seed", range(40))
def test_buckets_are_the_cheapest_grouping(seed):
    """Against every grouping of the sorted rows (brute force), for random needs, costs and bucket limits."""
    rng = np.random.default_rng(seed)
    needs = rng.integers(1, 40, int(rng.integers(1, 9)))
    cost = Cost(float(rng.uniform(0, 20)), float(rng.uniform(0.01, 1)), float(rng.uniform(0, 0.05)))
    k = int(rng.integers(1, 5))
    got = buckets(needs, cost, k)
    assert sorted(np.concatenate([b.rows for b in got]).tolist()) == list(range(len(needs)))
    assert len(got) <= k and all((needs[b.rows] <= b.width).all() for b in got)
    w = np.sort(needs)
    brute = min(sum(float(cost(hi - lo, w[hi - 1])) for lo, hi in zip(cut, cut[1:], strict=False))
                for cut in _partitions(len(w), k))
    assert sum(float(cost(len(b.rows), b.width)) for b in got) == pytest.approx(brute)


def test_rows_of_one_need_share_a_bucket():
    needs = np.array([7, 3, 7, 7, 3, 9])
    got = buckets(needs, Cost(0.0, 1.0, 0.0))
    assert [(b.width, sorted(b.rows.tolist())) for b in got] == [(3, [1, 4]), (7, [0, 2, 3]), (9, [5])]


def test_measure_cost_fits_what_a_run_takes():
    """A run that sleeps 2 ms plus 0.05 ms a token: the fitted model reads both back (sleep only ever oversleeps)."""
    import time

    from onnxguard.runtime.lengths import measure_cost

    def run(feed):
        ids = feed["input_ids"]
        assert (feed["attention_mask"] == 1).all() and feed["scale"].shape == (3,)  # not per row: as it is
        time.sleep((2.0 + 0.05 * ids.size) / 1e3)

    row = {"input_ids": np.arange(64)[None], "attention_mask": np.zeros((1, 64), np.int64), "scale": np.ones(3)}
    cost, points = measure_cost(run, row, widths=(8, 64), rows_at=(1, 4), runs=3)
    assert [(n, w) for n, w, _ in points] == [(1, 8), (1, 64), (4, 8), (4, 64)]
    assert 1.5 < cost.overhead_ms < 4.0 and 0.04 < cost.token_ms + 64 * cost.token2_ms < 0.08


def test_rows_reads_the_mask():
    mask = np.array([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    r = rows(mask, shift_free=True)
    assert r.need.tolist() == [2, 2, 4, 3] and r.shift.tolist() == [0, 2, 0, 0]
    assert rows(mask, shift_free=False).need.tolist() == [2, 4, 4, 3]


@pytest.mark.parametrize("positions", [False, True])
def test_speed_lengths_measures_shift_freedom(positions):
    model = toy_transformer(positions)
    sess = runtime.session(model)
    inputs = [padded(SPREAD, "right"), padded(SPREAD, "left", seed=2), padded([3], "right")]
    refs = [dict(zip(["logits", "hidden"], sess.run(["logits", "hidden"], b), strict=True)) for b in inputs]
    from onnxguard.accuracy.parity import Tolerance

    planned = lengths.plan(model, model, GoldenSet(tuple(inputs), tuple(refs)), {"logits": "scores"}, Tolerance())
    assert planned.plan is not None, planned.why
    assert planned.plan.shift_free is (not positions)
    assert planned.plan.sequence_outputs == ("hidden",)
    assert planned.gate is not None and planned.gate.passed


def test_measure_cost_can_take_the_fastest_run_of_each_point():
    """Two runs in three disturbed by 30 ms (a busy host): the median fit reads the disturbance, the fastest not."""
    import itertools
    import time

    from onnxguard.runtime.lengths import measure_cost

    calls = itertools.count()

    def run(feed):
        time.sleep((2.0 + 0.05 * feed["input_ids"].size + (30.0 if next(calls) % 3 else 0.0)) / 1e3)

    row = {"input_ids": np.arange(64)[None], "attention_mask": np.ones((1, 64), np.int64)}
    kw = {"widths": (8, 64), "rows_at": (1, 4), "runs": 3}
    assert measure_cost(run, row, **kw)[0].overhead_ms > 20
    cost = measure_cost(run, row, fastest=True, **kw)[0]
    assert 1.5 < cost.overhead_ms < 4.0 and 0.04 < cost.token_ms + 64 * cost.token2_ms < 0.08
