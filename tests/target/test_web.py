"""onnxguard target --to web: a static page that runs the golden set with onnxruntime-web, in real headless Chromium."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import pytest

from onnxguard import bundle, target, trust
from onnxguard.bundle import digest
from onnxguard.errors import InputError
from onnxguard.scan import policy
from onnxguard.target.web import browser
from onnxguard.trust import sealing

RUNTIME = ["ort/ort-wasm-simd-threaded.mjs", "ort/ort-wasm-simd-threaded.wasm", "ort/ort.wasm.min.mjs",
           "ort/package.json"]


def _tamper(path):
    model = onnx.load(path)
    weight = max(model.graph.initializer, key=lambda i: len(i.dims))  # a conv kernel or a weight matrix
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr.flat[: max(1, arr.size // 8)] *= 1.5
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, path)


@pytest.fixture(scope="module")
def digits_web(digits_bundle, tmp_path_factory, cli, chromium):
    plain, _, _ = digits_bundle
    out = tmp_path_factory.mktemp("web") / "digits-web"
    r = cli("target", "--allow-unsigned", plain, "--to", "web", "-o", out)
    assert r.code == 0, r
    return out


def test_web_target_is_a_static_folder_with_provenance(digits_bundle, digits_web):
    plain, _, _ = digits_bundle
    files = sorted(p.relative_to(digits_web).as_posix() for p in digits_web.rglob("*") if p.is_file())
    assert files == sorted(["app.mjs", "golden.json", "index.html", "manifest.json", "model.onnx", *RUNTIME])
    m = json.loads((digits_web / "manifest.json").read_text())
    assert m["format"] == "onnxguard-target/1" and m["kind"] == "web"
    assert m["runtime"].startswith("onnxruntime-web 1.30.0")
    assert m["parent"]["manifest_sha256"] == digest.file(plain / bundle.MANIFEST)
    assert m["files"]["model.onnx"]["sha256"] == bundle.read(plain).manifest.model.sha256
    assert all(m["files"][n]["sha256"] == digest.file(digits_web / n) for n in m["files"])
    assert m["precision"] == "fp32" and m["thresholds"]["max_abs"] == 1e-3
    page = (digits_web / "index.html").read_text() + (digits_web / "app.mjs").read_text()
    assert "http://" not in page.replace("http://127.0.0.1", "") and "https://" not in page  # no CDN, no network


def test_page_in_headless_chromium_reports_parity(digits_bundle, digits_web, cli):
    plain, _, _ = digits_bundle
    result = browser.run_page(digits_web)
    assert result["status"] == "done" and result["passed"] and result["items"] == 133
    assert result["metrics"]["top1"] == 1 and result["metrics"]["max_abs"] < 1e-4 and result["ms_per_item"] > 0
    text = result["text"]  # what a person sees
    assert "PASSED: 133 golden examples" in text and "top-1 agreement\t100.00 %" in text
    assert "Try one image" in text and "Tokenization happens outside" not in text
    # consistency runs the same page and measures its outputs as it measures every other target
    r = cli("consistency", "--allow-unsigned", plain, digits_web, "--json")
    assert r.code == 0, r
    web = next(t for t in json.loads(r.out)["targets"] if "Chromium" in t["name"])
    assert web["passed"] and web["kind"] == "fp32" and web["top1"] == 1.0
    assert abs(web["max_abs"] - result["metrics"]["max_abs"]) < 1e-6  # the page and Python measure alike


def test_a_tampered_web_model_is_caught_in_the_browser(digits_bundle, digits_web, cli, tmp_path):
    plain, _, _ = digits_bundle
    broken = tmp_path / "broken-web"
    shutil.copytree(digits_web, broken)
    _tamper(broken / "model.onnx")
    assert "FAILED" in browser.run_page(broken)["text"]
    r = cli("consistency", "--allow-unsigned", plain, broken)
    assert r.code == 1 and "broken-web" in r.out and "FAILED" in r.out, r
    assert r.err_lines[-1] == "onnxguard: error: a target drifts from the source's outputs past its thresholds"


def test_a_target_of_another_golden_set_is_refused(digits_bundle, digits_web, cli, expect_err, tmp_path):
    plain, _, _ = digits_bundle
    other = tmp_path / "other-web"
    shutil.copytree(digits_web, other)
    data = json.loads((other / "golden.json").read_text())
    data["batches"] = data["batches"][:-1]
    (other / "golden.json").write_text(json.dumps(data))
    expect_err(cli("consistency", "--allow-unsigned", plain, other), 2, "golden.json", "not this bundle's golden set")


def test_sealed_bundle_web_target_keeps_plaintext_inside(digits_bundle, cli, expect_err, tmp_path, chromium):
    _, sealed, k = digits_bundle
    expect_err(cli("target", "--allow-unsigned", sealed, "--to", "web", "-o", tmp_path / "w"), 1,
               "opened without its identity", "--identity")
    r = cli("target", "--allow-unsigned", sealed, "--to", "web", "-o", tmp_path / "w", "--identity", k.age_identity)
    assert r.code == 0, r
    assert [p.name for p in tmp_path.iterdir()] == ["w"]
    assert (tmp_path / "w" / "model.onnx").read_bytes() == sealing.open_model(bundle.read(sealed), k.age_identity)


@pytest.mark.parametrize("kind", ["web", "mobile", "edge"])
def test_ops_the_target_cannot_run_are_named(digits_bundle, cli, expect_err, tmp_path, kind):
    plain, _, _ = digits_bundle
    b = bundle.read(plain)
    model = onnx.load(plain / "model.onnx")
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "FastRelu", "com.example.ops"  # a custom-op library the target would need
    model.opset_import.append(onnx.helper.make_opsetid("com.example.ops", 1))
    custom = tmp_path / "custom"
    bundle.write(custom, b.manifest, model, b.golden())
    # The bundle door's scan refuses a custom-op domain first (exit 1, naming the node and domain) ...
    expect_err(cli("target", "--allow-unsigned", custom, "--to", kind, "-o", tmp_path / "t"), 1,
               "domain.node", "com.example.ops")
    assert not (tmp_path / "t").exists()
    # ... and where a scan policy allows the domain, the target still refuses an op its runtime has no kernel for.
    allowing = dataclasses.replace(policy.for_profile("default"),
                                   allowed_domains=(*policy.for_profile("default").allowed_domains, "com.example.ops"))
    opened = trust.open_bundle(custom, trust.TrustPolicy(trust.UnsafeUnsigned(), trust.ScanRule(allowing)))
    with pytest.raises(InputError, match=rf"op com.example.ops::FastRelu \(opset 1\).*the {kind} target"):
        target.make(opened, kind, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def test_try_one_image_in_the_page(digits_bundle, digits_web, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    plain, _, _ = digits_bundle
    b = bundle.read(plain)
    image = b.golden().inputs[1]["image"][3, 0]  # 8x8 in [0, 1], light ink on dark
    png = tmp_path / "digit.png"
    Image.fromarray(np.round(255 * (1 - image)).astype(np.uint8), "L").save(png)  # as paper: dark ink on light
    expected = int(b.golden().references[1]["output"][3].argmax())
    with browser.open_page(digits_web) as page:
        page.find_element(By.ID, "image-file").send_keys(str(png))
        shown = WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "try-result").text)
    assert shown.startswith(f"output: class {expected} ")


def test_tabular_model_offers_one_row(sklearn_bundle, cli, tmp_path, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    r = cli("target", "--allow-unsigned", sklearn_bundle, "--to", "web", "-o", tmp_path / "web")
    assert r.code == 0, r
    b = bundle.read(sklearn_bundle)
    row, label = b.golden().inputs[0]["input"][0], b.golden().references[0]["label"][0]
    with browser.open_page(tmp_path / "web") as page:
        result = page.execute_script("return window.onnxguardResult")
        assert result["passed"] and result["metrics"]["label_agreement"] == 1
        assert "Try one row" in page.find_element(By.TAG_NAME, "body").text
        box = page.find_element(By.ID, "row")
        box.clear()
        box.send_keys(", ".join(f"{v:g}" for v in row))
        page.find_element(By.ID, "run-row").click()
        shown = WebDriverWait(page, 30).until(lambda d: d.find_element(By.ID, "try-result").text)
        assert shown.splitlines()[0] == f"label: {label}"
        box.clear()
        box.send_keys("1, 2")
        page.find_element(By.ID, "run-row").click()
        WebDriverWait(page, 30).until(lambda d: "enter 64 numbers" in d.find_element(By.ID, "try-result").text)


def test_non_tensor_outputs_are_refused_for_the_web(digits_bundle, cli, expect_err, tmp_path):
    plain, _, _ = digits_bundle
    b = bundle.read(plain)
    model = onnx.load(plain / "model.onnx")
    out = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("SequenceConstruct", [out.name], ["scores_seq"]))
    model.graph.output.append(onnx.helper.make_tensor_sequence_value_info("scores_seq", onnx.TensorProto.FLOAT, None))
    seq = tmp_path / "seq"
    bundle.write(seq, b.manifest, model, b.golden())
    expect_err(cli("target", "--allow-unsigned", seq, "--to", "web", "-o", tmp_path / "t"), 2, "'scores_seq'",
               "sequence_type", "tensors only")


def test_verify_golden_runs_the_web_target_in_the_browser(digits_bundle, digits_web, cli):
    plain, _, _ = digits_bundle
    r = cli("verify", "--allow-unsigned", plain, "--golden", "--target", digits_web, "--json")
    assert r.code == 0, r
    targets = json.loads(r.out)["golden"]["targets"]
    assert [t["name"] for t in targets][-1] == "digits-web/index.html (Chromium, WASM)"
    assert all(t["passed"] for t in targets)


def test_page_repeats_the_golden_set_for_benchmarks(digits_web):
    result = browser.run_page(digits_web, query="?repeat=3")
    samples = result["samples_ms_per_item"]
    assert len(samples) == 3 and all(s > 0 for s in samples) and result["ms_per_item"] == sorted(samples)[1]


def test_quickstart_says_why_it_skips_the_browser(digits_bundle, tmp_path, monkeypatch):
    from onnxguard.examples import quickstart

    plain, _, _ = digits_bundle
    monkeypatch.setattr(browser, "available", lambda: False)
    policy = trust.TrustPolicy(trust.UnsafeUnsigned())  # _targets takes the opened bundle and its policy
    report, skipped = quickstart._targets(trust.open_bundle(plain, policy), policy, tmp_path / "targets",
                                          lambda event: None)
    assert skipped.startswith("no headless Chromium here") and "apt install chromium chromium-driver" in skipped
    assert report.passed and not any("Chromium" in t.name for t in report.targets)
    assert (tmp_path / "targets" / "web" / "index.html").is_file()  # made, only not run


def test_no_place_to_install_the_web_runtime_is_one_clear_line(digits_bundle, cli, expect_err, tmp_path, monkeypatch):
    plain, _, _ = digits_bundle
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "onnxguard").write_text("")  # onnxguard's cache directory is a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("ONNXGUARD_ORT_WEB", raising=False)
    expect_err(cli("target", "--allow-unsigned", plain, "--to", "web", "-o", tmp_path / "w"), 2,
               "cannot install onnxruntime-web there", "ONNXGUARD_ORT_WEB")
    assert not (tmp_path / "w").exists()
