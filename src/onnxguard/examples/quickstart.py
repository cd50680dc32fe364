"""The built-in example: train a CNN on the bundled digits and build a bundle through the real pipeline."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnxguard import build, runtime, target
from onnxguard.accuracy import consistency
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


@dataclass(frozen=True)
class Prediction:
    label: str
    truth: str
    confidence: float


@dataclass(frozen=True)
class QuickstartResult:
    accuracy: float
    program: Path
    build: BuildResult
    predictions: tuple[Prediction, ...]
    keys: KeyPaths
    verify: VerifyReport
    consistency: ConsistencyReport
    browser_skipped: str | None  # why the web target was not checked in a browser, where it was not


def run(workdir: str | Path, progress: Progress = silent, epochs: int = 12) -> QuickstartResult:
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
                           golden_npz=golden_path, meta={"dataset": "sklearn digits", "test_accuracy": f"{accuracy:.4f}"},
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
    predictions = tuple(Prediction(str(p.argmax()), str(t), float(p.max())) for p, t in zip(probs, data.y_test[-8:], strict=True))
    drift, skipped = _targets(opened, policy, workdir / "targets", progress)
    return QuickstartResult(accuracy, program, result, predictions, keys, report, drift, skipped)


def _targets(opened: OpenedBundle, policy: TrustPolicy, out: Path,
             progress: Progress) -> tuple[ConsistencyReport, str | None]:
    """An INT8 variant, the mobile target and the web target of the bundle, and one golden set across them all."""
    out.mkdir(exist_ok=True)
    int8 = out / "digits-cnn.int8.onnx"
    progress(Event("targets", "dynamic INT8 variant"))
    model = onnxfile.parse(opened.model_bytes, str(opened.path / opened.model_name))
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
    progress(Event("consistency", "golden set on every variant and target" + ("" if skipped else ", Chromium included")))
    return consistency.check(opened, checked, policy), skipped


def _keys(directory: Path) -> KeyPaths:
    """The example's signing key and age identity: made once, reused on later runs."""
    return keys.existing(directory) or keys.generate(directory)
