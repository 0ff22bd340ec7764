"""RAG apps end to end on the local stack: a real index of Lee articles (an index job), a tiny
real generator registered in the MLflow registry, two RAG app versions registered through
`stackwise rag register`, `stackwise eval --model rag:NAME@candidate --baseline rag:NAME@champion`
as a real evaluation job (recorded on those registry versions), the promotion gate moving the
champion between RAG versions and refusing a worse one, `stackwise rag ask`, and the sub-app
mounted in the main CLI (errors: exit 2, no traceback).

Version 1 retrieves only from two articles no query is about (a filter), version 2 from the
whole index with MMR: the retrieval metrics must tell them apart and the gate must follow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from .conftest import (  # noqa: E402
    CLI_TIMEOUT_S,
    file_uri,
    lee_articles,
    run_cli,
    stackwise_env,
    store_rows,
    write_txt_corpus,
)

FIRST, N = 200, 8


def rag_cli(home: Path, *args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "rag", *args], cwd=str(home.parent),
                          env=stackwise_env(home, threads=1), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)
    if expect is not None:
        assert proc.returncode == expect, f"rag {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from stackwise.training.tiny import build_tiny_model

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("rag-e2e")
    articles = lee_articles()
    files = write_txt_corpus(root / "docs", articles[FIRST:FIRST + N], first=FIRST)
    build_tiny_model(root / "gen", articles[:80], vocab_size=400)
    records = [{"query": articles[n][:150], "relevant": [files[n].name]} for n in range(FIRST, FIRST + 4)]
    records += [{"question": f"What happened? {articles[n][:80]}", "answers": [" ".join(articles[n].split()[:6])]}
                for n in range(FIRST, FIRST + 3)]
    records += [{"prompt": f"Summarise: {articles[n][:100]}", "reference": articles[n][:100]}
                for n in (FIRST, FIRST + 1)]
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "gates.yaml").write_text("data: eval.jsonl\nmetrics:\n  retrieval.recall_at_3: {min_delta: 0.5}\n")
    off_topic = [file_uri(files[n]) for n in (FIRST + 6, FIRST + 7)]
    (root / "v1.yaml").write_text("rag:\n  name: lee-rag\n  index: kb\n  k: 2\n  generator: models:/gen/1\n"
                                  f"  filter: {json.dumps({'doc_id': off_topic})}\n  max_tokens: 16\n")
    (root / "v2.yaml").write_text("rag:\n  name: lee-rag\n  index: kb\n  k: 3\n  rerank: mmr\n  fetch_k: 6\n"
                                  "  generator: models:/gen/1\n  max_tokens: 16\n")
    return root, files


def test_rag_versions_are_evaluated_and_promoted_like_models(world, sw_home: Path, sdk_env: Path):
    from typer.testing import CliRunner

    from stackwise.cli.rag import rag_app
    from stackwise.model_registry import GateFailed, Registry
    from stackwise.rag import resolve_rag

    root, files = world
    run_cli(sw_home, "index", str(root / "docs"), "--index", "kb", "--json")
    registry = Registry()
    assert registry.register(str(root / "gen"), "gen") == "1"

    runner = CliRunner()
    first = runner.invoke(rag_app, ["register", str(root / "v1.yaml"), "--json"], catch_exceptions=False)
    assert json.loads(first.stdout)["version"] == "1", first.stdout
    second = runner.invoke(rag_app, ["register", str(root / "v2.yaml"), "--alias", "candidate", "--json"])
    assert json.loads(second.stdout) == {"rag": "lee-rag", "version": "2", "alias": "candidate", "ref": "rag:lee-rag/2"}
    again = runner.invoke(rag_app, ["register", str(root / "v2.yaml"), "--json"])  # same config, same version
    assert json.loads(again.stdout)["version"] == "2"
    listed = json.loads(runner.invoke(rag_app, ["list", "--json"]).stdout)
    assert [(r["name"], r["versions"], r["aliases"]) for r in listed] == [("lee-rag", 2, {"candidate": "2"})]
    shown = json.loads(runner.invoke(rag_app, ["show", "lee-rag@candidate", "--json"]).stdout)
    assert shown["version"] == "2" and shown["aliases"] == ["candidate"] and shown["config"]["rerank"] == "mmr"
    with pytest.raises(ValueError, match="gen version 1 is a model, not a RAG app"):
        resolve_rag("rag:gen/1", registry)
    (root / "gen.yaml").write_text((root / "v1.yaml").read_text().replace("name: lee-rag", "name: gen"))
    with pytest.raises(ValueError, match="gen is a registered model, not a RAG app"):
        runner.invoke(rag_app, ["register", str(root / "gen.yaml")], catch_exceptions=False)

    gate = str(root / "gates.yaml")
    assert registry.promote("lee-rag", gate, version="1").promoted  # the first champion
    registry.set_alias("lee-rag", "candidate", "2")
    assert resolve_rag("rag:lee-rag", registry)[1] == "1"  # the champion

    # One evaluation job: both RAG versions end to end on the same data, recorded on their versions.
    out = run_cli(sw_home, "eval", "--model", "rag:lee-rag@candidate", "--baseline", "rag:lee-rag@champion",
                  "--data", str(root / "eval.jsonl"), "--suite", "qa,retrieval,rouge", "-k", "3",
                  "--max-new-tokens", "12", "--json").json()
    cand, base = out["candidate"], out["baseline"]
    assert (cand["registered_model"], cand["version"], base["version"]) == ("lee-rag", "2", "1")
    assert cand["pinned"] == "models:/lee-rag/2" and cand["ref"] == "rag:lee-rag@candidate"
    assert cand["metrics"]["retrieval.recall_at_3"] == 1.0 and base["metrics"]["retrieval.recall_at_3"] == 0.0
    for metrics in (cand["metrics"], base["metrics"]):
        assert {"qa.f1", "qa.supported", "rouge.rougeL", "retrieval.mrr"} <= set(metrics)
    rows = [json.loads(x) for x in Path(cand["examples"]).read_text().splitlines()]
    chunks = store_rows(sw_home, "kb")
    qa_rows = [r for r in rows if r["suite"] == "qa"]
    assert len(qa_rows) == 3 and all(r["sources"] and set(r["sources"]) <= set(chunks) for r in qa_rows)
    base_rows = [json.loads(x) for x in Path(base["examples"]).read_text().splitlines()]
    allowed = {file_uri(files[FIRST + 6]), file_uri(files[FIRST + 7])}
    assert all(chunks[c][1] in allowed for r in base_rows if r["suite"] == "qa" for c in r["sources"])
    assert registry.evaluations("lee-rag", "2")[0]["metrics"]["retrieval.recall_at_3"] == 1.0

    # The gate: version 2 beats the champion and is promoted; version 1 back is refused (exit 4).
    promoted = registry.promote("lee-rag", gate)
    assert promoted.promoted and promoted.champion_after == "2" and promoted.rows[0]["passed"]
    with pytest.raises(GateFailed, match="did not beat champion version 2"):
        registry.promote("lee-rag", gate, version="1")
    assert resolve_rag("rag:lee-rag", registry)[1] == "2"
    assert resolve_rag("rag:lee-rag@previous-champion", registry)[1] == "1"

    # `stackwise rag ask`: the champion answers from the index, its sources narrowed by --filter.
    only = file_uri(files[FIRST + 2])
    asked = runner.invoke(rag_app, ["ask", "lee-rag", "What happened?", "--filter", f"doc_id={only}", "--json"],
                          catch_exceptions=False)
    answer = json.loads(asked.stdout)
    assert answer["model"] == "rag:lee-rag/2" and answer["sources"] and answer["annotations"]
    assert all(s["doc_id"] == only and s["id"] in chunks for s in answer["sources"])
    assert answer["usage"]["prompt_tokens"] > 0
    with pytest.raises(ValueError, match="RAG app nope is not in the registry"):
        runner.invoke(rag_app, ["ask", "nope", "Why?"], catch_exceptions=False)
    # Mounted in the main CLI, an error is a message and exit 2, never a traceback.
    bad = rag_cli(sw_home, "register", str(root / "missing.yaml"), expect=2)
    assert "cannot read RAG app file" in bad.stderr and "Traceback" not in bad.stderr
