from __future__ import annotations

import json

from onnxguard.speed import bench


def test_bench_compare_runs_the_source_interleaved_and_writes_a_plot(cli, digits_bundle, tmp_path):
    plot = tmp_path / "bench.png"
    r = cli("bench", digits_bundle, "--compare", "--batch-sizes", "1,4", "--threads", "1", "--runs", "5",
            "--warmup", "1", "--json", "--plot", plot)
    assert r.code == 0, r
    report = json.loads(r.out)
    variants = {t["variant"] for t in report["timings"]}
    assert report["baseline"] == "pytorch (source)" and "pytorch (source)" in variants and len(variants) == 2
    assert {t["batch"] for t in report["timings"]} == {1, 4}
    for t in report["timings"]:
        assert t["p50_ms"] > 0 and t["p99_ms"] >= t["p50_ms"] and t["items_per_s"] > 0 and t["runs"] == 5
        assert t["speedup"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_bench_table_and_ratios(cli, digits_bundle):
    r = cli("bench", digits_bundle, digits_bundle / "model.onnx", "--batch-sizes", "2", "--runs", "3", "--warmup", "1",
            "--no-memory")
    assert r.code == 0, r
    assert "p50 ms" in r.out and "x baseline" in r.out and "1.00x" in r.out


def test_bench_bad_arguments(cli, expect_err, digits_bundle, tmp_path):
    expect_err(cli("bench", digits_bundle, "--batch-sizes", "one"), 2, "--batch-sizes")
    expect_err(cli("bench", tmp_path / "missing.onnx"), 2, "missing.onnx")
    expect_err(cli("bench", digits_bundle / "model.onnx", "--compare"), 2, "--compare")


def test_resize_repeats_or_cuts_rows():
    import numpy as np

    b = {"x": np.arange(3)[:, None]}
    assert bench.resize(b, 5)["x"].ravel().tolist() == [0, 1, 2, 0, 1]
    assert bench.resize(b, 2)["x"].ravel().tolist() == [0, 1]
