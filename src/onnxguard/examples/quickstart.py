"""The built-in example: train a CNN on the bundled digits and build a bundle through the real pipeline."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxguard import build, runtime, target
from onnxguard.accuracy import consistency, thresholds
from onnxguard.accuracy.consistency import ConsistencyReport
from onnxguard.build import BuildOptions, BuildResult
from onnxguard.bundle.golden import GoldenSet
from onnxguard.convert import ConvertOptions
from onnxguard.errors import InputError
from onnxguard.model import onnxfile
from onnxguard.progress import Event, Progress, silent
from onnxguard.speed import quantize
from onnxguard.target.web import browser
from onnxguard.trust import OpenedBundle, PublicKeys, TrustPolicy, keys, open_bundle, sealing, verify
from onnxguard.trust.keys import KeyPaths
from onnxguard.trust.verify import VerifyReport

if TYPE_CHECKING:
    from onnxguard.serve.audit import AuditReport


@dataclass(frozen=True)
class Prediction:
    """The bundle's answer for one test image: its label, the true label and the confidence."""

    label: str
    truth: str
    confidence: float


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart made and measured, from the trained model to the targets' drift."""

    accuracy: float
    program: Path
    build: BuildResult
    predictions: tuple[Prediction, ...]
    keys: KeyPaths
    verify: VerifyReport
    consistency: ConsistencyReport
    browser_skipped: str | None  # why the web target was not checked in a browser, where it was not
    serving: ServingDemo | None = None


@dataclass(frozen=True)
class ServingDemo:
    """The bundle served on 127.0.0.1: a few answered requests, one refused without a key, the audit log."""

    url: str
    answers: tuple[tuple[str, str], ...]  # (true label, the server's label)
    refused_status: int
    audit: AuditReport
    audit_path: Path


def run(workdir: str | Path, progress: Progress = silent, epochs: int = 12) -> QuickstartResult:
    """Train the digits CNN, build a signed and sealed bundle of it, verify and open it, and check its targets."""
    from onnxguard.examples import digits

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = digits.load_data()
    model, accuracy = digits.train(data, epochs=epochs, progress=progress)
    program = workdir / "digits_cnn.pt2"
    digits.save_program(model, program)
    golden_path = workdir / "golden_inputs.npz"
    GoldenSet(tuple(digits.golden_batches(data))).save(golden_path)
    calibration = workdir / "calibration.npz"  # training images: the gate then judges on images it never saw
    GoldenSet(tuple({"image": data.x_train[i : i + 64]} for i in range(0, 512, 64))).save(calibration)
    options = BuildOptions(convert=ConvertOptions(task="classification"), name="digits-cnn", labels=digits.LABELS,
                           golden_npz=golden_path,
                           meta={"dataset": "sklearn digits", "test_accuracy": f"{accuracy:.4f}"},
                           overwrite=True, optimize="auto", quantize="auto", calibration=calibration,
                           bench_batch=32)
    keys = _keys(workdir / "keys")
    options = dataclasses.replace(options, sign_key=keys.private_key, recipients=(keys.recipient,))
    result = build.build(str(program), workdir / "bundle", options, progress)
    progress(Event("verify", "signature, hashes, scan and the golden set on this runtime"))
    policy = TrustPolicy(PublicKeys((keys.public_key,)))
    identity = sealing.identities(keys.age_identity)
    report = verify.verify(result.bundle.path, policy, golden=True, identity=identity)
    progress(Event("verify", "passed" if report.passed else "FAILED", done=True))
    opened = open_bundle(result.bundle.path, policy, identity)  # the door: signature, hashes, decrypt, scan
    sess = runtime.session(opened.model_bytes)
    sample = data.x_test[-8:]
    logits = sess.run(None, {sess.get_inputs()[0].name: sample})[0]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    predictions = tuple(Prediction(str(p.argmax()), str(t), float(p.max()))
                        for p, t in zip(probs, data.y_test[-8:], strict=True))
    drift, skipped = _targets(opened, policy, workdir / "targets", progress)
    serving = serve_demo(result.bundle.path, policy, identity, workdir / "serve", data.x_test[-4:],
                         [str(t) for t in data.y_test[-4:]], progress)
    return QuickstartResult(accuracy, program, result, predictions, keys, report, drift, skipped, serving)


