"""Shared by the benchmark scripts: run the CLI, time variants side by side, write results.

Imported before torch, it makes PyTorch's OpenMP threads sleep between calls instead of spin-waiting (unless
``OMP_WAIT_POLICY`` is set already): spinning, they hold the cores while the ONNX variant after them runs, as ONNX
Runtime's spinning threads did (docs/benchmarks.md, "Interleaving and spinning threads"). libgomp reads the policy
once, when torch loads it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from onnxguard.speed import bench

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).parent
CACHE = HERE / ".cache"  # generated models and bundles (git-ignored)
RESULTS = HERE / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen, probe: str, seconds: float = 300, log: Path | None = None) -> None:
    """Until ``url + probe`` answers below 500; SystemExit (with the server's ``log``) if the server exits first or
    takes too long."""
    import httpx

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}" + (f": {log.read_text()}" if log else ""))
        try:
            if httpx.get(url + probe, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{url} not ready in {seconds:g} s")


def onnxguard(*args: str) -> None:
    """Run the real CLI, as a user would."""
    cmd = [str(Path(sys.executable).parent / "onnxguard"), *args]
    print("$", " ".join(["onnxguard", *args]), flush=True)
    subprocess.run(cmd, check=True)


def build_text_bundle(model_dir: Path, bundle_dir: Path, seq: int, reuse: bool) -> float | None:
    """``build --quantize auto`` of a text model as the A and F benchmarks time it (batch 8, 2 threads); its wall
    seconds, or None when ``reuse`` and a bundle is already there."""
    if reuse and (bundle_dir / "manifest.json").exists():
        return None
    t0 = time.perf_counter()
    onnxguard("build", str(model_dir), "-o", str(bundle_dir), "--overwrite", "--max-length", str(seq),
              "--quantize", "auto", "--batch-size", "8", "--threads", "2")
    return time.perf_counter() - t0


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def table(report: bench.BenchReport, extra: dict[str, dict] | None = None) -> str:
    """A markdown table: one row per variant and cell, ratio to the baseline measured in the same run."""
    extra = extra or {}
    cols = sorted({k for v in extra.values() for k in v})
    head = ["variant", "batch", "threads", "p50 ms", "p99 ms", "items/s", "x baseline", "size", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in report.timings:
        if t.size_bytes is None:
            size = "-"
        else:
            size = f"{t.size_bytes / 1e6:.1f} MB" if t.size_bytes > 1e6 else f"{t.size_bytes / 1e3:.1f} KB"
        row = [t.variant, str(t.batch), str(t.threads), f"{t.p50_ms:.3f}", f"{t.p99_ms:.3f}", f"{t.items_per_s:,.0f}",
               f"**{t.speedup:.2f}x**" if t.speedup else "-", size,
               *[str(extra.get(t.variant, {}).get(c, "")) for c in cols]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def save(name: str, report: bench.BenchReport, extra: dict | None = None, notes: dict | None = None) -> None:
    RESULTS.mkdir(exist_ok=True)
    data = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **report.to_dict(),
            "extra": extra or {}, "notes": notes or {}}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = table(report, extra)
    (RESULTS / f"{name}.md").write_text(md + "\n")
    print(md)
