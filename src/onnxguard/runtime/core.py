"""``runtime.session(model) -> InferenceSession`` and ``runtime.run(sess, batches)``: the one place an ONNX
Runtime session is made.

Every session onnxguard creates (parity, the accuracy gate, bench, consistency, targets, sealed bundles, the
server) is made here, from bytes in memory, on the CPU provider, with ONNX Runtime's own log kept off the
terminal: a load failure becomes one :class:`~onnxguard.errors.ModelError` line instead.

External data (tensors whose bytes live in another file) is resolved only inside ``model_dir``, never against
the current working directory: every location is checked first with the scanner's rules
(:func:`onnxguard.scan.checks.external_data.resolve`: relative, inside the folder after normalisation and
symlinks, a regular file with one link), and ONNX Runtime is told the folder through the session option
``session.model_external_initializers_file_folder_path``. A model with external data and no ``model_dir`` is
refused. Nothing here changes process-global state (working directory, loggers, environment).

ONNX Runtime's Python tools (quantization, transformer fusions, float16, the ORT-format operator list) do: they
configure the root logger, print, and write scratch files into the working directory. :func:`isolated` runs such a
step in a child process, in a scratch directory, and hands back its result, its progress and its error.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from onnxguard import childproc
from onnxguard.errors import InputError, ModelError
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.scan.checks import external_data

Batch = Mapping[str, np.ndarray]

# Graph optimization levels by name (``optimization=``); None leaves ONNX Runtime's default (all).
LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
# Where ONNX Runtime looks for external data of a model given as bytes (checked with onnxruntime 1.32.0:
# without it, ORT resolves locations against the current working directory).
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
# ORT format (flatbuffer) models carry this file identifier at bytes 4..8; they have no external data.
ORT_FORMAT_ID = b"ORTM"
# ORT's own log would print load errors on stderr; the error is raised as one ModelError line instead.
LOG_SEVERITY = 4  # fatal only

# Everything ONNX Runtime raises when it cannot create a session from the bytes it was given.
LOAD_ERRORS = (_state.Fail, _state.InvalidGraph, _state.InvalidArgument, _state.NotImplemented,
               _state.InvalidProtobuf, _state.NoSuchFile, _state.NoModel, _state.NotFound,
               _state.RuntimeException, _state.ModelRequiresCompilation, _state.EPFail)
# ... and when a call to ``run`` does not fit the model.
RUN_ERRORS = (_state.Fail, _state.InvalidArgument, _state.RuntimeException, _state.NotImplemented)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _check_external_data(model: onnx.ModelProto, model_dir: str | os.PathLike | None, name: str) -> str | None:
    """The absolute folder ONNX Runtime may read external data from, or None when the model has none."""
    refs = external_data.external_tensors(model)
    if not refs:
        return None
    if model_dir is None:
        raise ModelError(f"{name}: tensor {refs[0].name!r} keeps its data in an external file, and no model "
                         "directory was given to resolve it in",
                         hint="load the model with the directory that holds it and its external data files")
    folder = os.path.abspath(os.fspath(model_dir))
    if not os.path.isdir(folder):
        raise ModelError(f"{name}: the model directory {folder} for its external data is not a directory",
                         hint="give the directory that holds the model and its external data files")
    for ref in refs:
        path, why = external_data.resolve(folder, ref.entries.get("location", ""))
        if path is not None and why is None:
            try:
                st = os.stat(path)
            except OSError:
                why = f"location {ref.entries['location']!r} names no file in {folder}"
            else:
                if not stat.S_ISREG(st.st_mode):
                    why = f"location {ref.entries['location']!r} is not a regular file"
                elif st.st_nlink > 1:
                    why = (f"location {ref.entries['location']!r} has {st.st_nlink} hard links and may be a file "
                           "from outside the model's directory")
        if why is not None:
            raise ModelError(f"{name}: external data of tensor {ref.name!r} refused: {why}",
                             hint="keep external data as plain files inside the model's directory, or scan the model")
    return folder


# ONNX Runtime's intra-op threads spin-wait after each run, holding their cores. Sessions that take turns must not:
# measured on benchmark B's CNN (batch 32, 2 threads, AVX2-only AMD EPYC, onnxruntime 1.32), the plain export ran
# 10.7 ms alone but 24.8-31.7 ms alternating with its static INT8 variant, and the pair's speed-up read 1.66-2.09x
# against 1.59x alone; without spinning, 10.8-11.4 ms and 1.47-1.52x, as alone. Whatever times candidates or
# variants side by side (speed.select, speed.bench, speed.mixed, speed.lengths) therefore makes them with spin=False.
SPINNING = "session.intra_op.allow_spinning"
# Spin while a run is in progress, stop at its end: a spinning session's speed within a run, without holding the
# cores afterwards while other sessions in the process run (see serve.models, lanes).
SPIN_STOP = "session.force_spinning_stop"


def session(model: onnx.ModelProto | bytes, *, model_dir: str | os.PathLike | None = None, threads: int = 0,
            optimization: str | None = None, optimized_model_path: str | os.PathLike | None = None,
            config: Mapping[str, str] | None = None, disabled_optimizers: Sequence[str] = (),
            profile_prefix: str | os.PathLike | None = None, name: str = "the model",
            spin: bool = True) -> ort.InferenceSession:
    """An ONNX Runtime CPU session over ``model`` (an ``onnx.ModelProto``, or ONNX or ORT-format bytes).

    ``threads``: intra-op threads, 0 lets the runtime choose. ``optimization``: a name of :data:`LEVELS`, None
    for the runtime's default. ``optimized_model_path``: where ONNX Runtime saves the optimized graph (offline
    optimization). ``model_dir``: the only folder external data may come from. ``profile_prefix``: turns on ONNX
    Runtime's profiler, which writes its JSON to ``<prefix>_<date>.json`` (the path ``sess.end_profiling()``
    returns); it must be absolute, so that nothing lands in the working directory. ``name`` names the model in errors.
    ``spin``: False stops the intra-op threads from spin-waiting for more work after a run (``SPINNING``).
    """
    proto: onnx.ModelProto | None
    if isinstance(model, onnx.ModelProto):
        proto, data = model, model.SerializeToString()
    elif isinstance(model, bytes | bytearray | memoryview):
        data = bytes(model)
        proto = None if data[4:8] == ORT_FORMAT_ID else onnxfile.parse(data, name)
    else:
        raise InputError(f"runtime.session takes an onnx.ModelProto or bytes, not {type(model).__name__}",
                         hint="read the file's bytes first, so that what is checked is what is loaded")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = LOG_SEVERITY
    if optimization is not None:
        if optimization not in LEVELS:
            raise InputError(f"unknown optimization level {optimization!r}; use {', '.join(LEVELS)}")
        opts.graph_optimization_level = LEVELS[optimization]
    if optimized_model_path is not None:
        opts.optimized_model_filepath = os.fspath(optimized_model_path)
    if profile_prefix is not None:
        if not os.path.isabs(os.fspath(profile_prefix)):
            raise InputError(f"the profile prefix {os.fspath(profile_prefix)!r} must be an absolute path")
        opts.enable_profiling = True
        opts.profile_file_prefix = os.fspath(profile_prefix)
    if not spin:
        opts.add_session_config_entry(SPINNING, "0")
    for key, value in (config or {}).items():
        if key == EXTERNAL_FOLDER_KEY:
            raise InputError(f"the session entry {key} is set from model_dir only")
        opts.add_session_config_entry(key, value)
    folder = _check_external_data(proto, model_dir, name) if proto is not None else None
    if folder is not None:
        opts.add_session_config_entry(EXTERNAL_FOLDER_KEY, folder)
    del proto  # a parsed copy of every weight: not held while ONNX Runtime makes its own (the load's peak)
    try:
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(disabled_optimizers) or None)
    except LOAD_ERRORS as e:
        raise ModelError(f"ONNX Runtime cannot load {name}: {first_line(e)}",
                         hint="check that the file is a complete ONNX model for this onnxruntime version") from e
    _forget_bytes(sess)
    return sess


def _forget_bytes(sess: ort.InferenceSession) -> None:
    """Drop the Python session's reference to the model bytes it was made from.

    ONNX Runtime's ``InferenceSession`` keeps them (``_model_bytes``, "TODO: This is bad as we're holding the
    memory indefinitely", onnxruntime 1.32.0) only to re-create itself in ``set_providers`` or in ``run``'s
    fallback after an execution provider's failure; the C++ session has its own copy of what it needs. Kept, they
    are the whole model once more for as long as the session lives (260 MB for FP32 DistilBERT-base; for a
    ``ModelProto`` the serialized copy made above). Fallback is turned off (on the CPU provider it can only
    re-create the same session, printing to stdout as it does), and ``set_providers`` is not used by onnxguard.
    """
    sess.disable_fallback()
    if getattr(sess, "_model_bytes", None) is not None:
        sess._model_bytes = None


def run(sess: ort.InferenceSession, batches: Sequence[Batch]) -> list[dict[str, np.ndarray]]:
    """Run every batch; string outputs come back as numpy unicode arrays (never object arrays).

    Inputs the model does not take are ignored; a missing input, or one ONNX Runtime refuses, is an ``InputError``.
    """
    wanted = [i.name for i in sess.get_inputs()]
    names = [o.name for o in sess.get_outputs()]
    results = []
    for i, batch in enumerate(batches):
        missing = set(wanted) - batch.keys()
        if missing:
            raise InputError(f"batch {i} lacks model input(s) {sorted(missing)}; it has {sorted(batch)}")
        try:
            values = sess.run(names, {k: batch[k] for k in wanted})
        except RUN_ERRORS as e:
            raise InputError(f"batch {i} does not fit the model: {first_line(e)}") from e
        results.append({n: (v.astype(str) if v.dtype == object else v) for n, v in zip(names, values, strict=True)})
    return results


# Wraps a step's source: it defines ``main(job, event) -> dict``. The child's stdout (Python's and native
# code's) goes to its stderr, which the parent keeps apart; JSON lines on a private descriptor carry the
# progress events, then the result or the error.
_PREAMBLE = """\
import json, os, sys
_channel = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
sys.stdout = sys.stderr
def _send(**message):
    _channel.write(json.dumps(message) + "\\n")
    _channel.flush()
