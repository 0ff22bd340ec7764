"""What the container tests share: check the end of a two-node index job, search the index it wrote
from the host through the CLI, and compare the top hits with the same documents indexed on this
machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

STACKS = Path(__file__).resolve().parents[2] / "stacks"


def s3_env(endpoint: str) -> dict[str, str]:
    """What the containers and the host need to reach moto's S3 (LanceDB's object store included)."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1"}


def lee_articles(count: int) -> list[str]:
    """The first `count` articles of gensim's Lee news corpus."""
    gensim = pytest.importorskip("gensim")
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    return [x.strip() for x in path.read_text(encoding="latin-1").splitlines() if x.strip()][:count]


def assert_two_shards(report: dict, listed: Iterable[str], root: str, articles: int) -> None:
    """A two-node index job's end: each node wrote its report under ROOT/shards/<rank>/ (`listed`:
    what the store holds below ROOT/shards/), and their sum `report` counts every article once, each
    chunk added."""
    assert sorted(listed) == [f"{root}/shards/0/result.json", f"{root}/shards/1/result.json"]
    assert (report["documents"], report["shards"]) == (articles, 2), report
    assert report["added"] == report["chunks"] > articles


def host_search(stack: str, query: str, index: str, cwd: Path, secret: str | None = None, **env: str) -> list[dict]:
    """`stackwise search QUERY --stack STACK --json` in a fresh process, as a user on the host runs it
    (the stack's outputs from $STACKWISE_OUTPUTS, the project's stacks/ folder, `env` added); `secret`
    must appear nowhere in what it prints."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STACKWISE_")}
    clean.update(STACKWISE_OUTPUTS=os.environ["STACKWISE_OUTPUTS"], STACKWISE_HOME=str(cwd / ".stackwise"),
                 STACKWISE_STACKS_DIR=str(STACKS), HF_HUB_OFFLINE="1", STACKWISE_THREADS="2", OMP_NUM_THREADS="2",
                 **env)
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "search", query, "--index", index, "-k", "5",
                           "--stack", stack, "--json"], env=clean, capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert secret is None or secret not in proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def assert_same_top5_as_local(cloud_hits: list[dict], texts: list[str], query: str, tmp_path: Path) -> None:
    """The hits name the same documents, texts and scores (1e-4) as `texts` indexed here as lee-NNN.txt."""
    from stackwise.adapters.vectors.embedded import EmbeddedStore
    from stackwise.embeddings import load_embedder
    from stackwise.specs import IndexSpec
    from stackwise.workloads.index import run_index

    docs = tmp_path / "local-docs"
    docs.mkdir()
    for number, text in enumerate(texts):
        (docs / f"lee-{number:03d}.txt").write_text(text + "\n", encoding="utf-8")
    store = EmbeddedStore(str(tmp_path / "local-vectors"))
    run_index(IndexSpec(source=str(docs), index="kb"), store=store, progress=lambda *a, **k: None)
    local_hits = store.query("kb", load_embedder("all-MiniLM-L6-v2").encode([query])[0], k=5)
    assert len(cloud_hits) == len(local_hits) == 5
    assert [Path(h["doc_id"]).name for h in cloud_hits] == [Path(h.doc_id).name for h in local_hits]
    assert [h["text"] for h in cloud_hits] == [h.text for h in local_hits]
    for cloud, local in zip(cloud_hits, local_hits):
        assert cloud["score"] == pytest.approx(local.score, abs=1e-4)
