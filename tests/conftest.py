"""Shared fixtures: models built in temporary directories (no network), and the command line (cli_runner).

Expensive models are session-scoped and built once; tests that modify a file copy it first.
"""

from __future__ import annotations

import os
import pickle
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import cli_runner

# Token lengths of the padding batch (special tokens included): 3 to 128.
TEXT_LENGTHS = [int(n) for n in np.linspace(3, 128, 8)]


@pytest.fixture(scope="session")
def cli():
    """``cli(*args, env=None, cwd=None, process=False)``: the command line (see cli_runner), a ``Result``."""
    return cli_runner.run


@pytest.fixture(scope="session")
def expect_err():
    """``expect_err(result, code, *fragments)``: see :func:`cli_runner.expect_error`."""
    return cli_runner.expect_error


# -- source models -------------------------------------------------------------------------------------

TORCH_NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))

        def forward(self, x):
            return self.net(x)


    def make_mlp():
        torch.manual_seed(0)
        return MLP()


    class CNN(nn.Module):
        """1x8x8 images, 5 classes; a class name works as the factory too."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(1)
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, image):
            return self.fc(torch.relu(self.bn(self.conv(image))).flatten(1))


    def make_cnn():
        return CNN()


    class TwoInputs(nn.Module):
        """Two named inputs with a dynamic sequence axis, and a dict of two outputs."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(2)
            self.proj = nn.Linear(6, 4)

        def forward(self, tokens, mask):
            h = self.proj(tokens) * mask.unsqueeze(-1)
            return {"pooled": h.sum(1), "hidden": h}


    def make_two_inputs():
        return TwoInputs()


    class Eigh(nn.Module):
        """Neither exporter supports linalg.eigh: dynamo and TorchScript both fail."""

        def forward(self, x):
            return torch.linalg.eigh(x @ x.transpose(-1, -2))[0]


    class ReturnsText(nn.Module):
        def forward(self, x):
            return str(x.tolist())


    def not_a_module():
        return 42
''')


@pytest.fixture(scope="session")
def torch_nets(tmp_path_factory) -> Path:
    """A module spec file: ``nets.py`` with factories and classes (``nets.py:make_mlp`` ...)."""
    path = tmp_path_factory.mktemp("torch") / "nets.py"
    path.write_text(TORCH_NETS)
    return path


@pytest.fixture(scope="session")
def pt2_file(tmp_path_factory) -> Path:
    """A ``torch.export`` ExportedProgram of a small CNN, saved with a dynamic batch ``Dim``."""
    import torch
    from torch import nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, image):
            return self.fc(torch.relu(self.conv(image)).flatten(1))

    torch.manual_seed(0)
    model = SmallCNN().eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    path = tmp_path_factory.mktemp("pt2") / "cnn.pt2"
    torch.export.save(program, str(path))
    return path


class _Evil:
    """Pickles to a call of ``os.system``: what a malicious model file does when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@dataclass(frozen=True)
class SklearnFiles:
    classifier: Path  # LogisticRegression on load_digits, .skops
    regressor: Path  # RandomForestRegressor on load_diabetes, .skops
    pickle: Path  # the classifier, plain pickle
    joblib: Path  # the classifier, joblib.dump
    evil: Path  # a pickle whose loading runs os.system
    evil_marker: Path  # the file the evil pickle would create
    foreign_skops: Path  # a .skops holding a function outside scikit-learn
    classes: list[str]


@pytest.fixture(scope="session")
def sklearn_files(tmp_path_factory) -> SklearnFiles:
    import joblib
    import skops.io as sio
    from sklearn.datasets import load_diabetes, load_digits
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import FunctionTransformer

    d = tmp_path_factory.mktemp("sklearn")
    x, y = load_digits(return_X_y=True)
    clf = LogisticRegression(max_iter=300).fit(x[:1200], y[:1200])
    sio.dump(clf, d / "digits.skops")
    (d / "digits.pkl").write_bytes(pickle.dumps(clf))
    joblib.dump(clf, d / "digits.joblib")
    x, y = load_diabetes(return_X_y=True)
    reg = RandomForestRegressor(n_estimators=8, max_depth=5, random_state=0).fit(x, y)
    sio.dump(reg, d / "diabetes.skops")
    marker = d / "pwned"
    (d / "evil.pkl").write_bytes(pickle.dumps(_Evil(marker)))
    sio.dump(FunctionTransformer(func=eval), d / "foreign.skops")  # builtins.eval: never trusted
    return SklearnFiles(d / "digits.skops", d / "diabetes.skops", d / "digits.pkl", d / "digits.joblib",
                        d / "evil.pkl", marker, d / "foreign.skops", [str(c) for c in clf.classes_])


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """``hf_model(arch, task)``: a tiny random-weight Transformers directory, saved once per session."""
    from onnxguard.examples.text import save_random_model

    root = tmp_path_factory.mktemp("hf")
    made: dict[tuple[str, str], Path] = {}

    def make(arch: str = "distilbert", task: str = "text-classification") -> Path:
        if (arch, task) not in made:
            made[arch, task] = save_random_model(root / f"{arch}-{task}", arch, "tiny", task, num_labels=3)
        return made[arch, task]

    return make


@pytest.fixture(scope="session")
def text_lengths() -> list[int]:
    """Token lengths of the texts in ``texts_file``, in order."""
    return list(TEXT_LENGTHS)


@pytest.fixture(scope="session")
def texts_file(tmp_path_factory) -> Path:
    """Eight real texts from the tokenizer's vocabulary words, 3 to 128 tokens with [CLS] and [SEP]."""
    from onnxguard.examples.text import WORDS

    rng = np.random.default_rng(7)
    texts = [" ".join(rng.choice(WORDS, n - 2)) for n in TEXT_LENGTHS]
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


# -- built artifacts shared by several test modules ----------------------------------------------------

@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory, torch_nets) -> Path:
    """The MLP converted through the CLI, with metadata, name and version."""
    out = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    r = cli_runner.run("convert", f"{torch_nets}:make_mlp", "--input-shape", "1,10", "-o", out,
                "--meta", "team=vision", "--meta", "ticket=ML-7", "--name", "mlp", "--version", "2.0.1")
    assert r.code == 0, str(r)
    return out


@pytest.fixture(scope="session")
def sklearn_bundle(tmp_path_factory, sklearn_files) -> Path:
    """A bundle built by the CLI from the .skops classifier. Copy it before changing it."""
    out = tmp_path_factory.mktemp("skbundle") / "digits-bundle"
    r = cli_runner.run("build", sklearn_files.classifier, "-o", out, "--meta", "owner=ml-team", "--version", "1.2.3")
    assert r.code == 0, str(r)
    (out.parent / "build-stdout.txt").write_text(r.out)  # the printed report, for tests of what the user sees
    return out


@pytest.fixture
def copy_tree(tmp_path):
    """``copy_tree(src)``: a private copy of a directory, for tests that damage it."""
    def copy(src: Path) -> Path:
        dest = tmp_path / src.name
        shutil.copytree(src, dest, symlinks=True)
        return dest
    return copy
