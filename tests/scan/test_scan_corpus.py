"""The scanner flags every unsafe model of the generated corpus with the expected check, and nothing at or above
medium in ordinary models exported from torch, transformers and scikit-learn (optimized and quantized too)."""

from __future__ import annotations

import builtins
import dataclasses
import io
import os
from pathlib import Path

import jsonschema
import onnx
import pytest
from scan_corpus import (
    CLEAN,
    UNSAFE,
    Case,
    ep_context_traversal,
    ext_absolute,
    ext_hardlink,
    ext_symlink,
    ext_traversal,
    scan_any,
)
from scan_support import ORDINARY

from onnxguard import scan
from onnxguard.scan import Severity, policy
from onnxguard.scan.formats import sarif


def policy_for(case: Case) -> policy.Policy:
    return dataclasses.replace(policy.for_profile(case.profile), **case.policy)


@pytest.mark.parametrize("case", UNSAFE, ids=[c.name for c in UNSAFE])
def test_unsafe_model_is_flagged(case: Case, tmp_path, sarif_schema):
    target = case.build(tmp_path)
    report = scan_any(target, policy_for(case))
    flagged = [f for f in report.findings if f.check == case.check]
    assert flagged, f"{case.name}: expected {case.check}, got {[(f.check, f.message) for f in report.findings]}"
    assert max(f.severity for f in flagged) >= Severity.MEDIUM
    assert not [f for f in report.findings if f.check == "scan.error"], report.findings
    jsonschema.Draft4Validator(sarif_schema).validate(sarif.to_dict(report))


@pytest.mark.parametrize("name, build", CLEAN, ids=[name for name, _ in CLEAN])
def test_clean_sibling_has_no_finding_at_or_above_medium(name, build, tmp_path):
    report = scan_any(build(tmp_path))
    assert report.at_or_above(Severity.MEDIUM) == (), [(f.check, f.message) for f in report.findings]


@pytest.mark.parametrize("fixture", ORDINARY)
def test_ordinary_model_has_no_finding_at_or_above_medium(fixture, request, sarif_schema):
    path: Path = request.getfixturevalue(fixture)
    report = scan_any(path)
    assert report.at_or_above(Severity.MEDIUM) == (), [(f.check, f.message) for f in report.findings]
    jsonschema.Draft4Validator(sarif_schema).validate(sarif.to_dict(report))


def test_optimized_transformer_really_uses_runtime_ops(hf_optimized):
    """The default profile notes ONNX Runtime's own com.microsoft ops at info; the strict profile (standard
    domains only) still refuses them as domain.node, high."""
    domains = {n.domain for n in onnx.load(str(hf_optimized), load_external_data=False).graph.node}
    assert "com.microsoft" in domains
    default = scan.scan(hf_optimized)
    assert [f.severity for f in default.findings if f.check == "domain.runtime"] == [Severity.INFO]
    strict = scan.scan(hf_optimized, policy.for_profile("strict"))
    assert {f.check for f in strict.at_or_above(Severity.HIGH)} >= {"domain.node"}


@pytest.mark.parametrize("build", [ext_traversal, ext_absolute, ext_symlink, ext_hardlink, ep_context_traversal])
def test_scanner_never_opens_a_path_outside_the_model_directory(build, tmp_path, monkeypatch):
    """Every open() the scan makes is recorded; none may resolve outside the model's directory (the sentinel
    ``secret.bin`` lies next to it). onnx's external-data loader must never be called at all."""
    model_path = build(tmp_path)
    model_dir = os.path.realpath(model_path.parent)
    opened: list[str] = []

    def recording(real):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                opened.append(os.path.realpath(os.fsdecode(file)))
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", recording(builtins.open))
    monkeypatch.setattr(io, "open", recording(io.open))
    monkeypatch.setattr(os, "open", recording(os.open))

    def forbidden(*args, **kwargs):
        raise AssertionError("the scanner called onnx's external-data loading")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", forbidden)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", forbidden)
    report = scan.scan(model_path)
    assert opened, "the recorder saw no open() at all; it does not observe the scanner"
    outside = [p for p in opened if os.path.commonpath([model_dir, p]) != model_dir]
    assert outside == [], f"opened outside {model_dir}: {outside}"
    assert {f.check for f in report.at_or_above(Severity.HIGH)} & {"external-data.path", "external-data.file",
                                                                   "ep-context.path"}


def test_every_check_id_is_unique_and_documented():
    ids = [c.id for c in scan.ALL_CHECKS]
    assert len(ids) == len(set(ids))
    docs = (Path(__file__).parents[2] / "docs" / "scan.md").read_text()
    missing = [i for i in ids if f"`{i}`" not in docs]
    assert missing == [], f"check ids missing from docs/scan.md: {missing}"


def test_every_check_but_the_crash_marker_is_exercised_by_the_corpus():
    covered = {c.check for c in UNSAFE} | {"bundle.signature", "scan.error", "scan.not-scanned", "domain.runtime"}
    assert {c.id for c in scan.ALL_CHECKS} - covered == set()
