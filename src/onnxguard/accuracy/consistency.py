"""``consistency.check(bundle, targets) -> ConsistencyReport``: one golden set across every variant and target.

Each model given (the bundle's own, other bundles' models, ``.onnx`` files, the ``.ort`` files of
``onnxguard target`` directories) runs the bundle's golden inputs on this machine's ONNX Runtime and is
compared with the SOURCE framework's reference outputs: max and mean |diff|, the KL divergence of the
softmax outputs and top-1 agreement for classifiers, and the latency per item. Thresholds depend on the
kind of model (FP32 strict, FP16 and INT8 looser), and any drift past them fails the check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from onnxguard import bundle
from onnxguard.model import onnxfile
from onnxguard.accuracy import parity
from onnxguard.trust import sealing
from onnxguard.bundle import Bundle
from onnxguard.errors import InputError
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.accuracy.parity import SCORES

INT8_OPS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
            "QLinearConv", "QLinearMatMul", "QAttention", "MatMulIntegerToFloat"}


@dataclass(frozen=True)
class Thresholds:
    """Drift allowed against the source's reference outputs, per kind of model."""

    max_abs: float
    max_kl: float
    min_top1: float


# FP32 must reproduce the source up to float rounding; reduced precision may move numbers, not answers.
THRESHOLDS = {
    "fp32": Thresholds(max_abs=1e-3, max_kl=1e-6, min_top1=1.0),
    "fp16": Thresholds(max_abs=5e-2, max_kl=1e-3, min_top1=0.99),
    "int8": Thresholds(max_abs=1.0, max_kl=1e-2, min_top1=0.99),
}


@dataclass(frozen=True)
class TargetDrift:
    name: str
    path: str
    kind: str  # fp32 | fp16 | int8
    max_abs: float
    mean_abs: float
    kl: float | None  # mean KL(softmax(ref) || softmax(out)) over classifier outputs
    top1: float | None
    ms_per_item: float
    passed: bool
    failures: tuple[str, ...]


@dataclass(frozen=True)
class ConsistencyReport:
    bundle: str
    items: int
    targets: tuple[TargetDrift, ...]

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    def to_dict(self) -> dict:
        return {"bundle": self.bundle, "items": self.items, "passed": self.passed,
                "thresholds": {k: asdict(v) for k, v in THRESHOLDS.items()},
                "targets": [asdict(t) for t in self.targets]}


def kind_of(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & INT8_OPS:
        return "int8"
    if any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer):
        return "fp16"
    return "fp32"


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(ref: np.ndarray, out: np.ndarray, probabilities: bool) -> float:
    p = ref if probabilities else _softmax(ref)
    q = out if probabilities else _softmax(out)
    p, q = np.clip(p, 1e-12, 1.0), np.clip(q, 1e-12, 1.0)
    return float(np.mean(np.sum(p * np.log(p / q), axis=-1)))


Runner = Callable[[GoldenSet], tuple[list[Batch], float]]  # golden set -> (outputs per batch, ms per item)


def on_cpu(data: bytes) -> Runner:
    """Run model bytes (ONNX or ORT format) on this machine's ONNX Runtime."""
    def run(golden: GoldenSet) -> tuple[list[Batch], float]:
        sess = parity.session(data)
        parity.run(sess, golden.inputs[:1])  # warm-up, not timed
        start = time.perf_counter()
        outs = parity.run(sess, golden.inputs)
        return outs, (time.perf_counter() - start) * 1e3 / max(golden.items, 1)

    return run


def in_browser(directory: Path) -> Runner:
    """Run a web target's page in headless Chromium; the page runs the golden set it was made with."""
    def run(golden: GoldenSet) -> tuple[list[Batch], float]:
        from onnxguard.target.web import browser
        from onnxguard.target import web

        if (directory / "golden.json").read_text() != web.golden_text(golden):
            raise InputError(f"{directory / 'golden.json'}: not this bundle's golden set; make the target again from it")
        result = browser.run_page(directory)
        return web.decode_outputs(result["outputs"]), float(result["ms_per_item"])

    return run