def event(message):
    _send(event=str(message))
with open(sys.argv[1], encoding="utf-8") as _f:
    job = json.load(_f)
"""
_POSTAMBLE = """
try:
    _result = main(job, event)
# The step's tools raise anything at all; every exception is reported to the parent, which raises a ModelError.
except Exception as _e:  # noqa: BLE001
    _lines = str(_e).strip().splitlines()
    _send(error=type(_e).__name__ + (": " + _lines[0][:300] if _lines else ""))
    sys.exit(1)
_send(result=_result)
"""


def isolated(script: str, job: Mapping, *, what: str, stage: str, progress: Progress = silent,
             cwd: str | os.PathLike | None = None) -> dict:
    """Run ``script`` (Python source defining ``main(job, event) -> dict``) in a child Python process.

    ``job`` (JSON data) is handed to ``main``; ``event(message)`` calls become ``progress`` events of ``stage``.
    The child runs in ``cwd`` (default: a fresh scratch directory), so files a tool drops into its working
    directory land there. A step that fails is a ``ModelError`` "``what`` failed: ..." with the first line of
    its exception. Nothing the step does to logging, stdout or the working directory reaches this process.
    """
    with tempfile.TemporaryDirectory(prefix="onnxguard-step-") as scratch:
        job_path = os.path.join(scratch, "job.json")
        with open(job_path, "w", encoding="utf-8") as f:
            json.dump(job, f)
        with tempfile.TemporaryFile(dir=scratch) as err:
            done = childproc.run([sys.executable, "-c", _PREAMBLE + script + _POSTAMBLE, job_path], err,
                                 lambda message: progress(Event(stage, str(message))),
                                 cwd=os.fspath(cwd) if cwd is not None else scratch)
            outcome = done.outcome
            if "error" in outcome:
                raise ModelError(f"{what} failed: {outcome['error']}")
            if done.code != 0 or "result" not in outcome:
                tail = childproc.stderr_lines(err)
                raise ModelError(f"{what} failed: its process exited with code {done.code}"
                                 + (f" ({tail[-1].strip()[:300]})" if tail else ""))
    return outcome["result"] if isinstance(outcome["result"], dict) else {}
