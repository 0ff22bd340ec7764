"""The portable filter model (`stackwise.filters`): parsing, CLI items, and each store's pure
translation (`stackwise.adapters.vectors.<store>_filters`). Whether the translations select the
right rows is checked against the real engines: LanceDB here, Pinecone's protocol and Milvus in
the contract suite."""

from __future__ import annotations

import pytest

from stackwise.errors import SpecError
from stackwise.adapters.vectors.embedded_filters import LanceColumn, to_lance
from stackwise.adapters.vectors.milvus_filters import to_milvus
from stackwise.adapters.vectors.pinecone_filters import to_pinecone
from stackwise.adapters.vectors.weaviate_filters import to_weaviate
from stackwise.filters import And, Cond, Or, parse_filter, parse_filter_args


# -- parse_filter ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "expr"),
    [
        (None, None),
        ({}, None),
        ({"lang": "en"}, Cond("lang", "eq", "en")),
        ({"lang": ["en", "fr"]}, Cond("lang", "in", ("en", "fr"))),
        ({"lang": ("en",)}, Cond("lang", "in", ("en",))),
        ({"year": {"$gte": 2019, "$lt": 2023}}, And((Cond("year", "gte", 2019), Cond("year", "lt", 2023)))),
        ({"title": {"$gt": "m"}}, Cond("title", "gt", "m")),
        ({"x": {"$eq": 1}, "y": {"$ne": False}}, And((Cond("x", "eq", 1), Cond("y", "ne", False)))),
        ({"x": {"$in": [1, 2]}, "doc_id": {"$nin": ["a"]}},
         And((Cond("x", "in", (1, 2)), Cond("doc_id", "nin", ("a",))))),
        ({"$or": [{"a": 1}, {"b": 2}]}, Or((Cond("a", "eq", 1), Cond("b", "eq", 2)))),
        ({"$or": [{"a": 1}]}, Cond("a", "eq", 1)),
        ({"$and": [{"a": 1}, {"$and": [{"b": 2}, {"c": 3}]}], "d": 4},
         And((Cond("a", "eq", 1), Cond("b", "eq", 2), Cond("c", "eq", 3), Cond("d", "eq", 4)))),
        ({"$or": [{"a": 1, "b": 2}, {"$and": [{"c": {"$lt": 0}}]}]},
         Or((And((Cond("a", "eq", 1), Cond("b", "eq", 2))), Cond("c", "lt", 0)))),
        ({"my-key.v2": 1.5}, Cond("my-key.v2", "eq", 1.5)),
    ],
)
def test_parse_filter_builds_the_tree(obj, expr):
    assert parse_filter(obj) == expr


def test_parse_filter_passes_a_tree_through():
    expr = Cond("a", "eq", 1)
    assert parse_filter(expr) is expr


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"text": "x"}, "'text' is not filterable"),
        ({"id": {"$eq": "x"}}, "'id' is not filterable"),
        ({"chunk": {"$gt": 1}}, "'chunk' is not filterable"),
        ({"a b": 1}, "not filterable"),
        ({3: 1}, "not filterable"),
        ({"$not": {"a": 1}}, "unknown filter operator '\\$not'"),
        ({"a": {"$regex": "x"}}, "unknown operator '\\$regex'"),
        ({"a": {"nested": 1}}, "unknown operator 'nested'"),
        ({"a": {}}, "has no operator"),
        ({"a": None}, "unsupported value None"),
        ({"a": float("nan")}, "unsupported value"),
        ({"a": {"$gt": float("inf")}}, "unsupported value"),
        ({"a": {"$eq": [1]}}, "unsupported value"),
        ({"a": {"$in": 1}}, "needs a list"),
        ({"a": {"$in": []}}, "non-empty list"),
        ({"a": {"$nin": [1, None]}}, "non-empty list of scalars"),
        ({"a": []}, "non-empty list"),
        ({"a": [[1]]}, "non-empty list of scalars"),
        ({"year": {"$gte": 2019, "$lt": "2023"}}, "mixes number and string"),
        ({"flag": {"$gt": True}}, "boolean"),
        ({"$and": []}, "non-empty list of filters"),
        ({"$or": {"a": 1}}, "non-empty list of filters"),
        ({"$or": [{"a": 1}, {}]}, "non-empty object"),
        ({"$or": [{"a": 1}, "b"]}, "non-empty object"),
        ("lang=en", "non-empty object"),
    ],
)
def test_parse_filter_refuses_bad_filters_clearly(obj, message):
    with pytest.raises(SpecError, match=message) as caught:
        parse_filter(obj)
    assert caught.value.where == "filter" and caught.value.fix


