"""``web`` target: a static folder that runs the model and its golden set in the browser (onnxruntime-web, WASM).

The folder holds ``index.html`` and ``app.mjs`` (the page), ``model.onnx``, ``golden.json`` (the golden
inputs and the SOURCE framework's reference outputs), ``manifest.json``, and in ``ort/`` the files of
onnxruntime-web's WASM backend. Those come from the npm registry through the ``package-lock.json`` beside
this module (``npm ci`` checks each package's sha512), are installed once into a cache directory, and are
copied into every target: nothing is fetched when the page runs. Any static file server on the page's own
origin can host it; see docs/endpoints.md for the MIME type and headers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from onnxguard import staging
from onnxguard.accuracy.thresholds import THRESHOLDS, kind_of
from onnxguard.bundle import digest
from onnxguard.bundle.golden import Batch, GoldenSet
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress
from onnxguard.target import operators
from onnxguard.target.interface import TARGET_FORMAT, TargetResult, provenance
from onnxguard.trust.opening import OpenedBundle

HERE = Path(__file__).parent  # the page, its script and the pinned package-lock live beside this module
PAGE = ("index.html", "app.mjs")
# The WASM backend only (no WebGL/WebGPU): its loader module, its Emscripten glue, and the engine.
RUNTIME_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
RUNTIME_ENV = "ONNXGUARD_ORT_WEB"  # a directory holding RUNTIME_FILES, instead of the npm install
NPM_TIMEOUT_S = 600


def runtime_version() -> str:
    """The onnxruntime-web version pinned by the package-lock beside this module."""
    lock = json.loads((HERE / "package-lock.json").read_text())
    return lock["packages"]["node_modules/onnxruntime-web"]["version"]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "onnxguard"


def runtime_dir(progress: Progress) -> Path:
    """The directory holding onnxruntime-web's WASM files: ``$ONNXGUARD_ORT_WEB`` or the pinned npm install."""
    if os.environ.get(RUNTIME_ENV):
        found = Path(os.environ[RUNTIME_ENV])
        where = f"${RUNTIME_ENV}={found}"
    else:
        lock = (HERE / "package-lock.json").read_bytes()
        home = _cache_root() / f"onnxruntime-web-{runtime_version()}-{hashlib.sha256(lock).hexdigest()[:12]}"
        found = home / "node_modules" / "onnxruntime-web" / "dist"
        where = str(found)
        if not all((found / f).is_file() for f in RUNTIME_FILES):
            _npm_ci(home, progress)
    missing = [f for f in RUNTIME_FILES if not (found / f).is_file()]
    if missing:
        raise InputError(f"{where}: no {missing[0]}; point {RUNTIME_ENV} at onnxruntime-web's dist directory")
    return found


def _npm_ci(home: Path, progress: Progress) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise InputError(f"the web target needs onnxruntime-web {runtime_version()} from the npm registry and npm is "
                         f"not installed: install Node.js and npm, or set {RUNTIME_ENV} to its dist directory")
    progress(Event("target", f"installing onnxruntime-web {runtime_version()} from the npm registry (once)"))
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(home.parent, os.W_OK | os.X_OK)
    except OSError as e:
        raise InputError(f"{home.parent}: cannot install onnxruntime-web there ({e.strerror or e})",
                         hint=f"set XDG_CACHE_HOME or {RUNTIME_ENV}") from e
    if not writable:
        raise InputError(f"{home.parent}: cannot install onnxruntime-web there (not writable)",
                         hint=f"set XDG_CACHE_HOME or {RUNTIME_ENV}")
    # Installed in a staging directory and renamed into place: a half-finished or failed install is never seen
    # as the cache (and one left by a killed process is removed by the next install).
    with staging.atomic_dir(home, overwrite=True) as work:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(HERE / name, work / name)
        # --ignore-scripts: no install script of any package runs; npm ci checks every tarball's sha512 in the lock.
        try:
            done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                                  cwd=work, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as e:
            raise InputError(f"npm ci for onnxruntime-web {runtime_version()} took over {NPM_TIMEOUT_S} s; "
                             "is the npm registry reachable?") from e
        if done.returncode != 0:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise InputError(f"npm ci for onnxruntime-web {runtime_version()} failed: {last}")


