"""``build.build(spec, target, BuildOptions) -> BuildResult``: the pipeline from a source model to a bundle.

The pipeline is the list ``STAGES``: each stage is one function that reads and extends a ``BuildState``.
A later stage (optimize, quantize, scan, seal, sign) is one function added to that list.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import onnx

from onnxguard import __version__, bundle, convert, staging
from onnxguard import scan as scanner
from onnxguard.accuracy import parity
from onnxguard.accuracy.parity import ParityReport, Tolerance
from onnxguard.accuracy.thresholds import GATE
from onnxguard.bundle import Bundle, digest
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.bundle.manifest import Golden, Lengths, Manifest, Model, Step, Tensor, now
from onnxguard.bundle.manifest import Source as SourceInfo
from onnxguard.convert import ConvertOptions, Source, isolated
from onnxguard.errors import CheckFailed, InputError, OnnxguardError, Remedy
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.speed import bench, lengths, mixed, optimize, quantize
from onnxguard.speed import select as variants
from onnxguard.speed.select import Candidate, Selection


@dataclass(frozen=True)
class BuildOptions:
    """What a build does beyond converting: naming, golden set, gates, variants, scan, seal and sign."""

    convert: ConvertOptions = ConvertOptions()
    name: str | None = None
    version: str = "0.1.0"
    meta: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    golden_npz: Path | None = None
    texts: Path | None = None
    tolerance: Tolerance = Tolerance()
    overwrite: bool = False
    optimize: str = "auto"  # none | auto | fusions | basic | extended | all
    quantize: str = "none"  # none | auto | dynamic | static | fp16
    calibration: Path | None = None  # static quantization inputs: .npz or texts file (default: the golden set)
    calibration_method: str = "minmax"
    gate: Tolerance = GATE
    force: bool = False  # keep a requested variant that fails the gate (recorded in the manifest)
    bench_batch: int = 1  # candidates are timed at this batch size ...
    bench_threads: int = 0  # ... and thread count (0: all cores)
    sign_key: Path | None = None  # sign the bundle (OpenSSF model signing) with this private key
    sign_password: str | None = None
    recipients: tuple[str, ...] = ()  # seal (age) the model and golden set to these recipients
    scan: bool = True  # scan the chosen model before it goes into the bundle
    policy: scanner.Policy | None = None  # None: the default profile
    fail_on: str = "medium"  # a finding at or above this severity stops the build


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
    candidates: list[Candidate] = field(default_factory=list)
    selection: Selection | None = None
    scan: scanner.ScanReport | None = None
    bundle: Bundle | None = None
    lengths: Lengths | None = None  # a text model's bucket plan (stage_lengths)
    staging: Path | None = None  # where the bundle is written, sealed and signed before it is published
    outbox: contextlib.ExitStack | None = None  # closing it publishes the staging directory as the target


_T = TypeVar("_T")


def _made(value: _T | None, what: str) -> _T:
    """``value``, which an earlier stage sets: a stage list that runs a stage before the one it needs is a bug in
    that list, named here."""
    if value is None:
        raise RuntimeError(f"build stages out of order: {what} is not made yet")
    return value


@dataclass(frozen=True)
class StageResult:
    """One stage as it ran: its name, its duration and what it reported."""

    name: str
    seconds: float
    detail: str


@dataclass(frozen=True)
class BuildResult:
    """The published bundle, the export's parity, every stage as it ran, and the variant selection."""

    bundle: Bundle
    parity: ParityReport
    stages: tuple[StageResult, ...]
    selection: Selection | None = None


