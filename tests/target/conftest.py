"""Fixtures for the target and consistency tests: the digits CNN (plain and sealed) and a DistilBERT bundle."""

from __future__ import annotations

import pytest

from onnxguard.target.web import browser
from onnxguard.trust import keys


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory):
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.bundle.golden import GoldenSet
    from onnxguard.convert import ConvertOptions
    from onnxguard.examples import digits

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


@pytest.fixture(scope="session")
def distilbert_bundle(tmp_path_factory, hf_model, texts_file, cli):
    """A random-weight DistilBERT classifier (2 layers, hidden 32), its graph with the transformer fusions
    (com.microsoft ops), so that targets run those too."""
    from onnxguard import build
    from onnxguard.build import BuildOptions
    from onnxguard.convert import ConvertOptions

    root = tmp_path_factory.mktemp("target-text")
    build.build(str(hf_model("distilbert", "text-classification")), root / "plain",
                BuildOptions(convert=ConvertOptions(max_length=64), texts=texts_file, optimize="none"))
    r = cli("optimize", root / "plain", "-o", root / "distilbert", "--fusions", "--allow-unsigned")
    assert r.code == 0, r
    return root / "distilbert"


@pytest.fixture(scope="session")
def chromium():
    """Headless Chromium is required here: `make test` installs it (Debian: chromium, chromium-driver)."""
    browser.executables()  # raises, naming the missing package
