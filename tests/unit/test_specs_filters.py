"""Job specs, portable filters, and their translation to the embedded store's SQL predicate."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stackwise import Chunking, IndexSpec, SpecError
from stackwise.vectors import check_filter, parse_filter_args


# -- IndexSpec -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["kb", "kb-2024_v1", "0docs", "a" * 63])
def test_valid_index_names(name):
    assert IndexSpec(source="docs", index=name).index == name


@pytest.mark.parametrize("name", ["", "KB", "my index", "-kb", "_kb", "kb/x", "kb.v1", "a" * 64, "kb\n"])
def test_invalid_index_names_are_refused(name):
    with pytest.raises(ValidationError, match="index name"):
        IndexSpec(source="docs", index=name)


@pytest.mark.parametrize(("size", "overlap"), [(200, 200), (200, 500)])
def test_overlap_must_be_below_size(size, overlap):
    with pytest.raises(ValidationError, match="overlap"):
        IndexSpec(source="docs", index="kb", chunking={"size": size, "overlap": overlap})


@pytest.mark.parametrize("chunking", [{"size": 10, "overlap": 0}, {"size": 50_000}, {"overlap": -1}])
def test_chunk_sizes_out_of_range_are_refused(chunking):
    with pytest.raises(ValidationError):
        Chunking(**chunking)


@pytest.mark.parametrize(
    "fields",
    [
        {"source": "docs", "index": "kb", "chunk_size": 500},
        {"source": "docs", "index": "kb", "chunking": {"size": 500, "overlapp": 10}},
        {"source": "docs", "index": "kb", "embedding": {"model": "m", "normalize": True}},
        {"source": "docs", "index": "kb", "compute": {"gpus": "A100"}},
    ],
)
def test_unknown_fields_are_refused_at_every_level(fields):
    with pytest.raises(ValidationError, match="[Ee]xtra"):
        IndexSpec(**fields)


def test_spec_round_trips_through_json():
    spec = IndexSpec(source="s3://bucket/docs", index="kb", chunking={"size": 500, "overlap": 50}, prune=True)
    again = IndexSpec.model_validate_json(spec.model_dump_json())
    assert again == spec and again.digest() == spec.digest()


def test_digest_is_stable_and_tracks_every_field():
    base = IndexSpec(source="docs", index="kb")
    assert base.digest() == IndexSpec(source="docs", index="kb").digest()
    assert base.digest() == IndexSpec(index="kb", source="docs", chunking=Chunking()).digest()
    assert len(base.digest()) == 16 and int(base.digest(), 16) >= 0
    variants = [
        IndexSpec(source="docs2", index="kb"),
        IndexSpec(source="docs", index="kb2"),
        IndexSpec(source="docs", index="kb", prune=True),
        IndexSpec(source="docs", index="kb", chunking={"size": 999}),
        IndexSpec(source="docs", index="kb", chunking={"overlap": 10}),
        IndexSpec(source="docs", index="kb", embedding={"model": "other"}),
        IndexSpec(source="docs", index="kb", compute={"gpu": "A100"}),
    ]
    digests = {v.digest() for v in variants}
    assert base.digest() not in digests and len(digests) == len(variants)


# -- CLI filter parsing --------------------------------------------------------------------------
def test_parse_filter_args_types_values():
    parsed = parse_filter_args(["lang=en", "year=2020", "score=0.5", "draft=false", "public=true", "doc_id=a#1"])
    assert parsed == {"lang": "en", "year": 2020, "score": 0.5, "draft": False, "public": True, "doc_id": "a#1"}
    assert type(parsed["year"]) is int and type(parsed["score"]) is float and type(parsed["draft"]) is bool


def test_parse_filter_args_comma_means_any_of():
    assert parse_filter_args(["lang=en,fr", "year=2020,2021", "mixed=1,x,true"]) == {
        "lang": ["en", "fr"], "year": [2020, 2021], "mixed": [1, "x", True],
    }


def test_parse_filter_args_keeps_text_after_the_first_equals_sign():
    assert parse_filter_args(["expr=a=b", " key = value "]) == {"expr": "a=b", "key": "value"}


def test_parse_filter_args_of_nothing_is_empty():
    assert parse_filter_args([]) == {}


@pytest.mark.parametrize("item", ["lang", "=en", "", "bad key=1", "text=hello", "vector=1"])
def test_parse_filter_args_refuses_bad_items(item):
    with pytest.raises(SpecError) as caught:
        parse_filter_args([item])
    assert caught.value.where in ("--filter", "filter")


# -- check_filter --------------------------------------------------------------------------------
def test_check_filter_accepts_scalars_and_lists():
    flt = {"doc_id": "d", "source": ("a", "b"), "n": 1, "x": 1.5, "ok": True, "tags": {"t"}}
    assert check_filter(flt) == {"doc_id": "d", "source": ["a", "b"], "n": 1, "x": 1.5, "ok": True, "tags": ["t"]}
    assert check_filter(None) == {} and check_filter({}) == {}


@pytest.mark.parametrize(
    "flt",
    [
        {"id": "x"}, {"text": "x"}, {"vector": "x"}, {"chunk": 1},
        {"1abc": "x"}, {"a b": "x"}, {"lang\n": "x"}, {"": "x"}, {3: "x"},
        {"k": None}, {"k": {"nested": 1}}, {"k": []}, {"k": [1, None]}, {"k": [[1]]}, {"k": b"bytes"},
    ],
)
def test_check_filter_refuses_bad_keys_and_values(flt):
    with pytest.raises(SpecError):
        check_filter(flt)


def test_spec_error_is_a_value_error_that_says_how_to_fix():
    with pytest.raises(ValueError) as caught:
        parse_filter_args(["nokey"])
    assert "--filter key=value" in str(caught.value)


# -- to_where (embedded store) -------------------------------------------------------------------
@pytest.fixture(scope="module")
def to_where():
    pytest.importorskip("lancedb")
    from stackwise.adapters.vectors.embedded import to_where

    return to_where


EN = """(json_extract(metadata, '$["lang"]') = '"en"' OR json_array_contains(metadata, '$["lang"]', 'en'))"""
FR = """(json_extract(metadata, '$["lang"]') = '"fr"' OR json_array_contains(metadata, '$["lang"]', 'fr'))"""


@pytest.mark.parametrize(
    ("flt", "where"),
    [
        (None, None),
        ({}, None),
        ({"lang": "en"}, EN),
        ({"year": 2020},
         """(json_extract(metadata, '$["year"]') = '2020' OR json_array_contains(metadata, '$["year"]', 2020))"""),
        ({"score": 0.5},
         """(json_extract(metadata, '$["score"]') = '0.5' OR json_array_contains(metadata, '$["score"]', 0.5))"""),
        ({"draft": True},
         """(json_extract(metadata, '$["draft"]') = 'true' OR json_array_contains(metadata, '$["draft"]', true))"""),
        ({"draft": False},
         """(json_extract(metadata, '$["draft"]') = 'false' OR json_array_contains(metadata, '$["draft"]', false))"""),
        ({"doc_id": "file:///a.md"}, "doc_id = 'file:///a.md'"),
        ({"source": "s3://b/docs"}, "source = 's3://b/docs'"),
        ({"doc_id": ["a", "b"]}, "doc_id IN ('a', 'b')"),
        ({"lang": ["en", "fr"]}, f"({EN} OR {FR})"),
        ({"lang": ["en"]}, EN),
        ({"lang": "en", "draft": True},
         EN + """ AND (json_extract(metadata, '$["draft"]') = 'true' OR json_array_contains(metadata, '$["draft"]', true))"""),
        ({"author": "O'Brien"},
         """(json_extract(metadata, '$["author"]') = '"O''Brien"' OR json_array_contains(metadata, '$["author"]', 'O''Brien'))"""),
        ({"doc_id": ["it's", "x'; DROP TABLE t; --"]}, "doc_id IN ('it''s', 'x''; DROP TABLE t; --')"),
    ],
)
def test_to_where_translation(to_where, flt, where):
    assert to_where(flt) == where


def test_to_where_validates_the_filter_first(to_where):
    with pytest.raises(SpecError):
        to_where({"text": "x"})


def test_to_where_predicates_select_the_right_rows(to_where, tmp_path):
    """The predicates are valid Lance SQL and mean what the portable filter says."""
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.vectors import Record

    store = EmbeddedStore(str(tmp_path / "vectors"))
    store.create_index("t", 2, "m")
    metadata = [
        {"lang": "en", "year": 2020, "score": 0.5, "draft": True, "author": "O'Brien"},
        {"lang": "fr", "year": 2021, "score": 1.5, "draft": False, "author": "Smith"},
        {"lang": "de", "year": 2020, "score": 0.5, "draft": False, "tags": ["x", "y"], "my-key": 1},
        {"lang": "en", "tags": "x", "year": [2020, 2022]},
    ]
    store.upsert("t", [
        Record(id=f"r{i}", vector=[1.0, float(i)], text="t", doc_id=f"d{i % 2}", source=f"s{i}", chunk=0, metadata=m)
        for i, m in enumerate(metadata)
    ])
    cases = {
        "lang=en": ({"lang": "en"}, {"r0", "r3"}),
        "year=2020": ({"year": 2020}, {"r0", "r2", "r3"}),
        "score=1.5": ({"score": 1.5}, {"r1"}),
        "draft=true": ({"draft": True}, {"r0"}),
        "draft=false": ({"draft": False}, {"r1", "r2"}),
        "doc_id": ({"doc_id": "d0"}, {"r0", "r2"}),
        "source in": ({"source": ["s1", "s2"]}, {"r1", "r2"}),
        "lang in": ({"lang": ["en", "fr"]}, {"r0", "r1", "r3"}),
        "quote": ({"author": "O'Brien"}, {"r0"}),
        "and": ({"year": 2020, "lang": "de"}, {"r2"}),
        "absent key": ({"missing": "x"}, set()),
        "list contains": ({"tags": "y"}, {"r2"}),
        "list or scalar": ({"tags": "x"}, {"r2", "r3"}),
        "list of numbers": ({"year": 2022}, {"r3"}),
        "hyphenated key": ({"my-key": 1}, {"r2"}),
    }
    for label, (flt, expected) in cases.items():
        hits = store.query("t", [1.0, 0.0], k=10, filter=flt)
        assert {h.id for h in hits} == expected, label
        assert store.count("t", flt) == len(expected), label
