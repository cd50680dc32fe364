"""Every error path of the issue through the real entry point: exit 2, one line on stderr naming the file,
no traceback unless --debug."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest


@pytest.fixture
def corrupt_onnx(tmp_path):
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01\x02" * 8)
    return path


def test_missing_source_file(cli, expect_err, tmp_path):
    expect_err(cli("convert", tmp_path / "nope.skops", "-o", tmp_path / "x.onnx"), 2, "nope.skops", "no such file")
    expect_err(cli("build", tmp_path / "gone.pt2", "-o", tmp_path / "b"), 2, "gone.pt2", "no such file")
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "b").exists()


def test_missing_model_for_inspect(cli, expect_err, tmp_path):
    expect_err(cli("inspect", tmp_path / "absent.onnx"), 2, "absent.onnx", "no such file")


def test_missing_spec_file(cli, expect_err, tmp_path):
    expect_err(cli("convert", f"{tmp_path}/nothere.py:make", "--input-shape", "1,3", "-o", tmp_path / "x.onnx"),
               2, "nothere.py", "no such file")


def test_unknown_source_kind(cli, expect_err, tmp_path):
    src = tmp_path / "foo.xyz"
    src.write_text("whatever")
    line = expect_err(cli("convert", src, "-o", tmp_path / "x.onnx"), 2, "foo.xyz", "unknown source kind")
    assert ".skops" in line and ".pt2" in line  # says what to give instead


def test_directory_without_config(cli, expect_err, tmp_path):
    (tmp_path / "model").mkdir()
    expect_err(cli("convert", tmp_path / "model", "-o", tmp_path / "x.onnx"), 2, "model", "config.json")


def test_py_file_without_factory(cli, expect_err, torch_nets, tmp_path):
    expect_err(cli("convert", torch_nets, "-o", tmp_path / "x.onnx"), 2, "nets.py", ":make_model")


def test_spec_that_raises_import_error(cli, expect_err, tmp_path):
    spec = tmp_path / "broken.py"
    spec.write_text("import torch\nfrom torch import does_not_exist_anywhere\n\n"
                    "def make():\n    return torch.nn.Identity()\n")
    expect_err(cli("convert", f"{spec}:make", "--input-shape", "1,3", "-o", tmp_path / "x.onnx"),
               2, "broken.py", "does not import", "ImportError")


def test_spec_with_missing_attribute(cli, expect_err, torch_nets, tmp_path):
    expect_err(cli("convert", f"{torch_nets}:no_such_factory", "--input-shape", "1,10", "-o", tmp_path / "x.onnx"),
               2, "nets.py", "no_such_factory")


def test_factory_that_is_not_a_module(cli, expect_err, torch_nets, tmp_path):
    expect_err(cli("convert", f"{torch_nets}:not_a_module", "--input-shape", "1,10", "-o", tmp_path / "x.onnx"),
               2, "not_a_module", "int")


def test_model_that_fails_on_its_example_input(cli, expect_err, torch_nets, tmp_path):
    # the MLP takes 10 features; 7 cannot work, and the message points at --input-shape
    expect_err(cli("convert", f"{torch_nets}:make_mlp", "--input-shape", "1,7", "-o", tmp_path / "x.onnx"),
               2, "make_mlp", "--input-shape")


def test_model_returning_no_tensor(cli, expect_err, torch_nets, tmp_path):
    expect_err(cli("convert", f"{torch_nets}:ReturnsText", "--input-shape", "1,3", "-o", tmp_path / "x.onnx"),
               2, "ReturnsText", "str")


def test_model_that_fails_to_export(cli, expect_err, torch_nets, tmp_path):
    """linalg.eigh has no ONNX export in either exporter; the message says both were tried."""
    out = tmp_path / "eigh.onnx"
    line = expect_err(cli("convert", f"{torch_nets}:Eigh", "--input-shape", "1,4,4", "-o", out), 2, "nets.py:Eigh")
    assert "dynamo exporter failed" in line and "torchscript exporter failed" in line, line
    assert not out.exists()


def test_corrupt_onnx(cli, expect_err, corrupt_onnx):
    expect_err(cli("inspect", corrupt_onnx), 2, "corrupt.onnx", "not a valid ONNX file")


def test_protobuf_that_is_not_a_model(cli, expect_err, tmp_path):
    import onnx

    path = tmp_path / "graphless.onnx"
    path.write_bytes(onnx.TensorProto(name="t", dims=[1]).SerializeToString())
    expect_err(cli("inspect", path), 2, "graphless.onnx")


def test_empty_file(cli, expect_err, tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    expect_err(cli("inspect", path), 2, "empty.onnx", "empty")


def test_corrupt_skops(cli, expect_err, tmp_path):
    path = tmp_path / "model.skops"
    path.write_text("not a zip archive")
    expect_err(cli("convert", path, "-o", tmp_path / "x.onnx"), 2, "model.skops", "not a readable .skops")


def test_parity_with_corrupt_model(cli, expect_err, sklearn_files, corrupt_onnx):
    expect_err(cli("parity", sklearn_files.classifier, corrupt_onnx), 2, "corrupt.onnx")


@pytest.mark.parametrize("output", ["/proc/nope/x.onnx", "{file}/x.onnx", "{dir}"])
def test_unwritable_convert_output(cli, expect_err, torch_nets, tmp_path, output):
    """Refused before the export starts: the one line on stderr is the error, no progress before it."""
    output = output.format(file=torch_nets, dir=tmp_path)
    expect_err(cli("convert", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "-o", output), 2, output)


@pytest.mark.parametrize("output", ["/proc/nope/bundle", "{file}/bundle"])
def test_unwritable_build_output(cli, expect_err, sklearn_files, output):
    output = output.format(file=sklearn_files.classifier)
    line = expect_err(cli("build", sklearn_files.classifier, "-o", output), 2)
    assert output.rpartition("/")[0] in line


@pytest.mark.parametrize("meta", ["novalue", "=value", " =x"])
def test_bad_meta(cli, expect_err, torch_nets, tmp_path, meta):
    expect_err(cli("convert", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "--meta", meta,
                   "-o", tmp_path / "x.onnx"), 2, "--meta", "KEY=VALUE")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(("shape", "says"), [("1,x-y", "'x-y'"), ("1,10:complex", "'complex'"), ("0,10", "'0'")])
def test_bad_input_shape(cli, expect_err, torch_nets, tmp_path, shape, says):
    expect_err(cli("convert", f"{torch_nets}:make_mlp", "--input-shape", shape, "-o", tmp_path / "x.onnx"),
               2, "--input-shape", says)


def test_missing_input_shape(cli, expect_err, torch_nets, tmp_path):
    expect_err(cli("convert", f"{torch_nets}:make_mlp", "-o", tmp_path / "x.onnx"), 2, "make_mlp", "--input-shape")


def test_bad_tolerance(cli, expect_err, sklearn_files, tmp_path):
    expect_err(cli("build", sklearn_files.classifier, "-o", tmp_path / "b", "--atol", "-1"), 2, "--atol")


def test_texts_for_a_model_without_tokenizer(cli, sklearn_files, texts_file, tmp_path):
    # found after the convert stage, so that stage's progress lines come first; the error is the last line
    r = cli("build", sklearn_files.classifier, "-o", tmp_path / "b", "--texts", texts_file)
    assert r.code == 2 and "Traceback" not in r.err, str(r)
    assert r.err_lines[-1].startswith("onnxguard: error: ") and "digits.skops" in r.err_lines[-1], str(r)
    assert ".npz" in r.err_lines[-1]  # what to give instead
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_parity_needs_a_model(cli, expect_err, sklearn_files):
    expect_err(cli("parity", sklearn_files.classifier), 2, "MODEL.onnx")


def test_debug_shows_the_traceback(cli, corrupt_onnx):
    r = cli("--debug", "inspect", corrupt_onnx)
    assert r.code == 2, str(r)
    assert "Traceback" in r.err and "ModelError" in r.err, str(r)
    assert r.err_lines[-1].startswith("onnxguard: error: ") and "corrupt.onnx" in r.err_lines[-1]


def test_version_and_help(cli):
    r = cli("--version")
    assert r.code == 0 and r.out.strip().startswith("onnxguard "), str(r)
    r = cli("convert", "--help")
    assert r.code == 0 and "--input-shape" in r.out and "--trust-pickle" in r.out, str(r)


@pytest.mark.parametrize(("args", "says"), [(("inspect",), "Missing argument"),
                                           (("inspect", "x.onnx", "--no-such-option"), "No such option"),
                                           (("no-such-verb",), "No such command"),
                                           (("convert", "model.skops"), "Missing option"),
                                           (("bench", "x.onnx", "--runs", "many"), "'--runs'")])
def test_usage_errors_are_one_line_with_the_usage(cli, expect_err, args, says):
    """Not click's five-line box: one line, the problem first, then the verb's usage."""
    line = expect_err(cli(*args), 2, says, "usage: onnxguard")
    assert "Usage:" not in line and "╭" not in line


def test_misspelled_verb_suggests_the_verb(cli, expect_err):
    line = expect_err(cli("verfy", "x"), 2, "'verfy'")
    assert "did you mean 'verify'" in line.lower(), line
    line = expect_err(cli("inspekt", "x.onnx"), 2, "'inspekt'")
    assert "did you mean 'inspect'" in line.lower(), line


BUG = """
import sys
from onnxguard.model import info
def broken(path):
    raise RuntimeError("an unexpected bug\\nsecond line of the message")
