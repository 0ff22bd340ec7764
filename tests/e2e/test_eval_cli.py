"""Evaluation, registry and gate through the real CLI on the local stack: `stackwise models
register`, `stackwise eval` as a job (perplexity, MMLU-format questions built from the Lee corpus,
retrieval on a real index, precomputed RAG answers), `stackwise promote` refusing a worse candidate
with exit 4 and a table and accepting a better one, and the leakage guard failing with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from .conftest import lee_articles, run_cli, write_txt_corpus  # noqa: E402


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    from stackwise.evaluation.mmlu import build_from_text
    from stackwise.training.tiny import build_tiny_model, train_tiny

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("eval-e2e")
    articles = lee_articles()
    sentences = [s.strip() for a in articles[:60] for s in a.split(". ") if len(s.split()) >= 8]
    train, held = sentences[:120], sentences[150:166]
    random_model = build_tiny_model(root / "random", sentences, vocab_size=400)
    trained = root / "trained"
    shutil.copytree(random_model, trained)
    train_tiny(trained, train)
    (root / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    files = write_txt_corpus(root / "docs", articles[200:212], first=200)
    records = [{"text": t} for t in held]
    records += build_from_text(articles[100:140], 8, seed=3)
    records += [{"query": "bushfires threatening homes", "relevant": [files[200].name]},
                {"query": articles[205][:120], "relevant": [files[205].name]}]
    records += [{"question": "Where did the fires burn?", "answers": ["near Sydney"],
                 "context": "Bushfires burned near Sydney overnight.", "prediction": "near Sydney"}]
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (root / "gates.yaml").write_text("data: eval.jsonl\nmetrics:\n  perplexity: {min_delta: 1.0}\n")
    return root


def test_eval_registry_and_gate_through_the_cli(world: Path, sw_home: Path) -> None:
    cli = lambda *a, expect=0: run_cli(sw_home, *a, expect=expect)  # noqa: E731
    train = str(world / "train.jsonl")
    assert cli("models", "register", str(world / "random"), "--name", "demo", "--data", train, "--json").json()[
        "version"] == "1"
    assert cli("models", "register", str(world / "trained"), "--name", "demo", "--data", train,
               "--alias", "candidate", "--json").json()["version"] == "2"
    cli("index", str(world / "docs"), "--index", "kb", "--json")

    out = cli("eval", "--model", "models:/demo@candidate", "--baseline", "models:/demo/1", "--data",
              str(world / "eval.jsonl"), "--suite", "perplexity,mmlu,retrieval,qa", "--index", "kb", "-k", "3",
              "--json").json()
    cand, base = out["candidate"]["metrics"], out["baseline"]["metrics"]
    assert out["candidate"]["pinned"] == "models:/demo/2"
    assert cand["perplexity"] < base["perplexity"] - 1.0
    assert 0.0 <= cand["mmlu.accuracy"] <= 1.0 and cand["qa.exact_match"] == 1.0 and cand["qa.supported"] == 1.0
    assert cand["retrieval.recall_at_3"] == base["retrieval.recall_at_3"] >= 0.5  # the index, not the model
    assert cand["retrieval.mrr"] > 0 and 0 < cand["retrieval.ndcg_at_3"] <= 1
    report = Path(out["report_html"])
    assert report.is_file() and "data:image/png;base64," in report.read_text()
    assert {"plot-perplexity.png", "plot-mmlu.png", "plot-retrieval.png"} <= {p.name for p in report.parent.iterdir()}

    # The first champion, then a better candidate passes the gate, then a worse one is refused.
    gate = str(world / "gates.yaml")
    cli("promote", "demo", "--version", "1", "--gate", gate)
    accepted = cli("promote", "demo", "--version", "2", "--gate", gate, "--json").json()
    assert accepted["promoted"] and accepted["champion_after"] == "2" and accepted["rows"][0]["passed"]
    refused = cli("promote", "demo", "--version", "1", "--gate", gate, expect=4)
    assert "FAIL" in refused.stdout and "perplexity" in refused.stdout
    assert "did not beat champion version 2" in refused.stderr and "Traceback" not in refused.stderr
    shown = cli("models", "show", "demo", "--json").json()
    assert shown["aliases"]["champion"] == "2"
    v2 = shown["versions"][1]
    assert v2["lineage"]["data"] == train and v2["lineage"]["evaluation_runs"]
    assert v2["evaluations"][0]["metrics"]["perplexity"] == pytest.approx(cand["perplexity"], rel=1e-4)
    listed = cli("models", "list", "--json").json()
    assert listed == [{"name": "demo", "versions": 2, "latest": 2, "aliases": {"champion": "2", "previous-champion": "1",
                                                                              "candidate": "1"},
                       "description": ""}]

    # The leakage guard: a training sentence in the evaluation data fails the job with exit 2.
    leaky = world / "leaky.jsonl"
    first_train = json.loads((world / "train.jsonl").read_text().splitlines()[0])["text"]
    leaky.write_text(json.dumps({"text": first_train.lower()}) + "\n")
    failed = cli("eval", "--model", "models:/demo@champion", "--data", str(leaky), "--suite", "perplexity",
                 expect=2)
    assert "appear in the training data" in failed.stderr and "--allow-leakage" in failed.stderr
