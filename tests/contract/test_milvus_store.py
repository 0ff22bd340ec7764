"""The Milvus adapter: the VectorStore contract against a real standalone Milvus server (the PyPI
package `milvus`, started once per session), and its filter translation."""

from __future__ import annotations

import pytest

from stackwise.adapters.vectors.milvus import collection_name, index_name, to_milvus_expr
from stackwise.contract import VectorStoreOutput
from stackwise.errors import SpecError
from stackwise.testing.vector_store import DIM, MODEL, VectorStoreContract, make_records


def _store(uri: str):
    from stackwise.adapters.vectors.milvus import MilvusStore

    return MilvusStore(VectorStoreOutput(kind="milvus", host=uri))


class TestMilvusStore(VectorStoreContract):
    @pytest.fixture
    def store(self, milvus_uri):
        store = _store(milvus_uri)
        for name in store.list_indexes():
            store.drop_index(name)
        return store

    @pytest.fixture
    def reopen(self, milvus_uri):
        return lambda: _store(milvus_uri)


def test_list_metadata_matches_a_contained_value(milvus_uri):
    store = _store(milvus_uri)
    store.drop_index("tags")
    store.create_index("tags", DIM, MODEL)
    store.upsert("tags", make_records("a", 2, axis=0, tags=["red", "blue"]) + make_records("b", 1, axis=1, tags="red"))
    assert store.count("tags", {"tags": "blue"}) == 2
    assert store.count("tags", {"tags": ["red", "green"]}) == 3
    store.drop_index("tags")


@pytest.mark.parametrize("name", ["kb", "my-index", "docs.v2", "a_b", "x_u"])
def test_collection_names_reverse(name):
    assert collection_name(name).isidentifier()
    assert index_name(collection_name(name)) == name


@pytest.mark.parametrize(
    ("portable", "expected"),
    [
        (None, ""),
        ({"doc_id": "a"}, 'doc_id == "a"'),
        ({"source": ["s1", 's"2']}, 'source in ["s1", "s\\"2"]'),
        ({"lang": "en"}, '(metadata["lang"] == "en" or json_contains_any(metadata["lang"], ["en"]))'),
        ({"draft": True, "year": [1, 2]},
         '(metadata["draft"] == true or json_contains_any(metadata["draft"], [true])) and '
         '(metadata["year"] == 1 or metadata["year"] == 2 or json_contains_any(metadata["year"], [1, 2]))'),
    ],
)
def test_to_milvus_expr(portable, expected):
    assert to_milvus_expr(portable) == expected


def test_to_milvus_expr_rejects_bad_keys():
    with pytest.raises(SpecError):
        to_milvus_expr({'x"] or 1==1 or metadata["y': 1})
