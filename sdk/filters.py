"""The portable metadata filter: one small model, validated once, translated per store.

Syntax (a dict, as in MongoDB and Pinecone):

    {"lang": "en"}                              equality
    {"lang": ["en", "fr"]}                      any of (kept from the first filter syntax)
    {"year": {"$gte": 2019, "$lt": 2023}}       operators; several on one key are ANDed (a range)
    {"lang": {"$ne": "de"}}, {"lang": {"$in": [...]}}, {"lang": {"$nin": [...]}}, {"x": {"$eq": 1}}
    {"$and": [f, ...]}, {"$or": [f, ...]}      nesting; several top-level keys are ANDed

`$and`/`$or` nest at most `MAX_DEPTH` (16) levels: below what every store's filter parser
takes (LanceDB's SQL parser refuses about 45 levels of parentheses; Pinecone, Weaviate and
Milvus have their own limits), and far below Python's recursion limit.

Keys are `doc_id`, `source` or a metadata field (letters, digits, '_', '.', '-'); `id`, `text`,
`vector` and `chunk` are not filterable. Values are strings, numbers or booleans.

Meaning, the same in every store (the contract suite in `stackwise.testing.vector_store`
checks it):
- A condition never matches a record that lacks the key: `$ne` and `$nin` included
  (`{"lang": {"$ne": "de"}}` does not select records without `lang`).
- A list-valued metadata field (e.g. `tags: ["a", "b"]` from JSONL) equals every value it
  contains: `$eq`/`$in` match when the list contains a value, `$ne`/`$nin` when it contains
  none. Ranges never match a list.
- Ranges (`$gt $gte $lt $lte`) compare numbers with numbers and strings with strings; bounds
  of one key must all be numbers or all strings. Pinecone compares numbers only, so string
  ranges are refused for Pinecone with a clear error. Booleans are not numbers.

`parse_filter` validates a dict into a typed tree (`Cond`, `And`, `Or`) and raises `SpecError`
naming the bad key, operator or value. The `to_*` functions are pure translations, one per
store, each with its own tests (tests/unit/test_filters.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from .errors import SpecError
from .userinput import shorten

if TYPE_CHECKING:
    from weaviate.collections.classes.filters import _Filters

Scalar = Union[str, int, float, bool]

KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
NOT_FILTERABLE = ("id", "text", "vector", "chunk")
# Keys stored as their own columns in every store (not inside the metadata).
COLUMN_KEYS = ("doc_id", "source")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
RANGE_OPS = ("gt", "gte", "lt", "lte")
MAX_DEPTH = 16  # levels of $and/$or (see the module docstring)
_FIX_SYNTAX = ('write {"key": value}, {"key": [a, b]}, {"key": {"$gte": 1, "$lt": 5}}, '
               '{"$and": [...]} or {"$or": [...]}; operators: ' + " ".join(OPERATORS))

@dataclass(frozen=True)
class Cond:
    """`key op value`: op is eq, ne, gt, gte, lt, lte (value a scalar) or in, nin (a tuple)."""

    key: str
    op: str
    value: Any

@dataclass(frozen=True)
class And:
    items: tuple["Expr", ...]

@dataclass(frozen=True)
class Or:
    items: tuple["Expr", ...]

Expr = Union[Cond, And, Or]

# -- parsing ---------------------------------------------------------------------------------------
def _fail(what: str, where: str, fix: str = _FIX_SYNTAX) -> SpecError:
    return SpecError(what, where=where, fix=fix)

def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))

def _kind(value: Any) -> str:
    """'bool', 'num' or 'str': the comparable family of a scalar."""
    if isinstance(value, bool):
        return "bool"
    return "num" if isinstance(value, (int, float)) else "str"

def check_key(key: Any, where: str = "filter") -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key) or key in NOT_FILTERABLE:
        raise _fail(f"filter key {shorten(key)} is not filterable", where,
                    "filter on doc_id, source or a metadata field (letters, digits, '_', '.', '-'); "
                    "id, text, vector and chunk are not filterable")
    return key

def _scalar(key: str, op: str, value: Any, where: str) -> Scalar:
    if not _is_scalar(value):
        raise _fail(f"filter {key!r} {op} has an unsupported value {shorten(value)}", where,
                    "use a string, a number (not NaN or infinity) or true/false")
    return value

def _values(key: str, op: str, value: Any, where: str) -> tuple[Scalar, ...]:
    if not isinstance(value, (list, tuple, set, frozenset)):
        raise _fail(f"filter {key!r} {op} needs a list of values, got {shorten(value)}", where,
                    f'write {{"{key}": {{"{op}": [a, b]}}}}')
    values = list(value)
    if not values or not all(_is_scalar(v) for v in values):
        raise _fail(f"filter {key!r} {op} needs a non-empty list of scalars, got {shorten(value)}", where,
                    "list at least one string, number or boolean")
    return tuple(values)

def _key_conds(key: str, spec: Any, where: str) -> list[Cond]:
    if isinstance(spec, Mapping):
        if not spec:
            raise _fail(f"filter {key!r} has no operator", where)
        conds = []
        for op, value in spec.items():
            if op not in OPERATORS:
                raise _fail(f"filter {key!r} has an unknown operator {shorten(op)}", where)
            name = op[1:]
            if name in ("in", "nin"):
                conds.append(Cond(key, name, _values(key, op, value, where)))
            else:
                conds.append(Cond(key, name, _scalar(key, op, value, where)))
        bounds = [c for c in conds if c.op in RANGE_OPS]
        kinds = {_kind(c.value) for c in bounds}
        if "bool" in kinds:
            raise _fail(f"filter {key!r} compares a boolean with $gt/$gte/$lt/$lte", where,
                        "ranges take numbers or strings; filter booleans with equality")
        if len(kinds) > 1:
            raise _fail(f"filter {key!r} mixes number and string bounds in one range", where,
                        "give every bound of a key the same type (all numbers or all strings)")
        return conds
    if isinstance(spec, (list, tuple, set, frozenset)):
        return [Cond(key, "in", _values(key, "any-of list", spec, where))]
    return [Cond(key, "eq", _scalar(key, "=", spec, where))]

def _all(items: list[Expr]) -> Expr:
    flat: list[Expr] = []
    for item in items:
        flat.extend(item.items if isinstance(item, And) else (item,))
    return flat[0] if len(flat) == 1 else And(tuple(flat))

def _parse(obj: Any, where: str, depth: int = 0) -> Expr:
    if not isinstance(obj, Mapping) or not obj:
        raise _fail(f"a filter must be a non-empty object, got {shorten(obj)}", where)
    parts: list[Expr] = []
    for key, spec in obj.items():
        if key in ("$and", "$or"):
            if not isinstance(spec, (list, tuple)) or not spec:
                raise _fail(f"{key} needs a non-empty list of filters, got {shorten(spec)}", where)
            if depth >= MAX_DEPTH:
                raise _fail(f"the filter nests $and/$or more than {MAX_DEPTH} levels deep", where,
                            f"nest at most {MAX_DEPTH} levels (every store's filter parser takes that many): "
                            "list more conditions in one $and/$or instead of nesting them")
            subs = [_parse(sub, where, depth + 1) for sub in spec]
            parts.append(_all(subs) if key == "$and" else (subs[0] if len(subs) == 1 else Or(tuple(subs))))
        elif isinstance(key, str) and key.startswith("$"):
            raise _fail(f"unknown filter operator {shorten(key)} at the top level", where)
        else:
            parts.extend(_key_conds(check_key(key, where), spec, where))
    return _all(parts)

def parse_filter(obj: Any, where: str = "filter") -> Expr | None:
    """Validate a portable filter (see the module docstring) into a typed tree.

    None and {} mean no filter (None). An `Expr` is returned as it is. Raises `SpecError`
    naming the bad key, operator or value and how to write it."""
    if obj is None or isinstance(obj, (Cond, And, Or)):
        return obj
    if isinstance(obj, Mapping) and not obj:
        return None
    return _parse(obj, where)

# -- CLI ------------------------------------------------------------------------------------------
_ARG = re.compile(r"^\s*(?P<key>[^\s=!<>]+)\s*(?P<op>>=|<=|!=|=|>|<)(?P<raw>.*)$", re.S)
_ARG_OPS = {"=": "$eq", "!=": "$ne", ">": "$gt", ">=": "$gte", "<": "$lt", "<=": "$lte"}

def typed(raw: str) -> Scalar:
    """A CLI value: true/false are booleans, then int, then float, else the (stripped) text."""
    text = raw.strip()
    if text in ("true", "false"):
        return text == "true"
    for cast in (int, float):
        try:
            value = cast(text)
        except ValueError:
            continue
        if _is_scalar(value):
            return value
    return text

def parse_filter_args(items: Iterable[str], where: str = "--filter") -> dict[str, Any]:
    """CLI `--filter` items as one portable filter dict; the items are ANDed.

    `key=v` equality, `key=a,b` any of, `key!=v` (`key!=a,b` none of), `key>v`, `key>=v`,
    `key<v`, `key<=v`. Values are typed (`typed`). Bounds on one key merge into a range."""
    clauses: list[tuple[str, Any]] = []
    for item in items:
        match = _ARG.match(item)
        if not match or not match["key"]:
            raise _fail(f"bad filter {shorten(item)}", where,
                        "write --filter key=value (or key=a,b for any of; key!=v, key>v, key>=v, key<v, key<=v)")
        key, op, raw = match["key"], _ARG_OPS[match["op"]], match["raw"]
        if op not in ("$eq", "$ne") and ("," in raw or not raw.strip()):
            raise _fail(f"bad filter {shorten(item)}: {match['op']} takes one value", where,
                        f"write e.g. --filter '{key}{match['op']}2020'")
        many = "," in raw and op in ("$eq", "$ne")
        value: Any = [typed(p) for p in raw.split(",")] if many else typed(raw)
        if op == "$eq":
            clauses.append((key, value))
        elif op == "$ne":
            clauses.append((key, {"$nin": value} if many else {"$ne": value}))
        else:
            clauses.append((key, {op: value}))
    merged: dict[str, Any] = {}
    extra: list[dict[str, Any]] = []
    for key, spec in clauses:
        have = merged.get(key)
        if have is None and key not in merged:
            merged[key] = spec
        elif isinstance(have, dict) and isinstance(spec, dict) and not set(have) & set(spec):
            merged[key] = {**have, **spec}
        else:
            extra.append({key: spec})
    result: dict[str, Any] = merged if not extra else {"$and": [{k: v} for k, v in merged.items()] + extra}
    parse_filter(result, where)
    return result

# -- translations ---------------------------------------------------------------------------------
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
    if op in RANGE_OPS and _kind(value) != "num":
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

def _milvus_literal(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)  # double-quoted, with backslash escapes

def _milvus_list(values: Iterable[Scalar]) -> str:
    return "[" + ", ".join(_milvus_literal(v) for v in values) + "]"

_COMPARE = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}  # the same in Milvus and SQL

def _milvus_cond(cond: Cond) -> str:
    key, op, value = cond.key, cond.op, cond.value
    if key in COLUMN_KEYS:  # VARCHAR columns
        return {
            "eq": lambda: f"{key} == {_milvus_literal(value)}",
            "ne": lambda: f"{key} != {_milvus_literal(value)}",
            "in": lambda: (f"{key} == {_milvus_literal(value[0])}" if len(value) == 1
                           else f"{key} in {_milvus_list(value)}"),
            "nin": lambda: f"{key} not in {_milvus_list(value)}",
        }.get(op, lambda: f"{key} {_COMPARE[op]} {_milvus_literal(value)}")()
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
    return f"{field} {_COMPARE[op]} {_milvus_literal(value)}"

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
    if _kind(value) == "num":
        # JSON strings, booleans and lists do not cast to a number: NULL, no match.
        return f"TRY_CAST({extracted} AS DOUBLE) {_COMPARE[op]} {_sql_literal(value)}"
    # A JSON string: strip the quotes (escapes inside are compared as written).
    unquoted = f"regexp_replace({extracted}, '^\"(.*)\"$', '${{1}}')"
    return f"({extracted} LIKE '\"%' AND {unquoted} {_COMPARE[op]} {_sql_literal(value)})"

def _lance_column(cond: Cond, column: str, kind: str) -> str:
    op, value = cond.op, cond.value
    values = [value] if op in ("eq", "ne") else list(value) if op in ("in", "nin") else [value]
    same = [v for v in values if _kind(v) == kind]
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
    return f"{column} {_COMPARE[op]} {_sql_literal(value)}"

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

def parse_filter_json(text: str, where: str = "--where-json") -> dict[str, Any]:
    """A portable filter written as JSON text (the CLI's `--where-json`), validated."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"the filter is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", where,
                    'quote it for the shell, e.g. --where-json \'{"year": {"$gte": 2020}}\'') from None
    except RecursionError:  # JSON nested hundreds of levels deep
        raise _fail(f"the filter nests more than {MAX_DEPTH} levels deep", where,
                    f"nest $and/$or at most {MAX_DEPTH} levels") from None
    if not isinstance(obj, dict):
        raise _fail(f"the filter must be a JSON object, got {type(obj).__name__}", where)
    parse_filter(obj, where)
    return obj