def stage_convert(state: BuildState) -> str:
    """Load the source and export it to ONNX; records the exporter and opset.

    A PyTorch or Transformers source is converted in a child process (:mod:`onnxguard.convert.isolated`): its
    framework never enters this one. The child also makes the golden set (see :func:`stage_golden`) and, for
    ``--optimize auto``, the other exporter's graph (a candidate, see :func:`stage_optimize`), then exits."""
    opts = state.options
    if isolated.runs_apart(state.spec):
        calibration = opts.calibration if (opts.quantize != "none" and opts.calibration is not None
                                           and Path(opts.calibration).suffix != ".npz") else None
        job = isolated.Job(str(state.spec), opts.convert, opts.meta, opts.golden_npz, opts.texts, calibration,
                           other_exporter=opts.optimize == "auto")
        result = isolated.convert(job, state.progress)
        if state.outbox is not None:  # its scratch directory (staged exports, tokenizer files) goes with the build
            state.outbox.callback(result.source.close)
    else:
        result = convert.convert(state.spec, opts.convert, opts.meta, state.progress)
    state.source, state.model, state.exporter, state.notes = result.source, result.model, result.exporter, result.notes
    nodes = len(result.model.graph.node)
    state.steps.append(Step(name="convert", settings={"exporter": result.exporter, "opset": _opset(result.model)},
                            figures={"nodes": nodes, "bytes": result.model.ByteSize()}))
    return f"{result.exporter}, {nodes} nodes"


def stage_golden(state: BuildState) -> str:
    """The golden set: inputs (given or generated) and the source framework's outputs on them (made by the
    conversion's child process for a source converted there)."""
    opts, source = state.options, _made(state.source, "the source (convert)")
    if isinstance(source, isolated.StagedSource):
        golden, state.golden_origin = source.golden, source.golden_origin
        where = ", run in the conversion process"
    else:
        golden, state.golden_origin = parity.golden_from_source(source, opts.golden_npz, opts.texts, state.progress)
        where = ""
    state.golden = golden
    return f"{golden.items} examples in {len(golden.inputs)} batches ({state.golden_origin}{where})"


def stage_parity(state: BuildState) -> str:
    """The export against the source on the golden set, at the strict tolerance; a failure stops the build."""
    state.progress(Event("parity", "running ONNX Runtime on the golden set"))
    source = _made(state.source, "the source (convert)")
    report = parity.parity(_made(state.model, "the model (convert)"), _made(state.golden, "the golden set (golden)"),
                           source.output_roles, state.options.tolerance, state.notes)
    state.parity = report
    if not report.passed:
        failures = "; ".join(f"{o.name}: {', '.join(o.failures)}" for o in report.outputs if not o.passed)
        raise CheckFailed(f"parity failed against {source.framework} ({failures}); no bundle was written",
                          hint="fix the model or the export, or loosen the tolerance if the difference is expected")
    worst = max(o.max_abs for o in report.outputs)
    state.steps.append(Step(name="parity", settings=report.tolerance.__dict__,
                            figures={o.name: {"max_abs": o.max_abs, "min_cosine": o.min_cosine,
                                              "label_agreement": o.label_agreement} for o in report.outputs}))
    return f"passed, max |diff| {worst:.2g} on {report.items} examples"


OPTIMIZE_CHOICES = ("none", "auto", "fusions", *optimize.LEVELS)
QUANTIZE_CHOICES = ("none", "auto", *quantize.MODES)


def _other_exporter(state: BuildState) -> str | None:
    return isolated.other_exporter(_made(state.source, "the source (convert)").framework, state.exporter)


def _reexported(state: BuildState, exporter: str) -> tuple[onnx.ModelProto, Step]:
    """Export again with ``exporter``. Its candidate is held to the export's strict parity by select's gate (one
    run on the golden set, not a second one here: 6.5 s of DistilBERT-base's build on an AVX2 CPU)."""
    source = _made(state.source, "the source (convert)")
    exported = source.export(state.options.convert.opset, exporter, silent)
    convert.set_metadata(exported.model, state.options.meta)
    settings = {"exporter": exported.exporter, "opset": _opset(exported.model)}
    return exported.model, Step(name="convert", settings=settings, figures={"nodes": len(exported.model.graph.node)})


def _optimized(model: onnx.ModelProto, opts: optimize.OptimizeOptions) -> tuple[onnx.ModelProto, Step]:
    r = optimize.optimize(model, opts)
    return r.model, Step(name="optimize", settings=opts.__dict__, figures=r.figures())


def _quantized(base: Candidate, opts: quantize.QuantizeOptions) -> tuple[onnx.ModelProto, Step]:
    """``base``'s model (made by then: select makes a parent before its children) quantized."""
    r = quantize.quantize(_made(base.model, f"the {base.name} candidate"), opts)
    return r.model, Step(name="quantize", settings=r.options.settings(),
                         figures=r.figures())


