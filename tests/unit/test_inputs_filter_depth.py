"""Filters nest $and/$or at most `MAX_DEPTH` levels: deeper is a clear SpecError (naming the
limit) from the parser, never a store's parser error or a RecursionError; the deepest filter
allowed, with the most parenthesised conditions, still runs in the embedded store (LanceDB)."""

from __future__ import annotations

import json

import pytest

from stackwise.errors import SpecError
from stackwise.filters import MAX_DEPTH, parse_filter, parse_filter_json


# Siblings that change nothing: false under $or, true under $and, so the filter selects `leaf`.
SIBLING = {"$or": '{"doc_id": "none"}', "$and": '{"doc_id": {"$ne": "none"}}'}


def nested_json(depth: int, leaf: str = '{"lang": "en"}') -> str:
    """`depth` levels of alternating $or/$and around `leaf`, as JSON text (built as text:
    json.dumps itself recurses too deep for the deepest cases)."""
    ops = ["$or" if level % 2 == 0 else "$and" for level in range(depth)]
    return "".join(f'{{"{op}": [' for op in reversed(ops)) + leaf + "".join(f", {SIBLING[op]}]}}" for op in ops)


def nested(depth: int, leaf: str = '{"lang": "en"}') -> dict:
    return json.loads(nested_json(depth, leaf))


def test_the_limit_is_accepted_and_one_more_is_refused():
    assert MAX_DEPTH == 16, "the documented limit (sdk/filters.py's docstring) is 16 levels"
    assert parse_filter(nested(16)) is not None
    with pytest.raises(SpecError) as info:
        parse_filter(nested(MAX_DEPTH + 1), where="--where-json")
    assert f"more than {MAX_DEPTH} levels" in info.value.what and info.value.where == "--where-json"
    assert str(MAX_DEPTH) in info.value.fix


@pytest.mark.parametrize("depth", [60, 600, 5000])
def test_deep_where_json_is_a_spec_error(depth):
    with pytest.raises(SpecError, match=f"more than {MAX_DEPTH} levels"):
        parse_filter_json(nested_json(depth))


def test_json_deeper_than_the_json_parser_takes_is_a_spec_error():
    text = '{"$and": [' * 100_000 + '{"a": 1}' + "]}" * 100_000
    with pytest.raises(SpecError, match="levels deep"):
        parse_filter_json(text)


def test_where_json_too_deep_through_the_cli(run_cli):
    proc = run_cli("search", "q", "--index", "kb", "--where-json", nested_json(600))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"more than {MAX_DEPTH} levels" in proc.stderr and "Traceback" not in proc.stderr


def test_the_deepest_allowed_filter_runs_in_the_embedded_store(tmp_path):
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.testing.vector_store import DIM, MODEL, make_records

    store = EmbeddedStore(str(tmp_path))
    store.create_index("deep", DIM, MODEL)
    records = make_records("a", 2, axis=0, tags=["red", "blue"], lang="en") + make_records("b", 1, axis=1, lang="de")
    store.upsert("deep", records)
    # The leaf that translates to the most nested SQL: $nin on list-valued JSON metadata.
    flt = nested(MAX_DEPTH, '{"tags": {"$nin": ["green", "yellow"]}}')
    hits = store.query("deep", records[0].vector, k=10, filter=flt)
    assert {h.doc_id for h in hits} == {"a"}
