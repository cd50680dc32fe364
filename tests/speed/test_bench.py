from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from onnxguard.cli.bench import _sleeping_openmp
from onnxguard.speed import bench


def test_bench_compare_runs_the_source_interleaved_and_writes_a_plot(cli, digits_bundle, tmp_path):
    plot = tmp_path / "bench.png"
    r = cli("bench", digits_bundle, "--compare", "--batch-sizes", "1,4", "--threads", "1", "--runs", "5",
            "--warmup", "1", "--json", "--plot", plot, "--allow-unsigned")
    assert r.code == 0, r
    report = json.loads(r.out)
    variants = {t["variant"] for t in report["timings"]}
    assert report["baseline"] == "pytorch (source)" and "pytorch (source)" in variants and len(variants) == 2
    assert {t["batch"] for t in report["timings"]} == {1, 4}
    for batch in (1, 4):
        cell = {t["variant"]: t for t in report["timings"] if t["batch"] == batch}
        base = cell["pytorch (source)"]
        assert base["speedup"] == 1.0  # the baseline against itself, in the same cell
        for t in cell.values():
            assert t["runs"] == 5
            assert t["speedup"] == pytest.approx(base["p50_ms"] / t["p50_ms"])  # ratios of the same batch's figures
            assert t["items_per_s"] == pytest.approx(batch / (t["p50_ms"] / 1e3))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000



def test_bench_compare_runs_a_torch_source_on_the_cells_threads(cli, digits_bundle, monkeypatch):
    """The command line passes torch.set_num_threads to source_variant (the library may not set it itself), and
    puts the process's thread count back when it is done."""
    torch = pytest.importorskip("torch")
    real, given, seen = bench.source_variant, [], []

    def spy(source, size_bytes=None, set_threads=None):
        given.append(set_threads)
        return real(source, size_bytes, set_threads=lambda n: (seen.append(n), set_threads(n)))

    monkeypatch.setattr(bench, "source_variant", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        r = cli("bench", digits_bundle, "--compare", "--batch-sizes", "1", "--threads", "1,3", "--runs", "2",
                "--warmup", "0", "--no-memory", "--json", "--allow-unsigned")
        assert r.code == 0, r
        assert given == [torch.set_num_threads] and seen == [1, 3]
        assert torch.get_num_threads() == 2  # as it was before the command
    finally:
        torch.set_num_threads(before)

def test_bench_table_and_ratios(cli, digits_bundle):
    r = cli("bench", digits_bundle, digits_bundle / "model.onnx", "--batch-sizes", "2", "--runs", "3", "--warmup", "1",
            "--no-memory", "--allow-unsigned")
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


def _sleeper(name: str, seconds: float, calls: list[str]) -> bench.Variant:
    def make(threads: int):
        def run(batch):
            calls.append(name)
            time.sleep(seconds)
        return run
    return bench.Variant(name, make)


def test_bench_measures_what_each_variant_takes_interleaved():
    """Variants of known latency (6 ms and 1 ms): the figures, the ratio and the interleaving follow from them."""
    calls: list[str] = []
    report = bench.bench([_sleeper("slow", 0.006, calls), _sleeper("fast", 0.001, calls)], {"x": np.zeros((3, 2))},
                         bench.BenchOptions(batch_sizes=(2,), threads=(1,), warmup=2, runs=10, memory=False),
                         baseline="slow")
    t = {x.variant: x for x in report.timings}
    assert t["slow"].p50_ms >= 6.0 and t["fast"].p50_ms >= 1.0 and t["fast"].p50_ms < t["slow"].p50_ms
    assert t["slow"].speedup == 1.0 and t["fast"].speedup == pytest.approx(t["slow"].p50_ms / t["fast"].p50_ms)
    assert t["fast"].speedup > 2  # 6 ms against 1 ms, whatever the scheduler adds
    assert t["fast"].items_per_s == pytest.approx(2 / (t["fast"].p50_ms / 1e3))
    assert [len(report.samples[f"{n}@2/1"]) for n in ("slow", "fast")] == [10, 10]
    assert calls[:4] == ["slow", "slow", "fast", "fast"]  # warm-up, untimed
    assert calls[4:10] == ["slow", "fast", "fast", "slow", "slow", "fast"]  # who goes first alternates each round


def test_source_variant_leaves_the_process_threads_alone_unless_told():
    """A framework's thread count belongs to the whole process: only a caller that owns it may have it set."""
    torch = pytest.importorskip("torch")

    class Source:
        framework = "pytorch"

        @staticmethod
        def run(batch):
            return batch

    before = torch.get_num_threads()
    v = bench.source_variant(Source())
    for threads in (1, before + 1):
        v.make(threads)
    assert torch.get_num_threads() == before and v.name == "pytorch (source)"
    seen: list[int] = []
    bench.bench([bench.source_variant(Source(), set_threads=seen.append)], {"x": np.zeros((1, 1))},
                bench.BenchOptions(batch_sizes=(1,), threads=(1, 3), warmup=0, runs=1, memory=False))
    assert seen == [1, 3] and torch.get_num_threads() == before


PLOT = """
import sys, numpy as np, matplotlib
matplotlib.use("svg")  # the application's choice
from onnxguard.speed import bench
v = [bench.Variant(n, lambda threads: (lambda batch: None)) for n in ("a", "b")]
report = bench.bench(v, {"x": np.zeros((1, 1))}, bench.BenchOptions(batch_sizes=(1, 2), threads=(1,), warmup=0,
                     runs=3, memory=False))
bench.plot(report, sys.argv[1])
import matplotlib.pyplot as plt
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""


def test_plot_keeps_the_applications_backend_and_registers_no_figure(tmp_path):
    """A library call must not switch the process's matplotlib backend (matplotlib.use) nor leave figures open."""
    pytest.importorskip("matplotlib")
    proc = subprocess.run([sys.executable, "-c", PLOT, str(tmp_path / "p.png")], capture_output=True, text=True,
                          check=True)
    assert proc.stdout.split() == ["svg", "0"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_compare_makes_openmp_sleep_only_before_torch_loads_and_puts_the_environment_back(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as in a fresh `onnxguard bench --compare`
    with contextlib.ExitStack() as stack:
        _sleeping_openmp(stack)
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # read by libgomp when torch loads it
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice stands
    with contextlib.ExitStack() as stack:
        _sleeping_openmp(stack)
        assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", object())  # loaded already: too late to matter, left alone
    with contextlib.ExitStack() as stack:
        _sleeping_openmp(stack)
        assert "OMP_WAIT_POLICY" not in os.environ
