"""runtime.session / runtime.run: the one place a session is made. External data comes only from the model's
folder (never the working directory), hostile locations are refused before ONNX Runtime opens anything, and
whatever ONNX Runtime cannot load is one ModelError line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxguard import runtime
from onnxguard.errors import InputError, ModelError

WEIGHTS = np.arange(1, 5, dtype=np.float32)  # the real external data: y = x + [1, 2, 3, 4]
SECRET = np.full(4, 1000.0, np.float32)      # what a hostile location would read


def _add_model() -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Add", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
                              [numpy_helper.from_array(WEIGHTS, "W")])
    return helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])


def _with_location(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """The model with W stored as external data at ``location`` (nothing written)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    w = m.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(WEIGHTS.nbytes))):
        w.external_data.add(key=key, value=value)
    return m


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """``model/`` with the real weights in ``w.bin``; a cwd elsewhere holding a planted ``w.bin`` and ``secret.bin``;
    ``secret.bin`` beside ``model/`` too. The test runs with the cwd elsewhere."""
    model_dir, cwd = tmp_path / "model", tmp_path / "cwd"
    model_dir.mkdir()
    cwd.mkdir()
    (model_dir / "w.bin").write_bytes(WEIGHTS.tobytes())
    for planted in (cwd / "w.bin", cwd / "secret.bin", tmp_path / "secret.bin"):
        planted.write_bytes(SECRET.tobytes())
    monkeypatch.chdir(cwd)
    return model_dir, cwd


X = {"x": np.zeros((2, 4), np.float32)}


def test_external_data_is_read_from_the_model_folder_not_the_cwd(folders):
    model_dir, cwd = folders
    data = _with_location(_add_model(), "w.bin").SerializeToString()
    (out,) = runtime.run(runtime.session(data, model_dir=model_dir), [X])
    np.testing.assert_array_equal(out["y"], np.tile(WEIGHTS, (2, 1)))  # the folder's weights, not the cwd's plant
    assert os.getcwd() == str(cwd)


def test_external_data_without_a_model_dir_is_refused_even_when_the_cwd_has_the_file(folders):
    data = _with_location(_add_model(), "w.bin").SerializeToString()  # ./w.bin exists in the cwd
    with pytest.raises(ModelError, match=r"tensor 'W' keeps its data in an external file, and no model directory") as e:
        runtime.session(data)
    assert "\n" not in str(e.value) and e.value.hint


@pytest.mark.parametrize("location, why", [
    ("../secret.bin", "leaves the model's directory"),
    ("sub/../../secret.bin", "leaves the model's directory"),
    ("/etc/passwd", "is an absolute path"),
    ("missing.bin", "names no file"),
    ("secret.bin", "names no file"),  # there is a ./secret.bin in the cwd: it is never looked at
])
def test_hostile_or_missing_locations_are_refused_before_loading(folders, location, why):
    model_dir, _ = folders
    data = _with_location(_add_model(), location).SerializeToString()
    with pytest.raises(ModelError, match=f"external data of tensor 'W' refused: .*{why}") as e:
        runtime.session(data, model_dir=model_dir)
    assert "\n" not in str(e.value)


def test_a_symlink_out_of_the_folder_and_a_hardlink_are_refused(folders, tmp_path):
    model_dir, _ = folders
    (model_dir / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ModelError, match="through a symlink"):
        runtime.session(_with_location(_add_model(), "link.bin"), model_dir=model_dir)
    os.link(tmp_path / "secret.bin", model_dir / "hard.bin")
    with pytest.raises(ModelError, match="2 hard links"):
        runtime.session(_with_location(_add_model(), "hard.bin"), model_dir=model_dir)


@pytest.mark.parametrize("data", [os.urandom(256), b"\x08\x07" + os.urandom(64), b"not a model at all"],
                         ids=["random", "protobuf-ish", "text"])
def test_random_bytes_are_one_line_model_errors(data):
    with pytest.raises(ModelError) as e:
        runtime.session(data, name="upload.onnx")
    assert "\n" not in str(e.value) and "upload.onnx" in str(e.value)


def test_a_graph_ort_cannot_load_is_one_model_error_line():
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError, match=r"^ONNX Runtime cannot load the model: .*NoSuchOp") as e:
        runtime.session(model)
    assert "\n" not in str(e.value)


