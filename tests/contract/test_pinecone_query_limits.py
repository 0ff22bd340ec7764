"""Pinecone's query limits (issue 12 item 15), against the local server that enforces them as
Pinecone does: a query response of at most 4 MB, and 40 KB of metadata per record. The adapter
always includes the chunk text (metadata) in its queries, so it refuses k above what fits
before sending anything, and reports a response that still exceeds 4 MB with the fix."""

from __future__ import annotations

import pytest

pytest.importorskip("pinecone", reason="install stackwise[pinecone]")

from stackwise.adapters.vectors.pinecone import MAX_TOP_K_WITH_METADATA, PineconeStore  # noqa: E402
from stackwise.contract import VectorStoreOutput  # noqa: E402
from stackwise.errors import SpecError, StoreError  # noqa: E402
from stackwise.testing.vector_store import DIM, MODEL, make_records  # noqa: E402
from stackwise.vectors import Record  # noqa: E402


def _store(server) -> PineconeStore:
    return PineconeStore(VectorStoreOutput(kind="pinecone", host=server.url, api_key_secret="env://PINECONE_TEST_KEY"),
                         backoff=0.01, attempts=1)


def _queries(server) -> int:
    return sum(1 for _, path, _ in server.requests if path == "/query")


def test_k_above_the_metadata_bound_is_refused_before_any_request(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    store.upsert("kb", make_records("a", 3, axis=0))
    before = _queries(pinecone)
    assert len(store.query("kb", make_records("a", 1, axis=0)[0].vector, k=MAX_TOP_K_WITH_METADATA)) == 3
    with pytest.raises(SpecError) as err:
        store.query("kb", make_records("a", 1, axis=0)[0].vector, k=MAX_TOP_K_WITH_METADATA + 1)
    message = str(err.value)
    assert f"k={MAX_TOP_K_WITH_METADATA + 1}" in message and "4 MB query response limit" in message
    assert "fix: ask for k <= 1,000" in message
    assert _queries(pinecone) == before + 1  # the refused query never reached Pinecone


def test_a_response_over_4_mb_is_a_clear_error(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    text = "y" * 30_000  # 30 KB of chunk text each, under the 40 KB metadata limit
    records = [Record(id=f"r{i}", vector=r.vector, text=text, doc_id=f"d{i}")
               for i, r in enumerate(make_records("big", 160, axis=1))]  # ~4.8 MB of text in all
    store.upsert("kb", records)
    vector = records[0].vector
    assert len(store.query("kb", vector, k=100)) == 100  # ~3 MB: within the limit
    with pytest.raises(StoreError) as err:
        store.query("kb", vector, k=160)
    message = str(err.value)
    assert "exceeds its 4 MB query response limit" in message and "k=160" in message
    assert "fix: ask for fewer hits (a smaller k)" in message


def test_the_server_enforces_pinecones_metadata_limit(pinecone):
    store = _store(pinecone)
    store.create_index("kb", DIM, MODEL)
    base = make_records("huge", 1, axis=2)[0]
    record = Record(id=base.id, vector=base.vector, text="z" * 41_000, doc_id=base.doc_id)
    with pytest.raises(StoreError, match="exceeds the limit of 40960 bytes"):
        store.upsert("kb", [record])
