"""Feedback and human review on a real MLflow tracking store (SQLite in a temporary folder).

What is promised and checked here: each answer is one MLflow trace that MLflow's own API reads
back (spans, tags, previews); feedback and reviews are assessments on that trace and no other;
bad feedback is refused with InputError (FeedbackNotFound for an unknown request id); the eval
export holds reviewed answers only and is read by the evaluation code's own reader and qa suite;
the Label Studio export matches its labeling config; the online statistics agree with numpy and
hand counts; the significance tests agree with Welch's and Fisher's formulas computed by hand; the
background recorder never blocks its caller.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from stackwise.errors import InputError  # noqa: E402
from stackwise.feedback import (  # noqa: E402
    LABELS, AnswerRecord, AsyncRecorder, FeedbackNotFound, FeedbackStore, VersionStats, compare_versions, percentile,
)

CITED = [{"id": "c1", "doc_id": "doc-a.txt", "source": "file:///kb/doc-a.txt", "score": 0.82,
          "text": "Bushfires burned near Sydney overnight."},
         {"id": "c7", "doc_id": "doc-b.txt", "source": "file:///kb/doc-b.txt", "score": 0.41}]


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(tracking_uri: str, request: pytest.FixtureRequest) -> FeedbackStore:
    """A store of its own per test: one experiment each in the module's tracking database."""
    return FeedbackStore(tracking_uri, experiment=f"test-{request.node.name}")


def answer(n: int, **fields) -> AnswerRecord:
    base = dict(request_id=f"req-{n}", endpoint="ep", app="kb", model="chat:2", version="2", user="u1",
                messages=[{"role": "system", "content": "Answer from the context."},
                          {"role": "user", "content": f"Where did fire {n} burn?"}],
                answer=f"near town {n}", sources=CITED, latency_ms=100.0 + n, ttft_ms=20.0, status=200,
                finish_reason="stop", created=1_790_000_000.0 + n)
    base.update(fields)
    return AnswerRecord(**base)


def mlflow_trace(store: FeedbackStore, request_id: str):
    """The trace of `request_id`, found through MLflow's own search (not through the store)."""
    from mlflow import MlflowClient

    found = MlflowClient(store.tracking_uri).search_traces(
        locations=[store.experiment_id], filter_string=f"tags.`stackwise.request_id` = '{request_id}'")
    assert len(found) == 1, f"{len(found)} traces for {request_id}"
    return found[0]


# -- traces ----------------------------------------------------------------------------------------
def test_an_answer_is_one_trace_mlflow_reads_back(store: FeedbackStore) -> None:
    store.record_answer(answer(1, prompt="[1] Bushfires burned near Sydney.\n\nWhere did fire 1 burn?"))
    store.record_answer(answer(2, messages=None, prompt="Complete: the fire", sources=[], status=500))
    trace = mlflow_trace(store, "req-1")
    assert trace.info.tags["stackwise.endpoint"] == "ep" and trace.info.tags["stackwise.app"] == "kb"
    assert trace.info.tags["stackwise.version"] == "2" and trace.info.tags["stackwise.model"] == "chat:2"
    assert trace.info.request_preview == "Where did fire 1 burn?" and trace.info.response_preview == "near town 1"
    assert trace.info.client_request_id == "req-1" and trace.info.state.value == "OK"
    root = next(s for s in trace.data.spans if s.parent_id is None)
    retriever = next(s for s in trace.data.spans if s.parent_id is not None)
    assert root.inputs["messages"][1]["content"] == "Where did fire 1 burn?"
    assert store.get("req-1").record["prompt"].startswith("[1] Bushfires")  # a RAG answer keeps both
    assert root.outputs["answer"] == "near town 1" and root.outputs["sources"] == CITED
    assert retriever.span_type == "RETRIEVER" and [d["id"] for d in retriever.outputs] == ["c1", "c7"]
    failed = mlflow_trace(store, "req-2")
    assert failed.info.state.value == "ERROR" and len(failed.data.spans) == 1
    assert store.get("req-2").record["prompt"] == "Complete: the fire"
    with pytest.raises(InputError, match="already recorded"):  # one trace per answer
        store.record_answer(answer(1, answer="another"))
    assert mlflow_trace(store, "req-1").info.response_preview == "near town 1"


