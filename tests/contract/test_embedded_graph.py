"""The graph index beside the embedded store (adapters/vectors/graph.py): unfiltered queries of
an optimized table are answered by the HNSW graph with exact scores; it never answers for a table
version it was not built for; it is updated incrementally; it is found by other clients and in
object stores; a damaged or half-written graph folder is ignored, never trusted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stackwise.adapters.vectors import graph as graphs
from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.testing.vector_store import VectorStoreContract
from stackwise.vectors import Record

DIM = 32


def records(vectors, ids=None, **metadata):
    ids = ids if ids is not None else range(len(vectors))
    return [Record(id=f"r{i}", vector=v, text=f"text {i}", doc_id=f"d{i // 10}", source="s", chunk=int(i) % 10,
                   metadata={"cluster": int(i) % 7, **metadata}) for i, v in zip(ids, vectors)]


@pytest.fixture(autouse=True)
def through_hnsw(monkeypatch):
    """Small tables are scanned exactly (graph.EXACT_ROWS); these tests' tables are small, so the
    HNSW search is forced here, except where a test restores the threshold."""
    monkeypatch.setattr(graphs, "EXACT_ROWS", 0)


@pytest.fixture
def clustered(clustered_vectors):
    return clustered_vectors[0]


def exact(vectors: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> list[tuple[str, float]]:
    """Reference top-k by cosine, computed here with numpy in float64."""
    v = vectors.astype(np.float64)
    scores = (v @ q) / (np.linalg.norm(v, axis=1) * np.linalg.norm(q))
    order = np.argsort(-scores)[:k]
    return [(ids[i], float(scores[i])) for i in order]


def used_graph(store: EmbeddedStore, name: str) -> bool:
    state = store._state.get(name)
    return bool(state and state.graph is not None and state.version == store._table(name).version)


def test_optimized_queries_come_from_the_graph_with_exact_scores(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered))
    store.optimize("g")
    ids = [f"r{i}" for i in range(len(clustered))]
    rng = np.random.default_rng(3)
    recalls = []
    for q in clustered[rng.choice(len(clustered), 40, replace=False)] + 0.05 * rng.normal(size=(40, DIM)):
        want = exact(clustered, ids, q, 10)
        hits = store.query("g", q, k=10)
        assert used_graph(store, "g")
        recalls.append(len({h.id for h in hits} & {i for i, _ in want}) / 10)
        # Scores are the float32 cosine of the stored vector, not the int8 graph's estimate.
        reference = dict(exact(clustered, ids, q, len(ids)))
        for hit in hits:
            assert hit.score == pytest.approx(reference[hit.id], abs=2e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert np.mean(recalls) >= 0.97
    hit = store.query("g", clustered[5], k=1)[0]
    assert (hit.id, hit.text, hit.doc_id, hit.source, hit.chunk, hit.metadata) == (
        "r5", "text 5", "d0", "s", 5, {"cluster": 5})


def test_the_graph_never_answers_for_a_version_it_was_not_built_for(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:500]))
    store.optimize("g")
    q = clustered[10]
    assert store.query("g", q, k=1)[0].id == "r10" and used_graph(store, "g")

    # Written but not optimized: LanceDB's path answers and sees the new rows and the deletion.
    store.delete("g", ids=["r10"])
    store.upsert("g", [Record(id="new", vector=q * 2, text="", doc_id="dn")])
    assert [h.id for h in store.query("g", q, k=1)] == ["new"]
    assert not used_graph(store, "g")
    assert store.needs_optimize("g")

    # Another client on the same folder (a reader process) sees the same.
    other = EmbeddedStore(str(tmp_path))
    assert [h.id for h in other.query("g", q, k=2)][0] == "new"
    assert "r10" not in {h.id for h in other.query("g", q, k=50)}

    store.optimize("g")
    assert not store.needs_optimize("g")
    hits = other.query("g", q, k=50)
    assert used_graph(other, "g") and hits[0].id == "new" and "r10" not in {h.id for h in hits}


def test_graph_is_updated_incrementally_then_rebuilt(tmp_path, clustered, caplog):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:2000]))
    store.optimize("g")
    first = store.build_graph("g")
    assert first["rows"] == 2000

    # 30 deleted, 20 changed in place, 50 new: removed 50 (30 + 20), added 70 (50 + 20).
    store.delete("g", ids=[f"r{i}" for i in range(30)])
    moved = clustered[2500:2520]
    store.upsert("g", records(moved, ids=range(100, 120)))
    store.upsert("g", records(clustered[2000:2050], ids=range(2000, 2050)))
    report = store.build_graph("g")
    assert (report["mode"], report["removed"], report["added"], report["rows"]) == ("incremental", 50, 70, 2020)

    ids_now = [f"r{i}" for i in range(30, 2050)]
    table = {f"r{i}": clustered[i] for i in range(30, 2050)}
    table.update({f"r{i}": v for i, v in zip(range(100, 120), moved)})
    matrix = np.stack([table[i] for i in ids_now])
    for q in (clustered[5], moved[3], clustered[2040], clustered[100]):
        want = exact(matrix, ids_now, q, 5)
        got = [(h.id, h.score) for h in store.query("g", q, k=5)]
        assert used_graph(store, "g")
        assert [i for i, _ in got][:3] == [i for i, _ in want][:3]
        assert all(i not in {f"r{j}" for j in range(30)} for i, _ in got)

    # Removing more than REBUILD_REMOVED of the graph's entries rebuilds it from scratch.
    store.delete("g", ids=[f"r{i}" for i in range(30, 700)])
    assert store.build_graph("g")["mode"] == "full"
    assert store.query("g", clustered[800], k=1)[0].id == "r800"


def test_only_the_newest_graph_is_kept_and_leftovers_are_ignored(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:300]))
    store.optimize("g")
    folder = tmp_path / graphs.GRAPH_FOLDER / "g"
    version = store._table("g").version
    assert sorted(os.listdir(folder)) == [f"v{version}"]

    # A build killed before its manifest, or a staging folder, is not a graph.
    (folder / f"v{version + 5}").mkdir()
    (folder / f".v{version}.tmp-dead").mkdir()
    assert graphs.GraphStore(str(tmp_path)).versions("g") == [version]
    store.upsert("g", records(clustered[300:310], ids=range(300, 310)))
    store.optimize("g")
    new = store._table("g").version
    assert f"v{new}" in os.listdir(folder) and f"v{version}" not in os.listdir(folder)
    assert f".v{version}.tmp-dead" not in os.listdir(folder)


@pytest.mark.parametrize("damage", ["graph.usearch", "payload.arrow", "manifest.json", "keys.npy"])
def test_a_damaged_graph_is_not_trusted(tmp_path, clustered, damage, caplog):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:400]))
    store.optimize("g")
    version = store._table("g").version
    path = tmp_path / graphs.GRAPH_FOLDER / "g" / f"v{version}" / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    fresh = EmbeddedStore(str(tmp_path))
    hits = fresh.query("g", clustered[7], k=3)
    assert hits[0].id == "r7" and not used_graph(fresh, "g")
    assert "unreadable" in caplog.text
    # The next optimize writes a sound one (a full build: the damaged one is not reused).
    fresh.upsert("g", records(clustered[400:401], ids=[400]))
    fresh.optimize("g")
    assert fresh.query("g", clustered[7], k=1)[0].id == "r7" and used_graph(fresh, "g")


def test_zero_vectors_and_limits_match_lancedb(tmp_path, clustered, monkeypatch):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:50]) + [Record(id="zero", vector=np.zeros(DIM), text="", doc_id="z")])
    store.optimize("g")
    through_graph = {
        "zero query": store.query("g", np.zeros(DIM), k=5),
        "k above rows": [h.id for h in store.query("g", clustered[3], k=500)],
        "k=0": store.query("g", clustered[3], k=0),
    }
    assert used_graph(store, "g")
    monkeypatch.setenv("STACKWISE_GRAPH_INDEX", "0")
    through_lance = {
        "zero query": store.query("g", np.zeros(DIM), k=5),
        "k above rows": [h.id for h in store.query("g", clustered[3], k=500)],
    }
    assert through_graph["zero query"] == through_lance["zero query"] == []
    assert through_graph["k above rows"] == through_lance["k above rows"]
    assert len(through_graph["k above rows"]) == 50 and "zero" not in through_graph["k above rows"]
    assert through_graph["k=0"] == []


def test_filtered_queries_take_lancedb_prefilter(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:700]))
    store.optimize("g")
    hits = store.query("g", clustered[3], k=20, filter={"cluster": 3})
    assert hits and all(h.metadata["cluster"] == 3 for h in hits) and len(hits) == 20
    assert hits[0].id == "r3"


def test_an_index_built_before_graphs_existed_is_migrated_at_its_next_optimize(tmp_path, clustered, monkeypatch):
    monkeypatch.setenv("STACKWISE_GRAPH_INDEX", "0")  # what every earlier version wrote: no graph
    store = EmbeddedStore(str(tmp_path))
    store.create_index("old", DIM, "m")
    store.upsert("old", records(clustered[:600]))
    store.optimize("old")
    assert not (tmp_path / graphs.GRAPH_FOLDER).exists()
    monkeypatch.delenv("STACKWISE_GRAPH_INDEX")
    reader = EmbeddedStore(str(tmp_path))
    assert reader.query("old", clustered[9], k=1)[0].id == "r9" and not used_graph(reader, "old")
    assert reader.needs_optimize("old")  # so the next `stackwise index` run, even on unchanged input, builds it
    reader.optimize("old")
    assert reader.query("old", clustered[9], k=1)[0].id == "r9" and used_graph(reader, "old")


def test_drop_removes_the_graph(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:100]))
    store.optimize("g")
    store.drop_index("g")
    assert not (tmp_path / graphs.GRAPH_FOLDER / "g").exists()
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[100:110], ids=range(100, 110)))
    assert store.query("g", clustered[0], k=1)[0].id != "r0"


def test_a_reader_process_loads_the_graph(tmp_path, clustered):
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:500]))
    store.optimize("g")
    np.save(tmp_path / "q.npy", clustered[42])
    code = (
        "import json, numpy as np\n"
        "from stackwise.adapters.vectors.embedded import EmbeddedStore\n"
        f"s = EmbeddedStore({str(tmp_path)!r})\n"
        f"hits = s.query('g', np.load({str(tmp_path / 'q.npy')!r}), k=3)\n"
        "print(json.dumps([[h.id for h in hits], s._state['g'].graph is not None]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "STACKWISE_THREADS": "1"})
    ids, graph_used = json.loads(out.stdout.strip().splitlines()[-1])
    assert ids[0] == "r42" and graph_used


def test_graph_on_an_object_store(tmp_path, clustered, monkeypatch):
    from moto.server import ThreadedMotoServer

    from tests.emulators.cloud_fixtures import aws_moto_env

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"
        aws_moto_env(endpoint, tmp_path, monkeypatch)
        monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
        monkeypatch.setenv("STACKWISE_CACHE", str(tmp_path / "cache"))
        import boto3

        boto3.client("s3").create_bucket(Bucket="vectors")
        uri = "s3://vectors/store"
        store = EmbeddedStore(uri)
        store.create_index("g", DIM, "m")
        store.upsert("g", records(clustered[:300]))
        store.optimize("g")
        version = store._table("g").version
        assert graphs.GraphStore(uri).versions("g") == [version]
        reader = EmbeddedStore(uri)
        assert reader.query("g", clustered[11], k=1)[0].id == "r11" and used_graph(reader, "g")
        cached = list((tmp_path / "cache" / "graphs").rglob("manifest.json"))
        assert len(cached) == 1 and cached[0].parent.name == f"v{version}"
        store.upsert("g", records(clustered[300:320], ids=range(300, 320)))
        assert store.build_graph("g")["mode"] == "incremental"
        assert graphs.GraphStore(uri).versions("g") == [store._table("g").version]
        # The reader copies the new version and drops its copy of the old one.
        assert reader.query("g", clustered[310], k=1)[0].id == "r310" and used_graph(reader, "g")
        cached = list((tmp_path / "cache" / "graphs").rglob("manifest.json"))
        assert [c.parent.name for c in cached] == [f"v{store._table('g').version}"]
    finally:
        server.stop()


class OptimizingStore(EmbeddedStore):
    """Every write is followed by `optimize`, so every unfiltered query of the contract goes
    through the graph index."""

    def upsert(self, name, records):
        super().upsert(name, records)
        self.optimize(name)

    def replace_documents(self, name, doc_ids, records):
        super().replace_documents(name, doc_ids, records)
        self.optimize(name)

    def delete(self, name, ids=(), doc_ids=()):
        count = super().delete(name, ids=ids, doc_ids=doc_ids)
        self.optimize(name)
        return count


class TestEmbeddedStoreThroughTheGraph(VectorStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return OptimizingStore(str(tmp_path / "vectors"))

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: EmbeddedStore(str(tmp_path / "vectors"))


def test_model_of_follows_the_index_across_drop_and_recreate(tmp_path, clustered):
    store, other = EmbeddedStore(str(tmp_path)), EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "model-a")
    assert other.model_of("g") == other.describe("g").model == "model-a"
    store.drop_index("g")
    store.create_index("g", DIM, "model-b")
    assert other.model_of("g") == "model-b"
    store.drop_index("g")
    with pytest.raises(Exception, match="does not exist"):
        other.model_of("g")


def test_a_recreated_index_at_the_same_version_is_not_served_the_old_graph(tmp_path, clustered, monkeypatch):
    writer, reader = EmbeddedStore(str(tmp_path)), EmbeddedStore(str(tmp_path))

    def fill(ids):
        writer.create_index("g", DIM, "m")
        writer.upsert("g", records(clustered[ids], ids=ids))
        writer.optimize("g")
        return writer._table("g").version

    first = fill(range(0, 200))
    assert reader.query("g", clustered[5], k=1)[0].id == "r5" and used_graph(reader, "g")
    # Dropped through the API: the graph goes with it.
    writer.drop_index("g")
    second = fill(range(200, 400))
    assert second == first  # Lance restarts the version numbers
    hits = reader.query("g", clustered[5], k=3)
    assert all(int(h.id[1:]) >= 200 for h in hits) and used_graph(reader, "g")

    # A drop killed between the table and its graph (or a table removed by other means), then
    # the index re-created and filled up to the same version without a graph of its own: the old
    # graph is left at that version, and only the table's id tells it is not this table's.
    writer._db.drop_table("g")
    monkeypatch.setenv("STACKWISE_GRAPH_INDEX", "0")
    assert fill(range(400, 600)) == first
    monkeypatch.delenv("STACKWISE_GRAPH_INDEX")
    assert graphs.GraphStore(str(tmp_path)).versions("g") == [first]
    fresh = EmbeddedStore(str(tmp_path))
    for store in (reader, fresh):
        hits = store.query("g", clustered[5], k=3)
        assert all(int(h.id[1:]) >= 400 for h in hits) and not used_graph(store, "g")


def test_the_search_expansion_is_tuned_to_the_graph(tmp_path):
    """Near-duplicate clusters (100 points x 60 noisy copies): at the first expansion the graph
    misses true neighbours, so the build measures recall on its own vectors and ships a larger
    one, which readers use and which finds more of the exact top-10 for new queries."""
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(100, DIM))
    vectors = (np.repeat(centers, 60, axis=0) + 0.02 * rng.normal(size=(6000, DIM))).astype(np.float32)
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(vectors))
    store.optimize("g")
    report = store.build_graph("g")
    assert report["expansion_search"] > graphs.EXPANSIONS[0]
    assert report["tuned_recall_at_10"] >= graphs.TUNE_RECALL or report["expansion_search"] == graphs.EXPANSIONS[-1]
    reader = EmbeddedStore(str(tmp_path))
    queries = centers[:30] + 0.02 * rng.normal(size=(30, DIM))
    ids = [f"r{i}" for i in range(len(vectors))]

    def recall():
        return np.mean([len({h.id for h in reader.query("g", q, k=10)} & {i for i, _ in exact(vectors, ids, q, 10)}) / 10
                        for q in queries])

    tuned = recall()
    graph = reader._current("g").graph
    assert graph.index.expansion_search == report["expansion_search"]
    graph.index.expansion_search = graphs.EXPANSIONS[0]
    assert tuned >= 0.95 and tuned >= recall()


def test_small_tables_and_large_k_are_scanned_exactly(tmp_path, clustered, monkeypatch):
    monkeypatch.setattr(graphs, "EXACT_ROWS", 5000)
    store = EmbeddedStore(str(tmp_path))
    store.create_index("g", DIM, "m")
    store.upsert("g", records(clustered[:1000]) + [Record(id="zero", vector=np.zeros(DIM), text="", doc_id="z")])
    store.optimize("g")
    ids = [f"r{i}" for i in range(1000)]
    for q in clustered[1000:1010]:
        got = [(h.id, h.score) for h in store.query("g", q, k=10)]
        assert used_graph(store, "g")
        want = exact(clustered[:1000], ids, q, 10)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=2e-6)
    # k at or above the graph's size returns every live row, whatever the graph reaches.
    monkeypatch.setattr(graphs, "EXACT_ROWS", 0)
    assert len(store.query("g", clustered[3], k=1001)) == 1000
