"""The scanner's library face: policy files, reports, renderers, the signature seam, failure handling."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import unicodedata
from pathlib import Path

import jsonschema
import pytest
from scan_corpus import control_characters, custom_domain_node, relu_model, save, small_bundle, small_sklearn

from onnxguard.errors import InputError
from onnxguard.scan import ALL_CHECKS, ScanReport, Severity, policy, scan
from onnxguard.scan.checks import metadata
from onnxguard.scan.formats import render, sarif
from onnxguard.scan.interface import BaseCheck

DOCS = Path(__file__).parents[2] / "docs" / "scan.md"


def test_severities_are_ordered_and_parse():
    assert Severity.INFO < Severity.LOW < Severity.MEDIUM < Severity.HIGH < Severity.CRITICAL
    assert Severity.parse("High") is Severity.HIGH
    with pytest.raises(ValueError, match="unknown severity"):
        Severity.parse("urgent")


def test_policy_toml_overrides_profile_and_keys(tmp_path):
    f = tmp_path / "policy.toml"
    f.write_text('profile = "strict"\nmax_memory_bytes = 1024\nallowed_domains = ["", "ai.onnx"]\n'
                 'allowed_ops = ["Relu"]\n')
    p = policy.load(f)
    assert (p.profile, p.max_memory_bytes, p.allowed_domains, p.allowed_ops) == ("strict", 1024, ("", "ai.onnx"),
                                                                                 ("Relu",))
    assert p.denied_ops == policy.for_profile("strict").denied_ops
    assert policy.load(f, profile="default").profile == "default"


@pytest.mark.parametrize("text, message", [
    ("max_memory_byte = 1\n", "unknown key 'max_memory_byte'"),
    ("max_memory_bytes = -1\n", "non-negative integer"),
    ("max_memory_bytes = true\n", "non-negative integer"),
    ('denied_ops = "If"\n', "list of strings"),
    ('profile = "lenient"\n', "unknown scan profile 'lenient'"),
    ("max_memory_bytes = \n", "not valid TOML"),
])
def test_bad_policy_file_is_a_clear_input_error(tmp_path, text, message):
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)) as e:
        policy.load(f)
    assert str(f) in str(e.value)


def test_missing_policy_file(tmp_path):
    with pytest.raises(InputError, match="no such policy file"):
        policy.load(tmp_path / "nope.toml")


def test_docs_carry_the_generated_defaults_table():
    assert policy.defaults_table() in DOCS.read_text(), "paste onnxguard.scan.policy.defaults_table() into the docs"


def test_allow_list_and_domain_qualified_deny(tmp_path):
    path = save(relu_model(), tmp_path / "m.onnx")
    only_add = dataclasses.replace(policy.for_profile(), allowed_ops=("Add",))
    assert [f.check for f in scan(path, only_add).findings] == ["operators.denied"]
    assert scan(path, dataclasses.replace(policy.for_profile(), allowed_ops=("ai.onnx:Relu",))).findings == ()
    assert [f.check for f in scan(path, dataclasses.replace(policy.for_profile(), denied_ops=(":Relu",))).findings] \
        == ["operators.denied"]


def test_missing_path_and_plain_directory_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        scan(tmp_path / "absent.onnx")
    with pytest.raises(InputError, match="a directory"):
        scan(tmp_path)


def test_json_report_has_the_documented_stable_keys(tmp_path):
    report = scan(custom_domain_node(tmp_path))
    data = json.loads(render(report, "json"))
    assert list(data) == ["format", "path", "kind", "profile", "summary", "findings"]
    assert data["format"] == "onnxguard-scan/1"
    assert list(data["summary"]) == ["critical", "high", "medium", "low", "info"]
    assert set(data["findings"][0]) == {"check", "severity", "message", "location"}
    assert set(data["findings"][0]["location"]) == {"file", "node", "tensor"}
    assert render(scan(custom_domain_node(tmp_path)), "json") == render(report, "json")  # deterministic


def test_text_report_escapes_control_characters(tmp_path):
    report = scan(control_characters(tmp_path))
    text = render(report, "text")
    assert "metadata.control-characters" in text
    assert "\x1b" not in text and "\u202e" not in text
    assert "\\u202e" in text  # the hostile key is shown escaped


@pytest.mark.parametrize("free_text", [True, False])
def test_control_characters_are_exactly_the_control_format_and_separator_categories(free_text):
    """The fast paths (printable text, one regular expression) find what a loop over every character would."""
    allowed = metadata.TEXT_WHITESPACE if free_text else ""

    def by_loop(text: str) -> list[str]:
        return sorted({f"U+{ord(c):04X}" for c in text
                       if c not in allowed and unicodedata.category(c) in metadata.CONTROL_CATEGORIES})

    every = "".join(chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) != "Cs")
    expected = by_loop(every)
    assert metadata.control_characters(every, free_text) == expected
    assert len(expected) > 200 and ("U+000A" in expected) is not free_text and "U+202E" in expected
    for text in ("", "plain words", "line\nbreaks\tand tabs\r\n", "no\u00a0break space", "zero\u200bwidth",
                 "\x1b" * 1000 + "\n\u202e" + "\x1b\u202e" * 100 + "\u2028"):
        assert metadata.control_characters(text, free_text) == by_loop(text)


def test_sarif_levels_and_rules(tmp_path, sarif_schema):
    report = scan(custom_domain_node(tmp_path))
    log = sarif.to_dict(report)
    jsonschema.Draft4Validator(sarif_schema, format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER).validate(log)
    run = log["runs"][0]
    rules = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert rules == [c.id for c in ALL_CHECKS]
    result = next(r for r in run["results"] if r["ruleId"] == "domain.node")
    assert result["level"] == "error" and rules[result["ruleIndex"]] == "domain.node"
    assert result["locations"][0]["logicalLocations"][0]["name"] == "Backdoor#0"


class Crashing(BaseCheck):
    id = "test.crash"
    severity = Severity.LOW
    title = "always crashes"

    def run(self, ctx):
        raise RuntimeError("boom")


class Chatty(BaseCheck):
    id = "test.chatty"
    severity = Severity.LOW
    title = "reports a lot"

    def run(self, ctx):
        for i in range(500):
            yield self.finding(ctx, f"finding {i}")


def test_a_crashing_check_fails_closed_at_every_level(tmp_path):
    report = scan(save(relu_model(), tmp_path / "m.onnx"), checks=(Crashing(),))
    assert [(f.check, f.severity) for f in report.findings] == [("scan.error", Severity.CRITICAL)]
    assert "test.crash" in report.findings[0].message and "boom" in report.findings[0].message
    assert report.at_or_above(Severity.CRITICAL)  # fails even under --fail-on critical


def _crash_the_external_data_check(monkeypatch):
    from onnxguard.scan.checks import external_data

    def boom(self, ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(external_data.Location, "run", boom)


def test_a_crash_in_the_cve_check_fails_scan_and_build_at_fail_on_critical(tmp_path, monkeypatch, capsys):
    from onnxguard import build, cli
    from onnxguard.errors import CheckFailed

    model = save(relu_model(), tmp_path / "m.onnx")
    assert scan(model).findings == ()
    _crash_the_external_data_check(monkeypatch)
    with pytest.raises(SystemExit) as e:
        cli.main(["scan", str(model), "--fail-on", "critical"])
    assert e.value.code == 1 and "scan.error" in capsys.readouterr().err
    skops = small_sklearn(tmp_path)
    with pytest.raises(CheckFailed, match="scan.error"):
        build.build(str(skops), tmp_path / "b", build.BuildOptions(fail_on="critical"))
    assert not (tmp_path / "b").exists()


def test_findings_per_check_are_capped(tmp_path):
    report = scan(save(relu_model(), tmp_path / "m.onnx"), checks=(Chatty(),))
    assert len(report.findings) == 51
    assert any("450 more" in f.message for f in report.findings)


def test_signature_is_verified_with_the_public_key(tmp_path):
    from onnxguard.trust import PublicKeys, keys, scan_bundle, signing

    root = small_bundle(tmp_path)
    k = keys.generate(tmp_path / "keys")
    key = PublicKeys((k.public_key,))
    assert [(f.check, f.severity) for f in scan_bundle(root).findings] == [("bundle.signature", Severity.INFO)]
    unsigned = scan_bundle(root, signature=key)
    assert [(f.check, f.severity) for f in unsigned.findings] == [("bundle.signature", Severity.HIGH)]
    signing.sign(root, k.private_key)
    assert [(f.check, f.severity) for f in scan_bundle(root).findings] == [("bundle.signature", Severity.INFO)]
    assert scan_bundle(root, signature=key).findings == ()
    other = keys.generate(tmp_path / "other")
    wrong = scan_bundle(root, signature=PublicKeys((other.public_key,)))
    assert [(f.check, f.severity) for f in wrong.findings] == [("bundle.signature", Severity.HIGH)]
    (root / "model.sig").write_bytes(b"{}")
    garbage = scan_bundle(root, signature=key)
    assert [(f.check, f.severity) for f in garbage.findings] == [("bundle.signature", Severity.HIGH)]


def test_a_sealed_bundle_scanned_without_identity_is_not_scanned(tmp_path):
    from onnxguard.trust import ScanRule, UnsafeUnscanned, keys, scan_bundle, sealing

    root = small_bundle(tmp_path)
    k = keys.generate(tmp_path / "keys")
    sealing.seal(root, [k.recipient])
    report = scan_bundle(root)
    assert [(f.check, f.severity) for f in report.findings if f.check != "bundle.signature"] == [
        ("scan.not-scanned", Severity.CRITICAL)]
    waived = scan_bundle(root, UnsafeUnscanned(ScanRule().policy))
    assert ("scan.not-scanned", Severity.INFO) in [(f.check, f.severity) for f in waived.findings]
    opened = scan_bundle(root, identity=sealing.identities(k.age_identity))
    assert not [f for f in opened.findings if f.severity > Severity.INFO]


def test_a_bundle_directory_is_scanned_through_the_door(tmp_path):
    with pytest.raises(InputError, match="a directory"):
        scan(small_bundle(tmp_path))


def test_bundle_model_symlink_is_reported_and_not_followed(tmp_path):
    root = small_bundle(tmp_path)
    (root / "model.onnx").unlink()
    (root / "model.onnx").symlink_to(save(relu_model(), tmp_path / "elsewhere.onnx"))
    from onnxguard.trust import scan_bundle

    checks = {f.check for f in scan_bundle(root).findings}
    assert {"bundle.symlink"} <= checks and "scan.not-scanned" in checks
    assert not any(c.startswith("file.") for c in checks)


def test_report_is_sorted_most_severe_first(tmp_path):
    report: ScanReport = scan(save(relu_model(opsets=[]), tmp_path / "m.onnx"))
    severities = [f.severity for f in report.findings]
    assert severities == sorted(severities, reverse=True)

