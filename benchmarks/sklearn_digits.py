"""Benchmark C: scikit-learn logistic regression on the bundled digits, ONNX with and without ZipMap.

    .venv/bin/python benchmarks/sklearn_digits.py [RESULTS_NAME]     # default C_sklearn_digits
"""

from __future__ import annotations

import sys

import numpy as np
import skl2onnx
from common import agreement, save
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from onnxguard.speed import bench

X, y = load_digits(return_X_y=True)
xtr, xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
model = LogisticRegression(max_iter=2000).fit(xtr, ytr)
print(f"test accuracy {model.score(xte, yte):.3f}")


def onnx_model(zipmap: bool):
    return skl2onnx.convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 64]))],
                                    options={id(model): {"zipmap": zipmap}}, target_opset={"": 18, "ai.onnx.ml": 3})


sklearn_variant = bench.Variant("sklearn predict_proba",
                                lambda threads: lambda b: model.predict_proba(b["input"].astype(np.float64)))
with_zip = bench.onnx_variant("ONNX Runtime, ZipMap", onnx_model(True))
no_zip = bench.onnx_variant("ONNX Runtime, no ZipMap (onnxguard)", onnx_model(False))
x = {"input": xte.astype(np.float32)}
probs = no_zip.make(1)(x)[1]
ref = model.predict_proba(xte)
extra = {no_zip.name: {"label agreement": f"{agreement(probs, ref):.2%}",
                       "max |diff|": f"{np.abs(probs - ref).max():.1e}"}}
report = bench.bench([sklearn_variant, with_zip, no_zip], x,
                     bench.BenchOptions(batch_sizes=(1, 256), threads=(1,), runs=300, warmup=20),
                     baseline=sklearn_variant.name)
print("machine:", bench.machine())
save(sys.argv[1] if len(sys.argv) > 1 else "C_sklearn_digits", report, extra)
