"""preprocess.table: rows -> the float32 2-D input of a tabular (scikit-learn) model, columns checked."""

from __future__ import annotations

import numpy as np
import pytest

from onnxguard.errors import InputError, ModelError
from onnxguard.preprocess import table

IRIS = {"kind": "table", "input": "input", "columns": ["sepal length", "sepal width", "petal length", "petal width"]}


def test_numbers_and_named_rows_give_the_same_float32_batch():
    s = table.spec(IRIS)
    rows = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3]]
    named = [dict(zip(IRIS["columns"], r, strict=True)) for r in rows]
    a, b = table.prepare(rows, s)["input"], table.prepare(named, s)["input"]
    assert a.dtype == np.float32 and a.shape == (2, 4)
    np.testing.assert_array_equal(a, np.array(rows, np.float32))
    np.testing.assert_array_equal(a, b)
    counted = table.spec({"kind": "table", "columns": 4})
    assert table.prepare(np.ones((3, 4), np.int64), counted)["input"].dtype == np.float32


def test_the_rows_feed_a_converted_scikit_learn_model():
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from onnxguard import runtime

    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    onx = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 4]))],
                          options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    named = [dict(zip(IRIS["columns"], r, strict=True)) for r in x[:20].tolist()]
    (out,) = runtime.run(runtime.session(onx), [table.prepare(named, table.spec(IRIS))])
    np.testing.assert_array_equal(out["label"], clf.predict(x[:20]))


@pytest.mark.parametrize("rows, message", [
    ([[1, 2, 3]], r"rows have 3 column\(s\); the model takes 4"),
    ([[1, 2, 3, 4], [1, 2]], "different numbers of columns"),
    ([1, 2, 3, 4], r"shape \(4,\); expected \(rows, 4\)"),
    ([], "shape"),
    ([["a", "b", "c", "d"]], "numbers only"),
    ([[1, 2, 3, np.inf]], "row 0, column 3: inf is not a finite"),
    ([[1, 2, 3, 1e39]], "row 0, column 3: 1e[+]39 is not a finite float32"),
    ([[1, 2, 3, np.nan]], "row 0, column 3: nan"),
    ([{"sepal length": 1}], r"row 0: lacks column\(s\) \['sepal width'"),
    ([{**dict.fromkeys(IRIS["columns"], 1), "colour": 2}], r"has unknown column\(s\) \['colour'\]"),
])
def test_bad_rows_are_input_errors(rows, message):
    with pytest.raises(InputError, match=message):
        table.prepare(rows, table.spec(IRIS))


def test_missing_values_pass_only_when_the_manifest_allows_them():
    s = table.spec({"kind": "table", "columns": 2, "missing": True})
    assert np.isnan(table.prepare([[1.0, np.nan]], s)["input"][0, 1])
    with pytest.raises(InputError, match="inf"):
        table.prepare([[1.0, np.inf]], s)
    with pytest.raises(InputError, match="have no names"):
        table.prepare([{"a": 1, "b": 2}], s)


@pytest.mark.parametrize("entry, message", [
    ({"kind": "image"}, "not a table"),
    ({"kind": "table"}, "columns None"),
    ({"kind": "table", "columns": 0}, "columns 0"),
    ({"kind": "table", "columns": ["a", "a"]}, "distinct names"),
    ({"kind": "table", "columns": 2, "missing": "yes"}, "missing 'yes'"),
])
def test_a_malformed_manifest_entry_is_a_model_error(entry, message):
    with pytest.raises(ModelError, match=message):
        table.spec(entry)