def test_feedback_lands_on_its_own_trace_and_no_other(store: FeedbackStore) -> None:
    for n in range(6):
        store.record_answer(answer(n))
    store.add_feedback("req-3", score=0.25, comment="too vague", user="ann")
    store.add_feedback("req-4", label="bad", correction="near Sydney", user="bob")
    for n in range(6):
        assessments = {a.name: a for a in mlflow_trace(store, f"req-{n}").info.assessments}
        if n == 3:
            assert assessments["user_score"].value == 0.25 and assessments["user_score"].rationale == "too vague"
            assert assessments["user_score"].source.source_id == "ann" and set(assessments) == {"user_score"}
        elif n == 4:
            assert assessments["user_score"].value == LABELS["bad"] == 0.0
            assert assessments["expected_response"].value == "near Sydney"
        else:
            assert assessments == {}
    listed = {i.record["request_id"]: i for i in store.list(with_feedback=True)}
    assert set(listed) == {"req-3", "req-4"} and listed["req-3"].score == 0.25
    assert listed["req-4"].feedback[-1].correction == "near Sydney" and listed["req-4"].feedback[0].label == "bad"


@pytest.mark.parametrize("kwargs, message", [
    ({"score": 1.5}, "score must be"), ({"score": -0.1}, "score must be"), ({"score": float("nan")}, "score must be"),
    ({"score": True}, "score must be"), ({"label": "meh"}, "unknown feedback label"), ({}, "needs a score"),
    ({"comment": "x" * 4001}, "comment must be"), ({"comment": ""}, "needs a score"),
])
def test_bad_feedback_is_input_error(store: FeedbackStore, kwargs: dict, message: str) -> None:
    store.record_answer(answer(1))
    with pytest.raises(InputError, match=message) as caught:
        store.add_feedback("req-1", **kwargs)
    assert caught.value.fix and caught.value.where
    assert mlflow_trace(store, "req-1").info.assessments == []


def test_unknown_request_id_is_not_found(store: FeedbackStore, tracking_uri: str) -> None:
    other = FeedbackStore(tracking_uri, experiment="test-another-endpoint")
    other.record_answer(answer(9))
    with pytest.raises(FeedbackNotFound, match="no answer with request id 'req-404'") as caught:
        store.add_feedback("req-404", score=1.0)
    assert isinstance(caught.value, InputError) and "x-request-id" in caught.value.fix
    with pytest.raises(FeedbackNotFound):  # recorded, but in another store's experiment
        store.add_feedback("req-9", score=1.0)
    with pytest.raises(InputError, match="invalid request id"):
        store.add_feedback("x" * 65, score=1.0)


# -- review and export -----------------------------------------------------------------------------
def test_review_approve_correct_reject_and_review_again(store: FeedbackStore) -> None:
    for n in range(4):
        store.record_answer(answer(n))
    store.review("req-0", approve=True, reviewer="rita")
    store.review("req-1", approve=False, correction="near Sydney", reviewer="rita")
    store.review("req-2", approve=False, reviewer="rita")
    got = {n: store.get(f"req-{n}").review for n in range(4)}
    assert (got[0].decision, got[0].expected) == ("approved", "near town 0")
    assert got[0].relevant == ["doc-a.txt", "doc-b.txt"]
    assert (got[1].decision, got[1].expected, got[1].relevant) == ("corrected", "near Sydney", [])
    assert (got[2].decision, got[2].expected) == ("rejected", None) and got[3] is None
    expected = [a for a in mlflow_trace(store, "req-1").info.assessments if a.name == "expected_response"]
    assert [e.value for e in expected] == ["near Sydney"] and expected[0].source.source_id == "rita"

    store.review("req-1", approve=True, reviewer="sam", relevant=["doc-b.txt"])  # a second review replaces the first
    again = store.get("req-1").review
    assert (again.decision, again.reviewer, again.expected, again.relevant) == ("approved", "sam", "near town 1",
                                                                                ["doc-b.txt"])
    with pytest.raises(InputError, match="not both"):
        store.review("req-3", approve=True, correction="x", reviewer="rita")
    with pytest.raises(InputError, match="reviewer"):
        store.review("req-3", approve=True, reviewer=" ")
    with pytest.raises(FeedbackNotFound):
        store.review("req-99", approve=True, reviewer="rita")


