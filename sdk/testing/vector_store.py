"""The abstract `VectorStore` contract. Every vector store adapter's tests mix it in:

    class TestMyStore(VectorStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(...)

        @pytest.fixture
        def reopen(self, store):           # a new client on the same data (persistence)
            return lambda: MyStore(...)

The suite uses small clustered vectors so it needs no embedding model; it checks behaviour
only through the `VectorStore` interface.
"""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest

from stackwise.errors import SpecError, StoreError
from stackwise.vectors import Record, VectorStore

DIM = 8
MODEL = "contract-test-model"


def _unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _vector(seed: int, axis: int) -> list[float]:
    """A unit vector near basis axis `axis` (clusters make nearest neighbours unambiguous)."""
    rng = random.Random(seed)
    base = [0.0] * DIM
    base[axis % DIM] = 1.0
    return _unit([b + rng.uniform(-0.05, 0.05) for b in base])


def _seed(doc: str, i: int) -> int:
    """A seed from (doc, i) that is the same in every process (Python's `hash` of a str is salted)."""
    return int.from_bytes(hashlib.sha256(f"{doc}\0{i}".encode()).digest()[:4], "big")


def assert_vectors(actual, expected, what: str = "") -> None:
    """Stored vectors equal the written ones by value (float32 storage: within 1e-5)."""
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=0, atol=1e-5, err_msg=f"stored vector differs from the one written {what}")


def assert_fetched(store: VectorStore, index: str, records: list[Record]) -> None:
    """Every record is stored with its own vector (compared by value, matched by id)."""
    fetched = {r.id: r for r in store.fetch(index, [r.id for r in records])}
    assert set(fetched) == {r.id for r in records}
    for record in records:
        assert_vectors(fetched[record.id].vector, record.vector, record.id)


def make_records(doc: str, n: int, axis: int, **metadata) -> list[Record]:
    return [
        Record(
            id=f"{doc}-c{i}",
            vector=_vector(_seed(doc, i), axis),
            text=f"chunk {i} of {doc}",
            doc_id=doc,
            source="contract://src",
            chunk=i,
            metadata={"doc": doc, **metadata},
        )
        for i in range(n)
    ]


