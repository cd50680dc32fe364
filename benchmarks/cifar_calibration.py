"""Why static INT8 of the CIFAR CNN fails or passes its gate: calibration data x method x weight bits.

    .venv/bin/python benchmarks/cifar_cnn.py        # first: trains the CNN, writes .cache/cifar_*.{pt2,npz}
    .venv/bin/python benchmarks/cifar_calibration.py

Each static QDQ (per-channel) variant of the plain export is judged like the build's gate: against PyTorch on
all test images (worst-row cosine of the logits, top-1 agreement, max |diff|). Calibration data: the signature
golden set a build makes without --golden (random normal batches plus its constant edge cases: all zeros, all
1e3), the same without the constant batches, and training images (image-like). The CPU's flags are printed:
8-bit weights are only safe from U8S8 saturation where it has VNNI.
"""

from __future__ import annotations

import numpy as np
from common import CACHE

from onnxguard import convert, runtime
from onnxguard.bundle import golden
from onnxguard.speed import bench, quantize


def main() -> None:
    print("machine:", bench.machine(), flush=True)
    program = CACHE / "cifar_cnn.pt2"
    plain = convert.convert(str(program)).model
    source = convert.load(str(program))
    test = golden.load(CACHE / "cifar_golden.npz").inputs
    ref = np.concatenate([next(iter(source.run(b).values())) for b in test])

    def judge(model) -> str:
        sess = runtime.session(model)
        out = np.concatenate([sess.run(None, b)[0] for b in test])
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        return (f"min cosine {np.nanmin(cos) if np.isfinite(cos).any() else float('nan'):.4f}, "
                f"top-1 {(out.argmax(1) == ref.argmax(1)).mean():.2%}, max |diff| {np.abs(out - ref).max():.3g}")

    signature = tuple(source.golden_inputs())
    sets = {"signature golden set (with its all-0 and all-1e3 batches)": signature,
            "signature golden set without its constant batches": tuple(
                b for b in signature if b["image"].min() != b["image"].max()),
            "training images (image-like)": tuple(golden.load(CACHE / "cifar_calib.npz").inputs)}
    print("| calibration data | method | weights | against PyTorch on the test images |")
    print("|---|---|---|---|")
    for label, data in sets.items():
        methods = ("minmax", "percentile", "entropy") if label.startswith("training") else ("minmax",)
        for method in methods:
            for reduce_range in (True, False):
                q = quantize.quantize(plain, quantize.QuantizeOptions(mode="static", calibration=data, method=method,
                                                                      reduce_range=reduce_range)).model
                print(f"| {label} | {method} | {7 if reduce_range else 8}-bit | {judge(q)} |", flush=True)


if __name__ == "__main__":
    main()
