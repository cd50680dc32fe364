"""``consistency.check(bundle, targets) -> ConsistencyReport``: one golden set across every variant and target.

Each model given (the bundle's own, other bundles' models, ``.onnx`` files, the ``.ort`` files of
``onnxguard target`` directories) runs the bundle's golden inputs on this machine's ONNX Runtime and is
compared with the SOURCE framework's reference outputs: max and mean |diff|, the KL divergence of the
softmax outputs and top-1 agreement for classifiers, and the latency per item. Thresholds depend on the
kind of model (FP32 strict, FP16 and INT8 looser), and any drift past them fails the check.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnxguard import bundle, runtime
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import SCORES
from onnxguard.accuracy.thresholds import THRESHOLDS, kind_of
from onnxguard.bundle import files
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.trust import OpenedBundle, TrustPolicy, open_bundle
from onnxguard.trust.sealing.identities import IdentitySource


@dataclass(frozen=True)
class TargetDrift:
    """How far one variant or target's outputs drift from the source's on the golden set, and its speed."""

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
    """Every variant and target of a bundle against its one golden set; passed when each is within its thresholds."""

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


def on_cpu(data: bytes, model_dir: Path | None = None) -> Runner:
    """Run model bytes (ONNX or ORT format) on this machine's ONNX Runtime; external data only from ``model_dir``."""
    def run(golden: GoldenSet) -> tuple[list[Batch], float]:
        sess = runtime.session(data, model_dir=model_dir)
        runtime.run(sess, golden.inputs[:1])  # warm-up, not timed
        start = time.perf_counter()
        outs = runtime.run(sess, golden.inputs)
        return outs, (time.perf_counter() - start) * 1e3 / max(golden.items, 1)

    return run


def in_browser(directory: Path) -> Runner:
    """Run a web target's page in headless Chromium; the page runs the golden set it was made with."""
    def run(golden: GoldenSet) -> tuple[list[Batch], float]:
        from onnxguard.target import web
        from onnxguard.target.web import browser

        if (directory / "golden.json").read_text() != web.golden_text(golden):
            raise InputError(f"{directory / 'golden.json'}: not this bundle's golden set; make the target again "
                             "from it")
        result = browser.run_page(directory)
        return web.decode_outputs(result["outputs"]), float(result["ms_per_item"])

    return run


def drift(name: str, path: str, run: Runner, kind: str, golden: GoldenSet, roles: dict[str, str]) -> TargetDrift:
    """Run ``golden`` through one model and measure its drift from the source framework's references."""
    references = golden.references
    if references is None:
        raise InputError(f"{path}: the golden set holds no reference outputs to measure the drift against")
    outs, ms = run(golden)
    report = parity.compare(references, outs, roles)
    numeric = [o for o in report.outputs if o.role != parity.LABELS]
    max_abs = max((o.max_abs for o in numeric), default=0.0)
    mean_abs = max((o.mean_abs for o in numeric), default=0.0)
    scores = [o.name for o in report.outputs if o.role == SCORES]
    kl = top1 = None
    if scores:
        kls, agree = [], []
        for n in scores:
            # Scores are over the last axis: a row per example, or per token of a per-token output whose batches
            # differ in length, so each batch is taken on its own and the rows weighed together.
            pairs = [(_score_rows(r[n]), _score_rows(o[n])) for r, o in zip(references, outs, strict=True)]
            rows = max(sum(len(r) for r, _ in pairs), 1)
            probabilities = all(bool(np.all(r >= 0) and np.allclose(r.sum(-1), 1.0, atol=1e-3)) for r, _ in pairs)
            kls.append(sum(_kl(r, o, probabilities) * len(r) for r, o in pairs) / rows)
            agree.append(sum(int((r.argmax(-1) == o.argmax(-1)).sum()) for r, o in pairs) / rows)
        kl, top1 = max(kls), min(agree)
    t = THRESHOLDS[kind]
    failures = []
    if max_abs > t.max_abs:
        failures.append(f"max |diff| {max_abs:.3g} > {t.max_abs:g}")
    if kl is not None and kl > t.max_kl:
        failures.append(f"KL {kl:.3g} > {t.max_kl:g}")
    if top1 is not None and top1 < t.min_top1:
        failures.append(f"top-1 agreement {top1:.2%} < {t.min_top1:.0%}")
    failures += [f"{o.name}: {', '.join(o.failures)}" for o in report.outputs
                 if o.role == parity.LABELS and not o.passed and (o.label_agreement or 0) < t.min_top1]
    return TargetDrift(name, path, kind, max_abs, mean_abs, kl, top1, ms, not failures, tuple(failures))