def test_load_failure_prints_nothing(tmp_path):
    """In a fresh process: no traceback, no ORT log line on stderr, nothing on stdout; one ModelError."""
    code = textwrap.dedent("""
        import os
        from onnxguard import runtime
        from onnxguard.errors import ModelError
        try:
            runtime.session(os.urandom(300))
        except ModelError as e:
            open("err.txt", "w").write(str(e))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert proc.stdout == "" and proc.stderr == ""
    assert (tmp_path / "err.txt").read_text().count("\n") == 0


def test_session_options_threads_and_levels():
    sess = runtime.session(_add_model(), threads=1, optimization="basic")
    (out,) = runtime.run(sess, [{"x": np.ones((1, 4), np.float32), "unused": np.zeros(1)}])
    np.testing.assert_array_equal(out["y"], [WEIGHTS + 1])
    with pytest.raises(InputError, match="unknown optimization level 'fastest'"):
        runtime.session(_add_model(), optimization="fastest")
    with pytest.raises(InputError, match="set from model_dir only"):
        runtime.session(_add_model(), config={runtime.EXTERNAL_FOLDER_KEY: "/"})
    with pytest.raises(InputError, match="onnx.ModelProto or bytes, not str"):
        runtime.session("model.onnx")


def test_sessions_that_take_turns_do_not_spin():
    """Spinning threads hold the cores while another session runs (runtime.core.SPINNING): off where asked."""
    key = "session.intra_op.allow_spinning"
    assert runtime.session(_add_model(), spin=False).get_session_options().get_session_config_entry(key) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # unset: ONNX Runtime's default, spinning
        runtime.session(_add_model()).get_session_options().get_session_config_entry(key)


def test_select_and_bench_time_sessions_that_do_not_spin(monkeypatch):
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.speed import bench, select

    made: list[bool] = []
    real = runtime.session
    monkeypatch.setattr(runtime, "session", lambda *a, spin=True, **k: made.append(spin) or real(*a, spin=spin, **k))
    batch = {"x": np.ones((2, 4), np.float32)}
    golden = GoldenSet((batch,), ({"y": batch["x"] + WEIGHTS},))
    select.select([select.Candidate("a", _add_model()), select.Candidate("b", _add_model())], golden, {"y": "values"},
                  batch_size=2, threads=1)
    bench.onnx_variant("a", _add_model()).make(1)
    assert made and not any(made)


def test_offline_optimization_writes_the_optimized_graph(tmp_path):
    out = tmp_path / "opt.onnx"
    runtime.session(_add_model(), optimization="extended", optimized_model_path=out)
    assert onnx.load(str(out)).graph.node[0].op_type == "Add"


def test_run_missing_input_and_bad_dtype_are_input_errors():
    sess = runtime.session(_add_model())
    with pytest.raises(InputError, match=r"batch 1 lacks model input\(s\) \['x'\]"):
        runtime.run(sess, [X, {"z": X["x"]}])
    with pytest.raises(InputError, match="batch 0 does not fit the model") as e:
        runtime.run(sess, [{"x": np.zeros((2, 4), np.int64)}])
    assert "\n" not in str(e.value)


def test_run_gives_string_outputs_as_unicode_arrays():
    graph = helper.make_graph([helper.make_node("Identity", ["s"], ["t"])], "g",
                              [helper.make_tensor_value_info("s", TensorProto.STRING, ["n"])],
                              [helper.make_tensor_value_info("t", TensorProto.STRING, ["n"])])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 17)])
    (out,) = runtime.run(runtime.session(model), [{"s": np.array(["cat", "dog"], dtype=object)}])
    assert out["t"].dtype.kind == "U" and out["t"].tolist() == ["cat", "dog"]


def test_isolated_steps_report_events_results_and_one_line_errors(tmp_path):
    events = []
    result = runtime.isolated("def main(job, event):\n    print('chatter')\n    event('half way')\n"
                              "    open('dropped.txt', 'w').close()\n    return {'twice': job['n'] * 2}\n",
                              {"n": 21}, what="a step", stage="test", progress=events.append, cwd=tmp_path)
    assert result == {"twice": 42} and [e.message for e in events] == ["half way"]
    assert (tmp_path / "dropped.txt").exists()  # the child's working directory, not this process's
    with pytest.raises(ModelError, match=r"^a step failed: KeyError: 'missing'$"):
        runtime.isolated("def main(job, event):\n    return job['missing']\n", {}, what="a step", stage="test")
    with pytest.raises(ModelError, match=r"^a step failed: its process exited with code 7"):
        runtime.isolated("import os\ndef main(job, event):\n    os._exit(7)\n", {}, what="a step", stage="test")
