"""A serving install has no torch: the core modules and `onnxguard inspect` must never import a framework."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from onnx import TensorProto, helper, save

FRAMEWORKS = {"torch", "transformers", "sklearn", "skl2onnx", "skops", "onnxscript", "picklescan"}
ONNXGUARD = Path(sys.executable).parent / "onnxguard"


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


def test_core_modules_import_no_framework():
    code = ("import json, sys\n"
            "import onnxguard, onnxguard.model.info, onnxguard.bundle, onnxguard.accuracy.parity, onnxguard.bundle.golden, onnxguard.cli\n"
            "import onnxguard.convert, onnxguard.build, onnxguard.bundle.manifest, onnxguard.accuracy.consistency, onnxguard.target.web.browser\n"
            "import onnxguard.target, onnxguard.target.web, onnxguard.target.ortformat, onnxguard.target.operators\n"
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = json.loads(proc.stdout)
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
    if "inspect" in args and "--help" not in args:
        assert "Relu" in proc.stdout or "LinearClassifier" in proc.stdout  # it did inspect the model


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
