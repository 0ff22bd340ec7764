"""The evaluation workload, the registry and the gate, in-process on tiny models: a random tiny
Llama (the champion-to-be) and a copy trained for a few seconds on news text (lower perplexity on
held-out news), registered in a real MLflow registry under a SQLite store."""

from __future__ import annotations

import json
import math
import re
import shutil
import string
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("mlflow")
gensim = pytest.importorskip("gensim")


def lee_sentences() -> list[str]:
    path = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    articles = [a.strip() for a in path.read_text(encoding="latin-1").splitlines() if a.strip()]
    return [s.strip() for a in articles[:60] for s in a.split(". ") if len(s.split()) >= 8]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    torch.set_num_threads(2)
    from stackwise.training.tiny import build_tiny_model, train_tiny

    root = tmp_path_factory.mktemp("eval-world")
    sentences = lee_sentences()
    train, held = sentences[:120], sentences[150:170]
    random_model = build_tiny_model(root / "random", sentences, vocab_size=400)
    trained_model = root / "trained"
    shutil.copytree(random_model, trained_model)
    train_tiny(trained_model, train)
    train_file = root / "train.jsonl"
    train_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in train))
    eval_file = root / "eval.jsonl"
    eval_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in held))
    return {"root": root, "random": random_model, "trained": trained_model, "train": train_file,
            "eval": eval_file, "train_texts": train, "held": held}


@pytest.fixture
def home(world, tmp_path, monkeypatch):
    monkeypatch.setenv("STACKWISE_HOME", str(tmp_path / "sw"))
    monkeypatch.setenv("STACKWISE_THREADS", "2")
    return tmp_path / "sw"


def test_perplexity_equals_transformers_loss(world):
    import torch

    from stackwise.evaluation.lm import load, perplexity

    lm = load(str(world["trained"]))
    text = world["held"][0]
    nll, count = lm.nll(text)
    ids = lm._encode(text, bos=True)
    with torch.no_grad():
        loss = lm.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert count == len(ids) - 1
    assert perplexity([(nll, count)]) == pytest.approx(math.exp(float(loss)), rel=1e-4)
    # log P(continuation | context) is the sum of the continuation's token log-probabilities
    ctx, cont = "Police said", " the fire"
    cont_ids = lm._encode(cont, bos=False)
    full = lm._encode(ctx, bos=True) + cont_ids
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(input_ids=torch.tensor([full])).logits[0].float(), -1)
    expected = sum(float(logp[len(full) - len(cont_ids) - 1 + i, t]) for i, t in enumerate(cont_ids))
    assert lm.loglik(ctx, cont) == pytest.approx(expected, abs=1e-4)


def _context():
    """The job context of the local stack (what `submit` would send the evaluation job)."""
    from stackwise.contract import JobContext
    from stackwise.stack import load_stack

    stack = load_stack("local")
    return JobContext.from_outputs(stack.name, stack.outputs)


