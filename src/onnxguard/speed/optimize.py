"""``optimize.optimize(model, OptimizeOptions) -> OptimizeResult``: ONNX Runtime graph optimization.

Two tools, used alone or together:

* ONNX Runtime's offline graph optimizer (levels ``basic``, ``extended``, ``all``), saved to a file.
  ``all`` adds layout transforms for the CPU it runs on (NCHWc): the saved file is then tied to that
  kind of CPU, so it is never chosen automatically.
* ``onnxruntime.transformers`` fusions for transformer graphs (Attention, SkipLayerNormalization,
  BiasGelu, EmbedLayerNormalization), with the model type and head count taken from the bundle's
  source config, or detected from the graph.

A fused graph is not always faster (on a 2-core AVX-512 CPU the fused DistilBERT was slower than the
plain export at batch 8; see MEASURED.md), so ``build`` measures candidates instead of assuming.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxguard import runtime
from onnxguard.errors import ModelError
from onnxguard.model import onnxfile
from onnxguard.model.info import graphs, op_histogram
from onnxguard.progress import Event, Progress, silent

LEVELS = runtime.LEVELS
# Source model types (Hugging Face config.model_type) that onnxruntime.transformers fuses with its BERT rules.
BERT_LIKE = ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "electra", "albert", "mpnet", "deberta")


@dataclass(frozen=True)
class OptimizeOptions:
    """ONNX Runtime's graph optimization level, and whether and how to apply transformer fusions first."""

    level: str = "extended"  # none | basic | extended | all
    fusions: bool = False  # apply onnxruntime.transformers fusions first
    model_type: str | None = None  # Hugging Face model_type; None: detect (transformer inputs -> bert)
    num_heads: int = 0  # 0: detect from the graph
    hidden_size: int = 0


@dataclass(frozen=True)
class OptimizeResult:
    """The optimized model with its node counts and op histograms before and after, and the fused ops."""

    model: onnx.ModelProto
    options: OptimizeOptions
    nodes_before: int
    nodes_after: int
    ops_before: dict[str, dict[str, int]]
    ops_after: dict[str, dict[str, int]]
    fused: dict[str, int]

    def figures(self) -> dict:
        return {"nodes_before": self.nodes_before, "nodes_after": self.nodes_after, "fused": self.fused}


def _count(hist: dict[str, dict[str, int]]) -> int:
    return sum(sum(ops.values()) for ops in hist.values())


def is_transformer(model: onnx.ModelProto) -> bool:
    """True for a graph that takes ``input_ids`` and ``attention_mask``."""
    names = {i.name for i in model.graph.input}
    return "input_ids" in names and "attention_mask" in names


def is_convolutional(model: onnx.ModelProto) -> bool:
    """True for a graph with a Conv node (dynamic INT8 turns it into ConvInteger, slower than FP32 on CPU)."""
    return any(n.op_type == "Conv" for n in model.graph.node)


# onnxruntime.transformers logs every fusion pattern it tries through its loggers ("Attention not fused" at
# WARNING): the fusions run in a child process (runtime.isolated), so no logger of this process is touched.
_FUSE = """
import onnx


def main(job, event):
    from onnxruntime.transformers import optimizer

    if job["kind"] not in optimizer.MODEL_TYPES:
        return {"unknown": True}
    fused = optimizer.optimize_model(job["src"], model_type=job["kind"], num_heads=job["num_heads"],
                                     hidden_size=job["hidden_size"], opt_level=0, use_gpu=False)
    onnx.save(fused.model, job["dst"])
    return {"stats": {k: int(v) for k, v in fused.get_fused_operator_statistics().items() if v}}
"""


def fuse(model: onnx.ModelProto, model_type: str | None, num_heads: int = 0, hidden_size: int = 0,
         progress: Progress = silent) -> tuple[onnx.ModelProto, dict[str, int]]:
    """Apply the transformer fusions; returns the fused model and the count of each fused op."""
    kind = "bert" if (model_type or "bert") in BERT_LIKE else model_type
    with tempfile.TemporaryDirectory(prefix="onnxguard-fuse-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "fused.onnx"
        job = {"kind": kind, "num_heads": num_heads, "hidden_size": hidden_size, "src": str(src), "dst": str(dst)}
        onnxfile.save(model, src)
        outcome = runtime.isolated(_FUSE, job, what="transformer fusion", stage="optimize", progress=progress, cwd=tmp)
        if outcome.get("unknown"):
            raise ModelError(f"no transformer fusions for model type {model_type!r}; known: {', '.join(BERT_LIKE)}",
                             hint="name a BERT-like model type, or optimize without fusions")
        result = onnxfile.load(dst)
    stats = {str(k): int(v) for k, v in outcome.get("stats", {}).items()}
    used = {n.domain for n in result.graph.node} - {"", "ai.onnx"}
    declared = {o.domain for o in result.opset_import}
    for domain in sorted(used - declared):  # fused ops live in com.microsoft; declare it when the optimizer did not
        result.opset_import.add(domain=domain, version=1)
    return result, stats


def ort_optimize(model: onnx.ModelProto, level: str) -> onnx.ModelProto:
    """Run ONNX Runtime's graph optimizer at ``level`` and return the graph it saves."""
    if level not in LEVELS:
        raise ModelError(f"unknown optimization level {level!r}; use {', '.join(LEVELS)}")
    with tempfile.TemporaryDirectory(prefix="onnxguard-opt-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        runtime.session(model, optimization=level, optimized_model_path=out, name="the model to optimize")
        optimized = onnxfile.load(out)
    # The saved graph imports every domain ONNX Runtime registers (nchwc, training, aten...), used or not;
    # keep only the ones its nodes use, so the model asks the runtime for no more than it needs.
    used = {n.domain for g in graphs(optimized.graph) for n in g.node} | {f.domain for f in optimized.functions}
    keep = [o for o in optimized.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del optimized.opset_import[:]
    optimized.opset_import.extend(keep)
    return optimized


def optimize(model: onnx.ModelProto, options: OptimizeOptions = OptimizeOptions(),
             progress: Progress = silent) -> OptimizeResult:
    """Transformer fusions (when asked), then ONNX Runtime's graph optimizer at ``options.level``."""
    before = op_histogram(model)
    fused: dict[str, int] = {}
    result = model
    if options.fusions:
        progress(Event("optimize", f"transformer fusions ({options.model_type or 'detected'} model)"))
        result, fused = fuse(result, options.model_type, options.num_heads, options.hidden_size, progress)
    if options.level != "none":
        progress(Event("optimize", f"ONNX Runtime graph optimization, level {options.level}"))
        result = ort_optimize(result, options.level)
    after = op_histogram(result)
    return OptimizeResult(result, options, _count(before), _count(after), before, after, fused)
