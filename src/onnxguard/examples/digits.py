"""A small CNN for scikit-learn's bundled digits (8x8 grey images, 10 classes), trained in seconds on a CPU."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from onnxguard.progress import Event, Progress, silent

LABELS = [str(i) for i in range(10)]


class DigitsCNN(nn.Module):
    """The quickstart's small CNN for 8x8 digit images: two conv blocks, then a two-layer classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


@dataclass(frozen=True)
class Data:
    """scikit-learn's digits split into train and test images and labels."""

    x_train: np.ndarray  # (n, 1, 8, 8) float32 in [0, 1]
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(seed: int = 0) -> Data:
    """scikit-learn's bundled digits scaled to [0, 1], split 75/25 and stratified by label."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
    return Data(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64))


def train(data: Data, epochs: int = 12, seed: int = 0, progress: Progress = silent) -> tuple[DigitsCNN, float]:
    """Train and return the model (in eval mode) with its test accuracy."""
    torch.manual_seed(seed)
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        progress(Event("train", f"epoch {epoch + 1}/{epochs}", epoch + 1, epochs))
    model.eval()
    with torch.inference_mode():
        pred = model(torch.from_numpy(data.x_test)).argmax(1).numpy()
    accuracy = float((pred == data.y_test).mean())
    progress(Event("train", f"test accuracy {accuracy:.1%}", epochs, epochs, done=True))
    return model, accuracy


def save_program(model: DigitsCNN, path) -> None:
    """Save as a ``torch.export`` ExportedProgram with a dynamic batch axis."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))


def golden_batches(data: Data) -> list[dict[str, np.ndarray]]:
    """Real test images in batches of 1 and 32, then edge values: all black and all white."""
    x = data.x_test
    batches = [{"image": x[:1]}] + [{"image": x[i : i + 32]} for i in range(1, min(len(x), 129), 32)]
    return batches + [{"image": np.zeros((2, 1, 8, 8), np.float32)}, {"image": np.ones((2, 1, 8, 8), np.float32)}]