def _alternative(plain: Candidate, base: Candidate, opts: quantize.QuantizeOptions) -> tuple[onnx.ModelProto, Step]:
    """``base`` quantized with ``opts``: a more accurate, slower alternative to ``plain``, made only when ``plain``
    failed the gate."""
    variants.needed_after(plain)
    return _quantized(base, opts)


def stage_optimize(state: BuildState) -> str:
    """FP32 candidates: the plain export, and the optimized graphs asked for (made one at a time by select)."""
    choice, arch = state.options.optimize, _made(state.source, "the source (convert)").architecture or {}
    model = _made(state.model, "the model (convert)")
    strict = state.options.tolerance
    # The export is gated already: the parity stage ran it on the golden set at this tolerance.
    state.candidates = [Candidate("fp32", model, tolerance=strict, gate=state.parity)]
    wanted = []
    if choice in ("auto", "fusions") and optimize.is_transformer(model):
        fused = optimize.OptimizeOptions(level="none", fusions=True, model_type=arch.get("model_type"),
                                         num_heads=arch.get("num_heads", 0), hidden_size=arch.get("hidden_size", 0))
        wanted.append(("fp32-fused", fused))
    if choice in ("auto", "basic", "extended", "all"):
        level = "extended" if choice == "auto" else choice
        wanted.append((f"fp32-{level}", optimize.OptimizeOptions(level=level)))
    for name, opts in wanted:
        state.candidates.append(Candidate(name, make=functools.partial(_optimized, model, opts), tolerance=strict))
    other = _other_exporter(state)
    if choice == "auto" and other:
        # The exporters emit different graphs for the same model, and ORT runs them at different speeds
        # (the TorchScript graph of DistilBERT quantizes faster and fuses Attention; dynamo's does not).
        # Second in line: for a source converted in a child process, that process made this export too (it is read
        # from its file here); for a source loaded in this process, the export runs here and its transient memory
        # is the build's largest, so it runs before any other candidate's session exists.
        state.candidates.insert(1, Candidate(f"fp32-{other}", make=functools.partial(_reexported, state, other),
                                             tolerance=strict))
    return ", ".join(c.name for c in state.candidates) + " (each made, gated and timed in select)"


