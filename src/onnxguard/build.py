"""``build.build(spec, target, BuildOptions) -> BuildResult``: the pipeline from a source model to a bundle.

The pipeline is the list ``STAGES``: each stage is one function that reads and extends a ``BuildState``.
A later stage (optimize, quantize, scan, seal, sign) is one function added to that list.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import __version__, bundle, convert, digest, golden, onnxfile, parity
from .bundle import Bundle
from .convert import ConvertOptions, Source
from .errors import CheckFailed
from .golden import GoldenSet
from .manifest import Golden, Manifest, Model, Parity, Step, Tensor, now
from .manifest import Source as SourceInfo
from .parity import ParityReport, Tolerance
from .progress import Event, Progress, silent


@dataclass(frozen=True)
class BuildOptions:
    convert: ConvertOptions = ConvertOptions()
    name: str | None = None
    version: str = "0.1.0"
    meta: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    golden_npz: Path | None = None
    texts: Path | None = None
    tolerance: Tolerance = Tolerance()
    overwrite: bool = False


@dataclass
class BuildState:
    """What the stages share: each stage reads what earlier ones left and adds its own part."""

    spec: str | Source
    target: Path
    options: BuildOptions
    progress: Progress
    source: Source | None = None
    model: onnx.ModelProto | None = None
    exporter: str = ""
    notes: tuple[str, ...] = ()
    golden: GoldenSet | None = None
    golden_origin: str = "signature"
    parity: ParityReport | None = None
    steps: list[Step] = field(default_factory=list)
    bundle: Bundle | None = None


@dataclass(frozen=True)
class StageResult:
    name: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    parity: ParityReport
    stages: tuple[StageResult, ...]


def stage_convert(state: BuildState) -> str:
    result = convert.convert(state.spec, state.options.convert, state.options.meta, state.progress)
    state.source, state.model, state.exporter, state.notes = result.source, result.model, result.exporter, result.notes
    nodes = len(result.model.graph.node)
    state.steps.append(Step(name="convert", settings={"exporter": result.exporter, "opset": _opset(result.model)},
                            figures={"nodes": nodes, "bytes": result.model.ByteSize()}))
    return f"{result.exporter}, {nodes} nodes"


def stage_golden(state: BuildState) -> str:
    source, opts = state.source, state.options
    if opts.golden_npz is not None:
        inputs, state.golden_origin = list(golden.load(opts.golden_npz).inputs), "npz"
    elif opts.texts is not None:
        inputs, state.golden_origin = source.texts_inputs(golden.read_texts(opts.texts)), "texts"
    else:
        inputs = source.golden_inputs()
    references = []
    for i, batch in enumerate(inputs):
        state.progress(Event("golden", f"running {source.framework} on batch {i + 1}/{len(inputs)}", i, len(inputs)))
        references.append(source.run(batch))
    state.golden = GoldenSet(tuple(inputs), tuple(references))
    return f"{state.golden.items} examples in {len(inputs)} batches ({state.golden_origin})"


def stage_parity(state: BuildState) -> str:
    state.progress(Event("parity", "running ONNX Runtime on the golden set"))
    report = parity.parity(state.model, state.golden, state.source.output_roles, state.options.tolerance, state.notes)
    state.parity = report
    if not report.passed:
        failures = "; ".join(f"{o.name}: {', '.join(o.failures)}" for o in report.outputs if not o.passed)
        raise CheckFailed(f"parity failed against {state.source.framework} ({failures}); no bundle was written")
    worst = max(o.max_abs for o in report.outputs)
    return f"passed, max |diff| {worst:.2g} on {report.items} examples"


def stage_bundle(state: BuildState) -> str:
    state.progress(Event("bundle", f"writing {state.target}"))
    manifest = make_manifest(state)
    state.bundle = bundle.write(state.target, manifest, state.model, state.golden, state.source.assets,
                                overwrite=state.options.overwrite)
    return f"{len(state.bundle.manifest.files)} files"


Stage = Callable[[BuildState], str]
STAGES: list[tuple[str, Stage]] = [
    ("convert", stage_convert),
    ("golden", stage_golden),
    ("parity", stage_parity),
    ("bundle", stage_bundle),
]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def parity_summary(report: ParityReport) -> Parity:
    d = report.to_dict()
    return Parity(passed=report.passed, tolerance=d["tolerance"], batches=report.batches, items=report.items,
                  outputs=d["outputs"], notes=list(report.notes))


def make_manifest(state: BuildState) -> Manifest:
    source, model, opts = state.source, state.model, state.options
    roles = source.output_roles
    data = model.SerializeToString()
    return Manifest(
        name=opts.name or _default_name(source.identifier),
        version=opts.version,
        created=now(),
        onnxguard_version=__version__,
        source=SourceInfo(framework=source.framework, framework_version=source.framework_version,
                          identifier=source.identifier, task=source.task, exporter=state.exporter,
                          files=digest.files(source.files), architecture=source.architecture),
        model=Model(file=bundle.MODEL, sha256=digest.data(data), size=len(data),
                    opset={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
                    ir_version=model.ir_version,
                    producer=" ".join(p for p in (model.producer_name, model.producer_version) if p),
                    inputs=[Tensor(**t.to_dict()) for t in onnxfile.inputs(model)],
                    outputs=[Tensor(**t.to_dict(), role=roles.get(t.name)) for t in onnxfile.outputs(model)]),
        files={},
        labels=opts.labels or source.labels,
        preprocessing=source.preprocessing,
        steps=state.steps,
        golden=Golden(file=bundle.GOLDEN, batches=len(state.golden.inputs), items=state.golden.items,
                      origin=state.golden_origin),
        parity=parity_summary(state.parity),
        metadata=dict(opts.meta),
    )


def _default_name(identifier: str) -> str:
    stem = Path(identifier.rpartition(":")[2] if identifier.rpartition(":")[0].endswith(".py") else identifier)
    return stem.stem or stem.name or "model"


def build(spec: str | Source, target: str | Path, options: BuildOptions = BuildOptions(),
          progress: Progress = silent, stages: list[tuple[str, Stage]] | None = None) -> BuildResult:
    """Run every stage in order; a stage that raises stops the build and nothing is written."""
    target = Path(target)
    bundle.check_writable(target, options.overwrite)
    state = BuildState(spec, target, options, progress)
    results = []
    for name, stage in stages or STAGES:
        start = time.perf_counter()
        progress(Event(name, "starting"))
        detail = stage(state)
        results.append(StageResult(name, time.perf_counter() - start, detail))
        progress(Event(name, detail, done=True))
    return BuildResult(state.bundle, state.parity, tuple(results))