def serve_demo(bundle_dir: Path, policy: TrustPolicy, identity: list[object], workdir: Path, images: np.ndarray,
               truths: list[str], progress: Progress = silent) -> ServingDemo:
    """Serve the bundle on 127.0.0.1 (a free port), ask it about ``images`` with an API key, once without one,
    stop it, and verify its audit log."""
    import threading
    import urllib.error
    import urllib.request

    import uvicorn

    from onnxguard.serve import audit as audit_lib
    from onnxguard.serve import server
    from onnxguard.serve.apikeys import KeyStore

    workdir.mkdir(parents=True, exist_ok=True)
    for name in ("keys.db", "audit.db"):  # the example's own files, made anew each run
        for suffix in ("", "-wal", "-shm"):
            (workdir / (name + suffix)).unlink(missing_ok=True)
    with KeyStore(workdir / "keys.db") as store:
        secret, _ = store.create("quickstart", rate="100/minute", budget=1000)
    progress(Event("serve", "starting the server on 127.0.0.1"))
    prepared = server.prepare(server.ServerConfig(bundles=(bundle_dir,), policy=policy, identity=identity,
                                                  keys=workdir / "keys.db", audit=workdir / "audit.db",
                                                  host="127.0.0.1", port=0), progress)
    host, port = prepared.sock.getsockname()[:2]
    url = f"http://{host}:{port}"
    uv = uvicorn.Server(server.uvicorn_config(prepared))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [prepared.sock]}, daemon=True)
    thread.start()
    name = prepared.models[0].name

    def post(body: bytes, key: str | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        req = urllib.request.Request(f"{url}/v1/models/{name}:predict", body, headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - our own server on 127.0.0.1
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        for _ in range(300):  # ready within seconds: the model was loaded and checked before the port was bound
            if uv.started:
                break
            threading.Event().wait(0.05)
        body = json.dumps({"instances": images.tolist()}).encode()
        status, answer = post(body, secret)
        if status != 200:
            raise InputError(f"{url}: the example's request was refused ({status}: {answer[:200]!r})")
        labels = [p["label"] for p in json.loads(answer)["predictions"]]
        refused, _ = post(body, None)
    finally:
        uv.should_exit = True
        thread.join(60)
    progress(Event("serve", f"served {len(labels)} predictions; stopped", done=True))
    return ServingDemo(url, tuple(zip(truths, labels, strict=True)), refused,
                       audit_lib.verify(workdir / "audit.db"), workdir / "audit.db")


def _targets(opened: OpenedBundle, policy: TrustPolicy, out: Path,
             progress: Progress) -> tuple[ConsistencyReport, str | None]:
    """An INT8 variant, the mobile target and the web target of the bundle, and one golden set across them all."""
    out.mkdir(exist_ok=True)
    int8 = out / "digits-cnn.int8.onnx"
    model = onnxfile.parse(opened.model_bytes, str(opened.path / opened.model_name))
    if thresholds.kind_of(model) == "int8":  # build kept an INT8 candidate: quantizing it again fails
        progress(Event("targets", "INT8 variant: the bundle's model (INT8 already)"))
        int8.write_bytes(opened.model_bytes)
    else:
        progress(Event("targets", "dynamic INT8 variant"))
        int8.write_bytes(quantize.quantize(model, quantize.QuantizeOptions(mode="dynamic")).model.SerializeToString())
    progress(Event("targets", "mobile target"))
    target.make(opened, "mobile", out / "mobile", overwrite=True, progress=progress)
    checked, skipped = [int8, out / "mobile"], None
    progress(Event("targets", "web target"))
    try:
        target.make(opened, "web", out / "web", overwrite=True, progress=progress)
    except InputError as e:  # no npm, or no registry to fetch onnxruntime-web from
        skipped = f"no web target: {e}"
    else:
        if browser.available():
            checked.append(out / "web")
        else:
            skipped = ("no headless Chromium here, so the web target was not run in a browser "
                       "(apt install chromium chromium-driver; `make test` installs them)")
    progress(Event("consistency",
                   "golden set on every variant and target" + ("" if skipped else ", Chromium included")))
    return consistency.check(opened, checked, policy), skipped


def _keys(directory: Path) -> KeyPaths:
    """The example's signing key and age identity: made once, reused on later runs."""
    return keys.existing(directory) or keys.generate(directory)