def stage_quantize(state: BuildState) -> str:
    """Quantized candidates of each FP32 candidate, per the requested mode (auto: dynamic of each, static of
    the plain exports; for a transformer, dynamic of the exports as they are, mixed and block-wise INT8 of the
    plain export, no static; for a convolutional model, static only)."""
    choice = state.options.quantize
    if choice == "none":
        return "skipped (no quantization asked for)"
    modes: tuple[str, ...] = ("dynamic", "static") if choice == "auto" else (choice,)
    note = ""
    model = _made(state.model, "the model (convert)")
    transformer = choice == "auto" and optimize.is_transformer(model)
    if transformer:
        # Transformers on CPU take dynamic INT8 (MatMul-heavy, activation ranges vary per input); static QDQ of
        # them costs minutes of calibration and gigabytes at build time for a variant that does not win here.
        modes, note = ("dynamic",), ("; static skipped for a transformer (ask for the static mode to try it), INT8 "
                                     "made of the exports as they are")
    elif choice == "auto" and optimize.is_convolutional(model):
        # Dynamic INT8 makes each Conv a ConvInteger, which ONNX Runtime runs slower than FP32 on CPU (benchmark B's
        # CNN: 0.27-0.29x the plain export's speed on an AVX2-only EPYC, MEASURED.md B alike); static INT8 quantizes
        # Conv and Gemm both.
        modes, note = ("static",), "; no dynamic INT8 of a convolutional model (ask for the dynamic mode to try it)"
    if choice != "auto":
        for c in state.candidates:
            c.eligible = False  # an explicit mode asks for a quantized model; FP32 stays as the timing baseline
    calibration = _calibration(state) if "static" in modes else ()
    added = []
    for base in list(state.candidates):
        for mode in modes:
            exported_as_is = base.make is None or getattr(base.make, "func", None) is _reexported
            if mode == "static" and not exported_as_is:
                continue  # QDQ on top of fused or offline-optimized graphs adds nothing but failure modes
            if transformer and not exported_as_is:
                # Dynamic INT8 of a transformer's fused or offline-optimized graph never beat that of an export as
                # it is (DistilBERT-base on an AVX2-only EPYC: fused 1.76x and extended 1.71x FP32 against the
                # TorchScript export's 1.82x; on VNNI the fused graph's QAttention was slower too), and each costs
                # a quantization, a gate and a timing: about 18 s of a 3-minute build there.
                continue
            method = state.options.calibration_method
            opts = quantize.QuantizeOptions(mode=mode, calibration=calibration, method=method)
            name = f"{base.name}-{'int8-' + mode if mode != 'fp16' else 'fp16'}"
            added.append(Candidate(name, make=functools.partial(_quantized, base, opts), parent=base))
            if mode == "dynamic" and transformer and base is state.candidates[0]:
                # Accuracy-aware INT8 (speed.mixed), of the plain export only (a search costs ~1 min on MiniLM):
                # only when the plain INT8 candidate just added failed the gate, the most sensitive MatMuls
                # measured on the golden set stay FP32, the fewest found that pass.
                added.append(Candidate(f"{base.name}-int8-mixed", parent=base, make=functools.partial(
                    mixed.make, base, added[-1], _made(state.golden, "the golden set (golden)"),
                    _made(state.source, "the source (convert)").output_roles, state.options.gate,
                    state.options.bench_threads or os.cpu_count() or 1)))
                # Block-wise INT8 (MatMulNBits, 8-bit weights per block of K, int8 activations per block at run
                # time): the per-tensor activation scale that costs dynamic INT8 its labels is gone, with no search.
                # On the real-weights MiniLM classifier (docs/benchmarks.md F) it kept 99.4 % of the real sentences
                # where the plain INT8 kept 89 %, at about the mixed candidate's speed. Of the plain export only:
                # of the TorchScript export the same settings failed the gate there (98.8 %). Like the mixed one,
                # only when the plain INT8 candidate failed: it is slower than plain INT8 at every batch of
                # sentences (ONNX Runtime's 8-bit kernel is fast for one row at a time), so otherwise it only adds
                # a quantization, a gate and a timing to the build.
                added.append(Candidate(f"{base.name}-int8-blockwise", parent=base, make=functools.partial(
                    _alternative, added[-2], base, quantize.QuantizeOptions(mode="blockwise"))))
            if mode == "static" and choice == "auto" and method == "minmax":
                # MinMax ranges follow the rarest outlier activation; percentile ranges clip it. On the CIFAR CNN
                # (benchmarks/cifar_cnn.py, this 2-core Xeon) MinMax gave cosine 0.9895 (gate: 0.99), percentile
                # 0.998: the gate picks between them, and the select step records both.
                pct = dataclasses.replace(opts, method="percentile")
                added.append(Candidate(f"{name}-percentile", make=functools.partial(_quantized, base, pct),
                                       parent=base))
    state.candidates += added
    return ", ".join(c.name for c in added) + " (each made, gated and timed in select)" + note


def _calibration(state: BuildState) -> tuple[Batch, ...]:
    return variants.calibration(state.options.calibration, state.golden,
                                _made(state.source, "the source (convert)").texts_inputs)


def stage_select(state: BuildState) -> str:
    """Gate every candidate against the source, time those that pass, keep the fastest."""
    if len(state.candidates) <= 1:
        return "only the plain export: nothing to choose"
    threads = state.options.bench_threads or os.cpu_count() or 1
    sel = variants.select(state.candidates, _made(state.golden, "the golden set (golden)"),
                          _made(state.source, "the source (convert)").output_roles, state.options.bench_batch,
                          threads, state.options.gate, force=state.options.force, progress=state.progress)
    state.selection, state.model = sel, sel.winner.model
    reexport = next((st for st in sel.winner.steps if st.name == "convert"), None)
    if reexport is not None:
        state.exporter = reexport.settings["exporter"]
    state.steps += sel.winner.steps + [sel.step()]
    return sel.reason