info.inspect = broken
from onnxguard.cli import main
main(sys.argv[1:])
"""


def _with_a_bug(*args):
    """The real entry point (``cli.main``) with a library function replaced by one that has a bug."""
    proc = subprocess.run([sys.executable, "-c", BUG, *args], capture_output=True, text=True, timeout=300, check=False)
    return SimpleNamespace(code=proc.returncode, err=proc.stderr,
                           err_lines=[line for line in proc.stderr.splitlines() if line.strip()])


def test_an_unexpected_exception_is_an_internal_error_exit_2(tmp_path):
    """A bug is not a failed check (exit 1): exit 2, one line naming the exception, how to get the traceback."""
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    r = _with_a_bug("inspect", str(model))
    assert r.code == 2, str(r)
    assert "Traceback" not in r.err, str(r)
    assert r.err_lines == ["onnxguard: internal error: RuntimeError: an unexpected bug; rerun with --debug for the "
                           "traceback"], str(r)
    r = _with_a_bug("--debug", "inspect", str(model))
    assert r.code == 2 and "Traceback" in r.err and "second line of the message" in r.err, str(r)
    assert r.err_lines[-1].startswith("onnxguard: internal error: RuntimeError"), str(r)


def test_a_remedy_is_named_by_the_flag_of_the_verb(cli, expect_err, sklearn_files, tmp_path):
    """The library says what is missing (a Remedy); the CLI names its flag, after the message."""
    target = tmp_path / "b"
    target.mkdir()
    line = expect_err(cli("build", sklearn_files.classifier, "-o", target), 2)
    assert line == f"onnxguard: error: {target}: already exists; choose another output, or pass --overwrite", line
    line = expect_err(cli("convert", sklearn_files.pickle, "-o", tmp_path / "x.onnx"), 2, "digits.pkl")
    assert line.endswith("; save the model with skops (.skops), or pass --trust-pickle"), line


def test_a_verb_without_the_flag_gets_the_hint():
    import typer.main

    from onnxguard.cli import app, render
    from onnxguard.errors import InputError, Remedy

    verbs = typer.main.get_command(app).commands
    e = InputError("x: already exists", hint="choose another output", remedy=Remedy.OVERWRITE)
    assert render.error_line(e, verbs["build"]) == ("onnxguard: error: x: already exists; choose another output, "
                                                    "or pass --overwrite")
    assert render.error_line(e, verbs["keygen"]) == "onnxguard: error: x: already exists; choose another output"
    e = InputError("y: sealed", remedy=Remedy.IDENTITY)
    assert render.error_line(e, verbs["parity"]).startswith("onnxguard: error: y: sealed; give --identity FILE")
    assert render.error_line(e, verbs["keygen"]).startswith("onnxguard: error: y: sealed; needs the age identity")
    e = InputError("z: no such file", hint="give the path of an .onnx file")
    assert render.error_line(e, verbs["build"]) == "onnxguard: error: z: no such file; give the path of an .onnx file"
    assert set(render.REMEDY_FLAGS) == set(Remedy)  # every remedy has its flag
    e = InputError("k: already exists", remedy=Remedy.OUTPUT)  # keygen spells -o as --out, not --output
    assert render.error_line(e, verbs["keygen"]) == "onnxguard: error: k: already exists; choose another --out"
    assert render.error_line(e, verbs["build"]) == "onnxguard: error: k: already exists; choose another -o/--output"


def test_the_library_names_no_command_line_flag():
    """Outside cli/, no string (docstrings aside) names a flag of the command line: the library says what is
    missing with a Remedy, and the CLI alone turns it into its flag (render.REMEDY_FLAGS)."""
    import ast
    import re
    from pathlib import Path

    import typer.main

    import onnxguard
    from onnxguard.cli import app

    flags = {o for c in typer.main.get_command(app).commands.values() for p in c.params
             for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    assert {"--input-shape", "--recipient", "--password-env", "--out", "--golden"} <= flags
    root = Path(onnxguard.__file__).parent
    named = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in ("cli", "serve"):  # the faces name their own flags
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                named += [f"{path.relative_to(root)}:{node.lineno}: {f}"
                          for f in re.findall(r"--[a-z][a-z0-9-]*", node.value) if f in flags]
    assert named == []


# -- inputs that are not regular files, or far too large ------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.onnx"
    os.mkfifo(path)  # nobody ever writes to it: opening it for reading the usual way blocks forever
    return path


@pytest.fixture
def huge(tmp_path):
    path = tmp_path / "huge.onnx"
    with open(path, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that take no disk and must take no memory either
    return path


MODEL_READERS = [("inspect", "{m}"), ("optimize", "{m}", "-o", "{out}/o.onnx"),
                 ("quantize", "{m}", "-o", "{out}/q.onnx"), ("parity", "{src}", "{m}"), ("bench", "{m}")]


@pytest.mark.parametrize("args", MODEL_READERS, ids=lambda a: a[0])
def test_a_fifo_is_refused_at_once(cli, expect_err, fifo, sklearn_files, tmp_path, args):
    args = [a.format(m=fifo, out=tmp_path, src=sklearn_files.classifier) for a in args]
    expect_err(cli(*args, timeout=120), 2, str(fifo), "is a FIFO")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.onnx"]


@pytest.mark.parametrize("args", MODEL_READERS, ids=lambda a: a[0])
def test_a_file_over_2_gib_is_refused_unread(cli, expect_err, huge, sklearn_files, tmp_path, args):
    args = [a.format(m=huge, out=tmp_path, src=sklearn_files.classifier) for a in args]
    expect_err(cli(*args, timeout=120), 2, str(huge), "3.0 GiB", "2.0 GiB limit", "not read")


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_model_that_is_not_a_regular_file_says_what_it_is(cli, expect_err, tmp_path, mlp_onnx, sklearn_files, kind):
    path = tmp_path / "m.onnx"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(mlp_onnx)
    says = {"fifo": "is a FIFO", "directory": "is a directory", "symlink": "is a symlink"}[kind]
    line = expect_err(cli("parity", sklearn_files.classifier, path, timeout=120), 2, str(path), says)
    assert "no such file" not in line


@pytest.mark.parametrize("suffix", [".skops", ".pt2"])
def test_convert_refuses_a_fifo_source_as_a_fifo(cli, expect_err, tmp_path, suffix):
    source = tmp_path / f"model{suffix}"
    os.mkfifo(source)
    line = expect_err(cli("convert", source, "-o", tmp_path / "x.onnx", timeout=120), 2, str(source), "is a FIFO")
    assert "no such file" not in line
