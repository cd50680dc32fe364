"""preprocess.table, typed tables: rows (mappings or lists in column order) -> one (rows, 1) input per column,
float32 for numeric columns and strings for categorical ones, as the manifest of a ColumnTransformer pipeline
records them."""

from __future__ import annotations

import numpy as np
import pytest

from onnxguard.errors import InputError, ModelError
from onnxguard.preprocess import table

PEOPLE = {"kind": "table", "missing": False, "columns": [
    {"name": "age", "dtype": "float32", "input": "age"},
    {"name": "home city", "dtype": "string", "input": "city"}]}


def test_mappings_and_lists_give_the_same_typed_inputs():
    s = table.spec(PEOPLE)
    assert s.inputs == ("age", "city") and s.names == ("age", "home city") and s.columns == 2
    named = table.prepare([{"age": 31, "home city": "oslo"}, {"home city": "bergen", "age": 57.5}], s)
    listed = table.prepare([[31, "oslo"], (57.5, "bergen")], s)
    assert set(named) == {"age", "city"}
    assert named["age"].dtype == np.float32 and named["age"].shape == (2, 1)
    assert named["city"].dtype == object and named["city"].shape == (2, 1)
    for k in named:
        np.testing.assert_array_equal(named[k], listed[k])
    assert named["city"][:, 0].tolist() == ["oslo", "bergen"]


def test_the_entry_round_trips_and_old_entries_still_read():
    cols = table.spec(PEOPLE).typed
    assert table.spec(table.entry(cols)) == table.spec(PEOPLE)
    old = table.spec({"kind": "table", "input": "input", "columns": ["a", "b"]})
    assert old.typed == () and old.inputs == ("input",)
    assert table.prepare([[1, 2]], old)["input"].shape == (1, 2)


def test_typed_rows_feed_a_converted_column_transformer_pipeline():
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from onnxguard import runtime

    rng = np.random.default_rng(1)
    age, city = rng.integers(18, 80, 120).astype(float), rng.choice(["oslo", "bergen", "bodø"], 120)
    x = np.empty((120, 2), dtype=object)
    x[:, 0], x[:, 1] = age, city
    pipe = Pipeline([("prep", ColumnTransformer([("num", "passthrough", [0]), ("cat", OneHotEncoder(), [1])])),
                     ("clf", LogisticRegression(max_iter=1000))]).fit(x, (city == "oslo") | (age > 60))
    types = [("age", FloatTensorType([None, 1])), ("city", StringTensorType([None, 1]))]
    onx = convert_sklearn(pipe, initial_types=types,
                          options={id(pipe.steps[-1][1]): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    rows = [{"age": a, "home city": c} for a, c in zip(age[:30].tolist(), city[:30].tolist(), strict=True)]
    (out,) = runtime.run(runtime.session(onx), [table.prepare(rows, table.spec(PEOPLE))])
    np.testing.assert_array_equal(out["label"], pipe.predict(x[:30]))


@pytest.mark.parametrize("rows, message", [
    ([{"age": 1}], r"row 0: lacks column\(s\) \['home city'\]"),
    ([{"age": 1, "home city": "oslo", "zip": "0150"}], r"unknown column\(s\) \['zip'\]"),
    ([[1, "oslo", 3]], r"row 0 has 3 value\(s\); the model takes 2 columns"),
    ([[1, 2]], "row 0, column 'home city': 2 is not a string"),
    ([["31", "oslo"]], "row 0, column 'age': '31' is not a number"),
    ([[True, "oslo"]], "row 0, column 'age': True is not a number"),
    ([[float("nan"), "oslo"]], "row 0, column 'age': nan is not a finite"),
    ([[1e39, "oslo"]], "row 0, column 'age': 1e[+]39 is not a finite float32"),
    ([[None, "oslo"]], "None is not a number"),
    ([], "no rows given"),
    (["oslo"], "row 0 is a str"),
    ({"age": 1}, "rows must be a list of rows"),
])
def test_bad_typed_rows_are_input_errors(rows, message):
    with pytest.raises(InputError, match=message):
        table.prepare(rows, table.spec(PEOPLE))


def test_missing_numbers_pass_only_when_the_manifest_allows_them():
    s = table.spec({**PEOPLE, "missing": True})
    out = table.prepare([[None, "oslo"], [float("nan"), "bergen"]], s)
    assert np.isnan(out["age"]).all()


@pytest.mark.parametrize("columns, message", [
    ([{"name": "a", "dtype": "float32"}], "column 0 is not a mapping of name, dtype and input"),
    ([{"name": "a", "dtype": "int64", "input": "a"}], "dtype 'int64'"),
    ([{"name": "a", "dtype": "string", "input": ""}], "non-empty strings"),
    ([{"name": "a", "dtype": "string", "input": "x"}, {"name": "b", "dtype": "float32", "input": "x"}], "distinct"),
])
def test_a_malformed_typed_entry_is_a_model_error(columns, message):
    with pytest.raises(ModelError, match=message):
        table.spec({"kind": "table", "columns": columns})
