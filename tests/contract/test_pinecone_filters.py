"""Pinecone filters over real HTTP: the local server evaluates operators with the operand types
Pinecone documents, and the adapter's translations of the portable filter select the same
records as the embedded store (list-valued fields, keys some records lack)."""

from __future__ import annotations

import pytest

pytest.importorskip("pinecone", reason="install stackwise[pinecone]")

from stackwise.adapters.vectors.embedded import EmbeddedStore  # noqa: E402
from stackwise.adapters.vectors.pinecone import PineconeStore  # noqa: E402
from stackwise.contract import VectorStoreOutput  # noqa: E402
from stackwise.errors import SpecError, StoreError  # noqa: E402
from stackwise.testing.vector_store import DIM, MODEL, make_records  # noqa: E402


def _store(server) -> PineconeStore:
    return PineconeStore(VectorStoreOutput(kind="pinecone", host=server.url, api_key_secret="env://PINECONE_TEST_KEY"),
                         backoff=0.01, attempts=1)


RECORDS = (make_records("a", 2, axis=0, tags=["red", "blue"], num=1)
           + make_records("b", 1, axis=1, tags="red", num=2.5)
           + make_records("c", 1, axis=2, other=True))

FILTERS = [
    {"tags": "blue"},
    {"tags": ["red", "green"]},
    {"tags": {"$ne": "blue"}},
    {"tags": {"$nin": ["green"]}},
    {"tags": {"$nin": ["blue", "red"]}},
    {"num": {"$gte": 1, "$lt": 2}},
    {"num": {"$ne": 1}},
    {"other": {"$in": [True]}},
    {"$or": [{"tags": "blue"}, {"other": True}]},
    {"$and": [{"tags": {"$ne": "green"}}, {"$or": [{"num": {"$gt": 2}}, {"doc": "a"}]}]},
]


@pytest.mark.parametrize("flt", FILTERS, ids=[str(f) for f in FILTERS])
def test_pinecone_selects_what_the_embedded_store_selects(pinecone, tmp_path, flt):
    store = _store(pinecone)
    store.create_index("f", DIM, MODEL)
    store.upsert("f", RECORDS)
    embedded = EmbeddedStore(str(tmp_path / "v"))
    embedded.create_index("f", DIM, MODEL)
    embedded.upsert("f", RECORDS)
    want = {h.id for h in embedded.query("f", RECORDS[0].vector, k=10, filter=flt)}
    assert {h.id for h in store.query("f", RECORDS[0].vector, k=10, filter=flt)} == want
    assert store.count("f", flt) == len(want)


@pytest.mark.parametrize(
    "raw",
    [
        {"num": {"$gt": "a"}},  # ranges take numbers only
        {"tags": {"$in": [True]}},  # $in takes strings or numbers
        {"tags": {"$in": "red"}},
        {"tags": {"$eq": ["red"]}},
        {"tags": {"$exists": 1}},
        {"$or": {"tags": "red"}},
        {"$not": {"tags": "red"}},
    ],
)
def test_the_server_refuses_what_pinecone_refuses(pinecone, raw):
    store = _store(pinecone)
    store.create_index("f", DIM, MODEL)
    with pytest.raises(StoreError, match="HTTP 400"):
        store._call("query", store._index.query, top_k=1, vector=RECORDS[0].vector, namespace="f", filter=raw)


def test_string_ranges_are_refused_before_any_request(pinecone):
    store = _store(pinecone)
    store.create_index("f", DIM, MODEL)
    sent = len(pinecone.requests)
    with pytest.raises(SpecError, match="only numbers"):
        store.query("f", RECORDS[0].vector, k=1, filter={"doc_id": {"$gt": "a"}})
    assert len(pinecone.requests) == sent