def test_list_filters(store: FeedbackStore) -> None:
    for n in range(6):
        store.record_answer(answer(n, app="kb" if n < 4 else "faq", version=str(1 + n % 2),
                                   endpoint="ep" if n else "other"))
    store.add_feedback("req-1", score=1.0)
    store.add_feedback("req-2", score=0.0)
    store.review("req-2", approve=True, reviewer="rita")
    ids = lambda items: [i.record["request_id"] for i in items]  # noqa: E731
    assert ids(store.list()) == [f"req-{n}" for n in (5, 4, 3, 2, 1, 0)]
    assert ids(store.list(oldest_first=True, limit=2)) == ["req-0", "req-1"]
    assert ids(store.list(app="faq")) == ["req-5", "req-4"]
    assert ids(store.list(app="kb", version="2")) == ["req-3", "req-1"]
    assert ids(store.list(endpoint="other")) == ["req-0"]
    assert ids(store.list(with_feedback=True)) == ["req-2", "req-1"]
    assert ids(store.list(reviewed=True)) == ["req-2"]
    assert ids(store.list(reviewed=False, with_feedback=True)) == ["req-1"]
    with pytest.raises(InputError, match="quote"):
        store.list(app="kb' OR '1'='1")


def test_export_eval_holds_reviewed_answers_that_the_eval_suites_read(store: FeedbackStore, tmp_path: Path) -> None:
    from stackwise.evaluation.data import read_eval_data
    from stackwise.evaluation.runner import run_model_suites
    from stackwise.specs import EvaluateSpec

    for n in range(5):
        store.record_answer(answer(n))
    store.add_feedback("req-0", score=1.0)
    store.add_feedback("req-3", score=0.0, correction="near Sydney")  # a user's correction, never reviewed
    store.review("req-0", approve=True, reviewer="rita")
    store.review("req-1", approve=False, correction="near Sydney", reviewer="rita")
    store.review("req-2", approve=False, reviewer="rita")  # rejected: no expected answer
    out = tmp_path / "export" / "feedback.jsonl"
    assert store.export_eval(out, include_predictions=True) == {"qa": 2, "retrieval": 1}
    data = read_eval_data(str(out))
    qa = [r for _, r in data.for_suite("qa")]
    assert [(r["request_id"], r["answers"], r["prediction"]) for r in qa] == [
        ("req-0", ["near town 0"], "near town 0"), ("req-1", ["near Sydney"], "near town 1")]
    assert qa[0]["question"] == "Where did fire 0 burn?" and qa[0]["context"] == CITED[0]["text"]
    assert [r for _, r in data.for_suite("retrieval")] == [
        {"query": "Where did fire 0 burn?", "relevant": ["doc-a.txt", "doc-b.txt"], "request_id": "req-0",
         "app": "kb", "version": "2"}]
    spec = EvaluateSpec(model="served", suites=["qa"], data=str(out))
    metrics, _ = run_model_suites(spec, data, None, None, "served")
    assert metrics["qa.exact_match"] == 0.5  # the approved answer matches itself, the corrected one does not

    assert store.export_eval(out, reviewed_only=False) == {"qa": 3, "retrieval": 1}
    assert [json.loads(line).get("answers") for line in out.read_text().splitlines()][-1] == ["near Sydney"]


