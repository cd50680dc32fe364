"""``table.spec(preprocessing) -> TableSpec`` and ``table.prepare(rows, spec)``: rows -> float32 2-D.

The manifest's ``preprocessing`` entry for a tabular model::

    {"kind": "table", "input": "input", "columns": 4}                       # or
    {"kind": "table", "input": "input", "columns": ["sepal length", ...]}   # named columns

Rows are a 2-D array-like of numbers with exactly that many columns, or, with named columns, a list of
mappings from every column name to a number. Values must be finite unless ``"missing": true`` (then NaN
is passed on for models that treat it as a missing value).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxguard.errors import InputError, ModelError

WHERE = "the manifest's table preprocessing"


@dataclass(frozen=True)
class TableSpec:
    """A tabular model's input, as the manifest describes it (see the module's docstring)."""

    columns: int
    input: str = "input"
    names: tuple[str, ...] | None = None
    missing: bool = False


def spec(preprocessing: Mapping) -> TableSpec:
    """The table preprocessing the manifest describes; a malformed entry is a ``ModelError``."""
    pre = dict(preprocessing)
    if pre.get("kind") != "table":
        raise ModelError(f"the manifest's preprocessing is {pre.get('kind')!r}, not a table")
    columns = pre.get("columns")
    names = None
    if isinstance(columns, list | tuple):
        if not columns or not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns):
            raise ModelError(f"{WHERE}: columns must be distinct names")
        names, columns = tuple(columns), len(columns)
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ModelError(f"{WHERE}: columns {columns!r} is neither a positive count nor a list of names")
    missing = pre.get("missing", False)
    if not isinstance(missing, bool):
        raise ModelError(f"{WHERE}: missing {missing!r} is not true or false")
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


def prepare(rows, table_spec: TableSpec) -> dict[str, np.ndarray]:
    """``{input: float32 (rows, columns)}``; a wrong column count, a non-number or a non-finite value is an
    ``InputError``."""
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
