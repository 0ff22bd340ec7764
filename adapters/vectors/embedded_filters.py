"""The embedded store's dialect of the portable filter (`stackwise.filters`): one pure translation
of the typed tree into a LanceDB (DataFusion SQL) `where` predicate over the embedded store's
columns (adapters/vectors/embedded.py), tested on its own (tests/unit/test_filters.py) and against
the real engine (tests/contract/test_embedded_filters.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from stackwise.filters import COLUMN_KEYS, RANGE_SYMBOLS, And, Cond, Expr, Scalar, scalar_kind


@dataclass(frozen=True)
class LanceColumn:
    """A metadata key the embedded store also keeps as a typed column of its own.

    `kind` is 'str', 'num' or 'bool'. Only columns that hold every stored value of the key
    (no list or other type was ever written for it) may be passed to `to_lance`."""

    name: str
    kind: str


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return sql_quote(str(value))


def _json_path(key: str) -> str:
    return sql_quote('$["' + key + '"]')


def _lance_json_eq(key: str, value: Scalar) -> str:
    """`metadata[key]` equals `value`, or is a list containing it (list metadata from JSONL).

    Compares JSON forms, as stored: 3 and 3.0 are different values here."""
    path = _json_path(key)
    as_json = sql_quote(json.dumps(value, ensure_ascii=False))
    return f"(json_extract(metadata, {path}) = {as_json} OR json_array_contains(metadata, {path}, {_sql_literal(value)}))"


def _lance_json(cond: Cond) -> str:
    key, op, value = cond.key, cond.op, cond.value
    extracted = f"json_extract(metadata, {_json_path(key)})"
    if op in ("eq", "in", "ne", "nin"):
        values = [value] if op in ("eq", "ne") else list(value)
        terms = [_lance_json_eq(key, v) for v in values]
        any_of = terms[0] if len(terms) == 1 else "(" + " OR ".join(terms) + ")"
        return any_of if op in ("eq", "in") else f"({extracted} IS NOT NULL AND NOT {any_of})"
    if scalar_kind(value) == "num":
        # JSON strings, booleans and lists do not cast to a number: NULL, no match.
        return f"TRY_CAST({extracted} AS DOUBLE) {RANGE_SYMBOLS[op]} {_sql_literal(value)}"
    # A JSON string: strip the quotes (escapes inside are compared as written).
    unquoted = f"regexp_replace({extracted}, '^\"(.*)\"$', '${{1}}')"
    return f"({extracted} LIKE '\"%' AND {unquoted} {RANGE_SYMBOLS[op]} {_sql_literal(value)})"


def _lance_column(cond: Cond, column: str, kind: str) -> str:
    op, value = cond.op, cond.value
    values = [value] if op in ("eq", "ne") else list(value) if op in ("in", "nin") else [value]
    same = [v for v in values if scalar_kind(v) == kind]
    if op in ("eq", "in"):
        if not same:
            return "FALSE"
        return f"{column} = {_sql_literal(same[0])}" if len(same) == 1 else \
            f"{column} IN ({', '.join(_sql_literal(v) for v in same)})"
    if op in ("ne", "nin"):
        if not same:
            return f"{column} IS NOT NULL"
        return f"{column} <> {_sql_literal(same[0])}" if len(same) == 1 else \
            f"{column} NOT IN ({', '.join(_sql_literal(v) for v in same)})"
    if not same:
        return "FALSE"
    return f"{column} {RANGE_SYMBOLS[op]} {_sql_literal(value)}"


def _lance(expr: Expr, columns: Mapping[str, LanceColumn], top: bool) -> str:
    if isinstance(expr, Cond):
        if expr.key in COLUMN_KEYS:
            return _lance_column(expr, expr.key, "str")
        column = columns.get(expr.key)
        if column is not None:
            return _lance_column(expr, f"`{column.name}`", column.kind)
        return _lance_json(expr)
    joiner = " AND " if isinstance(expr, And) else " OR "
    inner = joiner.join(_lance(e, columns, False) for e in expr.items)
    return inner if top and isinstance(expr, And) else f"({inner})"


def to_lance(expr: Expr | None, columns: Mapping[str, LanceColumn] | None = None) -> str | None:
    """A LanceDB (DataFusion SQL) `where` predicate (pure; None for no filter).

    `doc_id` and `source` are string columns. A metadata key listed in `columns` is compared
    on its typed column (fast, and indexable); any other key is read from the JSON `metadata`
    column with Lance's JSON functions. Strings are single-quoted with quotes doubled."""
    if expr is None:
        return None
    return _lance(expr, columns or {}, True)