def test_evaluate_register_and_gate(world, home, tmp_path):
    from stackwise.evaluation.leakage import LeakageError
    from stackwise.model_registry import CANDIDATE, CHAMPION, GateFailed, Registry
    from stackwise.specs import EvaluateSpec
    from stackwise.workloads.evaluate import run_evaluate

    reg = Registry()
    v1 = reg.register(str(world["random"]), "demo", {"base": "tiny-random", "data": str(world["train"])})
    v2 = reg.register(str(world["trained"]), "demo", {"base": "tiny-random", "data": str(world["train"])})
    assert (v1, v2) == ("1", "2")
    lineage = reg.show("demo")["versions"][1]["lineage"]
    assert lineage["base"] == "tiny-random" and lineage["data"] == str(world["train"])
    assert lineage["adapter"].endswith("/model") and lineage["code_version"].startswith("stackwise ")

    # The first champion: no champion yet, so the candidate becomes it without comparison.
    gate = tmp_path / "gates.yaml"
    gate.write_text(f"data: {world['eval']}\nmetrics:\n  perplexity: {{min_delta: 1.0}}\n")
    spec = EvaluateSpec(model="models:/demo/2", baseline="models:/demo/1",
                        suites=["perplexity"], data=str(world["eval"]))
    report = run_evaluate(spec, _context())
    cand, base = report.candidate.metrics["perplexity"], report.baseline.metrics["perplexity"]
    assert cand < base - 1.0, (cand, base)
    assert report.deltas["perplexity"] == pytest.approx(cand - base, abs=1e-4)
    assert report.tracking_error is None
    html = Path(report.report_html).read_text()
    assert "data:image/png;base64," in html and "perplexity" in html
    assert Path(report.report_md).is_file() and list(Path(report.report_html).parent.glob("plot-*.png"))
    rows = [json.loads(x) for x in Path(report.candidate.examples).read_text().splitlines()]
    assert len(rows) == len(world["held"]) and all(r["suite"] == "perplexity" for r in rows)
    run = reg.client.get_run(report.candidate.mlflow_run_id)
    assert run.data.metrics["perplexity"] == pytest.approx(cand, rel=1e-5)
    assert run.data.tags["stackwise.model_version"] == "2" and run.data.params["suites"] == '["perplexity"]'
    artifacts = {a.path for a in reg.client.list_artifacts(run.info.run_id)}
    assert "examples-candidate.jsonl" in artifacts and "report" in artifacts
    assert report.candidate.mlflow_run_id in reg.version("demo", "2").tags["lineage.evaluation_runs"]

    first = reg.promote("demo", str(gate), version="1")
    assert first.promoted and "first champion" in first.note and reg.alias_version("demo", CHAMPION) == "1"

    # The better candidate passes the gate; the champion alias moves to it.
    better = reg.promote("demo", str(gate), version="2")
    assert better.promoted and better.rows[0]["passed"] and better.champion_before == "1"
    assert reg.alias_version("demo", CHAMPION) == "2" and reg.alias_version("demo", CANDIDATE) is None

    # The worse one is refused (exit 4) and no alias moves except the candidate pointer.
    with pytest.raises(GateFailed) as refused:
        reg.promote("demo", str(gate), version="1")
    assert refused.value.exit_code == 4 and "perplexity" in str(refused.value)
    assert refused.value.result.rows[0]["passed"] is False
    assert reg.alias_version("demo", CHAMPION) == "2"

    # The leakage guard: evaluation records copied from the training data (up to case and
    # punctuation) fail the evaluation, found through the registry's lineage.
    leaky = tmp_path / "leaky.jsonl"
    leaky.write_text(json.dumps({"text": world["train_texts"][3].upper() + "!!"}) + "\n"
                     + json.dumps({"text": world["held"][0]}) + "\n")
    with pytest.raises(LeakageError, match="1 of 2 evaluation records"):
        run_evaluate(EvaluateSpec(model="models:/demo@champion", suites=["perplexity"], data=str(leaky)), _context())
    allowed = run_evaluate(EvaluateSpec(model="models:/demo@champion", suites=["perplexity"], data=str(leaky),
                                        allow_leakage=True), _context())
    assert allowed.leakage["leaked"] == 1 and allowed.candidate.pinned == "models:/demo/2"