def stage_lengths(state: BuildState) -> str:
    """A text model's bucket plan (``runtime.LengthAware``), measured on the chosen model and gated; see
    :mod:`onnxguard.speed.lengths`. A model it does not fit is built as it is, with the reason recorded."""
    model = _made(state.model, "the model (convert)")
    export = _made(state.candidates[0].model, "the plain export") if state.candidates else model
    winner_gate = state.selection.winner.gate if state.selection else None
    tolerance = winner_gate.tolerance if winner_gate is not None else state.options.tolerance
    threads = state.options.bench_threads or os.cpu_count() or 1
    try:
        planned = lengths.plan(model, export, _made(state.golden, "the golden set (golden)"),
                               _made(state.source, "the source (convert)").output_roles, tolerance, threads,
                               state.progress)
    except OnnxguardError as e:
        return f"no plan: {e}"
    p = planned.plan
    if p is None:
        if "takes no" not in planned.why:
            state.steps.append(Step(name="lengths", figures={"plan": None, "why": planned.why, **planned.figures}))
        return f"no plan: {planned.why}"
    state.lengths = Lengths(mask=p.mask, cost=asdict(p.cost), max_buckets=p.max_buckets, shift_free=p.shift_free,
                            sequence_outputs=list(p.sequence_outputs or ()),
                            measured={"threads": threads, "cpu": bench.machine()["cpu"], "why": planned.why,
                                      **planned.figures})
    return planned.why


def stage_scan(state: BuildState) -> str:
    """The security scan of the chosen model, as `onnxguard scan` runs it, before it enters the bundle."""
    if not state.options.scan:
        return "skipped (scan turned off)"
    # Scanned from memory: the plaintext model is never written outside the staging directory (a sealed build
    # encrypts it there before it is published).
    report = scanner.scan_bytes(_made(state.model, "the model (convert)").SerializeToString(), bundle.MODEL,
                                state.options.policy, progress=state.progress)
    state.scan = report
    failing = report.at_or_above(scanner.Severity.parse(state.options.fail_on))
    if failing:
        worst = failing[0]
        raise CheckFailed(f"scan: {len(failing)} finding(s) at or above {state.options.fail_on}, first: "
                          f"{worst.severity.label} {worst.check}: {worst.message}; no bundle was written")
    counts = report.counts()
    return ", ".join(f"{n} {sev}" for sev, n in counts.items() if n) or "no findings"


def scan_summary(report: scanner.ScanReport, fail_on: str) -> dict:
    """The manifest's record of the scan: profile, fail level, counts and findings."""
    return {"profile": report.profile, "fail_on": fail_on, "counts": report.counts(),
            "findings": [f.to_dict() for f in report.findings]}


def stage_bundle(state: BuildState) -> str:
    """Write the bundle's files into the staging directory beside the target; ``publish`` moves it into place."""
    state.progress(Event("bundle", f"writing {state.target}"))
    manifest = make_manifest(state)
    work = _made(state.staging, "the staging directory")
    try:
        bundle.fill(work, manifest, _made(state.model, "the model (convert)"), state.golden,
                    _made(state.source, "the source (convert)").assets)
    except OSError as e:  # name the bundle the user asked for, not the staging directory
        raise InputError(f"{state.target}: cannot write the bundle ({e.strerror or e})",
                         hint="free some space", remedy=Remedy.OUTPUT) from e
    state.bundle = bundle.read(work)
    return f"{len(state.bundle.manifest.files)} files"


def stage_seal(state: BuildState) -> str:
    """Encrypt the model and golden set at rest (age): before signing, so the signature covers the ciphertext."""
    if not state.options.recipients:
        return "skipped (no recipient)"
    from onnxguard.trust import sealing

    work = _made(state.staging, "the staging directory")
    result = sealing.seal(work, state.options.recipients, progress=state.progress)
    state.bundle = bundle.read(work)
    return f"{', '.join(sealed for _, sealed in result.files)} for {len(state.options.recipients)} recipient(s)"