# -- CLI items -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["lang=en"], {"lang": "en"}),
        (["lang=en,fr"], {"lang": ["en", "fr"]}),
        (["year>=2019", "year<2023"], {"year": {"$gte": 2019, "$lt": 2023}}),
        (["year>2019", "year<=2022.5"], {"year": {"$gt": 2019, "$lte": 2022.5}}),
        (["lang!=de"], {"lang": {"$ne": "de"}}),
        (["lang!=de,fr"], {"lang": {"$nin": ["de", "fr"]}}),
        (["title>=m", "draft=false"], {"title": {"$gte": "m"}, "draft": False}),
        (["expr=a>=b"], {"expr": "a>=b"}),
        (["lang=en", "lang=fr"], {"$and": [{"lang": "en"}, {"lang": "fr"}]}),
        (["year>1", "year>2"], {"$and": [{"year": {"$gt": 1}}, {"year": {"$gt": 2}}]}),
    ],
)
def test_parse_filter_args_operators(items, expected):
    assert parse_filter_args(items) == expected
    parse_filter(expected)  # always a valid portable filter


@pytest.mark.parametrize("item", ["lang", ">=3", "year>=", "text>1", "a b>1", "year>=2019,2020", "x<true"])
def test_parse_filter_args_refuses_bad_items(item):
    with pytest.raises(SpecError) as caught:
        parse_filter_args([item])
    assert caught.value.where == "--filter"


def test_parse_filter_args_refuses_mixed_range_types():
    with pytest.raises(SpecError, match="mixes number and string"):
        parse_filter_args(["year>=2019", "year<abc"])


# -- Pinecone --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, None),
        ({"lang": "en"}, {"lang": {"$eq": "en"}}),
        ({"year": [2001, 2010]}, {"year": {"$in": [2001, 2010]}}),
        ({"year": {"$gte": 2019, "$lt": 2023}}, {"$and": [{"year": {"$gte": 2019}}, {"year": {"$lt": 2023}}]}),
        ({"lang": {"$ne": "de"}}, {"$and": [{"lang": {"$exists": True}}, {"lang": {"$ne": "de"}}]}),
        ({"lang": {"$nin": ["de", "fr"]}}, {"$and": [{"lang": {"$exists": True}}, {"lang": {"$nin": ["de", "fr"]}}]}),
        ({"doc_id": {"$ne": "a"}}, {"doc_id": {"$ne": "a"}}),
        ({"draft": [True, False]}, {"$or": [{"draft": {"$eq": True}}, {"draft": {"$eq": False}}]}),
        ({"draft": {"$nin": [True]}}, {"$and": [{"draft": {"$exists": True}}, {"draft": {"$ne": True}}]}),
        ({"$or": [{"lang": "en"}, {"year": {"$gt": 2005}}]},
         {"$or": [{"lang": {"$eq": "en"}}, {"year": {"$gt": 2005}}]}),
        ({"$and": [{"a": 1}, {"$or": [{"b": 2}, {"c": 3}]}]},
         {"$and": [{"a": {"$eq": 1}}, {"$or": [{"b": {"$eq": 2}}, {"c": {"$eq": 3}}]}]}),
    ],
)
def test_to_pinecone(obj, expected):
    assert to_pinecone(parse_filter(obj)) == expected


def test_to_pinecone_refuses_string_ranges():
    with pytest.raises(SpecError, match="Pinecone compares only numbers") as caught:
        to_pinecone(parse_filter({"title": {"$gte": "m"}}))
    assert "store the field as a number" in caught.value.fix


