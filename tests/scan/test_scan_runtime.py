"""ONNX Runtime's own surface: its domains are known (a level-99 optimized CNN scans clean and is still refused
by the web target), and the checks for what it acts on rest on what the installed onnxruntime really does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import onnx
from scan_corpus import ort_level99_bundle, ort_level99_cnn, session_config_threads

from cli_runner import run
from onnxguard import scan, trust
from onnxguard.scan import Severity, policy


def test_an_ort_level99_cnn_scans_clean_and_is_refused_by_the_web_target(tmp_path, expect_err):
    path = ort_level99_cnn(tmp_path)
    assert "com.microsoft.nchwc" in {n.domain for n in onnx.load(str(path)).graph.node}
    report = scan.scan(path)
    assert report.at_or_above(Severity.MEDIUM) == (), [(f.check, f.message) for f in report.findings]
    notes = [f for f in report.findings if f.check == "domain.runtime"]
    assert len(notes) == 1 and notes[0].severity == Severity.INFO
    assert "com.microsoft.nchwc" in notes[0].message and "onnxruntime" in notes[0].message
    assert run("scan", path).code == 0
    # The strict profile allows standard domains only: ONNX Runtime's are still refused there.
    strict = scan.scan(path, policy.for_profile("strict"))
    assert "domain.node" in {f.check for f in strict.at_or_above(Severity.HIGH)}
    # The bundle door (default policy, fail on medium) opens it now; the web target still refuses nchwc.
    root = ort_level99_bundle(tmp_path / "b")
    trust.open_bundle(root, trust.TrustPolicy(trust.UnsafeUnsigned()))
    expect_err(run("target", root, "--to", "web", "-o", tmp_path / "web", "--allow-unsigned"), 2,
               "com.microsoft.nchwc::", "web target")
    assert not (tmp_path / "web").exists()


def test_every_domain_the_installed_onnxruntime_registers_is_known(tmp_path):
    from onnxruntime.capi import _pybind_state

    registered = {s.domain for s in _pybind_state.get_all_operator_schema()}
    registered |= {k.domain for k in _pybind_state.get_all_opkernel_def()}
    registered |= {o.domain for o in onnx.load(str(ort_level99_cnn(tmp_path))).opset_import}  # its domain map
    known = set(policy.STANDARD_DOMAINS) | set(policy.RUNTIME_DOMAINS)
    assert registered - known == set()


PROFILE_RUN = textwrap.dedent("""
    import sys
    import onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    print(session.end_profiling())
""")


def test_onnxruntime_applies_the_ort_config_the_session_config_check_flags(tmp_path):
    """The check's premise, on the installed runtime: with ORT_LOAD_CONFIG_FROM_MODEL=1 the model's ort_config
    turns profiling on (a file in the working directory); without it, nothing."""
    path = session_config_threads(tmp_path)
    report = scan.scan(path)
    assert [(f.check, f.severity) for f in report.findings] == [("metadata.session-config", Severity.HIGH)]
    for setting, expect_file in (("1", True), (None, False)):
        cwd = tmp_path / f"run-{setting}"
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "ORT_LOAD_CONFIG_FROM_MODEL"}
        if setting is not None:
            env["ORT_LOAD_CONFIG_FROM_MODEL"] = setting
        done = subprocess.run([sys.executable, "-c", PROFILE_RUN, str(path)], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=120, check=True)
        written = sorted(p.name for p in cwd.iterdir())
        assert bool(written) == expect_file, (written, done.stdout)
        if expect_file:
            assert written[0].startswith("onnxruntime_profile") and json.loads((cwd / written[0]).read_text())
