"""End to end through the CLI: index a real corpus into Pinecone (a local server speaking its
data-plane API) and into the embedded store, and get the same search results from both;
copy an index between the two stores without re-embedding; and never print the API key.

The Pinecone stack is a local stack (jobs run on this machine) whose vector store is
`{kind: pinecone, host: ..., apiKeySecret: env://PINECONE_TEST_KEY}`. Every CLI call runs in
a subprocess (`python -m stackwise.cli`) and loads the shipped all-MiniLM-L6-v2 model.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pinecone", reason="install stackwise[pinecone]")
pytest.importorskip("gensim", reason="install stackwise[local]")

from conftest import PINECONE_TEST_KEY, run_stackwise, write_lee_corpus  # noqa: E402

pytestmark = pytest.mark.slow

ARTICLES = 40
QUERIES = ["bushfires burning near Sydney", "Palestinian militants and Israeli forces",
           "cricket test match against South Africa"]


@pytest.fixture(scope="module")
def pinecone384():
    from pinecone_server import PineconeServer

    server = PineconeServer(dimension=384, api_key=PINECONE_TEST_KEY).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory, pinecone384) -> Path:
    root = tmp_path_factory.mktemp("pinecone-project")
    (root / "Pulumi.yaml").write_text("name: demo\nruntime: python\nstackConfigDir: stacks/\n")
    stacks = root / "stacks"
    stacks.mkdir()
    (stacks / "Pulumi.local.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n    kind: embedded\n    path: vectors\n")
    (stacks / "Pulumi.pc.yaml").write_text(
        "config:\n  stackwise:cloud: local\n  stackwise:vectorStore:\n    kind: pinecone\n"
        f"    host: {pinecone384.url}\n    apiKeySecret: env://PINECONE_TEST_KEY\n")
    write_lee_corpus(root / "docs", ARTICLES)
    return root


OUTPUTS: list[str] = []  # every stdout and stderr, grepped for the key at the end


def cli(root: Path, *args: str, expect: int = 0, key: str = PINECONE_TEST_KEY) -> subprocess.CompletedProcess:
    return run_stackwise(root, *args, expect=expect, drop=("PINECONE_",), outputs=OUTPUTS,
                         env={"PINECONE_TEST_KEY": key, "PINECONE_DEBUG_CURL": "1"})


@pytest.fixture(scope="module")
def indexed(project, pinecone384) -> Path:
    for stack in ("local", "pc"):
        report = json.loads(cli(project, "index", "./docs", "--index", "kb", "--stack", stack, "--json").stdout)
        assert report["documents"] == ARTICLES and report["added"] == report["chunks"] > ARTICLES
    return project


def _top(root: Path, stack: str, query: str, index: str = "kb") -> list[tuple[str, float]]:
    hits = json.loads(cli(root, "search", query, "--index", index, "--stack", stack, "-k", "5", "--json").stdout)
    return [(h["id"], h["score"]) for h in hits]


def _stores(root: Path, server):
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.adapters.vectors.pinecone import PineconeStore
    from stackwise.contract import VectorStoreOutput

    os.environ.setdefault("PINECONE_TEST_KEY", PINECONE_TEST_KEY)
    hosted = PineconeStore(VectorStoreOutput(kind="pinecone", host=server.url, api_key_secret="env://PINECONE_TEST_KEY"))
    return EmbeddedStore(str(root / ".stackwise" / "vectors")), hosted


def test_pinecone_and_embedded_return_the_same_top_results(indexed, pinecone384):
    listed = {stack: json.loads(cli(indexed, "indexes", "--stack", stack, "--json").stdout) for stack in ("local", "pc")}
    assert [(i["name"], i["dim"], i["model"], i["count"]) for i in listed["pc"]] == \
           [(i["name"], i["dim"], i["model"], i["count"]) for i in listed["local"]]
    assert set(pinecone384.state.namespaces) == {"__stackwise_catalog__", "kb"}
    # The demonstration: `stackwise search` on each stack, the same query, the same top results.
    local, hosted = _top(indexed, "local", QUERIES[0]), _top(indexed, "pc", QUERIES[0])
    assert [i for i, _ in hosted] == [i for i, _ in local]
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(hosted, local))
    # More queries through the stores themselves (stored chunk vectors as queries, with a filter).
    embedded, pinecone = _stores(indexed, pinecone384)
    docs = embedded.chunk_ids("kb")
    some = sorted(i for ids in docs.values() for i in ids)[::25][:6]
    for record in embedded.fetch("kb", some):
        for flt in (None, {"doc_id": sorted(docs)[:20]}):
            want = [(h.id, round(h.score, 4)) for h in embedded.query("kb", record.vector, k=5, filter=flt)]
            got = [(h.id, round(h.score, 4)) for h in pinecone.query("kb", record.vector, k=5, filter=flt)]
            assert [i for i, _ in got] == [i for i, _ in want]


def test_index_copy_moves_vectors_without_re_embedding(indexed, pinecone384):
    report = json.loads(cli(indexed, "index", "copy", "--from-stack", "local", "--index", "kb",
                            "--to-stack", "pc", "--to-index", "kb-copy", "--json").stdout)
    assert report["documents"] == ARTICLES and report["to_index"] == "kb-copy"
    embedded, pinecone = _stores(indexed, pinecone384)
    assert pinecone.chunk_ids("kb-copy") == embedded.chunk_ids("kb")
    ids = sorted(i for ids in embedded.chunk_ids("kb").values() for i in ids)
    copied = {r.id: r for r in pinecone.fetch("kb-copy", ids)}
    for original in embedded.fetch("kb", ids):
        twin = copied[original.id]
        assert (twin.text, twin.doc_id, twin.source, twin.chunk, dict(twin.metadata)) == \
               (original.text, original.doc_id, original.source, original.chunk, dict(original.metadata))
        np.testing.assert_allclose(twin.vector, original.vector, rtol=0, atol=1e-6)
    # Copying again changes nothing (same ids, same documents).
    again = json.loads(cli(indexed, "index", "copy", "--from-stack", "local", "--index", "kb",
                           "--to-stack", "pc", "--to-index", "kb-copy", "--json").stdout)
    assert again["chunks"] == report["chunks"] == len(pinecone384.state.namespaces["kb-copy"])


def test_a_wrong_key_is_a_clear_cli_error(indexed):
    wrong = "pcsk_WRONG_cli_key_5e8d"
    proc = cli(indexed, "search", "anything", "--index", "kb", "--stack", "pc", expect=2, key=wrong)
    assert "rejected the API key" in proc.stderr and "Traceback" not in proc.stderr
    assert wrong not in proc.stdout + proc.stderr


def test_the_key_is_in_no_output_or_log(indexed):
    # Runs last in this module: every CLI output above, and every file the jobs wrote.
    assert OUTPUTS
    for text in OUTPUTS:
        assert PINECONE_TEST_KEY not in text
    logs = [p for p in (indexed / ".stackwise").rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
    assert any(p.suffix == ".log" or "log" in p.name for p in logs), "no job log found to check"
    for path in logs:
        assert PINECONE_TEST_KEY.encode() not in path.read_bytes(), path
