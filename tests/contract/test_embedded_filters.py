"""The embedded store's filters on the real LanceDB engine: promoted metadata columns, the JSON
path that indexes written before promotion take, the migration between them, and values a
promoted column cannot hold (lists, other types)."""

from __future__ import annotations

import pytest

from stackwise.adapters.vectors.embedded import EmbeddedStore, column_name, filter_columns, promotable, to_where
from stackwise.testing.vector_store import DIM, MODEL, VectorStoreContract, make_records
from stackwise.vectors import Record


class TestEmbeddedStoreJsonPath(VectorStoreContract):
    """The whole contract on the layout of indexes written before promotion (JSON only)."""

    @pytest.fixture
    def store(self, tmp_path):
        return EmbeddedStore(str(tmp_path / "vectors"), promote=False)

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: EmbeddedStore(str(tmp_path / "vectors"), promote=False)


def _columns(store: EmbeddedStore, name: str) -> dict:
    return filter_columns(store._table(name))


def _records() -> list[Record]:
    metadata = [
        {"lang": "en", "year": 2020, "score": 0.5, "draft": True, "author": "O'Brien", "title": "apple"},
        {"lang": "fr", "year": 2021, "score": 1.5, "draft": False, "author": "Smith", "title": "banana split",
         "city": "Zürich"},
        {"lang": "de", "year": 2019, "score": 2, "draft": False, "my-key": 1, "title": "banana", "city": "Zurich"},
        {"lang": "en", "year": 2023, "score": 3.25, "draft": True, "title": "cherry"},
    ]
    return [Record(id=f"r{i}", vector=[1.0, float(i)], text="t", doc_id=f"d{i % 2}", source=f"s{i}", metadata=m)
            for i, m in enumerate(metadata)]


CASES = {
    "eq": ({"lang": "en"}, {"r0", "r3"}),
    "in": ({"lang": ["en", "fr"]}, {"r0", "r1", "r3"}),
    "ne": ({"lang": {"$ne": "en"}}, {"r1", "r2"}),
    "nin": ({"lang": {"$nin": ["en", "de"]}}, {"r1"}),
    "int range": ({"year": {"$gte": 2020, "$lt": 2023}}, {"r0", "r1"}),
    "float range over ints and floats": ({"score": {"$gt": 1.5}}, {"r2", "r3"}),
    "string range": ({"title": {"$gte": "banana", "$lt": "c"}}, {"r1", "r2"}),
    "bool": ({"draft": False}, {"r1", "r2"}),
    "ne of a key some lack": ({"author": {"$ne": "Smith"}}, {"r0"}),
    "quote": ({"author": "O'Brien"}, {"r0"}),
    "non-ASCII text": ({"city": "Zürich"}, {"r1"}),
    "non-ASCII range": ({"city": {"$gt": "Zz"}}, {"r1"}),
    "ne of non-ASCII text": ({"city": {"$ne": "Zürich"}}, {"r2"}),
    "hyphenated key": ({"my-key": {"$gte": 1}}, {"r2"}),
    "value of another type": ({"year": "2020"}, set()),
    "or": ({"$or": [{"lang": "de"}, {"year": {"$gt": 2022}}]}, {"r2", "r3"}),
    "nested": ({"$and": [{"$or": [{"doc_id": "d0"}, {"lang": "fr"}]}, {"draft": {"$ne": True}}]}, {"r1", "r2"}),
}


def _check(store: EmbeddedStore, name: str) -> None:
    for label, (flt, expected) in CASES.items():
        assert {h.id for h in store.query(name, [1.0, 0.0], k=10, filter=flt)} == expected, label
        assert store.count(name, flt) == len(expected), label


def test_first_batch_promotes_scalar_keys_and_filters_use_them(tmp_path):
    store = EmbeddedStore(str(tmp_path / "v"))
    store.create_index("t", 2, "m")
    store.upsert("t", _records())
    columns = _columns(store, "t")
    assert set(columns) == {"lang", "year", "score", "draft", "author", "title", "my-key", "city"}
    assert (columns["year"].kind, columns["score"].kind, columns["draft"].kind) == ("num", "num", "bool")
    assert columns["my-key"].name == column_name("my-key") == "meta_my_dkey"
    assert "`meta_lang` = 'en'" == to_where({"lang": "en"}, columns)
    _check(store, "t")
    store.optimize("t")  # scalar indexes on the promoted columns
    indexed = {c for i in store._table("t").list_indices() for c in i.columns}
    assert {c.name for c in columns.values()} <= indexed
    _check(store, "t")
    [stored] = store.fetch("t", ["r2"])
    assert stored.metadata == _records()[2].metadata  # reads come from the JSON column, unchanged


def test_an_older_index_is_migrated_by_optimize(tmp_path):
    uri = str(tmp_path / "v")
    old = EmbeddedStore(uri, promote=False)
    old.create_index("t", 2, "m")
    old.upsert("t", _records())
    assert _columns(old, "t") == {}
    _check(old, "t")  # the JSON path answers the same
    new = EmbeddedStore(uri)
    new.upsert("t", _records()[:1])  # a write into a non-empty index promotes nothing
    assert _columns(new, "t") == {}
    new.optimize("t")
    assert set(_columns(new, "t")) == {"lang", "year", "score", "draft", "author", "title", "my-key", "city"}
    _check(new, "t")
    _check(old, "t")  # a store that does not promote still reads the migrated table


def test_a_value_that_does_not_fit_sends_the_key_back_to_json(tmp_path):
    store = EmbeddedStore(str(tmp_path / "v"))
    store.create_index("t", 2, "m")
    store.upsert("t", _records())
    store.upsert("t", [Record(id="r4", vector=[1.0, 4.0], text="t", doc_id="d4",
                              metadata={"lang": ["en", "es"], "year": 2020.5, "title": "date"})])
    columns = _columns(store, "t")
    assert "lang" not in columns and "year" not in columns  # impure now
    assert "title" in columns  # still every value is a string
    assert store.count("t", {"lang": "es"}) == 1
    assert store.count("t", {"lang": "en"}) == 3  # two scalars and one list containing "en"
    assert store.count("t", {"lang": {"$ne": "en"}}) == 2
    assert store.count("t", {"year": {"$gt": 2020, "$lt": 2021}}) == 1
    assert store.count("t", {"title": {"$gte": "d"}}) == 1
    reopened = EmbeddedStore(str(tmp_path / "v"))
    assert "lang" not in _columns(reopened, "t")


def test_list_metadata_matches_a_contained_value(tmp_path):
    store = EmbeddedStore(str(tmp_path / "v"))
    store.create_index("tags", DIM, MODEL)
    store.upsert("tags", make_records("a", 2, axis=0, tags=["red", "blue"]) + make_records("b", 1, axis=1, tags="red"))
    assert "tags" not in _columns(store, "tags")
    assert store.count("tags", {"tags": "blue"}) == 2
    assert store.count("tags", {"tags": ["red", "green"]}) == 3
    assert store.count("tags", {"tags": {"$ne": "blue"}}) == 1
    assert store.count("tags", {"tags": {"$nin": ["green"]}}) == 3
    assert store.count("tags", {"tags": {"$gte": "a"}}) == 1  # ranges never match a list


def test_promotion_choice():
    assert promotable([{"a": 1, "b": "x", "c": [1]}, {"a": 2.5, "b": 3, "d": True, "text": "t", "doc_id": "x"}]) == {
        "a": "float", "d": "bool",
    }
    assert promotable([{"long": "x" * 300}]) == {}
    assert promotable([{"big": 2**70}]) == {}
