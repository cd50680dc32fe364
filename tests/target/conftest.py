"""Fixtures for the target and consistency tests: the digits CNN as a plain and a sealed bundle."""

from __future__ import annotations

import pytest

from onnxguard import keys


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.convert import ConvertOptions
    from onnxguard.examples import digits
    from onnxguard.golden import GoldenSet

    root = tmp_path_factory.mktemp("target-src")
    data = digits.load_data()
    model, _ = digits.train(data, epochs=2)
    digits.save_program(model, root / "cnn.pt2")
    GoldenSet(tuple(digits.golden_batches(data))).save(root / "golden.npz")
    k = keys.generate(root / "keys")
    plain = build.build(str(root / "cnn.pt2"), root / "plain", BuildOptions(
        convert=ConvertOptions(task="classification"), golden_npz=root / "golden.npz", optimize="none")).bundle.path
    sealed = build.build(str(root / "cnn.pt2"), root / "sealed", BuildOptions(
        convert=ConvertOptions(task="classification"), golden_npz=root / "golden.npz", optimize="none",
        recipients=(k.recipient,))).bundle.path
    return plain, sealed, k
