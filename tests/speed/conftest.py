"""Fixtures for the optimize / quantize / gate / select / bench tests: small real models, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxguard.bundle.golden import GoldenSet


@pytest.fixture(scope="session")
def digits_files(tmp_path_factory) -> dict[str, Path]:
    """The quickstart's CNN, trained briefly: a .pt2, golden test images, calibration training images."""
    from onnxguard.examples import digits

    root = tmp_path_factory.mktemp("digits")
    data = digits.load_data()
    model, accuracy = digits.train(data, epochs=4)
    assert accuracy > 0.9
    digits.save_program(model, root / "cnn.pt2")
    GoldenSet(tuple(digits.golden_batches(data))).save(root / "golden.npz")
    GoldenSet(tuple({"image": data.x_train[i : i + 64]} for i in range(0, 256, 64))).save(root / "calib.npz")
    return {"pt2": root / "cnn.pt2", "golden": root / "golden.npz", "calib": root / "calib.npz", "root": root}


@pytest.fixture(scope="session")
def digits_bundle(digits_files, tmp_path_factory) -> Path:
    """A plain bundle (no optimization) of the digits CNN."""
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.convert import ConvertOptions

    target = tmp_path_factory.mktemp("digits_bundle") / "bundle"
    build.build(str(digits_files["pt2"]), target, BuildOptions(convert=ConvertOptions(task="classification"),
                golden_npz=digits_files["golden"], optimize="none"))
    return target


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory) -> Path:
    from onnxguard.examples.text import save_random_model

    return save_random_model(tmp_path_factory.mktemp("hf") / "distilbert", "distilbert", "tiny")


@pytest.fixture(scope="session")
def tiny_text_onnx(tiny_text_dir, tmp_path_factory) -> Path:
    """The tiny DistilBERT exported with TorchScript (the graph onnxruntime's fusions recognise)."""
    from onnxguard import convert
    from onnxguard.convert import ConvertOptions
    from onnxguard.model import onnxfile

    path = tmp_path_factory.mktemp("hf_onnx") / "model.onnx"
    exported = convert.convert(str(tiny_text_dir), ConvertOptions(exporter="torchscript", max_length=64))
    onnxfile.save(exported.model, path)
    return path
