"""Fixtures for the scanner tests: the ordinary half of the corpus (real exports, built once per session) and
the scan command run as a real process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scan_support import SARIF_SCHEMA


@pytest.fixture(scope="session")
def sarif_schema() -> dict:
    return json.loads(SARIF_SCHEMA.read_text())


@pytest.fixture(scope="session")
def ordinary_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ordinary")


@pytest.fixture(scope="session")
def torch_cnn(ordinary_dir) -> Path:
    """The digits CNN (untrained weights), saved as an ExportedProgram and exported by onnxguard (dynamo)."""
    import torch

    from onnxguard import convert
    from onnxguard.examples import digits

    torch.manual_seed(0)
    digits.save_program(digits.DigitsCNN().eval(), ordinary_dir / "cnn.pt2")
    return _save(convert.convert(str(ordinary_dir / "cnn.pt2")).model, ordinary_dir / "cnn.onnx")


@pytest.fixture(scope="session")
def torch_cond(ordinary_dir) -> Path:
    """A module with data-dependent control flow (torch.cond), exported by the dynamo exporter: an If node."""
    import torch

    from onnxguard.convert.pytorch import quiet_exporter

    class Cond(torch.nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda x: x.relu() * 2, lambda x: x.sigmoid() - 1, (x,))

    with quiet_exporter():
        program = torch.onnx.export(Cond(), (torch.randn(2, 3),), dynamo=True, verbose=False)
    path = ordinary_dir / "cond.onnx"
    program.save(str(path))
    import onnx

    assert any(n.op_type == "If" for n in onnx.load(str(path)).graph.node)
    return path


@pytest.fixture(scope="session")
def hf_onnx(ordinary_dir) -> Path:
    """A random-weight tiny DistilBERT text classifier, converted by onnxguard."""
    from onnxguard import convert
    from onnxguard.examples import text

    text.save_random_model(ordinary_dir / "hf", "distilbert", "tiny")
    return _save(convert.convert(str(ordinary_dir / "hf")).model, ordinary_dir / "hf.onnx")


@pytest.fixture(scope="session")
def hf_optimized(hf_onnx) -> Path:
    """ONNX Runtime's transformer optimizer output: com.microsoft fused ops."""
    from onnxruntime.transformers.optimizer import optimize_model

    path = hf_onnx.with_name("hf-optimized.onnx")
    optimize_model(str(hf_onnx), model_type="bert", num_heads=2, hidden_size=64).save_model_to_file(str(path))
    return path


@pytest.fixture(scope="session")
def hf_quantized(hf_onnx) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    path = hf_onnx.with_name("hf-quantized.onnx")
    quantize_dynamic(str(hf_onnx), str(path))
    return path


@pytest.fixture(scope="session")
def iris():
    from sklearn.datasets import load_iris

    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="session")
def sklearn_logreg(ordinary_dir, iris) -> Path:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    est = LogisticRegression(max_iter=500).fit(*iris)
    return _save(to_onnx(est, iris[0][:1], options={id(est): {"zipmap": False}}), ordinary_dir / "logreg.onnx")


@pytest.fixture(scope="session")
def sklearn_forest(ordinary_dir, iris) -> Path:
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    est = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0).fit(*iris)
    return _save(to_onnx(est, iris[0][:1], options={id(est): {"zipmap": False}}), ordinary_dir / "forest.onnx")


@pytest.fixture(scope="session")
def built_bundle(ordinary_dir, iris) -> Path:
    """A bundle made by ``onnxguard build`` from a .skops scikit-learn model."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    from onnxguard import build

    sio.dump(LogisticRegression(max_iter=500).fit(*iris), ordinary_dir / "logreg.skops")
    return build.build(str(ordinary_dir / "logreg.skops"), ordinary_dir / "bundle").bundle.path


def _save(model, path: Path) -> Path:
    from onnxguard.model import onnxfile

    onnxfile.save(model, path)
    return path

