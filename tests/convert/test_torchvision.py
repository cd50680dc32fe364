"""torchvision is not in the lock (its release for torch 2.13 does not import against the CPU build): a torchvision
factory is refused in one line that says so, whether named directly or imported by the user's factory file."""

from __future__ import annotations

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None,
                                reason="torchvision is installed here; these tests are for the locked environment")


def test_a_torchvision_factory_by_name_is_refused_in_one_line(cli, expect_err, tmp_path):
    r = cli("build", "torchvision.models:resnet18", "-o", tmp_path / "b")
    line = expect_err(r, 2, "torchvision.models:resnet18", "torchvision is not installed",
                      "not part of onnxguard's lock")
    assert "torch 2.13" in line and len(r.err) < 600
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("source", [
    "import torchvision\n\n\ndef make():\n    return torchvision.models.resnet18()\n",
    "def make():\n    from torchvision.models import mobilenet_v3_small\n\n    return mobilenet_v3_small()\n",
], ids=["import-at-top", "import-in-factory"])
def test_a_factory_file_that_needs_torchvision_is_refused_in_one_line(cli, expect_err, tmp_path, source):
    (tmp_path / "nets.py").write_text(source)
    r = cli("build", f"{tmp_path / 'nets.py'}:make", "--input-shape", "1,3,224,224", "-o", tmp_path / "b")
    expect_err(r, 2, "nets.py", "needs torchvision", "not part of onnxguard's lock")
    assert len(r.err) < 600 and not (tmp_path / "b").exists()


def test_a_broken_torchvision_is_named_with_its_import_error():
    """What torchvision 0.28.0 raises on import beside the CPU build of torch 2.13.0, and what the user sees."""
    from onnxguard.convert import torchvision_error

    e = torchvision_error("nets.py", RuntimeError("operator torchvision::nms does not exist"))
    assert e is not None and str(e).startswith(
        "nets.py: needs torchvision, and torchvision does not import (RuntimeError: operator torchvision::nms does "
        "not exist); torchvision is not part of onnxguard's lock")
    assert torchvision_error("nets.py", RuntimeError("a bad weight file")) is None
    assert torchvision_error("nets.py", ModuleNotFoundError("No module named 'timm'", name="timm")) is None