def test_to_pinecone_refuses_more_in_values_than_pinecone_takes():
    ids = [f"doc-{i}" for i in range(10_001)]
    with pytest.raises(SpecError, match="10,001 values: it takes at most 10,000") as caught:
        to_pinecone(parse_filter({"doc_id": {"$nin": ids}}))
    assert "doc-9999" not in str(caught.value)  # the message names the count, not the values
    assert to_pinecone(parse_filter({"doc_id": ids[:10_000]}))["doc_id"]["$in"] == ids[:10_000]


def test_parsed_filters_are_immutable_values():
    """A parsed tree is a value: hashable, comparable, and not changed by whoever holds it."""
    import dataclasses

    tree = parse_filter({"$or": [{"a": 1}, {"b": {"$in": [1, 2]}}], "c": "x"})
    assert len({tree, parse_filter({"$or": [{"a": 1}, {"b": {"$in": [1, 2]}}], "c": "x"})}) == 1
    for node in (tree, tree.items[0], tree.items[1]):
        with pytest.raises(dataclasses.FrozenInstanceError):
            node.items = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        tree.items[1].value = "y"  # type: ignore[misc]


# -- Milvus ----------------------------------------------------------------------------------------
EN_M = '(metadata["lang"] == "en" or json_contains_any(metadata["lang"], ["en"]))'


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (None, ""),
        ({"lang": "en"}, EN_M),
        ({"doc_id": ["a"]}, 'doc_id == "a"'),
        ({"source": ["s1", 's"2\\']}, 'source in ["s1", "s\\"2\\\\"]'),
        ({"source": "Zürich"}, 'source == "Zürich"'),  # as written: Milvus takes UTF-8 literals
        ({"doc_id": {"$nin": ["a", "b"]}}, 'doc_id not in ["a", "b"]'),
        ({"source": {"$gte": "m"}}, 'source >= "m"'),
        ({"year": {"$gte": 2019, "$lt": 2023}}, 'metadata["year"] >= 2019 and metadata["year"] < 2023'),
        ({"lang": {"$ne": "de"}},
         '((exists metadata["lang"]) and metadata["lang"] != "de" and not json_contains_any(metadata["lang"], ["de"]))'),
        ({"lang": {"$nin": ["de", "fr"]}},
         '((exists metadata["lang"]) and metadata["lang"] != "de" and metadata["lang"] != "fr" and '
         'not json_contains_any(metadata["lang"], ["de", "fr"]))'),
        ({"$or": [{"lang": "en"}, {"score": {"$lte": 0.5}}]}, f'({EN_M} or metadata["score"] <= 0.5)'),
        ({"$or": [{"lang": "en", "draft": False}, {"x": 1}]},
         f'(({EN_M} and (metadata["draft"] == false or json_contains_any(metadata["draft"], [false]))) or '
         '(metadata["x"] == 1 or json_contains_any(metadata["x"], [1])))'),
    ],
)
def test_to_milvus(obj, expected):
    assert to_milvus(parse_filter(obj)) == expected


# -- LanceDB ---------------------------------------------------------------------------------------
EN_L = """(json_extract(metadata, '$["lang"]') = '"en"' OR json_array_contains(metadata, '$["lang"]', 'en'))"""
YEAR = """json_extract(metadata, '$["year"]')"""


