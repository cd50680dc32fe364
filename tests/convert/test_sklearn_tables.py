"""scikit-learn models beyond one float input: ColumnTransformer pipelines with string columns, HistGradientBoosting,
outlier detectors. Each is built by the CLI and its bundle checked against scikit-learn on rows the test makes."""

from __future__ import annotations

import numpy as np
import pytest

from onnxguard import bundle, runtime
from onnxguard.preprocess import table

CITIES = ["oslo", "bergen", "tromsø", "stavanger"]


def _people(n: int, seed: int):
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n).astype(float)
    income = rng.normal(50, 12, n).round(2)
    city = rng.choice(CITIES, n)
    return age, income, city


def _object_rows(age, income, city) -> np.ndarray:
    rows = np.empty((len(age), 3), dtype=object)
    rows[:, 0], rows[:, 1], rows[:, 2] = age, income, city
    return rows


def _dump(estimator, path):
    import skops.io as sio

    sio.dump(estimator, path)
    return path


def _built(cli, source, out, *args: str):
    r = cli("build", source, "-o", out, "--optimize", "none", *args)
    assert r.code == 0, str(r)
    return bundle.read(out)


def _run(b, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    (out,) = runtime.run(runtime.session(b.model_bytes()), [inputs])
    return out


def _pipeline(by_name: bool):
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    num, cat = (["age", "income"], ["city"]) if by_name else ([0, 1], [2])
    prep = ColumnTransformer([("num", StandardScaler(), num), ("cat", OneHotEncoder(handle_unknown="ignore"), cat)])
    return Pipeline([("prep", prep), ("clf", LogisticRegression(max_iter=500))])


def _check_people_bundle(b, predict, predict_proba, names):
    pre = b.manifest.preprocessing
    assert pre == {"kind": "table", "missing": False, "columns": [
        {"name": names[0], "dtype": "float32", "input": names[0]},
        {"name": names[1], "dtype": "float32", "input": names[1]},
        {"name": names[2], "dtype": "string", "input": names[2]}]}
    assert [t.name for t in b.manifest.model.inputs] == names
    assert b.manifest.parity.passed
    age, income, city = _people(40, seed=11)
    city[:3] = "paris"  # a city the encoder never saw: ignored by both
    rows = [dict(zip(names, (a, i, c), strict=True)) for a, i, c in zip(age.tolist(), income.tolist(), city.tolist(),
                                                                          strict=True)]
    spec = table.spec(pre)
    inputs = table.prepare(rows, spec)
    assert inputs[names[2]].dtype == object and inputs[names[0]].dtype == np.float32
    np.testing.assert_array_equal(table.prepare([list(r.values()) for r in rows], spec)[names[2]], inputs[names[2]])
    out = _run(b, inputs)
    x = _object_rows(age, income, city)
    np.testing.assert_array_equal(out["label"], predict(x))
    np.testing.assert_allclose(out["probabilities"], predict_proba(x), atol=1e-5)


def test_column_transformer_pipeline_with_a_string_column(cli, tmp_path):
    """Fitted on an array (columns selected by position): inputs x0, x1 (floats) and x2 (strings)."""
    age, income, city = _people(300, seed=0)
    y = ((age > 45) ^ (city == "oslo")).astype(int)
    pipe = _pipeline(by_name=False).fit(_object_rows(age, income, city), y)
    b = _built(cli, _dump(pipe, tmp_path / "people.skops"), tmp_path / "bundle")
    _check_people_bundle(b, pipe.predict, pipe.predict_proba, ["x0", "x1", "x2"])


def test_column_transformer_pipeline_fitted_on_a_dataframe(cli, tmp_path):
    """Fitted on a pandas DataFrame (columns selected by name): inputs age, income (floats) and city (strings)."""
    pd = pytest.importorskip("pandas", reason="pandas is not in the lock; a DataFrame needs it")
    age, income, city = _people(300, seed=0)
    frame = pd.DataFrame({"age": age, "income": income, "city": city})
    pipe = _pipeline(by_name=True).fit(frame, ((age > 45) ^ (city == "oslo")).astype(int))
    b = _built(cli, _dump(pipe, tmp_path / "people.skops"), tmp_path / "bundle")

    def as_frame(x):
        return pd.DataFrame({"age": x[:, 0].astype(float), "income": x[:, 1].astype(float), "city": x[:, 2]})

    _check_people_bundle(b, lambda x: pipe.predict(as_frame(x)), lambda x: pipe.predict_proba(as_frame(x)),
                         ["age", "income", "city"])


def test_hist_gradient_boosting_classifier_and_poisson_regressor(cli, tmp_path):
    from sklearn.datasets import load_breast_cancer, load_diabetes
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    x, y = load_breast_cancer(return_X_y=True)
    clf = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x[:400], y[:400])
    b = _built(cli, _dump(clf, tmp_path / "hgb.skops"), tmp_path / "hgb")
    assert b.manifest.preprocessing["missing"] is True  # NaN is a missing value for this model
    rows = x[400:].copy()
    rows[::5, 3] = np.nan
    out = _run(b, table.prepare(rows.tolist(), table.spec(b.manifest.preprocessing)))
    np.testing.assert_array_equal(out["label"], clf.predict(rows))
    np.testing.assert_allclose(out["probabilities"], clf.predict_proba(rows), atol=1e-5)

    # poisson: predictions are exp(raw), which skl2onnx leaves out and the source adds
    x, y = load_diabetes(return_X_y=True)
    reg = HistGradientBoostingRegressor(loss="poisson", max_iter=20, random_state=0).fit(x[:350], y[:350])
    r = cli("build", _dump(reg, tmp_path / "poisson.skops"), "-o", tmp_path / "poisson", "--optimize", "none")
    assert r.code == 0, str(r)
    assert any("exp(raw prediction)" in line for line in r.out.splitlines() if line.startswith("note:")), str(r)
    (pred,) = _run(bundle.read(tmp_path / "poisson"), {"input": x[350:].astype(np.float32)}).values()
    np.testing.assert_allclose(pred.ravel(), reg.predict(x[350:]), rtol=1e-4)