def test_every_model_suite_runs_on_a_tiny_model(world, tmp_path):
    """The runner's path for each suite on the tiny model: generated answers where a record has no
    `prediction`, precomputed ones scored as given, the shipped red-team set when the data has
    no safety records, bias decisions by log-likelihood."""
    from stackwise.evaluation.data import read_eval_data
    from stackwise.evaluation.lm import load
    from stackwise.evaluation.runner import run_model_suites
    from stackwise.evaluation.safety import RED_TEAM
    from stackwise.specs import EvaluateSpec

    records = [
        {"prompt": "Say hello", "reference": "hello there"},
        {"prediction": "police arrested two men", "reference": "two men were arrested by police"},
        {"question": "Where were the fires?", "answers": ["near Sydney"], "context": "Fires burned near Sydney.",
         "prediction": "near Sydney"},
        {"question": "Who won?", "answers": ["Australia"]},
        {"prompt": "Answer in JSON", "checks": {"json": True, "max_words": 30}},
        {"prediction": "- a\n- b", "checks": {"format": "bullets"}},
        {"question": "Which?", "choices": ["w", "x", "y", "z"], "answer": "C"},
        {"group": "a", "label": 1, "prompt": "Approve the loan?", "choices": ["no", "yes"]},
        {"group": "b", "label": 0, "prompt": "Approve the loan?", "choices": ["no", "yes"]},
    ]
    data_file = tmp_path / "all.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = EvaluateSpec(model=str(world["trained"]), suites=["rouge", "qa", "instruction", "mmlu", "safety", "bias"],
                        data=str(data_file), generation={"max_new_tokens": 6}, max_examples=4)
    metrics, rows = run_model_suites(spec, read_eval_data(str(data_file)), load(str(world["trained"])), None, "t")
    generated = next(r["prediction"] for r in rows if r["suite"] == "rouge" and r["line"] == 1)
    # ROUGE-L F-measure, the mean over the two records, from rouge-score itself. The precomputed
    # record by hand: the longest common subsequence of "police arrested two men" and "two men were
    # arrested by police" is "two men", 2 tokens, so P = 2/4, R = 2/6 and F = 2PR/(P+R) = 0.4.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    precomputed = scorer.score("two men were arrested by police", "police arrested two men")["rougeL"]
    assert (precomputed.precision, precomputed.recall) == pytest.approx((2 / 4, 2 / 6))
    generated_f = scorer.score("hello there", generated)["rougeL"].fmeasure
    assert metrics["rouge.rougeL"] == pytest.approx((generated_f + 0.4) / 2)
    qa_rows = [r for r in rows if r["suite"] == "qa"]
    assert qa_rows[0]["exact_match"] == 1.0 and qa_rows[0]["supported"] is True
    assert metrics["qa.supported"] == 1.0  # only the record with context is judged for support

    # Exact match by hand, with the official SQuAD v1.1 normalization written out here.
    def squad_normalize(text: str) -> str:
        text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())

    second_em = float(squad_normalize(qa_rows[1]["prediction"]) == "australia")
    assert qa_rows[1]["exact_match"] == second_em
    assert metrics["qa.exact_match"] == pytest.approx((1.0 + second_em) / 2)
    assert metrics["instruction.prompt_accuracy"] in (0.5, 1.0)  # the bullet list passes as given
    assert 0.0 <= metrics["mmlu.accuracy"] <= 1.0
    safety_rows = [r for r in rows if r["suite"] == "safety"]
    assert len(safety_rows) == 4 and safety_rows[0]["prompt"] == RED_TEAM[0]["prompt"]
    assert {"safety.refusal_rate", "safety.unsafe_rate"} <= set(metrics)
    assert {"bias.demographic_parity_difference", "bias.equalized_odds_difference"} <= set(metrics)
    assert all(r["backend"] == "fairlearn" for r in rows if r["suite"] == "bias")


def test_single_token_choices_score_in_one_pass_like_loglik(world):
    from stackwise.evaluation.lm import load

    lm = load(str(world["trained"]))
    context = "The following is a multiple choice question.\nWhich?\nA. x\nB. y\nAnswer:"
    letters = [" A", " B", " C", " D"]
    one_pass = lm.choice_logliks(context, letters)
    assert one_pass == pytest.approx([lm.loglik(context, c) for c in letters], abs=1e-4)
    multi = [" the fire", " police"]
    assert lm.choice_logliks(context, multi) == pytest.approx([lm.loglik(context, c) for c in multi])
