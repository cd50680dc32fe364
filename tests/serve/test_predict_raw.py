"""``:predict`` with raw inputs through each bundle's recorded preprocessing, on a real server: images as pixel
values or base64 PNG (a tiny ViT with its image processor), table rows with a string column (a ColumnTransformer
pipeline), each answer equal to the bundle run in process (and, for the table, to scikit-learn)."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from serve_support import free_port, make_keys, start

import cli_runner
from onnxguard import bundle, runtime
from onnxguard.preprocess import image, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

LABELS = {0: "cat", 1: "dog", 2: "bird"}
CITIES = ["oslo", "bergen", "tromsø"]


def _vit(path):
    import torch
    import transformers

    from onnxguard.convert.hf import no_progress_bars

    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
        patch_size=8, id2label=LABELS))
    with no_progress_bars():
        model.eval().save_pretrained(path)
    transformers.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def _people(n: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = np.empty((n, 3), dtype=object)
    rows[:, 0] = rng.integers(18, 80, n).astype(float)
    rows[:, 1] = rng.normal(50, 12, n).round(2)
    rows[:, 2] = rng.choice(CITIES, n)
    return rows, (rows[:, 0] > 45).astype(int)


def _pipeline(path, regressor: bool = False):
    """A classifier of the people table (over 45 or not), or a regressor of their age from the other columns."""
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    x, y = _people(200, seed=0)
    if regressor:
        x, y = x[:, 1:], x[:, 0].astype(float)
    prep = ColumnTransformer([("num", StandardScaler(), [0] if regressor else [0, 1]),
                              ("cat", OneHotEncoder(handle_unknown="ignore"), [1 if regressor else 2])])
    model = Pipeline([("prep", prep), ("clf", Ridge() if regressor else LogisticRegression(max_iter=500))]).fit(x, y)
    sio.dump(model, path)
    return model


@pytest.fixture(scope="module")
def raw_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    _vit(root / "vit")
    model = _pipeline(root / "people.skops")
    ages = _pipeline(root / "ages.skops", regressor=True)
    for name in ("images", "people", "ages"):
        src = root / "vit" if name == "images" else root / f"{name}.skops"
        r = cli_runner.run("build", src, "-o", root / name, "--optimize", "none")
        assert r.code == 0, str(r)
    keys = make_keys(root / "keys.db")
    port = free_port()
    proc = start([f"images={root / 'images'}", f"people={root / 'people'}", f"ages={root / 'ages'}",
                  "--allow-unsigned", "--keys", str(root / "keys.db"), "--audit", str(root / "audit.db")], port,
                 root / "server.log")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "headers": {"Authorization": f"Bearer {keys['full']}"},
               "images": root / "images", "people": root / "people", "model": model, "ages": ages, "keys": keys,
               "audit": root / "audit.db"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _pictures() -> list[np.ndarray]:
    """Three 8-bit RGB images of other sizes than the model's (the recorded resize brings them to 32x32)."""
    from sklearn.datasets import load_digits

    out = []
    for d, (fy, fx) in zip(load_digits().images[:3] / 16.0, [(5, 6), (6, 4), (4, 7)], strict=True):
        big = np.kron(d, np.ones((fy, fx)))[..., None] * np.array([1.0, 0.6, 0.3])
        out.append((np.clip(big, 0, 1) * 255).round().astype(np.uint8))
    return out


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _in_process(bundle_dir, inputs):
    b = bundle.read(bundle_dir)
    (out,) = runtime.run(runtime.session(b.model_bytes()), [inputs])
    return out


def test_images_as_base64_png_or_pixel_values_answer_as_the_bundle_in_process(raw_server):
    pictures = _pictures()
    b64 = [{"b64": base64.b64encode(_png(p)).decode()} for p in pictures]
    lists = [p.tolist() for p in pictures]
    spec = image.spec(bundle.read(raw_server["images"]).manifest.preprocessing)
    logits = _in_process(raw_server["images"], image.prepare_raw(pictures, spec))["logits"]
    expected = [LABELS[i] for i in logits.argmax(-1)]
    for instances in (b64, lists, [b64[0], lists[1], b64[2]]):
        r = httpx.post(f"{raw_server['url']}/v1/models/images:predict", json={"instances": instances},
                       headers=raw_server["headers"], timeout=30)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert [p["label"] for p in preds] == expected
        z = np.exp(logits - logits.max(-1, keepdims=True))
        np.testing.assert_allclose([p["score"] for p in preds], (z / z.sum(-1, keepdims=True)).max(-1), atol=1e-5)


@pytest.mark.parametrize("instance, message", [
    ({"b64": "not base64!"}, "not valid base64"),
    ({"b64": base64.b64encode(b"GIF89a....").decode()}, "not a PNG"),
    ({"b64": 7}, "b64"),
    ({"png": "AAAA"}, "b64"),
    ("a text", "string"),
])
def test_bad_images_are_400_naming_the_problem(raw_server, instance, message):
    r = httpx.post(f"{raw_server['url']}/v1/models/images:predict", json={"instances": [instance]},
                   headers=raw_server["headers"], timeout=30)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_table_rows_by_name_or_in_column_order_answer_as_scikit_learn(raw_server):
    x, _ = _people(12, seed=5)
    x[0, 2] = "paris"  # a city the encoder never saw
    names = [c.name for c in table.spec(bundle.read(raw_server["people"]).manifest.preprocessing).typed]
    expected = raw_server["model"].predict(x).tolist()
    by_name = [dict(zip(names, row, strict=True)) for row in x.tolist()]
    for instances in (by_name, x.tolist()):
        r = httpx.post(f"{raw_server['url']}/v1/models/people:predict", json={"instances": instances},
                       headers=raw_server["headers"], timeout=30)
        assert r.status_code == 200, r.text
        assert [int(p["label"]) for p in r.json()["predictions"]] == expected


@pytest.mark.parametrize("instance", [{"age": 3.0}, [1.0, "two", "oslo"], [1.0, 2.0]])
def test_bad_table_rows_are_400(raw_server, instance):
    r = httpx.post(f"{raw_server['url']}/v1/models/people:predict", json={"instances": [instance]},
                   headers=raw_server["headers"], timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]


def test_a_key_that_may_see_only_labels_or_top_k_is_refused_a_regressor_before_it_runs(raw_server):
    """A regressor has no classes to show a label-only key: 400 naming why, and its one audit record says it was
    refused before any batch ran (the full key gets the value)."""
    from onnxguard.serve import audit

    url, rows = f"{raw_server['url']}/v1/models/ages:predict", [[61.5, "oslo"]]
    before = len(audit.tail(raw_server["audit"], 10**6))
    for key in ("label", "top2"):
        r = httpx.post(url, json={"instances": rows}, headers={"Authorization": f"Bearer {raw_server['keys'][key]}"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "model 'ages' has no class scores or labels; this key may only see those"
    records = [rec for _, rec in audit.tail(raw_server["audit"], 10**6)][before:]
    assert [(rec.status, rec.batch_id, rec.model) for rec in records] == [(400, None, "ages")] * 2
    r = httpx.post(url, json={"instances": rows}, headers=raw_server["headers"])
    assert r.status_code == 200, r.text
    (prediction,) = r.json()["predictions"]
    (value,) = np.ravel(list(prediction.values()))
    assert value == pytest.approx(raw_server["ages"].predict(np.array(rows, dtype=object))[0], abs=1e-3)