@pytest.mark.parametrize(
    ("obj", "columns", "expected"),
    [
        (None, None, None),
        ({"lang": "en"}, None, EN_L),
        ({"lang": {"$ne": "en"}}, None, f"""(json_extract(metadata, '$["lang"]') IS NOT NULL AND NOT {EN_L})"""),
        ({"year": {"$gte": 2019, "$lt": 2023}}, None,
         f"TRY_CAST({YEAR} AS DOUBLE) >= 2019 AND TRY_CAST({YEAR} AS DOUBLE) < 2023"),
        ({"title": {"$gt": "O'B"}}, None,
         """(json_extract(metadata, '$["title"]') LIKE '"%' AND """
         """regexp_replace(json_extract(metadata, '$["title"]'), '^"(.*)"$', '${1}') > 'O''B')"""),
        ({"doc_id": {"$nin": ["a'b", "c"]}}, None, "doc_id NOT IN ('a''b', 'c')"),
        ({"source": {"$lt": "s"}}, None, "source < 's'"),
        ({"$or": [{"lang": "en"}, {"doc_id": "d"}]}, None, f"({EN_L} OR doc_id = 'd')"),
        # promoted columns: compared on the typed column; a value of another type matches nothing
        ({"lang": "en"}, {"lang": LanceColumn("m_lang", "str")}, "`m_lang` = 'en'"),
        ({"lang": ["en", 3]}, {"lang": LanceColumn("m_lang", "str")}, "`m_lang` = 'en'"),
        ({"lang": [1, 3]}, {"lang": LanceColumn("m_lang", "str")}, "FALSE"),
        ({"lang": {"$ne": 3}}, {"lang": LanceColumn("m_lang", "str")}, "`m_lang` IS NOT NULL"),
        ({"lang": {"$nin": ["a", "b"]}}, {"lang": LanceColumn("m_lang", "str")}, "`m_lang` NOT IN ('a', 'b')"),
        ({"year": {"$gte": 2019, "$lt": 2023.5}}, {"year": LanceColumn("m_year", "num")},
         "`m_year` >= 2019 AND `m_year` < 2023.5"),
        ({"year": {"$gte": "2019"}}, {"year": LanceColumn("m_year", "num")}, "FALSE"),
        ({"draft": True}, {"draft": LanceColumn("m_draft", "bool")}, "`m_draft` = true"),
        ({"draft": 1}, {"draft": LanceColumn("m_draft", "bool")}, "FALSE"),
    ],
)
def test_to_lance(obj, columns, expected):
    assert to_lance(parse_filter(obj), columns) == expected


# -- Weaviate --------------------------------------------------------------------------------------
def _grpc(flt):
    """The protobuf the Weaviate client sends for a filter: compares by value."""
    from weaviate.collections.filters import _FilterToGRPC

    return _FilterToGRPC.convert(flt)


def test_to_weaviate_matches_hand_built_filters():
    pytest.importorskip("weaviate")
    from weaviate.classes.query import Filter

    P = Filter.by_property
    cases = [
        ({"lang": "en"}, P("lang").equal("en")),
        ({"lang": {"$ne": "de"}}, P("lang").not_equal("de")),
        ({"year": {"$gte": 2019, "$lt": 2023}}, P("year").greater_or_equal(2019) & P("year").less_than(2023)),
        ({"score": {"$gt": 0.5, "$lte": 1.5}}, P("score").greater_than(0.5) & P("score").less_or_equal(1.5)),
        ({"lang": ["en", "fr"]}, P("lang").equal("en") | P("lang").equal("fr")),
        ({"lang": ["en"]}, P("lang").equal("en")),
        ({"lang": {"$nin": ["de", "fr"]}}, P("lang").not_equal("de") & P("lang").not_equal("fr")),
        ({"draft": False, "doc_id": "a"}, P("draft").equal(False) & P("doc_id").equal("a")),
        ({"$or": [{"lang": "en"}, {"$and": [{"year": {"$gt": 2000}}, {"draft": True}]}]},
         Filter.any_of([P("lang").equal("en"), Filter.all_of([P("year").greater_than(2000), P("draft").equal(True)])])),
    ]
    for obj, expected in cases:
        assert _grpc(to_weaviate(parse_filter(obj))) == _grpc(expected), obj
    assert to_weaviate(None) is None


def test_to_weaviate_maps_property_names():
    pytest.importorskip("weaviate")
    from weaviate.classes.query import Filter

    got = to_weaviate(parse_filter({"my-key": 1}), property_name=lambda k: k.replace("-", "_"))
    assert _grpc(got) == _grpc(Filter.by_property("my_key").equal(1))
    assert _grpc(got) != _grpc(Filter.by_property("my_key").equal(2))
