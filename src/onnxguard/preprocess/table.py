"""``table.spec(preprocessing) -> TableSpec`` and ``table.prepare(rows, spec)``: table rows -> the model's inputs.

The manifest's ``preprocessing`` entry for a tabular model takes one of two forms. One float input, all columns
numeric (every scikit-learn model but a ColumnTransformer pipeline)::

    {"kind": "table", "input": "input", "columns": 4}                       # or
    {"kind": "table", "input": "input", "columns": ["sepal length", ...]}   # named columns

One typed input per column (a ColumnTransformer pipeline: strings for categorical columns, floats for numeric)::

    {"kind": "table", "columns": [{"name": "age", "dtype": "float32", "input": "age"},
                                  {"name": "city", "dtype": "string", "input": "city"}]}

Rows are lists of values in column order or, with named columns, mappings from every column name to its value.
The first form gives ``{input: float32 (rows, columns)}``, the second one ``(rows, 1)`` array per column (float32,
or an object array of ``str``: what ONNX Runtime and the server's BYTES inputs take). Numbers must be finite
unless ``"missing": true`` (then NaN, or ``None`` in a typed table, is passed on for models that treat it as a
missing value).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxguard.errors import InputError, ModelError

WHERE = "the manifest's table preprocessing"
FLOAT = "float32"
STRING = "string"
DTYPES = (FLOAT, STRING)


@dataclass(frozen=True)
class Column:
    """One column of a typed table: its name, its type (``float32`` or ``string``) and the ONNX input that takes
    it, shaped (rows, 1)."""

    name: str
    dtype: str
    input: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "dtype": self.dtype, "input": self.input}


@dataclass(frozen=True)
class TableSpec:
    """A tabular model's inputs, as the manifest describes them (see the module's docstring)."""

    columns: int
    input: str = "input"
    names: tuple[str, ...] | None = None
    missing: bool = False
    typed: tuple[Column, ...] = ()  # one input per column; empty: one float input of ``columns`` columns

    @property
    def inputs(self) -> tuple[str, ...]:
        """The ONNX inputs the rows become."""
        return tuple(c.input for c in self.typed) or (self.input,)


def entry(columns: Sequence[Column], missing: bool = False) -> dict:
    """The manifest's ``preprocessing`` entry of a typed table (what :func:`spec` reads back)."""
    return {"kind": "table", "columns": [c.to_dict() for c in columns], "missing": missing}


