"""Milvus filters on the real server select what the embedded store selects, for list-valued
metadata and keys some records lack (the cases where Milvus's own `!=` differs)."""

from __future__ import annotations

import pytest

from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.contract import VectorStoreOutput
from stackwise.testing.vector_store import DIM, MODEL, make_records

RECORDS = (make_records("a", 2, axis=0, tags=["red", "blue"], num=1)
           + make_records("b", 1, axis=1, tags="red", num=2.5)
           + make_records("c", 1, axis=2, other=True, title="O'Brien \"x\" \\"))

FILTERS = [
    {"tags": "blue"},
    {"tags": ["red", "green"]},
    {"tags": {"$ne": "blue"}},
    {"tags": {"$nin": ["green"]}},
    {"tags": {"$nin": ["blue", "red"]}},
    {"num": {"$gte": 1, "$lt": 2}},
    {"num": {"$ne": 1}},
    {"title": {"$gt": "N"}},
    {"title": {"$ne": "O'Brien \"x\" \\"}},
    {"$or": [{"tags": "blue"}, {"other": True}]},
    {"$and": [{"tags": {"$ne": "green"}}, {"$or": [{"num": {"$gt": 2}}, {"doc": "a"}]}]},
]


@pytest.fixture(scope="module")
def stores(milvus_uri, tmp_path_factory):
    from stackwise.adapters.vectors.milvus import MilvusStore

    milvus = MilvusStore(VectorStoreOutput(kind="milvus", host=milvus_uri))
    milvus.drop_index("filters")
    milvus.create_index("filters", DIM, MODEL)
    milvus.upsert("filters", RECORDS)
    embedded = EmbeddedStore(str(tmp_path_factory.mktemp("v")))
    embedded.create_index("filters", DIM, MODEL)
    embedded.upsert("filters", RECORDS)
    yield milvus, embedded
    milvus.drop_index("filters")


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_milvus_selects_what_the_embedded_store_selects(stores, flt):
    milvus, embedded = stores
    want = {h.id for h in embedded.query("filters", RECORDS[0].vector, k=10, filter=flt)}
    assert {h.id for h in milvus.query("filters", RECORDS[0].vector, k=10, filter=flt)} == want
    assert milvus.count("filters", flt) == len(want)
