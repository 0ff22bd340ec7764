"""Pinecone's dialect of the portable filter (`stackwise.filters`): one pure translation of the
typed tree into Pinecone's metadata filter language, used by the Pinecone adapter
(adapters/vectors/pinecone.py) and tested on its own (tests/unit/test_filters.py)."""

from __future__ import annotations

from typing import Any

from stackwise.errors import SpecError
from stackwise.filters import COLUMN_KEYS, RANGE_OPS, And, Cond, Expr, Or, scalar_kind
from stackwise.userinput import shorten


def _bad_for(store: str, cond: Cond, why: str, fix: str) -> SpecError:
    return SpecError(f"{store} cannot apply filter {cond.key!r} ${cond.op} {shorten(cond.value)}: {why}",
                     where="filter", fix=fix)


PINECONE_MAX_IN = 10_000  # values in one $in / $nin (Pinecone's documented limit)


def to_pinecone(expr: Expr | None) -> dict[str, Any] | None:
    """Pinecone's metadata filter language (pure).

    `$ne`/`$nin` on a metadata key add `$exists: true`, so records without the key never
    match (the portable meaning); `$in`/`$nin` with booleans, which Pinecone's `$in` does not
    take, become `$or`/`$and` of `$eq`/`$ne`. String ranges are refused: Pinecone compares
    numbers only."""
    if expr is None:
        return None
    if isinstance(expr, And):
        return {"$and": [to_pinecone(e) for e in expr.items]}
    if isinstance(expr, Or):
        return {"$or": [to_pinecone(e) for e in expr.items]}
    key, op, value = expr.key, expr.op, expr.value
    if op in RANGE_OPS and scalar_kind(value) != "num":
        raise _bad_for("Pinecone", expr, "Pinecone compares only numbers with $gt/$gte/$lt/$lte",
                       "store the field as a number, or filter strings with equality or $in")
    if op in ("in", "nin") and len(value) > PINECONE_MAX_IN:
        raise SpecError(f"Pinecone cannot apply filter {key!r} ${op} with {len(value):,} values: it takes at "
                        f"most {PINECONE_MAX_IN:,}", where="filter", fix="split the query, or filter on a coarser field")
    if op in ("in", "nin") and any(isinstance(v, bool) for v in value):
        parts = [{key: {"$eq" if op == "in" else "$ne": v}} for v in value]
        cond = parts[0] if len(parts) == 1 else {"$or" if op == "in" else "$and": parts}
    else:
        cond = {key: {f"${op}": list(value) if op in ("in", "nin") else value}}
    if op in ("ne", "nin") and key not in COLUMN_KEYS:
        return {"$and": [{key: {"$exists": True}}, cond]}
    return cond