def _typed(columns: list) -> tuple[Column, ...]:
    out = []
    for i, c in enumerate(columns):
        if not isinstance(c, Mapping) or set(c) != {"name", "dtype", "input"}:
            raise ModelError(f"{WHERE}: column {i} is not a mapping of name, dtype and input")
        name, dtype, inp = c["name"], c["dtype"], c["input"]
        if not all(isinstance(v, str) and v for v in (name, dtype, inp)):
            raise ModelError(f"{WHERE}: column {i}: name, dtype and input must be non-empty strings")
        if dtype not in DTYPES:
            raise ModelError(f"{WHERE}: column {name!r} has dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        out.append(Column(name, dtype, inp))
    if len({c.name for c in out}) != len(out) or len({c.input for c in out}) != len(out):
        raise ModelError(f"{WHERE}: column names and inputs must be distinct")
    return tuple(out)


def spec(preprocessing: Mapping) -> TableSpec:
    """The table preprocessing the manifest describes; a malformed entry is a ``ModelError``."""
    pre = dict(preprocessing)
    if pre.get("kind") != "table":
        raise ModelError(f"the manifest's preprocessing is {pre.get('kind')!r}, not a table")
    missing = pre.get("missing", False)
    if not isinstance(missing, bool):
        raise ModelError(f"{WHERE}: missing {missing!r} is not true or false")
    columns = pre.get("columns")
    names = None
    if isinstance(columns, list | tuple) and columns and any(isinstance(c, Mapping) for c in columns):
        typed = _typed(list(columns))
        return TableSpec(len(typed), names=tuple(c.name for c in typed), missing=missing, typed=typed)
    if isinstance(columns, list | tuple):
        if not columns or not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
            raise ModelError(f"{WHERE}: columns must be distinct names")
        names, columns = tuple(columns), len(columns)
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ModelError(f"{WHERE}: columns {columns!r} is neither a positive count nor a list of names")
    return TableSpec(columns, str(pre.get("input", "input")), names, missing)


def _from_mappings(rows: Sequence[Mapping], names: tuple[str, ...]) -> list[list]:
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InputError(f"row {i} is a {type(row).__name__}; give every row as a mapping of column names")
        absent = [n for n in names if n not in row]
        extra = [k for k in row if k not in names]
        if absent or extra:
            problems = ([f"lacks column(s) {absent}"] if absent else []) + (
                [f"has unknown column(s) {extra}"] if extra else [])
            raise InputError(f"row {i}: " + "; ".join(problems))
        out.append([row[n] for n in names])
    return out


def _cell(value, column: Column, row: int, missing: bool):
    where = f"row {row}, column {column.name!r}"
    if column.dtype == STRING:
        if not isinstance(value, str):
            raise InputError(f"{where}: {value!r} is not a string")
        return value
    if value is None and missing:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InputError(f"{where}: {value!r} is not a number")
    with np.errstate(over="ignore"):
        number = np.float32(value)
    if np.isinf(number) or (np.isnan(number) and not missing):
        raise InputError(f"{where}: {value!r} is not a finite float32 number")
    return number


def _prepare_typed(rows, table_spec: TableSpec) -> dict[str, np.ndarray]:
    if isinstance(rows, np.ndarray):
        rows = rows.tolist()
    if not isinstance(rows, Sequence) or isinstance(rows, str | bytes):
        raise InputError(f"rows must be a list of rows, not {type(rows).__name__}")
    if not rows:
        raise InputError("no rows given")
    names = tuple(c.name for c in table_spec.typed)
    if isinstance(rows[0], Mapping):
        rows = _from_mappings(rows, names)
    for i, row in enumerate(rows):
        if not isinstance(row, Sequence) or isinstance(row, str | bytes):
            raise InputError(f"row {i} is a {type(row).__name__}; give a list of {len(names)} values in column "
                             "order, or a mapping of column names")
        if len(row) != len(names):
            raise InputError(f"row {i} has {len(row)} value(s); the model takes {len(names)} columns {list(names)}")
    out = {}
    for j, column in enumerate(table_spec.typed):
        values = [_cell(row[j], column, i, table_spec.missing) for i, row in enumerate(rows)]
        array = np.array(values, dtype=object if column.dtype == STRING else np.float32)
        out[column.input] = array.reshape(len(rows), 1)
    return out


def prepare(rows, table_spec: TableSpec) -> dict[str, np.ndarray]:
    """The model's inputs for ``rows`` (see the module's docstring); a wrong column count or name, a value of the
    wrong type or a non-finite number is an ``InputError`` naming the row and column."""
    if table_spec.typed:
        return _prepare_typed(rows, table_spec)
    if isinstance(rows, Sequence) and rows and isinstance(rows[0], Mapping):
        if table_spec.names is None:
            raise InputError("rows are mappings, but the model's columns have no names; give rows of numbers")
        rows = _from_mappings(rows, table_spec.names)
    try:
        x = np.asarray(rows)
    except ValueError as e:  # ragged rows
        raise InputError("rows do not form a table: they have different numbers of columns") from e
    if x.dtype.kind not in "uifb":
        raise InputError(f"rows must hold numbers only, not {x.dtype} values")
    if x.ndim != 2:
        raise InputError(f"rows have shape {x.shape}; expected (rows, {table_spec.columns})")
    if len(x) == 0:
        raise InputError("no rows given")
    if x.shape[1] != table_spec.columns:
        raise InputError(f"rows have {x.shape[1]} column(s); the model takes {table_spec.columns}")
    with np.errstate(over="ignore"):
        out = x.astype(np.float32)
    bad = np.isinf(out) | (np.isnan(out) if not table_spec.missing else False)
    if np.any(bad):
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(f"row {row}, column {col}: {x[row, col].item()!r} is not a finite float32 number")
    return {table_spec.input: np.ascontiguousarray(out)}
