"""Benchmark A: a DistilBERT-base text classifier (random weights; the compute of the trained model),
sequence 128, realistic padding (lengths spread over 16..128), batch 8 and batch 1, two threads.

    .venv/bin/python benchmarks/distilbert.py [--runs N] [--reuse-bundle] [--save-as NAME]

Variants, interleaved in one run: PyTorch eager (default sdpa attention, inference_mode), the plain
export run by ONNX Runtime, the transformer-fused graph, dynamic INT8, the variant that
`onnxguard build --quantize auto` chose, and the plain export, dynamic INT8 and the chosen variant run
length-aware (runtime.LengthAware with the bundle's bucket plan). Label agreement and max |diff| against
PyTorch on 64 sequences padded right and left, and each length-aware variant's max |diff| from its own padded
run. The CPU's model and INT8-relevant flags are printed and saved with the results.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import CACHE, agreement, build_text_bundle, save

from onnxguard import bundle, convert
from onnxguard.convert import ConvertOptions
from onnxguard.examples.text import save_random_model
from onnxguard.runtime.loading import plan_of
from onnxguard.speed import bench, optimize, quantize

SEQ = 128


def padded(n: int, side: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lens = np.linspace(16, SEQ, n).astype(int)
    ids, mask = np.zeros((n, SEQ), np.int64), np.zeros((n, SEQ), np.int64)
    for i, n_tokens in enumerate(lens):
        sl = slice(0, n_tokens) if side == "right" else slice(SEQ - n_tokens, SEQ)
        ids[i, sl] = np.r_[101, rng.integers(1000, 30000, n_tokens - 2), 102]
        mask[i, sl] = 1
    return {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--reuse-bundle", action="store_true", help="time the bundle a previous run built")
    ap.add_argument("--save-as", default="A_distilbert", help="results name in benchmarks/results/")
    args = ap.parse_args()
    print("machine:", bench.machine(), flush=True)
    model_dir, bundle_dir = CACHE / "distilbert-base", CACHE / "distilbert_bundle"
    if not (model_dir / "config.json").exists():
        save_random_model(model_dir, "distilbert", "base")
    build_text_bundle(model_dir, bundle_dir, SEQ, args.reuse_bundle)
    chosen = bundle.read(bundle_dir)
    select = next(s for s in chosen.manifest.steps if s.name == "select")
    plain = convert.convert(str(model_dir), ConvertOptions(max_length=SEQ)).model
    traced = convert.convert(str(model_dir), ConvertOptions(max_length=SEQ, exporter="torchscript")).model
    arch = chosen.manifest.source.architecture
    fusing = optimize.OptimizeOptions(level="none", fusions=True, model_type=arch["model_type"],
                                      num_heads=arch["num_heads"], hidden_size=arch["hidden_size"])
    fused = optimize.optimize(traced, fusing).model
    dynamic = quantize.quantize(plain, quantize.QuantizeOptions(mode="dynamic")).model
    source = convert.load(str(model_dir), ConvertOptions(attn_implementation="sdpa"))
    import torch  # this script owns its process: it may set torch's threads per cell

    torch_variant = bench.source_variant(source, set_threads=torch.set_num_threads)
    variants = [torch_variant, bench.onnx_variant("ORT plain export (dynamo)", plain),
                bench.onnx_variant("ORT plain export (torchscript)", traced),
                bench.onnx_variant("ORT fused (torchscript + Attention fusion)", fused),
                bench.onnx_variant("ORT dynamic INT8 (dynamo export)", dynamic),
                bench.onnx_variant(f"onnxguard build (chose {select.figures['winner']})", chosen.model_bytes())]
    plan = plan_of(chosen.manifest)
    aware = {"ORT plain export (dynamo)": plain, "ORT dynamic INT8 (dynamo export)": dynamic,
             f"onnxguard build (chose {select.figures['winner']})": chosen.model_bytes()}
    variants += [bench.length_aware_variant(f"{name}, length-aware", m, plan) for name, m in aware.items()]
    rng = np.random.default_rng(0)
    checks = [padded(8, side, rng) for side in ("right", "left") for _ in range(4)]
    refs = [source.run(b)["logits"] for b in checks]
    extra = {}
    padded_runs = {}
    for v in variants[1:]:
        run = v.make(2)
        outs = [first(run(b)) for b in checks]
        padded_runs[v.name] = outs
        extra[v.name] = {"label agreement": f"{agreement(np.concatenate(outs), np.concatenate(refs)):.2%}",
                         "max |diff|": f"{max(np.abs(o - r).max() for o, r in zip(outs, refs, strict=True)):.3f}"}
    for name in aware:
        own = padded_runs[name]
        la = padded_runs[f"{name}, length-aware"]
        extra[f"{name}, length-aware"]["max |diff| from its padded run"] = (
            f"{max(np.abs(a - p).max() for a, p in zip(la, own, strict=True)):.2g}")
    report = bench.bench(variants, padded(8, "right", rng), bench.BenchOptions(batch_sizes=(8, 1), threads=(2,),
                         runs=args.runs, warmup=3, max_seconds=240, memory=False), baseline=torch_variant.name)
    save(args.save_as, report, extra, {"winner": select.figures["reason"], "fp32 bytes": plain.ByteSize(),
                                          "chosen bytes": chosen.manifest.model.size,
                                          "bucket plan": chosen.manifest.lengths.model_dump()
                                          if chosen.manifest.lengths else None})


def first(out) -> np.ndarray:
    """The logits of a run: ONNX Runtime's list of outputs, or the length-aware runner's dict."""
    return out["logits"] if isinstance(out, dict) else out[0]


if __name__ == "__main__":
    main()
