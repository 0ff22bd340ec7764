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
naming the bad key, operator or value. Each store owns its dialect: a pure translation of the
tree beside its adapter (`stackwise.adapters.vectors.<store>_filters`: `to_lance`, `to_pinecone`,
`to_milvus`, `to_weaviate`), each with its own tests (tests/unit/test_filters.py).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Union

from .errors import SpecError
from .userinput import shorten

Scalar = Union[str, int, float, bool]

KEY_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
NOT_FILTERABLE = ("id", "text", "vector", "chunk")
# Keys stored as their own columns in every store (not inside the metadata).
COLUMN_KEYS = ("doc_id", "source")
OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")
RANGE_OPS = ("gt", "gte", "lt", "lte")
# The infix symbol of each range operator, as SQL (the embedded store) and Milvus write it.
RANGE_SYMBOLS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
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

def scalar_kind(value: Any) -> str:
    """'bool', 'num' or 'str': the comparable family of a scalar (the stores' dialects use it too)."""
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
        kinds = {scalar_kind(c.value) for c in bounds}
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