def test_hist_gradient_boosting_with_categorical_features_is_refused_in_one_line(cli, expect_err, tmp_path):
    """skl2onnx 1.20.0 ignores categorical splits (measured: probabilities off by 0.036 on iris). The .skops file of
    such a model holds a functools.partial, which skops does not trust: the file is refused in one line, and a
    source made of the estimator in Python is refused by name."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import HistGradientBoostingClassifier

    from onnxguard.convert import sklearn as sklearn_source
    from onnxguard.errors import ConversionError

    x, y = load_iris(return_X_y=True)
    x[:, 0] = (x[:, 0] * 2).astype(int) % 5
    clf = HistGradientBoostingClassifier(categorical_features=[0], max_iter=10).fit(x, y)
    r = cli("build", _dump(clf, tmp_path / "cat.skops"), "-o", tmp_path / "b")
    expect_err(r, 2, "cat.skops", "functools.partial")
    assert len(r.err) < 600 and not (tmp_path / "b").exists(), r.err
    with pytest.raises(ConversionError, match="HistGradientBoostingClassifier with categorical features: skl2onnx"):
        sklearn_source.SklearnSource(clf, "hgb", (), 4)


@pytest.mark.parametrize("kind", ["IsolationForest", "OneClassSVM", "LocalOutlierFactor"])
def test_outlier_detectors_export_label_and_scores(cli, tmp_path, kind):
    from sklearn.datasets import load_iris
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    x, _ = load_iris(return_X_y=True)
    make = {"IsolationForest": lambda: IsolationForest(n_estimators=20, random_state=0),
            "OneClassSVM": lambda: OneClassSVM(gamma=0.1, nu=0.1),
            "LocalOutlierFactor": lambda: LocalOutlierFactor(n_neighbors=10, novelty=True)}
    detector = make[kind]().fit(x)
    b = _built(cli, _dump(detector, tmp_path / "od.skops"), tmp_path / "od")
    roles = {t.name: t.role for t in b.manifest.model.outputs}
    assert roles == {"label": "labels", "scores": "values"}
    assert {o.name for o in b.manifest.parity.outputs} == {"label", "scores"} and b.manifest.parity.passed
    rng = np.random.default_rng(3)
    # off the training rows (iris repeats some): a near tie between neighbours is a float32 coin toss
    rows = np.vstack([x[::10] + 0.05 * rng.standard_normal((15, 4)), x.mean(0) + 3 * x.std(0) * rng.standard_normal(
        (15, 4))])
    out = _run(b, {"input": rows.astype(np.float32)})
    assert out["label"].shape == out["scores"].shape == (len(rows), 1)
    np.testing.assert_array_equal(out["label"].ravel(), detector.predict(rows))
    assert set(out["label"].ravel()) == {-1, 1}
    np.testing.assert_allclose(out["scores"].ravel(), detector.decision_function(rows), atol=1e-4)


def test_local_outlier_factor_without_novelty_is_refused(cli, expect_err, tmp_path):
    from sklearn.datasets import load_iris
    from sklearn.neighbors import LocalOutlierFactor

    lof = LocalOutlierFactor(n_neighbors=10).fit(load_iris(return_X_y=True)[0])
    expect_err(cli("build", _dump(lof, tmp_path / "lof.skops"), "-o", tmp_path / "b"), 2, "lof.skops", "novelty=True")
