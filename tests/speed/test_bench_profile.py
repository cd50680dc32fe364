"""``bench --profile``: the top operators by time from ONNX Runtime's profiler, per variant and cell.

The source documents' case: a scikit-learn classifier exported with ZipMap (a list of {class: probability} maps
per row) spends most of its run in ZipMap at batch 256; the same classifier without ZipMap has no such operator.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from onnxguard.speed import bench


@pytest.fixture(scope="module")
def logreg(tmp_path_factory) -> dict[str, Path]:
    """A 4-feature, 10-class logistic regression saved with and without ZipMap (at batch 256 its ZipMap takes
    about 1.3 to 2 times the next operator's time on this machine, where 3 classes gave as little as 0.84)."""
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4)).astype(np.float32)
    y = np.argmax(x @ rng.standard_normal((4, 10)), axis=1)
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    d = tmp_path_factory.mktemp("logreg")
    paths = {}
    for zipmap in (True, False):
        model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": zipmap}}, target_opset=17)
        paths[f"zipmap={zipmap}"] = d / f"logreg_zipmap_{str(zipmap).lower()}.onnx"
        paths[f"zipmap={zipmap}"].write_bytes(model.SerializeToString())
    return paths


def _profiles(report: dict) -> dict[tuple[str, int], list[dict]]:
    return {(t["variant"], t["batch"]): t["profile"] for t in report["timings"]}


def test_bench_profile_names_zipmap_as_the_top_operator_at_batch_256(cli, logreg, tmp_path, monkeypatch):
    """And leaves no profile file anywhere: not in the working directory, not in the temporary directory."""
    work, scratch = tmp_path / "cwd", tmp_path / "tmp"
    work.mkdir()
    scratch.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    with_zm, without = logreg["zipmap=True"], logreg["zipmap=False"]
    r = cli("bench", with_zm, without, "--profile", "--top", "3", "--batch-sizes", "1,256", "--threads", "1",
            "--runs", "3", "--warmup", "1", "--no-memory", "--json")
    assert r.code == 0, r
    profiles = _profiles(json.loads(r.out))
    top = profiles[(with_zm.name, 256)]
    assert top[0]["op"] == "ZipMap", top
    assert set(top[0]) == {"op", "ms", "share", "calls"} and len(top) <= 3
    assert top[0]["calls"] == 1 and top[0]["ms"] > 0 and 0 < top[0]["share"] <= 1
    assert sum(op["share"] for op in top) <= 1.0 + 1e-9
    assert all(a["ms"] >= b["ms"] for a, b in zip(top, top[1:], strict=False))  # slowest first
    for batch in (1, 256):
        ops = {op["op"] for op in profiles[(without.name, batch)]}
        assert ops and "ZipMap" not in ops
    assert list(work.iterdir()) == [] and list(scratch.iterdir()) == []
    assert os.getcwd() == str(work)


def test_bench_profile_table_and_no_profile_without_the_flag(cli, logreg):
    r = cli("bench", logreg["zipmap=True"], "--profile", "--batch-sizes", "256", "--threads", "1", "--runs", "2",
            "--warmup", "0", "--no-memory")
    assert r.code == 0, r
    assert "top operators: logreg_zipmap_true.onnx, batch 256" in r.out and "ZipMap" in r.out
    r = cli("bench", logreg["zipmap=True"], "--batch-sizes", "1", "--runs", "2", "--warmup", "0", "--no-memory",
            "--json")
    assert r.code == 0, r
    assert all(t["profile"] is None for t in json.loads(r.out)["timings"])  # the key is there, empty


def test_profiling_is_not_in_the_timings_and_plots(logreg, tmp_path):
    """Profiled calls run after the timed ones, apart: the timed calls are exactly ``runs``; the plot draws it."""
    pytest.importorskip("matplotlib")
    calls: list[str] = []

    def make(threads):
        return lambda batch: calls.append("timed")

    def profile(batch, threads, runs, top):
        calls.append("profiled")
        return (bench.OpTime("ZipMap", 1.0, 0.6, 1), bench.OpTime("LinearClassifier", 0.5, 0.3, 1))[:top]

    report = bench.bench([bench.Variant("v", make, profile=profile)], {"x": np.zeros((1, 4), np.float32)},
                         bench.BenchOptions(batch_sizes=(1, 2), threads=(1,), warmup=0, runs=4, memory=False,
                                            profile=True, profile_top=1))
    assert calls == ["timed"] * 4 + ["profiled"] + ["timed"] * 4 + ["profiled"]
    assert all(t.runs == 4 and t.profile == (bench.OpTime("ZipMap", 1.0, 0.6, 1),) for t in report.timings)
    bench.plot(report, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_onnx_direct_and_a_relative_prefix_is_refused(logreg):
    from onnxguard import runtime
    from onnxguard.errors import InputError

    data = logreg["zipmap=True"].read_bytes()
    ops = bench.profile_onnx(data, {"X": np.zeros((256, 4), np.float32)}, 1, runs=3, top=None)
    assert {op.op for op in ops} >= {"ZipMap", "LinearClassifier"}
    with pytest.raises(InputError, match="absolute"):
        runtime.session(data, profile_prefix="ort")
