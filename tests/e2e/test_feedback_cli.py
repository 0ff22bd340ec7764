"""The feedback round trip through the real CLI on the local stack: answers recorded the way the
server records them (FeedbackStore on the stack's MLflow store), feedback, `stackwise feedback
list`, an interactive `stackwise feedback review` driven through a pipe, `stackwise feedback
export` (eval JSONL and Label Studio tasks), `stackwise eval --suite qa` on the export, and the
promotion gate reading that evaluation. Bad input exits 2 with what, where and fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from .conftest import CLI_TIMEOUT_S, lee_articles, run_cli, stackwise_env  # noqa: E402


def feedback_cli(home: Path, *args: str, stdin: str = "", expect: int = 0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", "feedback", *args], cwd=str(home.parent),
                          env=stackwise_env(home, threads=1), input=stdin, capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, check=False)
    assert proc.returncode == expect, f"feedback {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def seed(home: Path) -> list[str]:
    """Four answers over Lee articles, as the server records them, three with user feedback."""
    from stackwise.feedback import AnswerRecord, FeedbackStore

    articles = lee_articles()[:4]
    store = FeedbackStore.for_stack("local")
    assert str(home) in store.tracking_uri  # the local stack's own MLflow store
    ids = []
    for n, article in enumerate(articles):
        first = article.split(". ")[0]
        ids.append(f"req{n}")
        store.record_answer(AnswerRecord(
            request_id=ids[-1], endpoint="default", app="news", model="chat:1", version=str(1 + n % 2),
            messages=[{"role": "user", "content": f"What does article {n} report first?"}], answer=first,
            sources=[{"id": f"lee-{n}:0", "doc_id": f"lee-{n}.txt", "source": f"file:///news/lee-{n}.txt",
                      "score": 0.9 - n / 10, "text": article[:400]}],
            latency_ms=200.0 + 10 * n, ttft_ms=40.0, created=1_796_000_000.0 + n))
    store.add_feedback("req0", score=1.0, user="ann")
    store.add_feedback("req1", label="incorrect", correction="A correction the reader sent.", user="bob")
    store.add_feedback("req2", score=0.5, comment="partly right")
    return ids


def test_feedback_round_trip_through_review_export_eval_and_gate(sdk_env: Path, tmp_path: Path) -> None:
    import torch

    from stackwise.training.tiny import build_tiny_model

    torch.set_num_threads(1)
    home = sdk_env
    seed(home)
    listed = json.loads(feedback_cli(home, "list", "--json").stdout)
    assert [i["record"]["request_id"] for i in listed] == ["req2", "req1", "req0"]  # with feedback, newest first
    assert listed[1]["feedback"][0]["label"] == "incorrect" and listed[1]["score"] == 0.0

    # Oldest first: approve req0, correct req1 (Enter takes the reader's correction), skip req2.
    review = feedback_cli(home, "review", "--reviewer", "rita", stdin="a\nmaybe\nc\n\ns\n")
    assert "What does article 0 report first?" in review.stdout and "lee-0.txt" in review.stdout
    assert "answer one of: a, c, s, q" in review.stdout  # "maybe" was asked again
    assert "1 approved, 1 corrected, 1 skipped, 0 left" in review.stdout
    from stackwise.feedback import FeedbackStore

    store = FeedbackStore.for_stack("local")
    assert [i.record["request_id"] for i in store.list(reviewed=False)] == ["req3", "req2"]  # req3 got no feedback
    review1 = store.get("req1").review
    assert (review1.decision, review1.reviewer) == ("corrected", "rita")
    assert review1.expected == "A correction the reader sent."

    # Bad input: exit 2, what/where/fix, no traceback.
    bad = feedback_cli(home, "review", "--request-id", "nope", expect=2)
    assert "no answer with request id 'nope'" in bad.stderr and "fix:" in bad.stderr and "Traceback" not in bad.stderr
    bad = feedback_cli(home, "export", "--format", "xml", "--out", str(tmp_path / "x"), expect=2)
    assert "unknown export format 'xml'" in bad.stderr and "where: --format" in bad.stderr
    assert not (tmp_path / "x").exists()

    export = tmp_path / "feedback-eval.jsonl"
    out = json.loads(feedback_cli(home, "export", "--format", "eval", "--out", str(export), "--with-predictions",
                                  "--json").stdout)
    assert out["records"] == {"qa": 2, "retrieval": 1}
    records = [json.loads(line) for line in export.read_text().splitlines()]
    assert [r.get("request_id") for r in records] == ["req0", "req0", "req1"]

    # The export is evaluation data: qa on the served answers (records carry `prediction`), then the gate.
    model = build_tiny_model(tmp_path / "tiny", lee_articles()[:40], vocab_size=400)
    cli = lambda *a, expect=0: run_cli(home, *a, expect=expect)  # noqa: E731
    assert cli("models", "register", str(model), "--name", "demo", "--json").json()["version"] == "1"
    assert cli("models", "register", str(model), "--name", "demo", "--json").json()["version"] == "2"
    gate = tmp_path / "gate.yaml"
    gate.write_text(f"data: {export}\nmetrics:\n  qa.exact_match: {{}}\n")
    cli("promote", "demo", "--version", "1", "--gate", str(gate))  # the first champion
    report = cli("eval", "--model", "models:/demo/2", "--baseline", "models:/demo/1", "--data", str(export),
                 "--suite", "qa", "--json").json()
    # Hand count: the approved answer equals its expected answer, the corrected one does not.
    assert report["candidate"]["metrics"]["qa.exact_match"] == 0.5
    assert report["candidate"]["metrics"]["qa.supported"] == 1.0  # answers are the articles' first sentences
    refused = cli("promote", "demo", "--version", "2", "--gate", str(gate), expect=4)
    assert "qa.exact_match" in refused.stdout and "did not beat champion version 1" in refused.stderr
