"""The embedded store's LanceDB ANN path: above the threshold `optimize` builds an IVF_SQ index
(adapters/vectors/embedded.py: scalar-quantized, re-ranked exactly), and queries through it keep
high recall against exact search and still apply filters first. Unfiltered queries of an
optimized table are answered by the graph index (tests/contract/test_embedded_graph.py), so
these tests turn it off: the IVF_SQ index serves filtered queries and versions not yet optimized."""

import numpy as np
import pytest

from stackwise.adapters.vectors import embedded
from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.vectors import Record

DIM = 32


@pytest.fixture
def clustered(clustered_vectors):
    vectors, labels = clustered_vectors
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), labels


def test_ivf_sq_index_keeps_recall_and_filters(tmp_path, monkeypatch, clustered):
    vectors, labels = clustered
    monkeypatch.setenv("STACKWISE_GRAPH_INDEX", "0")
    monkeypatch.setattr(embedded, "ANN_THRESHOLD", 1000)
    store = EmbeddedStore(str(tmp_path))
    store.create_index("ann", DIM, "m")
    records = [
        Record(id=f"r{i}", vector=v, text=str(i), doc_id=f"d{i // 10}", metadata={"cluster": int(labels[i])})
        for i, v in enumerate(vectors)
    ]
    for start in range(0, len(records), 1000):
        store.upsert("ann", records[start : start + 1000])
    store.optimize("ann")
    table = store._table("ann")
    assert EmbeddedStore._has_ann(table), "optimize above the threshold must build a vector index"
    vector_indexes = [i for i in table.list_indices() if "vector" in i.columns]
    assert [i.index_type for i in vector_indexes] == ["IvfSq"], vector_indexes  # IVF_SQ

    rng = np.random.default_rng(11)
    queries = vectors[rng.choice(len(vectors), 30, replace=False)] + 0.05 * rng.normal(size=(30, DIM))
    recalls = []
    for q in queries:
        exact = {f"r{i}" for i in np.argsort(-(vectors @ q))[:10]}
        got = {h.id for h in store.query("ann", q, k=10)}
        recalls.append(len(exact & got) / 10)
    assert np.mean(recalls) >= 0.9

    target = int(labels[0])
    hits = store.query("ann", vectors[5], k=10, filter={"cluster": target})
    assert hits and all(h.metadata["cluster"] == target for h in hits)
    assert store.count("ann") == 3000


def test_index_is_retrained_when_the_table_doubles(tmp_path, monkeypatch, clustered):
    vectors, _ = clustered
    monkeypatch.setenv("STACKWISE_GRAPH_INDEX", "0")
    monkeypatch.setattr(embedded, "ANN_THRESHOLD", 1000)
    store = EmbeddedStore(str(tmp_path))
    store.create_index("grow", DIM, "m")

    def add(lo, hi):
        store.upsert("grow", [Record(id=f"r{i}", vector=vectors[i % len(vectors)], text="", doc_id=f"d{i}")
                              for i in range(lo, hi)])

    add(0, 1500)
    store.optimize("grow")
    first = EmbeddedStore._vector_index(store._table("grow"))
    add(1500, 2500)  # grown by less than RETRAIN_GROWTH: new rows are folded in, no retraining
    store.optimize("grow")
    assert EmbeddedStore._vector_index(store._table("grow")) == first
    add(2500, 3200)
    store.optimize("grow")
    second = EmbeddedStore._vector_index(store._table("grow"))
    assert second != first and second.endswith("3200")
    assert store.count("grow") == 3200
    q = vectors[17]
    assert store.query("grow", q, k=1)[0].score > 0.99