Entry = tuple[str, str, Runner, str]  # (name, path, runner, kind)


def _own(opened: OpenedBundle) -> Entry:
    data = opened.model_bytes
    model = onnxfile.parse(data, str(opened.path / opened.model_name))
    return f"{opened.manifest.name} ({opened.path.name})", str(opened.path / opened.model_name), on_cpu(data), \
        kind_of(model)


def _models(path: Path, parent: OpenedBundle, policy: TrustPolicy, identity: IdentitySource) -> list[Entry]:
    """Everything a path holds: a bundle (opened through the door under ``policy``), a target directory made
    from ``parent``, an .onnx file."""
    if not path.is_dir():
        data = onnxfile.read_file(path, what="an .onnx file, a bundle or a target directory")
        model = onnxfile.parse(data, str(path))
        return [(path.name, str(path), on_cpu(data, path.absolute().parent), kind_of(model))]
    mfile = path / bundle.MANIFEST
    if not mfile.is_file():
        raise InputError(f"{path}: not an .onnx file, a bundle or a target directory")
    raw = files.read_regular(mfile, files.MAX_METADATA_BYTES).data
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{mfile}: not valid JSON ({e})") from e
    if isinstance(data, dict) and str(data.get("format", "")).startswith("onnxguard-target/"):
        return _target(path, data, parent)
    return [_own(open_bundle(path, policy, identity))]


def _target_file(path: Path, name: str, data: dict) -> bytes:
    """A target's file, read once and checked against the sha256 the target's manifest lists for it."""
    listed = (data.get("files") or {}).get(name)
    if not isinstance(listed, dict) or "sha256" not in listed:
        raise InputError(f"{path / name}: not listed with a sha256 in the target's manifest; make the target again")
    read = files.read_regular(path / name, files.MAX_FILE_BYTES)
    if read.sha256 != listed["sha256"]:
        raise InputError(f"{path / name}: does not match the sha256 in the target's manifest; the target was "
                         "modified", hint="make the target again from its bundle")
    return read.data


def _target(path: Path, data: dict, parent: OpenedBundle) -> list[Entry]:
    where = path / bundle.MANIFEST
    precision = data.get("precision")
    if precision not in THRESHOLDS:
        raise InputError(f"{where}: no precision (one of {', '.join(THRESHOLDS)})", hint="make the target again")
    made_from = (data.get("parent") or {}).get("manifest_sha256")
    if made_from != parent.digest:
        raise InputError(f"{where}: made from another bundle (manifest sha256 {str(made_from)[:16]}...), not from "
                         f"{parent.path} ({parent.digest[:16]}...)", hint="make the target again from this bundle")
    if data.get("kind") == "web":
        if not (path / "golden.json").is_file():
            raise InputError(f"{path / 'golden.json'}: missing from the web target")
        return [(f"{path.name}/index.html (Chromium, WASM)", str(path / "index.html"), in_browser(path), precision)]
    entries = []
    for name in dict(data.get("optimization_styles") or {}).values():
        if not os.path.lexists(path / name):
            raise InputError(f"{path / name}: named in the target's manifest but missing")
        entries.append((f"{path.name}/{name}", str(path / name), on_cpu(_target_file(path, name, data)), precision))
    return entries


def check(parent: OpenedBundle, targets: Sequence[Path], policy: TrustPolicy,
          identity: IdentitySource = None) -> ConsistencyReport:
    """The opened bundle's own model and every target, against the bundle's golden set. Targets that are
    bundles are opened through the door under ``policy``; target directories must name ``parent`` as theirs."""
    golden = parent.golden()
    if golden.references is None:
        raise InputError(f"{parent.path}: the golden set has no reference outputs")
    entries = [_own(parent)] + [e for t in targets for e in _models(Path(t), parent, policy, identity)]
    drifts = tuple(drift(name, path, run, kind, golden, parent.roles) for name, path, run, kind in entries)
    return ConsistencyReport(str(parent.path), golden.items, drifts)


def plot(report: ConsistencyReport, path: str | Path) -> None:
    """Drift per target: max |diff| and KL divergence (log scale), with each kind's threshold marked."""
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot state, no global backend switch

    names = [t.name for t in report.targets]
    fig = Figure(figsize=(11, 0.6 * len(names) + 2))
    axes = fig.subplots(1, 2, squeeze=False)
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


def _score_rows(a: np.ndarray) -> np.ndarray:
    """Class scores as rows over the last axis (one column for a one-dimensional output)."""
    return (a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(-1, 1)).astype(np.float64)
