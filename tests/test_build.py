"""build: the stage pipeline, the bundle it writes, and that a failed build leaves nothing behind."""

from __future__ import annotations

import json
import os

import onnx
import pytest

from onnxguard import build, bundle
from onnxguard.accuracy.parity import Tolerance
from onnxguard.build import STAGES, BuildOptions, BuildState
from onnxguard.bundle.manifest import Step
from onnxguard.errors import InputError

BUNDLE = [name for name, _ in STAGES].index("bundle")  # stages inserted here run before the manifest is written


def test_meta_name_version_in_onnx_and_manifest(sklearn_bundle):
    b = bundle.read(sklearn_bundle)
    props = {p.key: p.value for p in onnx.load_model_from_string(b.model_bytes()).metadata_props}
    assert props["owner"] == "ml-team"
    assert b.manifest.metadata == {"owner": "ml-team"}
    assert (b.manifest.name, b.manifest.version) == ("digits", "1.2.3")
    assert b.manifest.onnxguard_version and b.manifest.created.endswith("Z")
    assert b.manifest.model.file == "model.onnx" and b.manifest.golden.file == "golden.npz"
    assert [s.name for s in b.manifest.steps][0] == "convert"


def test_json_output(cli, sklearn_files, tmp_path):
    out = tmp_path / "b"
    r = cli("build", sklearn_files.regressor, "-o", out, "--json", "--name", "diabetes-rf")
    assert r.code == 0, str(r)
    report = json.loads(r.out)  # nothing but JSON on stdout
    assert report["bundle"] == str(out)
    names = [s["name"] for s in report["stages"]]
    assert names[:3] == ["convert", "golden", "parity"] and names[-4:] == ["bundle", "seal", "sign", "publish"]
    assert all(s["seconds"] >= 0 and isinstance(s["detail"], str) for s in report["stages"])
    on_disk = json.loads((out / "manifest.json").read_text())
    assert report["manifest"] == on_disk and on_disk["name"] == "diabetes-rf"
    assert r.err == "", "no progress display with --json"


def test_table_output(cli, sklearn_bundle):
    printed = (sklearn_bundle.parent / "build-stdout.txt").read_text()
    assert "PASSED" in printed and f"built {sklearn_bundle}" in printed
    for stage in ("convert", "golden", "parity", "bundle"):
        assert stage in printed


def test_failed_parity_leaves_no_bundle_and_no_temp_dir(cli, sklearn_files, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("unrelated")
    r = cli("build", sklearn_files.classifier, "-o", work / "bundle", "--atol", "0", "--rtol", "0",
            "--min-cosine", "1.0")
    assert r.code == 1, str(r)
    assert "Traceback" not in r.err
    assert r.err_lines[-1].startswith("onnxguard: error: parity failed") and "no bundle was written" in r.err_lines[-1]
    assert os.listdir(work) == ["keep.txt"]


def test_stage_that_raises_leaves_nothing(sklearn_files, tmp_path):
    def explode(state: BuildState) -> str:
        raise RuntimeError("stage exploded")

    stages = [*STAGES[:BUNDLE], ("explode", explode), *STAGES[BUNDLE:]]
    with pytest.raises(RuntimeError, match="stage exploded"):
        build.build(str(sklearn_files.classifier), tmp_path / "b", BuildOptions(), stages=stages)
    assert os.listdir(tmp_path) == []


def test_failure_while_writing_leaves_nothing(sklearn_files, tmp_path, monkeypatch):
    from onnxguard.bundle.golden import GoldenSet

    def half_written(self, path):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GoldenSet, "save", half_written)
    with pytest.raises(InputError, match="No space left on device") as e:
        build.build(str(sklearn_files.classifier), tmp_path / "b", BuildOptions())
    assert str(tmp_path / "b") in str(e.value)
    assert os.listdir(tmp_path) == []