def test_label_studio_tasks_match_the_labeling_config(store: FeedbackStore, tmp_path: Path) -> None:
    from stackwise.cli.feedback import LABEL_STUDIO_CONFIG

    store.record_answer(answer(1))
    store.record_answer(answer(2, sources=[]))
    store.add_feedback("req-1", score=0.5, comment="ok")
    assert store.export_label_studio(tmp_path / "tasks.json") == 2
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    config = ET.fromstring(LABEL_STUDIO_CONFIG)
    controls = {e.get("name"): e for e in config.iter() if e.get("toName")}
    objects = {e.get("name"): e.get("value") for e in config.iter() if e.get("value", "").startswith("$")}
    for task in tasks:
        assert set(task) == {"data", "predictions"}
        assert all(var[1:] in task["data"] for var in objects.values())
        for result in task["predictions"][0]["result"]:
            control = controls[result["from_name"]]
            assert control.get("toName") == result["to_name"] and result["to_name"] in objects
            assert control.tag.lower() == result["type"] and isinstance(result["value"]["text"], list)
    first = next(t for t in tasks if t["data"]["request_id"] == "req-1")
    assert first["predictions"][0]["result"][0]["value"]["text"] == ["near town 1"]
    assert "doc-a.txt" in first["data"]["sources"] and first["data"]["user_score"] == 0.5


# -- online statistics -----------------------------------------------------------------------------
def test_stats_per_version_against_numpy_and_hand_counts(store: FeedbackStore) -> None:
    np = pytest.importorskip("numpy")
    lat_v1 = [120.0, 80.0, 95.0, 300.0, 101.0, 99.0, 1000.0]
    texts = ["near town", "I'm sorry, but I can't help with that.", "I don't know.", "near", "ok", "fine", "yes"]
    for n, (lat, text) in enumerate(zip(lat_v1, texts)):
        store.record_answer(answer(n, version="1", latency_ms=lat, ttft_ms=lat / 4, answer=text))
    store.record_answer(answer(7, version="1", latency_ms=5.0, ttft_ms=None, answer="I'm sorry, error", status=500))
    for n in range(8, 11):
        store.record_answer(answer(n, version="2", latency_ms=50.0 + n))
    store.add_feedback("req-0", score=0.2)
    store.add_feedback("req-0", score=0.9)  # the latest score of an answer counts
    store.add_feedback("req-1", label="bad")
    store.add_feedback("req-2", comment="just a comment")
    store.add_feedback("req-8", label="good")
    v1, v2 = store.stats(endpoint="ep")
    lats = lat_v1 + [5.0]
    assert (v1.version, v1.answers, v1.errors, v1.feedback, v1.scores) == ("1", 8, 1, 2, [0.9, 0.0])
    assert v1.mean_score == pytest.approx(0.45)
    assert v1.latency_p50_ms == pytest.approx(np.percentile(lats, 50))
    assert v1.latency_p99_ms == pytest.approx(np.percentile(lats, 99))
    assert v1.ttft_p50_ms == pytest.approx(np.percentile([x / 4 for x in lat_v1], 50))
    assert (v1.refusals, v1.refusal_rate) == (2, pytest.approx(2 / 7))  # the failed request is not a refusal
    assert (v2.answers, v2.scores, v2.refusals) == (3, [1.0], 0)
    assert store.stats(endpoint="nowhere") == [] and len(store.stats(app="kb")) == 2


