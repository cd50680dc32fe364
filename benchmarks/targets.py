"""Benchmark D: one bundle, every place it runs. Latency per item over the golden set and drift from the
source framework, for the source itself, ONNX Runtime on the CPU (FP32 and dynamic INT8), the ORT format
file of the edge target, and the web target in headless Chromium (onnxruntime-web, WASM).

    .venv/bin/python benchmarks/targets.py [--repeat N] [--models digits,distilbert]

Each row times N passes (10 N for the digits CNN) over the same golden batches after one warm-up pass and reports
the median pass (ms per item), its ratio to the source framework measured in the same run, and the max |diff| and top-1
agreement against the source's reference outputs (the `onnxguard consistency` figures). The browser runs
its passes inside the page (`index.html?repeat=N`) with as many WASM threads as the page gets (2 here).
Models: the quickstart's digits CNN (12 epochs) and a DistilBERT-base config with random weights
(sequence 128, the default golden set's padded lengths).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from common import CACHE, RESULTS, onnxguard

from onnxguard import bundle, convert, runtime
from onnxguard.accuracy import consistency
from onnxguard.bundle.golden import GoldenSet
from onnxguard.convert import ConvertOptions
from onnxguard.model import onnxfile
from onnxguard.speed import quantize
from onnxguard.target import web
from onnxguard.target.web import browser


def _median_pass(run, golden: GoldenSet, repeat: int) -> tuple[float, list]:
    run(golden.inputs[0])  # warm-up
    samples, outs = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        outs = [run(b) for b in golden.inputs]
        samples.append((time.perf_counter() - start) * 1e3 / golden.items)
    return statistics.median(samples), outs


def _row(d, source_ms: float) -> dict:
    return {"target": d.name, "kind": d.kind, "ms_per_item": round(d.ms_per_item, 4),
            "x_source": round(source_ms / d.ms_per_item, 2), "max_abs": d.max_abs, "top1": d.top1}


def measure(label: str, spec: str, options: ConvertOptions, bundle_dir, repeat: int) -> list[dict]:
    b = bundle.read(bundle_dir)
    golden, roles = b.golden(), {o.name: o.role for o in b.manifest.model.outputs if o.role}
    source = convert.load(spec, options)
    source_ms, _ = _median_pass(source.run, golden, repeat)
    rows = [{"target": f"{label}: {source.framework} (source)", "kind": "fp32", "ms_per_item": round(source_ms, 4),
             "x_source": 1.0, "max_abs": 0.0, "top1": 1.0}]
    plain = onnxfile.parse(b.model_bytes(), str(b.model_path))
    int8 = quantize.quantize(plain, quantize.QuantizeOptions(mode="dynamic")).model
    for kind in ("edge", "web"):
        onnxguard("target", str(bundle_dir), "--to", kind, "-o", str(CACHE / f"{label}-{kind}"), "--overwrite")
    cpu = [(f"{label}: ORT CPU FP32", b.model_bytes(), "fp32"),
           (f"{label}: ORT CPU dynamic INT8", int8.SerializeToString(), "int8"),
           (f"{label}: ORT format (edge target)", (CACHE / f"{label}-edge" / "model.ort").read_bytes(), "fp32")]
    for name, data, kind in cpu:
        def timed(g: GoldenSet, data: bytes = data) -> tuple[list, float]:
            sess = runtime.session(data)
            ms, outs = _median_pass(lambda batch: runtime.run(sess, [batch])[0], g, repeat)
            return outs, ms
        rows.append(_row(consistency.drift(name, "", timed, kind, golden, roles), source_ms))
    page = browser.run_page(CACHE / f"{label}-web", query=f"?repeat={repeat}")
    in_page = (web.decode_outputs(page["outputs"]), float(page["ms_per_item"]))
    name = f"{label}: Chromium WASM ({page['threads']} threads)"
    rows.append(_row(consistency.drift(name, "", lambda g: in_page, "fp32", golden, roles), source_ms))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--models", default="digits,distilbert")
    args = ap.parse_args()
    CACHE.mkdir(exist_ok=True)
    rows = []
    if "digits" in args.models:
        from onnxguard.examples import digits

        data = digits.load_data()
        model, _ = digits.train(data, epochs=12)
        digits.save_program(model, CACHE / "digits_cnn.pt2")
        GoldenSet(tuple(digits.golden_batches(data))).save(CACHE / "digits_golden.npz")
        onnxguard("build", str(CACHE / "digits_cnn.pt2"), "-o", str(CACHE / "digits_bundle"), "--overwrite",
                  "--task", "classification", "--golden", str(CACHE / "digits_golden.npz"))
        # a pass over its 133 golden images takes about a millisecond: ten times the passes
        rows += measure("digits CNN", str(CACHE / "digits_cnn.pt2"), ConvertOptions(task="classification"),
                        CACHE / "digits_bundle", args.repeat * 10)
    if "distilbert" in args.models:
        from onnxguard.examples.text import save_random_model

        model_dir = CACHE / "distilbert-base"
        if not (model_dir / "config.json").exists():
            save_random_model(model_dir, "distilbert", "base")
        onnxguard("build", str(model_dir), "-o", str(CACHE / "distilbert_targets_bundle"), "--overwrite",
                  "--max-length", "128", "--optimize", "none")
        rows += measure("DistilBERT-base", str(model_dir), ConvertOptions(max_length=128),
                        CACHE / "distilbert_targets_bundle", args.repeat)
    head = ["target", "kind", "ms/item (median pass)", "x source", "max \\|diff\\| vs source", "top-1 vs source"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        top1 = "-" if r["top1"] is None else f"{r['top1']:.2%}"
        lines.append(f"| {r['target']} | {r['kind']} | {r['ms_per_item']:.3f} | {r['x_source']:.2f}x | "
                     f"{r['max_abs']:.2g} | {top1} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "D_targets.json").write_text(json.dumps({"benchmark": "D_targets", "repeat": args.repeat,
                                                        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                        "rows": rows}, indent=2) + "\n")
    (RESULTS / "D_targets.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
