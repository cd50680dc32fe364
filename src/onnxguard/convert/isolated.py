"""``isolated.convert(Job, progress) -> ConvertResult``: a PyTorch or Transformers source converted in a child process.

The source framework (torch, transformers and the model's weights) never enters the caller's process. One child
Python process (``python -m onnxguard.convert.isolated JOB``) loads the source, exports it, exports it again with the
other PyTorch exporter when asked (``build --optimize auto`` races the two graphs), runs the source framework on the
golden set, and tokenizes a calibration texts file when one is given. It writes the exported models (through
external data past :data:`EXTERNAL_DATA_BYTES`), the golden set with its reference outputs, the tokenizer files and
a description of the source into a private scratch directory, then exits, and its memory goes with it.

The caller gets a :class:`StagedSource`: a plain, frozen ``convert.Source`` that holds what the stages read
(framework, version, identifier, task, files, labels, output roles, preprocessing, assets, architecture), the golden
set, and the staged exports, each read from its file only when it is asked for. The child's progress events reach
the caller's callback as they happen. An error the child raises on purpose (``ConversionError``, ``InputError``
... of :mod:`onnxguard.errors`) is raised again here as the same class with the same message, hint, remedy and
notes; a child that crashes or is killed is a ``ConversionError`` naming its exit code, never a silent pass.

scikit-learn and ``.onnx`` sources stay in the caller's process (:func:`runs_apart`): they load no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import sys
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx

from onnxguard import childproc, errors
from onnxguard.bundle import golden as golden_files
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.convert.interface import ConversionError, ConvertOptions, Exported
from onnxguard.errors import OnnxguardError, Remedy
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent

__all__ = ["EXTERNAL_DATA_BYTES", "KINDS", "Job", "StagedSource", "convert", "other_exporter", "runs_apart"]

# The source kinds converted in a child process: those whose loader imports torch.
KINDS = ("torch-module", "torch-program", "transformers")
# An exported model this large is written with its tensors in a side file (protobuf cannot serialize past 2 GiB).
EXTERNAL_DATA_BYTES = 1 << 30
# The lines of the child's stderr kept as notes on the error when it fails.
STDERR_NOTES = 20
_FIRST = "first"  # the staged export the conversion made with the requested exporter


def runs_apart(spec: object) -> bool:
    """Whether ``spec`` (a source spec, or an already loaded source) is converted in a child process: a spec of a
    PyTorch module, ExportedProgram or Transformers model. Raises ``ConversionError`` for a spec of no known kind."""
    from onnxguard.convert import detect

    return isinstance(spec, str) and detect(spec) in KINDS


def other_exporter(framework: str, exporter: str) -> str | None:
    """The PyTorch exporter that did not make ``exporter``'s graph (``dynamo`` or ``torchscript``), or None when
    there is no other: not a PyTorch source, or an ExportedProgram (dynamo only)."""
    if framework not in ("pytorch", "transformers") or "ExportedProgram" in exporter:
        return None
    return "torchscript" if "(dynamo)" in exporter else "dynamo"


@dataclass(frozen=True)
class Job:
    """What the child process does: convert ``spec`` as ``options`` say, with ``meta`` in the model's metadata, and
    make the golden set from ``golden_npz`` or ``texts`` (or the source's own inputs)."""

    spec: str
    options: ConvertOptions = ConvertOptions()
    meta: Mapping[str, str] = field(default_factory=dict)
    golden_npz: Path | None = None
    texts: Path | None = None
    calibration_texts: Path | None = None  # a texts file to tokenize for static calibration
    other_exporter: bool = False  # export again with the other PyTorch exporter (a candidate graph)

    def to_json(self, workdir: Path) -> dict:
        return {"spec": self.spec, "options": dataclasses.asdict(self.options), "meta": dict(self.meta),
                "golden_npz": _str(self.golden_npz), "texts": _str(self.texts),
                "calibration_texts": _str(self.calibration_texts), "other_exporter": self.other_exporter,
                "workdir": str(workdir)}


def _str(path: Path | None) -> str | None:
    return None if path is None else os.fspath(path)


@dataclass(frozen=True)
class StagedExport:
    """One export the child made: its file (or the error it raised), the exporter's name and its notes."""

    file: Path | None
    exporter: str = ""
    notes: tuple[str, ...] = ()
    error: dict | None = None  # an error raised in the child, as :func:`_error_dict` describes it


@dataclass(frozen=True)
class StagedTexts:
    """A texts file's lines tokenized in the child as the source tokenizes them (or the error it raised)."""

    texts: tuple[str, ...]
    batches: tuple[Batch, ...] = ()
    error: dict | None = None


@dataclass(frozen=True)
class StagedSource:
    """A source model converted in a child process (see the module's docstring): what it said about itself, its
    golden set, and its staged exports. Its framework has ended: ``run`` raises ``ConversionError``."""

    framework: str
    framework_version: str
    identifier: str
    task: str | None
    files: tuple[Path, ...]
    labels: list[str] | None
    output_roles: dict[str, str]
    preprocessing: dict[str, Any] | None
    assets: dict[str, Path]
    architecture: dict[str, Any] | None
    golden: GoldenSet
    golden_origin: str
    workdir: Path
    exports: Mapping[str, StagedExport] = field(default_factory=dict)
    tokenized: StagedTexts | None = None
    pid: int = 0  # the child process's id

    def export(self, opset: int | None, exporter: str, progress: Progress) -> Exported:
        """The export the child made with ``exporter`` (read from its file now), or the error it raised."""
        staged = self.exports.get(exporter)
        if staged is None:
            raise ConversionError(f"{self.identifier}: no {exporter} export was made in the conversion process")
        if staged.error is not None:
            raise _error(staged.error)
        if staged.file is None or not staged.file.is_file():
            raise ConversionError(f"{self.identifier}: the {exporter} export is gone (the conversion's scratch "
                                  "directory was removed)")
        return Exported(_load_model(staged.file), staged.exporter, staged.notes)

    def golden_inputs(self) -> list[Batch]:
        return list(self.golden.inputs)

    def texts_inputs(self, texts: list[str]) -> list[Batch]:
        """The calibration texts tokenized in the child; other texts cannot be tokenized any more."""
        staged = self.tokenized
        if staged is not None and staged.texts == tuple(texts):
            if staged.error is not None:
                raise _error(staged.error)
            return list(staged.batches)
        raise ConversionError(f"{self.identifier}: these texts were not tokenized in the conversion process")

    def run(self, batch: Batch) -> Batch:
        raise ConversionError(f"{self.identifier}: the {self.framework} model ran in the conversion process, which "
                              "has ended; its outputs on the golden set are the golden set's references")

    def close(self) -> None:
        """Remove the scratch directory (the staged exports and assets with it)."""
        shutil.rmtree(self.workdir, ignore_errors=True)


# -- the caller's side ---------------------------------------------------------------------------------------------

def convert(job: Job, progress: Progress = silent):
    """Convert ``job.spec`` in a child process; a ``convert.ConvertResult`` whose source is a :class:`StagedSource`.

    The caller removes the scratch directory with ``result.source.close()`` once it needs neither the assets nor the
    staged exports (it is removed when the source is collected, too)."""
    from onnxguard.convert import ConvertResult, detect, hf_task

    if detect(job.spec) == "transformers":  # what its config.json alone refuses, before torch is imported
        hf_task.refuse_early(job.spec, job.options.task)
    workdir = Path(tempfile.mkdtemp(prefix="onnxguard-convert-"))
    with contextlib.ExitStack() as failed:  # removed unless the conversion comes back whole
        failed.callback(shutil.rmtree, workdir, True)
        result, pid = _run_child(job, workdir, progress)
        source = _staged(result, workdir, pid)
        first = source.exports[_FIRST]
        model = _load_model(cast(Path, first.file))
        failed.pop_all()
    weakref.finalize(source, shutil.rmtree, workdir, True)
    return ConvertResult(model, source, first.exporter, first.notes)


def _child_env() -> dict[str, str]:
    """The caller's environment, with this onnxguard first on the path: the child runs the same code."""
    import onnxguard

    env = dict(os.environ)
    root = str(Path(onnxguard.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _run_child(job: Job, workdir: Path, progress: Progress) -> tuple[dict, int]:
    job_path = workdir / "job.json"
    job_path.write_text(json.dumps(job.to_json(workdir)), encoding="utf-8")
    with open(workdir / "stderr.txt", "w+b") as err:
        done = childproc.run([sys.executable, "-m", "onnxguard.convert.isolated", str(job_path)], err,
                             lambda event: progress(Event(**event)), env=_child_env())
        outcome, code = done.outcome, done.code
        if "error" in outcome:
            raise _error(outcome["error"])
        if code != 0 or "result" not in outcome:
            tail = childproc.stderr_lines(err)
            why = f"killed by {_signal_name(-code)}" if code < 0 else (tail[-1].strip()[:300] if tail else "")
            e = ConversionError(f"{job.spec}: the conversion process exited with code {code}"
                                + (f" ({why})" if why else "") + "; no bundle was written",
                                hint="rerun with --debug for its last lines; a process killed by SIGKILL often ran "
                                     "out of memory")
            for note in tail[-STDERR_NOTES:]:
                e.add_note(note)
            raise e
    return outcome["result"], done.pid


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _staged(d: dict, workdir: Path, pid: int) -> StagedSource:
    exports = {name: StagedExport(Path(e["file"]) if e.get("file") else None, e.get("exporter", ""),
                                  tuple(e.get("notes", ())), e.get("error")) for name, e in d["exports"].items()}
    tokenized = None
    if d.get("tokenized") is not None:
        t = d["tokenized"]
        batches = tuple(golden_files.load(t["file"]).inputs) if t.get("file") else ()
        tokenized = StagedTexts(tuple(t["texts"]), batches, t.get("error"))
    return StagedSource(
        framework=d["framework"], framework_version=d["framework_version"], identifier=d["identifier"],
        task=d["task"], files=tuple(Path(f) for f in d["files"]), labels=d["labels"],
        output_roles=dict(d["output_roles"]), preprocessing=d["preprocessing"],
        assets={rel: Path(p) for rel, p in d["assets"].items()}, architecture=d["architecture"],
        golden=golden_files.load(workdir / "golden.npz"), golden_origin=d["golden_origin"], workdir=workdir,
        exports=exports, tokenized=tokenized, pid=pid)


def _load_model(path: Path) -> onnx.ModelProto:
    """A model the child wrote into the private scratch directory (its external data, if any, beside it)."""
    if Path(f"{path}.data").exists():
        return onnx.load_model(str(path), load_external_data=True)
    return onnxfile.load(path)


def _error_dict(e: OnnxguardError) -> dict:
    """An onnxguard error as JSON: the nearest class of :mod:`onnxguard.errors`, message, hint, remedy, notes."""
    name = next((c.__name__ for c in type(e).__mro__ if vars(errors).get(c.__name__) is c), "ConversionError")
    return {"class": name, "message": e.message, "hint": e.hint, "remedy": e.remedy.name if e.remedy else None,
            "notes": [str(n) for n in getattr(e, "__notes__", ())]}


def _error(d: dict) -> OnnxguardError:
    """The error :func:`_error_dict` described, as its class of :mod:`onnxguard.errors`."""
    cls = vars(errors).get(str(d.get("class")))
    if not (isinstance(cls, type) and issubclass(cls, OnnxguardError)):
        cls = ConversionError
    remedy = Remedy[d["remedy"]] if d.get("remedy") in Remedy.__members__ else None
    e = cls(str(d.get("message", "")), hint=d.get("hint"), remedy=remedy)
    for note in d.get("notes") or ():
        e.add_note(str(note))
    return e


# -- the child's side ----------------------------------------------------------------------------------------------

def _save_model(model: onnx.ModelProto, path: Path) -> None:
    if model.ByteSize() >= EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnxfile.save(model, path)


def _plain(value: object) -> object:
    """JSON for what a source's description may hold beside plain data: numpy scalars and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def work(job: dict, progress: Progress) -> dict:
    """The child's conversion (see the module's docstring); the description the caller's :class:`StagedSource`
    is made from. Everything it writes goes into ``job["workdir"]``."""
    from onnxguard import convert as converter
    from onnxguard.accuracy import parity

    workdir = Path(job["workdir"])
    options = ConvertOptions(**{**job["options"], "input_shapes": tuple(job["options"]["input_shapes"])})
    meta = dict(job["meta"])
    result = converter.convert(job["spec"], options, meta, progress)
    source, first = result.source, result.exporter
    _save_model(result.model, workdir / "model.onnx")
    exports: dict[str, dict] = {_FIRST: {"file": str(workdir / "model.onnx"), "exporter": first,
                                         "notes": list(result.notes)}}
    del result  # the export's proto: the golden set and the other export run without it
    golden, origin = parity.golden_from_source(source, _path(job["golden_npz"]), _path(job["texts"]), progress)
    golden.save(workdir / "golden.npz")
    del golden
    other = other_exporter(source.framework, first) if job["other_exporter"] else None
    if other is not None:
        progress(Event("convert", f"exporting with the {other} exporter too (a candidate graph for select)"))
        try:
            exported = source.export(options.opset, other, silent)
        except OnnxguardError as e:
            exports[other] = {"error": _error_dict(e)}
        else:
            converter.set_metadata(exported.model, meta)
            _save_model(exported.model, workdir / f"{other}.onnx")
            exports[other] = {"file": str(workdir / f"{other}.onnx"), "exporter": exported.exporter,
                              "notes": list(exported.notes)}
            del exported
    tokenized: dict[str, object] | None = None
    texts = _texts(job["calibration_texts"])
    if texts is not None:  # (a file that cannot be read is refused by the caller as it reads it, if it needs it)
        try:
            batches = source.texts_inputs(texts)
        except OnnxguardError as e:
            tokenized = {"texts": texts, "error": _error_dict(e)}
        else:
            GoldenSet(tuple(batches)).save(workdir / "calibration.npz")
            tokenized = {"texts": texts, "file": str(workdir / "calibration.npz")}
    assets = {}
    for rel, path in source.assets.items():
        dst = (workdir / "assets" / rel).resolve()
        if not dst.is_relative_to((workdir / "assets").resolve()):
            raise ConversionError(f"{job['spec']}: the asset path {rel!r} leaves the bundle")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst)
        assets[rel] = str(dst)
    return {"framework": source.framework, "framework_version": source.framework_version,
            "identifier": source.identifier, "task": source.task, "files": [os.fspath(f) for f in source.files],
            "labels": source.labels, "output_roles": dict(source.output_roles), "preprocessing": source.preprocessing,
            "assets": assets, "architecture": source.architecture, "golden_origin": origin, "exports": exports,
            "tokenized": tokenized}


def _texts(path: str | None) -> list[str] | None:
    if path is None:
        return None
    try:
        return golden_files.read_texts(path)
    except OnnxguardError:
        return None


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def main(argv: list[str]) -> int:
    """The child process: ``python -m onnxguard.convert.isolated JOB.json``. Its stdout carries JSON lines only
    (progress events, then the result or an onnxguard error); anything else printed goes to its stderr. Any other
    exception ends it with a traceback on stderr and exit code 1, which the caller reports."""
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # native code's stdout, and Python's, go to stderr
    sys.stdout = sys.stderr

    def send(**message: object) -> None:
        channel.write(json.dumps(message, default=_plain) + "\n")
        channel.flush()

    def progress(e: Event) -> None:
        send(event=dataclasses.asdict(e))

    job = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    try:
        result = work(job, progress)
    except OnnxguardError as e:
        send(error=_error_dict(e))
        return 1
    send(result=result)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):  # the caller went away: nothing left to tell it
        sys.exit(main(sys.argv))