def test_existing_output_is_refused(cli, expect_err, sklearn_files, tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "precious.txt").write_text("do not delete")
    expect_err(cli("build", sklearn_files.classifier, "-o", target), 2, str(target), "already exists")
    assert os.listdir(target) == ["precious.txt"] and os.listdir(tmp_path) == ["b"]


def test_overwrite_replaces_the_bundle(sklearn_files, tmp_path):
    target = tmp_path / "b"
    build.build(str(sklearn_files.classifier), target, BuildOptions(version="1"))
    (target / "stale.txt").write_text("x")  # the old bundle is replaced wholesale
    result = build.build(str(sklearn_files.classifier), target, BuildOptions(version="2", overwrite=True))
    assert result.bundle.manifest.version == "2"
    assert bundle.read(target).manifest.version == "2"
    assert not (target / "stale.txt").exists()
    assert os.listdir(tmp_path) == ["b"]


def test_a_stage_is_one_function_in_a_list(sklearn_files, tmp_path):
    """The pipeline is data: a stage added to the list runs in order and its step lands in the manifest."""
    events = []

    def audit(state: BuildState) -> str:
        assert state.parity is not None and state.parity.passed  # later stages see earlier stages' results
        state.steps.append(Step(name="audit", settings={"by": "tests"}, figures={"items": state.golden.items}))
        return "audited"

    stages = [*STAGES[:BUNDLE], ("audit", audit), *STAGES[BUNDLE:]]
    result = build.build(str(sklearn_files.classifier), tmp_path / "b", BuildOptions(), events.append, stages)
    names = [s.name for s in result.stages]
    assert names == [n for n, _ in stages]
    assert result.stages[names.index("audit")].detail == "audited"
    audit_step = next(s for s in result.bundle.manifest.steps if s.name == "audit")
    assert audit_step.settings == {"by": "tests"} and audit_step.figures["items"] == result.bundle.manifest.golden.items
    done = [e for e in events if e.done and e.stage in names]
    assert list(dict.fromkeys(e.stage for e in done)) == names  # each stage reports its end, in order
    assert ("audit", "audited") in [(e.stage, e.message) for e in done]


def test_tolerance_reaches_the_manifest(sklearn_files, tmp_path):
    tol = Tolerance(atol=1e-3, rtol=1e-2, min_cosine=0.999, min_label_agreement=0.99)
    result = build.build(str(sklearn_files.classifier), tmp_path / "b", BuildOptions(tolerance=tol))
    assert result.parity.tolerance == tol and result.parity.passed
    assert result.bundle.manifest.parity.tolerance == tol.__dict__  # the record says what "passed" meant


def test_a_killed_build_leaves_nothing_after_the_next_build(sklearn_files, tmp_path):
    """SIGKILL cannot be cleaned up after; the next build into the same place removes what the dead one left."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    target = tmp_path / "b"
    onnxguard = Path(sys.executable).parent / "onnxguard"  # the real entry point, as the cli fixture runs it
    proc = subprocess.Popen([str(onnxguard), "build", str(sklearn_files.classifier), "-o", str(target)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".b.staging-")]:
        assert proc.poll() is None and time.monotonic() < deadline, "the build never staged its output"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert left and all(name.startswith(".b.staging-") for name in left)  # what SIGKILL leaves behind
    build.build(str(sklearn_files.classifier), target, BuildOptions())
    assert os.listdir(tmp_path) == ["b"]
    bundle.read(target)


def test_the_output_is_never_an_input(cli, expect_err, sklearn_files, tmp_path):
    source = tmp_path / "digits.skops"
    source.write_bytes(sklearn_files.classifier.read_bytes())
    expect_err(cli("build", source, "-o", source, "--overwrite"), 2, str(source), "is also an input")
    expect_err(cli("build", source, "-o", tmp_path, "--overwrite"), 2, "contains the input")
    assert source.read_bytes() == sklearn_files.classifier.read_bytes()
