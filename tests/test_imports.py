"""A serving install has no torch: the serving modules load only an allow-list of packages, and the CLI's
`inspect` never imports a framework."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

# Never in a serving process nor in the CLI's inspect (the CLI itself loads rich and typer, serving does not).
FRAMEWORKS = {"torch", "transformers", "sklearn", "skl2onnx", "skops", "onnxscript", "picklescan", "matplotlib"}
ONNXGUARD = Path(sys.executable).parent / "onnxguard"

# What serving (opening a bundle, checking it, running and tokenizing) may load besides the standard library.
ALLOWED = {
    "onnxguard",
    "onnx", "ml_dtypes",  # ml_dtypes: onnx's dependency
    "google",  # google.protobuf only (checked below)
    "onnxruntime", "numpy", "tokenizers",
    "pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection",
    "jsonschema", "attr", "attrs", "referencing", "rpds", "jsonschema_specifications",
    "idna",  # jsonschema's format checker imports it when it is installed
    "cryptography", "_cffi_backend", "_openssl",  # cryptography's native bindings
    "pyrage",
    "model_signing",
}
# model_signing 1.1.1 and what it imports (signing, verifying, hashing): Sigstore and its HTTP and TUF stack.
MODEL_SIGNING = {
    "OpenSSL", "blake3", "certifi", "charset_normalizer", "id", "in_toto_attestation", "jwt", "platformdirs",
    "requests", "rekor_types", "rfc3161_client", "rfc8785", "securesystemslib", "sigstore", "sigstore_models",
    "socks", "tuf", "urllib3", "_cython_3_3_0", "cython_runtime",
    "brotli", "_brotli",  # urllib3 imports brotli when it is installed (it is, for the test clients' stack)
}
SERVING = ("onnxguard", "onnxguard.runtime", "onnxguard.preprocess", "onnxguard.preprocess.tokenizer",
           "onnxguard.preprocess.image", "onnxguard.preprocess.table", "onnxguard.bundle", "onnxguard.trust",
           "onnxguard.scan", "onnxguard.model.onnxfile")
LISTING = textwrap.dedent("""
    import json, sys
    startup = set(sys.modules)
    for name in sys.argv[1:]:
        __import__(name)
    print(json.dumps(sorted(set(sys.modules) - startup)))
""")


def _loaded(*modules: str) -> list[str]:
    """Modules a fresh interpreter loads to import ``modules`` (beyond its own start-up)."""
    proc = subprocess.run([sys.executable, "-c", LISTING, *modules], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def _outside(modules: list[str], allowed: set[str]) -> set[str]:
    tops = {m.split(".")[0] for m in modules}
    return {t for t in tops - allowed if t not in sys.stdlib_module_names and not t.startswith("_sysconfigdata")}


def _frameworks(modules) -> set[str]:
    return {m.split(".")[0] for m in modules} & FRAMEWORKS


@pytest.fixture(scope="module")
def plain_onnx(tmp_path_factory) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    path = tmp_path_factory.mktemp("plain") / "relu.onnx"
    save(helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_serving_modules_load_only_the_allow_list():
    modules = _loaded(*SERVING)
    assert set(SERVING) <= set(modules) and "tokenizers" in modules and "onnxruntime" in modules
    assert _outside(modules, ALLOWED) == set()  # in particular no torch, transformers, sklearn, rich, typer
    google = {m for m in modules if m.split(".")[0] == "google"} - {"google"}
    assert google and all(m.startswith(("google.protobuf", "google._upb")) for m in google)


def test_signature_checks_load_only_model_signing_and_its_stack():
    """trust loads model_signing when a signature is checked or made; what comes with it is listed above."""
    modules = _loaded(*SERVING, "onnxguard.trust.signing", "model_signing.signing", "model_signing.verifying",
                      "model_signing.hashing")
    assert "model_signing" in modules and "sigstore" in modules
    assert _outside(modules, ALLOWED | MODEL_SIGNING) == set()
    assert _frameworks(modules) == set()


def test_the_allow_list_bites():
    """The check itself: a module outside the list is reported."""
    assert _outside(_loaded("onnxguard.bundle.digest", "xml.dom", "email.utils"), ALLOWED) == set()
    assert _outside(["onnxguard.x", "json", "torch.nn", "requests"], ALLOWED) == {"torch", "requests"}


def test_the_cli_and_the_rest_of_the_core_import_no_framework():
    modules = _loaded("onnxguard.model.info", "onnxguard.accuracy.parity", "onnxguard.bundle.golden", "onnxguard.cli",
                      "onnxguard.convert", "onnxguard.build", "onnxguard.bundle.manifest",
                      "onnxguard.accuracy.consistency", "onnxguard.target.web.browser", "onnxguard.target",
                      "onnxguard.target.web", "onnxguard.target.ortformat", "onnxguard.target.operators",
                      "onnxguard.speed.quantize", "onnxguard.speed.optimize", "onnxguard.speed.bench")
    assert "onnxguard.cli" in modules and "onnxruntime" in modules
    assert _frameworks(modules) == set()


WRAPPER = textwrap.dedent('''
    import sys
    from onnxguard.cli import main

    out, argv = sys.argv[1], sys.argv[2:]
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
    sys.exit(code)
''')


@pytest.mark.parametrize("args", [("inspect", "{model}"), ("inspect", "{model}", "--json"), ("--help",),
                                  ("inspect", "--help"), ("inspect", "{bundle}")])
def test_cli_inspect_imports_no_framework(tmp_path, plain_onnx, sklearn_bundle, args):
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    listing = tmp_path / "modules.txt"
    argv = [a.format(model=plain_onnx, bundle=sklearn_bundle) for a in args]
    proc = subprocess.run([sys.executable, str(wrapper), str(listing), *argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    modules = listing.read_text().split()
    assert "onnxguard.cli.inspect" in modules
    assert _frameworks(modules) == set(), _frameworks(modules)
    if "inspect" in args and "--help" not in args:  # it did inspect the model it was given, and no other
        inspected, other = ("LinearClassifier", "Relu") if "{bundle}" in args else ("Relu", "LinearClassifier")
        assert inspected in proc.stdout and other not in proc.stdout, proc.stdout


def test_console_script_importtime(plain_onnx):
    """The real entry point, under -X importtime: the list of everything imported names no framework."""
    proc = subprocess.run([sys.executable, "-X", "importtime", str(ONNXGUARD), "inspect", str(plain_onnx), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["op_histogram"] == {"ai.onnx": {"Relu": 1}}
    imported = [line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")]
    assert "onnxruntime" in imported and "onnxguard.model.info" in imported
    assert _frameworks(imported) == set(), _frameworks(imported)


def test_python_dash_m(plain_onnx):
    proc = subprocess.run([sys.executable, "-m", "onnxguard", "inspect", str(plain_onnx), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