def _tensor(a: np.ndarray) -> dict:
    if a.dtype.kind in "OUS":
        return {"dtype": "string", "shape": list(a.shape), "data": [str(v) for v in a.ravel()]}
    dtype = "bool" if a.dtype == np.bool_ else a.dtype.name
    data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
    return {"dtype": dtype, "shape": list(a.shape), "data": base64.b64encode(data).decode("ascii")}


def golden_json(golden: GoldenSet) -> dict:
    """The golden set for the page: each array as dtype, shape and little-endian bytes in base64."""
    def batch(b: Batch) -> dict:
        return {k: _tensor(v) for k, v in b.items()}

    if golden.references is None:
        raise InputError("the golden set holds no reference outputs for the page to compare with",
                         hint="use a bundle's golden set, which holds the source's outputs")
    return {"format": "onnxguard-golden-json/1", "items": golden.items,
            "batches": [{"inputs": batch(i), "references": batch(r)}
                        for i, r in zip(golden.inputs, golden.references, strict=True)]}


def golden_text(golden: GoldenSet) -> str:
    """``golden_json`` as compact JSON text: the page's ``golden.json``."""
    return json.dumps(golden_json(golden), separators=(",", ":"))


def decode_outputs(batches: list[dict]) -> list[Batch]:
    """The page's outputs (the same encoding as ``golden_json``) back to arrays."""
    def array(t: dict) -> np.ndarray:
        if t["dtype"] == "string":
            return np.array(t["data"], dtype=object).reshape(t["shape"])
        dtype = np.dtype(np.bool_ if t["dtype"] == "bool" else t["dtype"]).newbyteorder("<")
        return np.frombuffer(base64.b64decode(t["data"]), dtype=dtype).reshape(t["shape"])

    return [{k: array(v) for k, v in b.items()} for b in batches]


def _check_outputs(model) -> None:
    for o in model.graph.output:
        if o.type.WhichOneof("value") != "tensor_type":
            raise InputError(f"output {o.name!r} is a {o.type.WhichOneof('value')}, and onnxruntime-web returns "
                             "tensors only; rebuild the bundle without ZipMap (scikit-learn: the default)")


def make(parent: OpenedBundle, data: bytes, golden: GoldenSet, out: Path, overwrite: bool,
         progress: Progress) -> TargetResult:
    """The web folder of ``data`` (page, model, golden set, onnxruntime-web's WASM files), written to ``out``."""
    model = onnxfile.parse(data, str(parent.path / parent.model_name))
    runtime = f"onnxruntime-web {runtime_version()} (WASM)"
    operators.check(model, "web", runtime)
    _check_outputs(model)
    dist = runtime_dir(progress)
    precision = kind_of(model)
    operators_used = {(d or "ai.onnx"): ops for d, ops in _ops(model).items()}
    with staging.atomic_dir(out, overwrite=overwrite) as stage:
        (stage / "ort").mkdir()
        progress(Event("target", "writing the page, the model and the golden set"))
        (stage / "model.onnx").write_bytes(data)
        (stage / "golden.json").write_text(golden_text(golden))
        for name in PAGE:
            shutil.copyfile(HERE / name, stage / name)
        for name in RUNTIME_FILES:
            shutil.copyfile(dist / name, stage / "ort" / name)
        if (dist.parent / "package.json").is_file():  # its name, version and license, beside its files
            shutil.copyfile(dist.parent / "package.json", stage / "ort" / "package.json")
        files = {p.relative_to(stage).as_posix(): p.stat().st_size for p in sorted(stage.rglob("*")) if p.is_file()}
        m = parent.manifest
        manifest = {
            "format": TARGET_FORMAT, "kind": "web", "runtime": runtime,
            "parent": provenance(parent),
            "files": {name: {"sha256": digest.file(stage / name), "size": size} for name, size in files.items()},
            "model": {"inputs": [t.model_dump() for t in m.model.inputs],
                      "outputs": [t.model_dump() for t in m.model.outputs]},
            "labels": m.labels,
            "precision": precision,
            "thresholds": vars(THRESHOLDS[precision]),
            "operators": operators_used,
            "page": "index.html",
        }
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    notes = (f"serve {out} from any static host (application/wasm for .wasm; COOP/COEP headers for threads) and "
             "open index.html; `onnxguard consistency` runs it in headless Chromium",)
    return TargetResult(out, "web", files, operators_used, None, notes)


def _ops(model) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {}
    for node in operators.nodes(model.graph):
        found.setdefault(node.domain, set()).add(node.op_type)
    return {d: sorted(v) for d, v in sorted(found.items())}
