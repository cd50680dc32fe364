"""Benchmark B: the source documents' CIFAR-10 CNN, trained on the bundled digits upscaled to 32x32x3.

    .venv/bin/python benchmarks/cifar_cnn.py [--save-as NAME]

Variants: PyTorch eager, the plain export run by ONNX Runtime, dynamic INT8, static INT8 (QDQ,
per-channel, calibrated on training images) with 7-bit weights (onnxguard's default for static INT8: no
U8S8 saturation on AVX2-only CPUs) and with full-range 8-bit weights, and whatever `onnxguard build --quantize
auto` chose; batch 1 on one thread and batch 32 on two. Top-1 agreement with PyTorch on all digits test images.
The CPU's model and INT8-relevant flags are printed and saved with the results: the 8-bit variant's agreement
depends on them (VNNI or not).
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (first: PyTorch's OpenMP threads must not spin, see common.py)
import numpy as np
import torch
from common import CACHE, agreement, onnxguard, save
from torch import nn

from onnxguard import bundle, convert
from onnxguard.bundle.golden import GoldenSet
from onnxguard.examples import digits
from onnxguard.speed import bench, quantize


class CifarCNN(nn.Module):
    """conv 3->32, 32->32, BN, pool; 32->64, 64->64, BN, pool; 64->128, BN, pool; fc 2048->256, dropout, fc 256->10."""

    def __init__(self) -> None:
        super().__init__()
        def block(*convs):
            layers = []
            for cin, cout in convs:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            return layers + [nn.BatchNorm2d(convs[-1][1]), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*block((3, 32), (32, 32)), *block((32, 64), (64, 64)), *block((64, 128)))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2048, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10))

    def forward(self, image):
        return self.head(self.features(image))


def upscale(x: np.ndarray) -> np.ndarray:
    """(n, 1, 8, 8) -> (n, 3, 32, 32), nearest neighbour."""
    return np.ascontiguousarray(np.repeat(np.repeat(x, 4, axis=2), 4, axis=3).repeat(3, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--save-as", default="B_cifar_cnn", help="results name in benchmarks/results/")
    args = ap.parse_args()
    print("machine:", bench.machine(), flush=True)
    CACHE.mkdir(exist_ok=True)
    data = digits.load_data()
    xtr, xte = upscale(data.x_train), upscale(data.x_test)
    torch.manual_seed(0)
    model = CifarCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(data.y_train)
    for _ in range(4):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.inference_mode():
        ref = model(torch.from_numpy(xte)).numpy()
    print(f"test accuracy {(ref.argmax(1) == data.y_test).mean():.3f}")
    program = CACHE / "cifar_cnn.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(model, (torch.zeros(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    torch.export.save(exported, str(program))
    GoldenSet(tuple({"image": xte[i : i + 32]} for i in range(0, len(xte), 32))).save(CACHE / "cifar_golden.npz")
    GoldenSet(tuple({"image": xtr[i : i + 32]} for i in range(0, 256, 32))).save(CACHE / "cifar_calib.npz")
    onnxguard("build", str(program), "-o", str(CACHE / "cifar_bundle"), "--overwrite", "--task", "classification",
              "--golden", str(CACHE / "cifar_golden.npz"), "--quantize", "auto",
              "--calibration", str(CACHE / "cifar_calib.npz"),
              "--batch-size", "32", "--threads", "2")
    chosen = bundle.read(CACHE / "cifar_bundle")
    plain = convert.convert(str(program)).model
    calibration = tuple({"image": xtr[i : i + 32]} for i in range(0, 256, 32))
    static = quantize.quantize(plain, quantize.QuantizeOptions(mode="static", calibration=calibration)).model
    static8 = quantize.quantize(plain, quantize.QuantizeOptions(mode="static", calibration=calibration,
                                                                reduce_range=False)).model
    dynamic = quantize.quantize(plain, quantize.QuantizeOptions(mode="dynamic")).model
    def eager(t):
        torch.set_num_threads(t)
        def run(b):
            with torch.inference_mode():
                return model(torch.from_numpy(b["image"]))
        return run

    source = bench.Variant("PyTorch eager", eager)
    variants = [source, bench.onnx_variant("ORT plain export", plain), bench.onnx_variant("ORT dynamic INT8", dynamic),
                bench.onnx_variant("ORT static INT8 QDQ per-channel, 7-bit weights", static),
                bench.onnx_variant("ORT static INT8 QDQ per-channel, 8-bit weights", static8),
                bench.onnx_variant(f"onnxguard build (chose {_select(chosen)['winner']})",
                                   chosen.model_bytes())]
    extra = {}
    for v in variants[1:]:
        out = np.concatenate([v.make(2)({"image": xte[i : i + 64]})[0] for i in range(0, len(xte), 64)])
        extra[v.name] = {"top-1 agreement": f"{agreement(out, ref):.2%}"}
    reports = [bench.bench(variants, {"image": xte[:64]},
                           bench.BenchOptions(batch_sizes=(b,), threads=(t,), runs=200, warmup=20),
                           baseline=source.name) for b, t in ((1, 1), (32, 2))]
    merged = bench.BenchReport(reports[0].timings + reports[1].timings, {**reports[0].samples, **reports[1].samples},
                               source.name, reports[0].machine)
    save(args.save_as, merged, extra, {"winner": _select(chosen)["reason"]})


def _select(chosen) -> dict:
    return next(s for s in chosen.manifest.steps if s.name == "select").figures


if __name__ == "__main__":
    main()
