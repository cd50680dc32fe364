"""A PyTorch or Transformers source is converted in a child process (``convert.isolated``): the build's own process
never loads the framework, the child's progress and errors reach the caller as they were raised, and a child that
dies fails the build with its exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

from onnxguard.convert import isolated
from onnxguard.errors import CheckFailed, ConversionError, Remedy
from onnxguard.speed.select import GateFailed

BUILD = textwrap.dedent("""
    import json, sys
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.convert import ConvertOptions
    events = []
    result = build.build(sys.argv[1], sys.argv[2], BuildOptions(convert=ConvertOptions(max_length=16)), events.append)
    select = next(s for s in result.bundle.manifest.steps if s.name == "select")
    print(json.dumps({
        "frameworks": sorted(m for m in ("torch", "transformers") if m in sys.modules),
        "messages": [e.message for e in events],
        "golden": next(s.detail for s in result.stages if s.name == "golden"),
        "source": result.bundle.manifest.source.model_dump(mode="json"),
        "files": sorted(result.bundle.manifest.files),
        "candidates": select.figures["candidates"],
    }))
""")


def test_a_transformers_build_never_loads_the_framework_in_the_build_process(hf_model, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    proc = subprocess.run([sys.executable, "-c", BUILD, str(hf_model()), str(tmp_path / "b")], capture_output=True,
                          text=True, env={**os.environ, "TMPDIR": str(scratch)}, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["frameworks"] == []  # neither torch nor transformers was imported by the build's process
    assert "run in the conversion process" in out["golden"]
    # the child's progress reached the caller's callback
    assert any(m.startswith("exporting with the dynamo exporter") for m in out["messages"])
    assert any(m.startswith("running transformers on batch") for m in out["messages"])
    # what the source said about itself, and its tokenizer, reached the bundle
    assert out["source"]["framework"] == "transformers" and "torch" in out["source"]["framework_version"]
    assert out["source"]["files"] and "tokenizer/tokenizer.json" in out["files"]
    # the other exporter's graph, made in the child, was a candidate (read from its file, gated, timed)
    by_name = {c["name"]: c for c in out["candidates"]}
    assert by_name["fp32-torchscript"]["gate_passed"] and "error" not in by_name["fp32-torchscript"]
    # the conversion's scratch directory went with the build (ONNX Runtime leaves a .ses of its own there)
    assert [n for n in os.listdir(scratch) if n.startswith("onnxguard-")] == []


def _child_of_this_process() -> int:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"onnxguard.convert.isolated" in cmdline:
            return int(entry)
    raise AssertionError("no conversion process is running")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the child through /proc")
def test_a_killed_conversion_is_a_conversion_error_naming_its_exit_code(hf_model, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed: list[int] = []

    def kill_the_child(event) -> None:
        if not killed:
            killed.append(_child_of_this_process())
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(ConversionError, match=r"the conversion process exited with code -9 \(killed by SIGKILL\)"):
        isolated.convert(isolated.Job(str(hf_model())), kill_the_child)
    assert killed and os.listdir(tmp_path) == []  # nothing left of its scratch directory


def test_a_model_that_ends_the_process_fails_the_build_with_its_exit_code(cli, expect_err, tmp_path):
    """Model code that ends its process (here ``os._exit``; a crash in native code alike) takes the conversion
    process with it, never the build's: the build fails closed with the exit code and the last line it wrote."""
    nets = tmp_path / "dying.py"
    nets.write_text("import os, sys\n\ndef make():\n    sys.stderr.write('factory gave up\\n')\n"
                    "    sys.stderr.flush()\n    os._exit(7)\n")
    r = cli("build", f"{nets}:make", "--input-shape", "1,4", "-o", tmp_path / "b")
    expect_err(r, 2, f"{nets}:make: the conversion process exited with code 7 (factory gave up)")
    assert not (tmp_path / "b").exists()


def test_a_conversion_error_in_the_child_reaches_the_cli_as_raised(cli, expect_err, torch_nets, tmp_path):
    r = cli("build", f"{torch_nets}:make_mlp", "-o", tmp_path / "b")
    expect_err(r, 2, f"{torch_nets}:make_mlp: the shape of each input of forward() is needed", "give --input-shape")
    assert not (tmp_path / "b").exists()


def test_an_error_crosses_the_process_boundary_whole():
    e = ConversionError("m.py:make: no shape", hint="check the shapes", remedy=Remedy.INPUT_SHAPES)
    e.add_note("transformers warning: something")
    back = isolated._error(json.loads(json.dumps(isolated._error_dict(e))))
    assert type(back) is ConversionError and str(back) == "m.py:make: no shape"
    assert (back.hint, back.remedy, back.__notes__) == ("check the shapes", Remedy.INPUT_SHAPES,
                                                         ["transformers warning: something"])
    gate = GateFailed("the variant fails", report=None, hint="relax the gate", remedy=Remedy.FORCE)  # type: ignore
    back = isolated._error(isolated._error_dict(gate))
    assert type(back) is CheckFailed and back.remedy is Remedy.FORCE  # its nearest class of onnxguard.errors


def test_only_framework_sources_run_apart(sklearn_files, torch_nets, pt2_file, hf_model):
    assert isolated.runs_apart(f"{torch_nets}:make_mlp") and isolated.runs_apart(str(pt2_file))
    assert isolated.runs_apart(str(hf_model()))
    assert not isolated.runs_apart(str(sklearn_files.classifier))  # scikit-learn loads no torch: in process
    with pytest.raises(ConversionError, match="no such file"):
        isolated.runs_apart("missing.pt2")