def drift(name: str, path: str, run: Runner, kind: str, golden: GoldenSet, roles: dict[str, str]) -> TargetDrift:
    """Run ``golden`` through one model and measure its drift from the source framework's references."""
    outs, ms = run(golden)
    report = parity.compare(golden.references, outs, roles)
    numeric = [o for o in report.outputs if o.role != parity.LABELS]
    max_abs = max((o.max_abs for o in numeric), default=0.0)
    mean_abs = max((o.mean_abs for o in numeric), default=0.0)
    scores = [o.name for o in report.outputs if o.role == SCORES]
    kl = top1 = None
    if scores:
        kls, agree = [], []
        for n in scores:
            ref = np.concatenate([r[n].reshape(len(r[n]), -1) for r in golden.references]).astype(np.float64)
            out = np.concatenate([o[n].reshape(len(o[n]), -1) for o in outs]).astype(np.float64)
            probabilities = bool(np.all(ref >= 0) and np.allclose(ref.sum(-1), 1.0, atol=1e-3))
            kls.append(_kl(ref, out, probabilities))
            agree.append(float((ref.argmax(-1) == out.argmax(-1)).mean()))
        kl, top1 = max(kls), min(agree)
    t = THRESHOLDS[kind]
    failures = []
    if max_abs > t.max_abs:
        failures.append(f"max |diff| {max_abs:.3g} > {t.max_abs:g}")
    if kl is not None and kl > t.max_kl:
        failures.append(f"KL {kl:.3g} > {t.max_kl:g}")
    if top1 is not None and top1 < t.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {t.min_top1:.0%}")
    failures += [f"{o.name}: {', '.join(o.failures)}" for o in report.outputs if o.role == parity.LABELS and not o.passed
                 and (o.label_agreement or 0) < t.min_top1]
    return TargetDrift(name, path, kind, max_abs, mean_abs, kl, top1, ms, not failures, tuple(failures))


def _models(path: Path, identity=None) -> list[tuple[str, str, Runner, str]]:
    """(name, path, runner, kind) for everything a path holds: a bundle, a target directory, an .onnx file."""
    if path.is_file():
        model = onnxfile.load(path)
        return [(path.name, str(path), on_cpu(path.read_bytes()), kind_of(model))]
    manifest = path / bundle.MANIFEST
    if not manifest.is_file():
        raise InputError(f"{path}: not an .onnx file, a bundle or a target directory")
    try:
        data = json.loads(manifest.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{manifest}: not valid JSON ({e})") from e
    if isinstance(data, dict) and str(data.get("format", "")).startswith("onnxguard-target/"):
        return _target(path, data)
    b = bundle.read(path)
    sealing.require_identity(b, identity)
    model_bytes = sealing.open_model(b, identity)
    return [(f"{b.manifest.name} ({path.name})", str(b.model_path), on_cpu(model_bytes),
             kind_of(onnxfile.parse(model_bytes)))]


def _target(path: Path, data: dict) -> list[tuple[str, str, Runner, str]]:
    precision = data.get("precision")
    if precision not in THRESHOLDS:
        raise InputError(f"{path / bundle.MANIFEST}: no precision (one of {', '.join(THRESHOLDS)}); make the target again")
    if data.get("kind") == "web":
        if not (path / "golden.json").is_file():
            raise InputError(f"{path / 'golden.json'}: missing from the web target")
        return [(f"{path.name}/index.html (Chromium, WASM)", str(path / "index.html"), in_browser(path), precision)]
    entries = []
    for name in dict(data.get("optimization_styles") or {}).values():
        if not (path / name).is_file():
            raise InputError(f"{path / name}: named in the target's manifest but missing")
        entries.append((f"{path.name}/{name}", str(path / name), on_cpu((path / name).read_bytes()), precision))
    return entries


def check(parent: Bundle, targets: list[Path] = (), identity=None) -> ConsistencyReport:
    """The bundle's own model and every target, against the bundle's golden set (decrypted in memory when sealed)."""
    sealing.require_identity(parent, identity)
    golden = sealing.open_golden(parent, identity)
    if golden.references is None:
        raise InputError(f"{parent.path}: the golden set has no reference outputs")
    roles = {o.name: o.role for o in parent.manifest.model.outputs if o.role}
    entries = _models(parent.path, identity) + [m for t in targets for m in _models(Path(t), identity)]
    drifts = tuple(drift(name, path, run, kind, golden, roles) for name, path, run, kind in entries)
    return ConsistencyReport(str(parent.path), golden.items, drifts)


def plot(report: ConsistencyReport, path: str | Path) -> None:
    """Drift per target: max |diff| and KL divergence (log scale), with each kind's threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.name for t in report.targets]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.6 * len(names) + 2), squeeze=False)
    for ax, (label, values, limit) in zip(axes[0], (
            ("max |diff| vs the source", [t.max_abs for t in report.targets], lambda t: THRESHOLDS[t.kind].max_abs),
            ("KL(softmax) vs the source", [t.kl or 0.0 for t in report.targets],
             lambda t: THRESHOLDS[t.kind].max_kl)), strict=True):
        colors = ["tab:green" if t.passed else "tab:red" for t in report.targets]
        ax.barh(range(len(names)), [max(v, 1e-12) for v in values], color=colors)
        for i, t in enumerate(report.targets):
            ax.plot([limit(t)] * 2, [i - 0.4, i + 0.4], color="black", linewidth=2)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xscale("log")
        ax.set_title(label, fontsize=9)
        ax.invert_yaxis()
    fig.suptitle("drift per target (bar: measured, black line: threshold for its kind)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
