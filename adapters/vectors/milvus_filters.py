"""Milvus's dialect of the portable filter (`stackwise.filters`): one pure translation of the
typed tree into a Milvus boolean expression over the Milvus adapter's fields
(adapters/vectors/milvus.py), tested on its own (tests/unit/test_filters.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from stackwise.filters import COLUMN_KEYS, RANGE_SYMBOLS, And, Cond, Expr, Scalar


def _milvus_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # double-quoted, with backslash escapes


def _milvus_list(values: Iterable[Scalar]) -> str:
    return "[" + ", ".join(_milvus_literal(v) for v in values) + "]"


def _milvus_cond(cond: Cond) -> str:
    key, op, value = cond.key, cond.op, cond.value
    if key in COLUMN_KEYS:  # VARCHAR columns
        return {
            "eq": lambda: f"{key} == {_milvus_literal(value)}",
            "ne": lambda: f"{key} != {_milvus_literal(value)}",
            "in": lambda: (f"{key} == {_milvus_literal(value[0])}" if len(value) == 1
                           else f"{key} in {_milvus_list(value)}"),
            "nin": lambda: f"{key} not in {_milvus_list(value)}",
        }.get(op, lambda: f"{key} {RANGE_SYMBOLS[op]} {_milvus_literal(value)}")()
    field = f"metadata[{json.dumps(key)}]"
    if op in ("eq", "in"):
        values = [value] if op == "eq" else list(value)
        terms = [f"{field} == {_milvus_literal(v)}" for v in values]
        terms.append(f"json_contains_any({field}, {_milvus_list(values)})")
        return "(" + " or ".join(terms) + ")"
    if op in ("ne", "nin"):
        # Milvus's `!=` is true where the key is missing: `exists` keeps those out (the
        # portable meaning); `!=` is true for a list, which must also not contain the value.
        values = [value] if op == "ne" else list(value)
        terms = [f"(exists {field})"] + [f"{field} != {_milvus_literal(v)}" for v in values]
        terms.append(f"not json_contains_any({field}, {_milvus_list(values)})")
        return "(" + " and ".join(terms) + ")"
    return f"{field} {RANGE_SYMBOLS[op]} {_milvus_literal(value)}"


def _milvus(expr: Expr, top: bool) -> str:
    if isinstance(expr, Cond):
        return _milvus_cond(expr)
    joiner = " and " if isinstance(expr, And) else " or "
    inner = joiner.join(_milvus(e, False) for e in expr.items)
    return inner if top and isinstance(expr, And) else f"({inner})"


def to_milvus(expr: Expr | None) -> str:
    """A Milvus boolean expression over the adapter's fields ('' for no filter; pure).

    `doc_id` and `source` are VARCHAR fields; other keys live in the JSON field `metadata`
    and are read as `metadata["key"]`; a JSON array matches through `json_contains_any`.
    Strings are double-quoted JSON literals (quotes and backslashes escaped)."""
    if expr is None:
        return ""
    return _milvus(expr, True)
