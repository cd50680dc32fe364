"""Every error path of the issue through the real entry point: exit 2, one line on stderr naming the file,
no traceback unless --debug."""

from __future__ import annotations

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
    spec.write_text("import torch\nfrom torch import does_not_exist_anywhere\n\ndef make():\n    return torch.nn.Identity()\n")
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
    assert "--golden" in r.err_lines[-1]
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
                                           (("convert", "model.skops"), "Missing option")])
def test_usage_errors_exit_2_without_traceback(cli, args, says):
    r = cli(*args)
    assert r.code == 2, str(r)
    assert "Traceback" not in r.err + r.out, str(r)
    assert says in r.err and "Usage: onnxguard" in r.err, str(r)
