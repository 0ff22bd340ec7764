"""Weaviate's dialect of the portable filter (`stackwise.filters`): one pure translation of the
typed tree into a `weaviate.classes.query.Filter`, used by the Weaviate adapter
(adapters/vectors/weaviate_schema.py first fits values to the collection's property types) and
tested on its own (tests/unit/test_filters.py). Imports weaviate only when called."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from stackwise.filters import And, Expr, Or

if TYPE_CHECKING:
    from weaviate.collections.classes.filters import _Filters


def to_weaviate(expr: Expr | None, *, property_name: Callable[[str], str] | None = None) -> "_Filters | None":
    """A `weaviate.classes.query.Filter` (pure; None for no filter). Imports weaviate lazily.

    `property_name` maps a filter key to the collection's property name (default: the key).
    eq/ne/ranges map to `equal`/`not_equal`/`greater_than`...; `$in` is `any_of` equalities and
    `$nin` `all_of` inequalities (not `contains_any`, which tokenizes text properties). On an
    array property Weaviate's `equal` matches an element. Whether `not_equal` matches objects
    without the property is the adapter's to settle (the contract suite checks it)."""
    if expr is None:
        return None
    from weaviate.classes.query import Filter

    if isinstance(expr, And):
        return Filter.all_of([to_weaviate(e, property_name=property_name) for e in expr.items])
    if isinstance(expr, Or):
        return Filter.any_of([to_weaviate(e, property_name=property_name) for e in expr.items])
    prop = Filter.by_property(property_name(expr.key) if property_name else expr.key)
    op, value = expr.op, expr.value
    if op == "in":
        return Filter.any_of([prop.equal(v) for v in value])
    if op == "nin":
        return Filter.all_of([prop.not_equal(v) for v in value])
    method = {"eq": prop.equal, "ne": prop.not_equal, "gt": prop.greater_than,
              "gte": prop.greater_or_equal, "lt": prop.less_than, "lte": prop.less_or_equal}[op]
    return method(value)