def test_percentile_matches_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(5)
    for size in (1, 2, 3, 10, 101):
        values = [rng.uniform(0, 1000) for _ in range(size)]
        for q in (0, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None


def _stats(version: str, scores: list[float], answers: int = 0, refusals: int = 0, errors: int = 0) -> VersionStats:
    answers = answers or len(scores)
    return VersionStats(app="kb", model="chat:1", version=version, answers=answers, errors=errors,
                        feedback=len(scores), scores=scores, mean_score=sum(scores) / len(scores) if scores else None,
                        latency_p50_ms=None, latency_p99_ms=None, ttft_p50_ms=None, refusals=refusals,
                        refusal_rate=refusals / (answers - errors) if answers > errors else None)


def test_compare_versions_is_welch_and_fisher_by_hand() -> None:
    from scipy.stats import t as student_t

    rng = random.Random(11)
    a = [min(1.0, max(0.0, rng.gauss(0.70, 0.03))) for _ in range(40)]  # many answers, little spread
    b = [min(1.0, max(0.0, rng.gauss(0.62, 0.25))) for _ in range(6)]   # few answers, wide spread
    va = sum((x - sum(a) / len(a)) ** 2 for x in a) / (len(a) - 1)
    vb = sum((x - sum(b) / len(b)) ** 2 for x in b) / (len(b) - 1)
    diff = sum(b) / len(b) - sum(a) / len(a)
    se2 = va / len(a) + vb / len(b)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    t_welch = diff / math.sqrt(se2)
    p_welch = 2 * student_t.sf(abs(t_welch), df)
    # (refusals, answers): 2 of 40 against 9 of 30, one more failed request on b
    result = compare_versions(_stats("1", a, answers=40, refusals=2), _stats("2", b, answers=31, refusals=9, errors=1))
    score = result["score"]
    assert score["t"] == pytest.approx(t_welch) and score["p_value"] == pytest.approx(p_welch, rel=1e-9)
    assert score["cohens_d"] == pytest.approx(diff / math.sqrt((va + vb) / 2))
    assert score["diff"] == pytest.approx(diff) and score["significant"] == (p_welch < 0.05)

    def table_p(x: int) -> float:  # hypergeometric: x refusals on b among 11 refusals, 30 b and 40 a answers
        return math.comb(30, x) * math.comb(40, 11 - x) / math.comb(70, 11)

    observed = table_p(9)
    p_fisher = sum(table_p(x) for x in range(0, 12) if table_p(x) <= observed * (1 + 1e-7))
    refusal = result["refusal"]
    assert refusal["p_value"] == pytest.approx(p_fisher, rel=1e-9) and refusal["significant"] is True
    assert refusal["odds_ratio"] == pytest.approx((9 * 38) / (21 * 2))
    assert refusal["diff"] == pytest.approx(9 / 30 - 2 / 40) and result["a"] == "kb v1" and result["b"] == "kb v2"


def test_compare_versions_without_enough_data_is_never_significant() -> None:
    few = compare_versions(_stats("1", [1.0]), _stats("2", [0.0, 0.1]))
    assert few["score"]["p_value"] is None and few["score"]["significant"] is False
    assert "at least 2" in few["score"]["note"]
    flat = compare_versions(_stats("1", [1.0, 1.0]), _stats("2", [0.0, 0.0]))
    assert flat["score"]["p_value"] is None and flat["score"]["diff"] == -1.0
    none = compare_versions(_stats("1", [], answers=0), _stats("2", [], answers=3))
    assert none["refusal"]["p_value"] is None and none["refusal"]["significant"] is False


# -- the background recorder -----------------------------------------------------------------------
class GatedStore(FeedbackStore):
    """A real store whose writes wait for `gate`: MLflow made slow on purpose."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def record_answer(self, rec: AnswerRecord) -> str:
        assert self.gate.wait(30)
        return super().record_answer(rec)


def test_recorder_never_blocks_drops_when_full_and_counts(tracking_uri: str) -> None:
    store = GatedStore(tracking_uri, experiment="test-recorder-drops")
    recorder = AsyncRecorder(store, maxsize=3)
    started = time.perf_counter()
    accepted = [recorder.submit(answer(n)) for n in range(10)]
    took = time.perf_counter() - started
    counts = recorder.counts()
    assert took < 0.5 and counts["submitted"] == sum(accepted) and counts["submitted"] + counts["dropped"] == 10
    assert 3 <= counts["submitted"] <= 4 and counts["dropped"] >= 6
    assert recorder.flush(timeout=0.2) is False  # still held at the gate
    store.gate.set()
    assert recorder.flush(timeout=30)
    assert recorder.counts()["recorded"] == counts["submitted"] == len(store.list(limit=None))
    assert recorder.submit(answer(20, request_id=""))  # a bad record fails in the thread, counted, not raised
    assert recorder.flush(timeout=30) and recorder.failed == 1 and "request id" in (recorder.last_error or "")
    recorder.close()
    assert recorder.submit(answer(21)) is False and recorder.dropped == counts["dropped"] + 1


def test_recorder_feedback_waits_for_its_own_answer(tracking_uri: str) -> None:
    store = GatedStore(tracking_uri, experiment="test-recorder-feedback")
    recorder = AsyncRecorder(store)
    recorder.submit(answer(1))
    threading.Timer(0.3, store.gate.set).start()
    recorder.add_feedback("req-1", score=0.75, timeout=30)  # arrives before the answer is written
    assert store.get("req-1").score == 0.75
    recorder.close()


def test_record_answer_from_many_threads(store: FeedbackStore) -> None:
    errors: list[BaseException] = []

    def work(k: int) -> None:
        for n in range(5):
            try:
                store.record_answer(answer(k * 10 + n))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.perf_counter() - started
    assert errors == [] and len(store.list(limit=None)) == 20
    print(f"record_answer: {took / 20 * 1000:.1f} ms per answer (4 threads, SQLite)")


# -- the CLI helpers and import cost ---------------------------------------------------------------
def test_endpoint_stats_compares_versions_and_renders(store: FeedbackStore) -> None:
    from rich.console import Console

    from stackwise.cli.feedback import endpoint_stats, print_endpoint_stats

    for n in range(6):
        store.record_answer(answer(n, version="1" if n < 3 else "2", answer="I don't know" if n == 5 else "yes"))
        store.add_feedback(f"req-{n}", score=[1.0, 0.9, 1.0, 0.1, 0.0, 0.2][n])
    result = endpoint_stats(store, endpoint="ep")
    assert [v["version"] for v in result["versions"]] == ["1", "2"] and "scores" not in result["versions"][0]
    (comparison,) = result["comparisons"]
    assert comparison["score"]["significant"] is True and comparison["score"]["diff"] == pytest.approx(0.1 - 29 / 30)
    console = Console(record=True, width=200)
    print_endpoint_stats(result, console)
    text = console.export_text()
    assert "kb v2 vs kb v1" in text and "Welch" in text and "Fisher" in text and "significant" in text
    json.dumps(result)  # --json prints it as is


def test_cli_review_from_a_pipe_and_exports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from stackwise.cli.feedback import feedback_app

    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "home"))
    store = FeedbackStore.for_stack("local")
    for n in range(3):
        store.record_answer(answer(n))
        store.add_feedback(f"req-{n}", score=0.5, correction="near Sydney" if n == 1 else None)
    runner = CliRunner()
    # req-0: "c" then a typed correction; req-1: "c" then Enter takes the user's correction; then quit.
    result = runner.invoke(feedback_app, ["review", "--reviewer", "rita"], input="c\nnear Bondi\nc\n\nq\n")
    assert result.exit_code == 0, result.output
    assert "0 approved, 2 corrected, 0 skipped, 1 left" in result.output
    assert [store.get(f"req-{n}").expected for n in range(3)] == ["near Bondi", "near Sydney", None]
    result = runner.invoke(feedback_app, ["review", "--reviewer", "sam"], input="")  # end of input: quit
    assert result.exit_code == 0 and "0 approved, 0 corrected, 0 skipped, 1 left" in result.output
    result = runner.invoke(feedback_app, ["review", "--approve-all", "--reviewer", "sam"])
    assert "1 approved" in result.output and store.get("req-2").review.decision == "approved"

    out = tmp_path / "tasks.json"
    result = runner.invoke(feedback_app, ["export", "--format", "label-studio", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tasks"] == 3 and out.with_suffix(".label-config.xml").is_file()
    result = runner.invoke(feedback_app, ["export", "--format", "csv", "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, InputError) and result.exception.where == "--format"
    result = runner.invoke(feedback_app, ["list", "--app", "a'b"])
    assert isinstance(result.exception, InputError)


def test_importing_feedback_loads_no_heavy_module(tmp_path: Path) -> None:
    code = ("import sys, stackwise.feedback, stackwise.cli.feedback\n"
            "print([m for m in ('mlflow', 'scipy', 'numpy', 'torch', 'sqlalchemy') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
