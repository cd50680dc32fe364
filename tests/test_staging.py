"""staging: an output is checked before any work, staged beside its target, renamed into place on success,
removed on failure; a killed process's staging directory is removed by the next run for the same target."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from onnxguard import staging
from onnxguard.errors import InputError, Remedy


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_success_renames_the_staging_directory_into_place(tmp_path):
    target = tmp_path / "out"
    with staging.atomic_dir(target) as work:
        assert work.parent == tmp_path and work.name.startswith(f".out.staging-{os.getpid()}-")
        assert list(work.iterdir()) == [] and (work.stat().st_mode & 0o777) == 0o700  # private while written
        (work / "file.txt").write_text("done")
    assert (target / "file.txt").read_text() == "done"
    assert (target.stat().st_mode & 0o777) == 0o755
    assert os.listdir(tmp_path) == ["out"]


def test_failure_removes_the_staging_directory(tmp_path):
    with pytest.raises(KeyboardInterrupt), staging.atomic_dir(tmp_path / "out") as work:
        (work / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_an_existing_target_is_replaced_only_when_allowed(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(InputError, match="out: already exists") as e, staging.atomic_dir(target):
        pytest.fail("the block must not run")
    assert e.value.remedy is Remedy.OVERWRITE
    with staging.atomic_dir(target, overwrite=True, mode=0o700) as work:
        (work / "new.txt").write_text("new")
    assert os.listdir(target) == ["new.txt"] and (target.stat().st_mode & 0o777) == 0o700
    assert os.listdir(tmp_path) == ["out"]


def test_stale_staging_of_dead_processes_is_removed_live_ones_kept(tmp_path):
    dead, live = _dead_pid(), os.getppid()
    stale = [tmp_path / f".out.staging-{dead}-abc", tmp_path / f"..out.staging-{dead}-abc.staging-{dead}-def",
             tmp_path / f".out.staging-{dead}-abc-old"]
    keep = [tmp_path / f".out.staging-{live}-abc", tmp_path / f".other.staging-{dead}-abc", tmp_path / ".out.keep"]
    for d in stale + keep:
        d.mkdir()
        (d / "x").write_text("x")
    with staging.atomic_dir(tmp_path / "out") as work:
        (work / "y").write_text("y")
    assert sorted(os.listdir(tmp_path)) == sorted(["out", *(d.name for d in keep)])


def test_a_staging_directory_in_use_is_never_cleaned(tmp_path):
    with staging.atomic_dir(tmp_path / "out") as work:
        assert staging.clean_stale(tmp_path / "out") == []  # our own pid, but in use
        assert work.is_dir()


# -- check_output ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "says"), [
    ("{tmp}/absent/out", "absent: no such directory"),
    ("{tmp}/file.txt/out", "file.txt: not a directory"),
    ("/proc/self/out", "is under /proc"),
    ("/sys/out", "is under /sys"),
    ("/dev/null", "is under /dev"),
])
def test_an_output_that_cannot_be_written_is_refused(tmp_path, target, says):
    (tmp_path / "file.txt").write_text("x")
    target = target.format(tmp=tmp_path)
    for kind in ("file", "directory"):
        with pytest.raises(InputError, match=says) as e:
            staging.check_output(target, kind=kind, overwrite=True)
        assert str(e.value).startswith(target) and e.value.remedy is Remedy.OUTPUT


def test_an_output_is_never_an_input_inside_one_or_around_one(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(bundle)
    cases = [(bundle, bundle, "is also an input"), (bundle / "sub" / "x", bundle, "is inside the input"),
             (tmp_path, model, "contains the input"), (link, bundle, "is also an input"),
             (tmp_path / "." / "m.onnx", model, "is also an input")]
    for target, given, says in cases:
        with pytest.raises(InputError, match=says) as e:
            staging.check_output(target, inputs=[given], overwrite=True)
        assert e.value.remedy is Remedy.OUTPUT
    staging.check_output(tmp_path / "other", inputs=[bundle, model])


def test_an_existing_output_needs_overwrite_and_the_same_kind(tmp_path):
    d, f, fifo = tmp_path / "d", tmp_path / "f.onnx", tmp_path / "fifo.onnx"
    d.mkdir()
    f.write_bytes(b"x")
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="already exists") as e:
        staging.check_output(d)
    assert e.value.remedy is Remedy.OVERWRITE
    staging.check_output(d, overwrite=True)
    staging.check_output(f, kind="file", overwrite=True)
    with pytest.raises(InputError, match="f.onnx: exists and is not a directory"):
        staging.check_output(f, overwrite=True)
    with pytest.raises(InputError, match="d: is a directory"):
        staging.check_output(d, kind="file", overwrite=True)
    with pytest.raises(InputError, match="fifo.onnx: exists and is not a regular file"):
        staging.check_output(fifo, kind="file", overwrite=True)  # writing would block on the FIFO


def test_publish_puts_the_old_output_back_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_rename = os.rename

    def failing(src, dst):
        if Path(src).name.startswith(".out.staging-") and not str(src).endswith("-old"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(InputError, match="No space left on device"), staging.atomic_dir(target, overwrite=True) as w:
        (w / "new.txt").write_text("new")
    assert os.listdir(target) == ["old.txt"] and os.listdir(tmp_path) == ["out"]