class VectorStoreContract:
    """Mix into a test class that provides the `store` and `reopen` fixtures."""

    index = "contract"
    # Whether the store compares strings with $gt/$gte/$lt/$lte (Pinecone: numbers only, so
    # such a filter must be refused with a SpecError instead).
    string_ranges = True

    @pytest.fixture
    def filled(self, store: VectorStore) -> VectorStore:
        store.create_index(self.index, DIM, MODEL)
        store.upsert(self.index, make_records("alpha", 4, axis=0, lang="en", year=2001, draft=False))
        store.upsert(self.index, make_records("beta", 3, axis=1, lang="de", year=2005, draft=True))
        store.upsert(self.index, make_records("gamma", 2, axis=2, lang="en", year=2010, draft=False, score=0.5))
        return store

    # -- indexes ---------------------------------------------------------------------------------
    def test_create_is_idempotent_and_listed(self, store: VectorStore) -> None:
        first = store.create_index(self.index, DIM, MODEL)
        again = store.create_index(self.index, DIM, MODEL)
        assert (first.dim, first.model) == (again.dim, again.model) == (DIM, MODEL)
        assert self.index in store.list_indexes()
        assert store.describe(self.index).count == 0

    def test_create_with_other_dim_or_model_is_refused(self, store: VectorStore) -> None:
        store.create_index(self.index, DIM, MODEL)
        with pytest.raises(StoreError, match="dimensional"):
            store.create_index(self.index, DIM * 2, MODEL)
        with pytest.raises(StoreError):
            store.create_index(self.index, DIM, "another-model")

    def test_unknown_index_is_a_clear_error(self, store: VectorStore) -> None:
        with pytest.raises(StoreError, match="does not exist"):
            store.describe("no-such-index")

    def test_wrong_dimension_vector_is_refused(self, filled: VectorStore) -> None:
        bad = Record(id="bad", vector=[1.0] * (DIM + 1), text="x", doc_id="bad")
        with pytest.raises(StoreError, match="dimensions"):
            filled.upsert(self.index, [bad])
        assert filled.count(self.index) == 9

    def test_drop_index(self, filled: VectorStore) -> None:
        filled.drop_index(self.index)
        assert self.index not in filled.list_indexes()
        filled.drop_index(self.index)  # idempotent

    # -- writes ----------------------------------------------------------------------------------
    def test_upsert_counts(self, filled: VectorStore) -> None:
        assert filled.count(self.index) == 9
        assert filled.describe(self.index).count == 9

    def test_reupsert_is_idempotent(self, filled: VectorStore) -> None:
        alpha = make_records("alpha", 4, axis=0, lang="en", year=2001, draft=False)
        filled.upsert(self.index, alpha)
        assert filled.count(self.index) == 9
        assert filled.chunk_ids(self.index)["alpha"] == {f"alpha-c{i}" for i in range(4)}
        assert_fetched(filled, self.index, alpha + make_records("beta", 3, axis=1) + make_records("gamma", 2, axis=2))

    def test_upsert_updates_existing_ids(self, filled: VectorStore) -> None:
        changed = Record(id="alpha-c0", vector=_vector(1, 3), text="rewritten", doc_id="alpha",
                         metadata={"doc": "alpha", "lang": "fr"})
        filled.upsert(self.index, [changed])
        [stored] = filled.fetch(self.index, ["alpha-c0"])
        assert stored.text == "rewritten"
        assert stored.metadata["lang"] == "fr"
        assert_vectors(stored.vector, changed.vector, "after an update")
        assert filled.count(self.index) == 9
        assert [h.id for h in filled.query(self.index, _vector(2, 3), k=1)] == ["alpha-c0"]  # found by the new vector

    def test_replace_documents_leaves_exactly_the_new_chunks(self, filled: VectorStore) -> None:
        new = make_records("alpha", 2, axis=0, lang="en")
        new = [Record(id=f"alpha-new{i}", vector=r.vector, text=r.text, doc_id="alpha", metadata=r.metadata)
               for i, r in enumerate(new)]
        filled.replace_documents(self.index, ["alpha"], new)
        ids = filled.chunk_ids(self.index)
        assert ids["alpha"] == {"alpha-new0", "alpha-new1"}
        assert ids["beta"] == {f"beta-c{i}" for i in range(3)}  # other documents untouched
        assert filled.count(self.index) == 7
        assert_fetched(filled, self.index, new + make_records("beta", 3, axis=1))

    def test_replace_documents_with_no_records_removes_the_documents(self, filled: VectorStore) -> None:
        filled.replace_documents(self.index, ["beta"], [])
        assert "beta" not in filled.chunk_ids(self.index)
        assert filled.count(self.index) == 6

    def test_delete_by_id_and_by_document(self, filled: VectorStore) -> None:
        assert filled.delete(self.index, ids=["alpha-c0", "alpha-c1"]) == 2
        assert filled.delete(self.index, doc_ids=["beta"]) == 3
        assert filled.count(self.index) == 4
        assert filled.delete(self.index, ids=["alpha-c0"]) == 0  # idempotent
        assert filled.delete(self.index) == 0

    # -- reads -----------------------------------------------------------------------------------
    def test_query_ranks_nearest_first(self, filled: VectorStore) -> None:
        hits = filled.query(self.index, _vector(999, 1), k=3)
        assert [h.doc_id for h in hits] == ["beta"] * 3
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)
        assert all(0.9 < s <= 1.0 + 1e-6 for s in scores)
        assert hits[0].text.startswith("chunk ") and hits[0].metadata["lang"] == "de"

    def test_query_returns_at_most_k(self, filled: VectorStore) -> None:
        assert len(filled.query(self.index, _vector(1, 0), k=2)) == 2
        assert len(filled.query(self.index, _vector(1, 0), k=50)) == 9

    def test_filter_applies_before_ranking(self, filled: VectorStore) -> None:
        # Nearest to the alpha cluster, but only German chunks allowed: all of beta, nothing else.
        hits = filled.query(self.index, _vector(5, 0), k=5, filter={"lang": "de"})
        assert {h.doc_id for h in hits} == {"beta"} and len(hits) == 3

    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            ({"doc_id": "gamma"}, 2),
            ({"doc_id": ["alpha", "gamma"]}, 6),
            ({"lang": "en"}, 6),
            ({"year": 2005}, 3),
            ({"year": [2001, 2010]}, 6),
            ({"draft": True}, 3),
            ({"score": 0.5}, 2),
            ({"lang": "en", "year": 2010}, 2),
            ({"lang": "xx"}, 0),
        ],
    )
    def test_count_with_filter(self, filled: VectorStore, flt, expected) -> None:
        assert filled.count(self.index, flt) == expected
        assert len(filled.query(self.index, _vector(3, 2), k=20, filter=flt)) == expected

    # The portable filter's operators (stackwise.filters): every store selects the same rows.
    # filled: alpha 4 chunks (en, 2001, draft False), beta 3 (de, 2005, True),
    # gamma 2 (en, 2010, False, score 0.5).
    @pytest.mark.parametrize(
        ("flt", "expected"),
        [
            ({"year": {"$gte": 2002, "$lt": 2011}}, 5),  # a range
            ({"year": {"$gt": 2005}}, 2),
            ({"year": {"$lte": 2005}}, 7),
            ({"score": {"$gte": 0.25, "$lte": 0.5}}, 2),
            ({"year": {"$eq": 2005}}, 3),
            ({"lang": {"$ne": "en"}}, 3),
            ({"draft": {"$ne": False}}, 3),
            ({"score": {"$ne": 0.7}}, 2),  # a record without the key never matches, $ne included
            ({"doc_id": {"$ne": "alpha"}}, 5),
            ({"year": {"$nin": [2001, 2005]}}, 2),
            ({"doc_id": {"$nin": ["alpha", "gamma"]}}, 3),
            ({"lang": {"$in": ["de", "fr"]}}, 3),
            ({"$or": [{"lang": "de"}, {"year": 2010}]}, 5),  # an $or of two conditions
            ({"$or": [{"$and": [{"lang": "en"}, {"year": {"$gt": 2005}}]},  # nested $and / $or
                      {"$and": [{"draft": True}, {"doc_id": {"$ne": "beta"}}]}]}, 2),
            ({"$and": [{"$or": [{"doc_id": "alpha"}, {"doc_id": "beta"}]},
                       {"$or": [{"draft": True}, {"year": {"$lt": 2002}}]}], "lang": "en"}, 4),
            ({"year": {"$gt": 2010}}, 0),  # matches nothing
            ({"$and": [{"lang": "en"}, {"lang": "de"}]}, 0),
            ({"lang": {"$nin": ["en", "de"]}}, 0),
        ],
    )
    def test_filter_operators(self, filled: VectorStore, flt, expected) -> None:
        assert filled.count(self.index, flt) == expected
        hits = filled.query(self.index, _vector(3, 1), k=20, filter=flt)
        assert len(hits) == expected
        scores = [h.score for h in hits]
        assert scores == sorted(scores, reverse=True)

    def test_filter_operators_rank_within_the_selection(self, filled: VectorStore) -> None:
        # Nearest to gamma's cluster, which the filter excludes, as is beta: only alpha is left.
        hits = filled.query(self.index, _vector(5, 2), k=3, filter={"year": {"$lt": 2010}, "lang": {"$ne": "de"}})
        assert {h.doc_id for h in hits} == {"alpha"} and len(hits) == 3

    @pytest.mark.parametrize(("flt", "expected"), [({"lang": {"$lt": "e"}}, 3), ({"doc_id": {"$gte": "b"}}, 5)])
    def test_string_ranges(self, filled: VectorStore, flt, expected) -> None:
        if not self.string_ranges:
            with pytest.raises(SpecError, match="only numbers"):
                filled.count(self.index, flt)
            return
        assert filled.count(self.index, flt) == expected
        assert len(filled.query(self.index, _vector(3, 1), k=20, filter=flt)) == expected

    def test_filter_values_with_quotes_are_values(self, filled: VectorStore) -> None:
        tricky = 'O\'Brien "the" \\ one\'; --'
        [record] = make_records("delta", 1, axis=3, author=tricky)
        filled.upsert(self.index, [record])
        assert filled.count(self.index, {"author": tricky}) == 1
        assert filled.count(self.index, {"author": {"$ne": tricky}}) == 0
        assert filled.count(self.index, {"author": "O'Brien"}) == 0
        assert [h.id for h in filled.query(self.index, _vector(1, 0), k=5, filter={"author": [tricky, "x"]})] == [record.id]

    def test_bad_filter_is_a_spec_error(self, filled: VectorStore) -> None:
        with pytest.raises(SpecError, match="unknown operator"):
            filled.query(self.index, _vector(1, 0), k=5, filter={"year": {"$between": [1, 2]}})
        with pytest.raises(SpecError, match="not filterable"):
            filled.count(self.index, {"text": {"$ne": "x"}})

    def test_fetch_returns_vectors_and_metadata(self, filled: VectorStore) -> None:
        [record] = filled.fetch(self.index, ["gamma-c1", "missing"])
        assert record.id == "gamma-c1" and record.doc_id == "gamma" and record.chunk == 1
        assert len(record.vector) == DIM
        assert_vectors(record.vector, make_records("gamma", 2, axis=2)[1].vector, "gamma-c1")
        assert record.metadata == {"doc": "gamma", "lang": "en", "year": 2010, "draft": False, "score": 0.5}

    def test_chunk_ids_by_source(self, filled: VectorStore) -> None:
        assert set(filled.chunk_ids(self.index, source="contract://src")) == {"alpha", "beta", "gamma"}
        assert filled.chunk_ids(self.index, source="elsewhere://") == {}

    def test_data_persists_across_clients(self, filled: VectorStore, reopen) -> None:
        other = reopen()
        assert other.count(self.index) == 9
        assert other.describe(self.index).model == MODEL
        assert [h.doc_id for h in other.query(self.index, _vector(7, 2), k=1)] == ["gamma"]
        assert_fetched(other, self.index, make_records("alpha", 4, axis=0) + make_records("gamma", 2, axis=2))

    def test_optimize_keeps_contents(self, filled: VectorStore) -> None:
        before = filled.chunk_ids(self.index)
        filled.optimize(self.index)
        assert filled.chunk_ids(self.index) == before
        assert_fetched(filled, self.index, make_records("alpha", 4, axis=0) + make_records("beta", 3, axis=1)
                       + make_records("gamma", 2, axis=2))