def stage_sign(state: BuildState) -> str:
    """Sign every file of the bundle (OpenSSF model signing); verifiable without any decryption key."""
    if state.options.sign_key is None:
        return "skipped (no signing key)"
    from onnxguard.trust import signing

    signing.sign(_made(state.staging, "the staging directory"), state.options.sign_key, state.options.sign_password,
                 progress=state.progress)
    return f"{bundle.SIGNATURE} over {len(_made(state.bundle, 'the bundle (bundle)').manifest.files) + 1} files"


def stage_publish(state: BuildState) -> str:
    """Rename the staging directory to the target (replacing it only when overwriting is allowed)."""
    _made(state.outbox, "the staging directory's publication").close()
    state.bundle = bundle.read(state.target)
    return str(state.target)


Stage = Callable[[BuildState], str]
STAGES: list[tuple[str, Stage]] = [
    ("convert", stage_convert),
    ("golden", stage_golden),
    ("parity", stage_parity),
    ("optimize", stage_optimize),
    ("quantize", stage_quantize),
    ("select", stage_select),
    ("lengths", stage_lengths),
    ("scan", stage_scan),
    ("bundle", stage_bundle),
    ("seal", stage_seal),
    ("sign", stage_sign),
    ("publish", stage_publish),
]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def make_manifest(state: BuildState) -> Manifest:
    """The manifest of what the stages made (files, sha256 and sizes are filled in when it is written)."""
    source, model, opts = _made(state.source, "the source (convert)"), _made(state.model, "the model"), state.options
    golden, export = _made(state.golden, "the golden set (golden)"), _made(state.parity, "the parity report (parity)")
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
        golden=Golden(file=bundle.GOLDEN, batches=len(golden.inputs), items=golden.items, origin=state.golden_origin),
        parity=parity.summary(_with_notes(_made(state.selection.winner.gate, "the winner's gate (select)"),
                                          export.notes) if state.selection else export),
        scan=None if state.scan is None else scan_summary(state.scan, opts.fail_on),
        metadata=dict(opts.meta),
        lengths=state.lengths,
    )


def _with_notes(report: ParityReport, notes: tuple[str, ...]) -> ParityReport:
    """The winner's gate report, carrying the export's notes (float64 sources, tracer warnings)."""
    return dataclasses.replace(report, notes=tuple(dict.fromkeys(report.notes + notes)))


def _default_name(identifier: str) -> str:
    stem = Path(identifier.rpartition(":")[2] if identifier.rpartition(":")[0].endswith(".py") else identifier)
    return stem.stem or stem.name or "model"


def _inputs(spec: str | Source, options: BuildOptions) -> list[Path]:
    """The files a build reads: the output must never be, hold or lie inside one of them."""
    given = convert.spec_path(spec) if isinstance(spec, str) else None
    files = [p for p in (given, options.golden_npz, options.texts, options.calibration, options.sign_key) if p]
    return [p for p in files if os.path.lexists(p)]


def build(spec: str | Source, target: str | Path, options: BuildOptions = BuildOptions(),
          progress: Progress = silent, stages: list[tuple[str, Stage]] | None = None) -> BuildResult:
    """Run every stage in order, in a staging directory beside ``target`` that the ``publish`` stage renames
    into place; a stage that raises stops the build and nothing is written."""
    target = Path(target)
    try:
        scanner.Severity.parse(options.fail_on)
    except ValueError as e:
        raise InputError(f"scan fail level: {e}") from e
    bundle.check_writable(target, options.overwrite, inputs=_inputs(spec, options))
    results = []
    with contextlib.ExitStack() as outbox:
        work = outbox.enter_context(staging.atomic_dir(target, overwrite=options.overwrite))
        state = BuildState(spec, target, options, progress, staging=work, outbox=outbox)
        for name, stage in stages or STAGES:
            start = time.perf_counter()
            progress(Event(name, "starting"))
            detail = stage(state)
            results.append(StageResult(name, time.perf_counter() - start, detail))
            progress(Event(name, detail, done=True))
    if state.bundle is None or state.bundle.path != target:  # a stage list without "publish": published on exit
        state.bundle = bundle.read(target)
    return BuildResult(state.bundle, _made(state.parity, "the parity report (parity)"), tuple(results),
                       state.selection)
