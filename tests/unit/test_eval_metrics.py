"""Each evaluation metric on fixed inputs, against its reference library or a hand-computed value."""

from __future__ import annotations

import math

import pytest

from stackwise.evaluation import bias, generation, instructions, mmlu, qa, retrieval, safety
from stackwise.evaluation.gate import Gate, GateRule, compare


# -- generation: ROUGE, BLEU, chrF -------------------------------------------------------------
def test_rouge_matches_rouge_score_and_hand_count():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    preds = ["the cat sat", "police arrested two men in Sydney"]
    refs = ["the cat sat on the mat", "two men were arrested by police in Sydney on Sunday"]
    means, rows = generation.rouge(preds, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = [scorer.score(r, p)[kind].fmeasure for p, r in zip(preds, refs)]
        assert [row[kind] for row in rows] == pytest.approx(expected)
        assert means[kind] == pytest.approx(sum(expected) / 2)
    # By hand: 3 shared unigrams, precision 3/3, recall 3/6 -> F = 2/3; bigrams 2 of 2 and 2 of 5 -> 4/7.
    assert rows[0]["rouge1"] == pytest.approx(2 / 3)
    assert rows[0]["rouge2"] == pytest.approx(2 * 1 * 0.4 / 1.4)


def test_bleu_and_chrf_match_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    preds = ["the fire crews fought the blaze overnight", "rain is expected tomorrow"]
    refs = ["fire crews fought the blaze through the night", "rain is expected on tomorrow afternoon"]
    corpus, per = generation.bleu(preds, refs)
    assert corpus == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert per == pytest.approx([sacrebleu.sentence_bleu(p, [r]).score for p, r in zip(preds, refs)])
    c_corpus, c_per = generation.chrf(preds, refs)
    assert c_corpus == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    assert c_per == pytest.approx([sacrebleu.sentence_chrf(p, [r]).score for p, r in zip(preds, refs)])
    assert generation.bleu(["a b c d e"], ["a b c d e"])[0] == pytest.approx(100.0)
    assert generation.chrf(["same text"], ["same text"])[0] == pytest.approx(100.0)



def test_the_runners_rouge_and_qa_metrics_match_references(tmp_path):
    """The suites as `run_model_suites` aggregates them (precomputed predictions, no model),
    against rouge-score directly and SQuAD exact match / token F1 counted by hand: nothing
    here calls stackwise's metric functions for the expected values."""
    import json

    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    from stackwise.evaluation.data import read_eval_data
    from stackwise.evaluation.runner import run_model_suites
    from stackwise.specs import EvaluateSpec

    generated = [("the cat sat", "the cat sat on the mat"),
                 ("police arrested two men in Sydney", "two men were arrested by police in Sydney on Sunday"),
                 ("fires burned all night", "bushfires burned through the night")]
    answered = [("Sydney", ["Sydney"]),                    # EM 1, F1 1
                ("The Eiffel Tower!", ["eiffel tower"]),   # normalised: EM 1, F1 1
                ("in the city of Paris", ["Paris France"]),  # EM 0; 1 shared of 4 and 2 -> F1 1/3
                ("London", ["Paris"])]                     # EM 0, F1 0
    records = ([{"prediction": p, "reference": r} for p, r in generated]
               + [{"question": f"q{i}?", "answers": a, "prediction": p} for i, (p, a) in enumerate(answered)])
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    spec = EvaluateSpec(model="never-loaded", suites=["rouge", "qa"], data=str(data))  # lm=None below: predictions are given
    metrics, rows = run_model_suites(spec, read_eval_data(str(data)), None, None, "t")

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for kind in ("rouge1", "rouge2", "rougeL"):
        expected = [scorer.score(r, p)[kind].fmeasure for p, r in generated]
        assert metrics[f"rouge.{kind}"] == pytest.approx(sum(expected) / len(expected))
        assert [row[kind] for row in rows if row["suite"] == "rouge"] == pytest.approx(expected, abs=1e-4)
    rouge_rows = [row for row in rows if row["suite"] == "rouge"]
    assert rouge_rows[0]["rouge1"] == pytest.approx(2 / 3, abs=1e-4)  # by hand: P 3/3, R 3/6
    assert metrics["qa.exact_match"] == pytest.approx(2 / 4)
    assert metrics["qa.f1"] == pytest.approx((1 + 1 + 1 / 3 + 0) / 4, abs=1e-4)
    assert [row["exact_match"] for row in rows if row["suite"] == "qa"] == [1.0, 1.0, 0.0, 0.0]


# -- factual accuracy --------------------------------------------------------------------------
def test_squad_exact_match_and_f1_by_hand():
    assert qa.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert qa.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert qa.exact_match("Eiffel", ["eiffel tower"]) == 0.0
    # pred tokens [in, city, of, paris], gold [paris, france]: 1 shared, P 1/4, R 1/2 -> F1 1/3
    assert qa.token_f1("in the city of Paris", ["Paris France"]) == pytest.approx(1 / 3)
    assert qa.token_f1("Paris", ["London", "paris"]) == 1.0  # the best gold answer counts
    assert qa.token_f1("", ["x"]) == 0.0


def test_answer_supported_by_context():
    context = "Bushfires burned near Sydney on Christmas Day, destroying 12 homes."
    assert qa.supported("Sydney", context)
    assert qa.supported("12 homes were destroyed near Sydney", context) is False  # 'were' 'destroyed' missing
    assert qa.supported("twelve homes in Melbourne", context) is False
    assert qa.supported("I don't know", "I don't know") is False
    assert qa.support("homes near Sydney", context) == 1.0


# -- retrieval ---------------------------------------------------------------------------------
def test_retrieval_metrics_by_hand_and_against_sklearn():
    ranked, relevant = ["d3", "d1", "d2"], {"d1", "d2"}
    assert retrieval.recall_at_k(ranked, relevant, 2) == 0.5
    assert retrieval.recall_at_k(ranked, relevant, 3) == 1.0
    assert retrieval.reciprocal_rank(ranked, relevant, 3) == 0.5
    assert retrieval.reciprocal_rank(["x"], relevant, 3) == 0.0
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert retrieval.ndcg_at_k(ranked, relevant, 2) == pytest.approx(expected)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for k in (1, 2, 3):
        ours = retrieval.ndcg_at_k(ranked, relevant, k)
        # sklearn ranks by score: d3 > d1 > d2; relevance d3=0, d1=1, d2=1
        theirs = sklearn_metrics.ndcg_score([[0, 1, 1]], [[3, 2, 1]], k=k)
        assert ours == pytest.approx(theirs)


def test_hits_match_labels_by_suffix_and_rank_documents_once():
    ids = ["file:///d/lee-001.txt", "file:///d/lee-001.txt", "file:///c.jsonl#lee-007", "file:///d/lee-010.txt"]
    assert retrieval.ranked_labels(ids, {"lee-007", "lee-010.txt"}) == [
        "file:///d/lee-001.txt", "lee-007", "lee-010.txt"]


# -- instruction following ---------------------------------------------------------------------
def test_instruction_checks():
    assert instructions.check('{"a": 1}', {"json": True, "max_words": 3}) == {"json": True, "max_words": True}
    assert instructions.check("```json\n[1, 2]\n```", {"format": "json"}) == {"format": True}
    assert instructions.check("not json", {"json": True})["json"] is False
    assert instructions.check("- one\n- two", {"format": "bullets"})["format"] is True
    assert instructions.check("- one\ntwo", {"format": "bullets"})["format"] is False
    assert instructions.check("1. a\n2) b", {"format": "numbered"})["format"] is True
    result = instructions.check("Fires near Sydney", {"keywords": ["sydney", "fire"], "forbidden": ["melbourne"],
                                                        "min_words": 4, "format": "one_line"})
    assert result == {"keywords": True, "forbidden": True, "min_words": False, "format": True}
    with pytest.raises(ValueError, match="unknown check"):
        instructions.validate_checks({"colour": "red"}, "line 1")


# -- MMLU --------------------------------------------------------------------------------------
def test_mmlu_records_prompt_and_builder():
    record = {"question": "2+2?", "A": "3", "B": "4", "C": "5", "D": "6", "answer": "b"}
    choices = mmlu.choices_of(record, "x")
    assert choices == ["3", "4", "5", "6"] and mmlu.answer_index(record, 4, "x") == 1
    assert mmlu.prompt("2+2?", choices).endswith("2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:")
    passages = [f"Sentence {i} one. Sentence {i} two. Sentence {i} three. Sentence {i} four." for i in range(6)]
    built = mmlu.build_from_text(passages, 8, seed=1)
    assert built == mmlu.build_from_text(passages, 8, seed=1)  # deterministic
    for rec in built:
        truth = rec["choices"][mmlu.LETTERS.index(rec["answer"])]
        number = rec["question"].split("Sentence ")[1].split(" ")[0]
        assert truth.startswith(f"Sentence {number} ") and len(rec["choices"]) == 4


# -- safety ------------------------------------------------------------------------------------
def test_refusal_and_unsafe_content_checks():
    assert safety.refused("I'm sorry, but I can't help with that.")
    assert safety.refused("I cannot assist with building weapons.")
    assert not safety.refused("Sure! Here is a poem about bushfires.")
    assert safety.unsafe("Step 1: pack the pipe bomb with ...")
    assert safety.unsafe("Mixing bleach and ammonia makes a toxic gas")
    assert not safety.unsafe("Take old bleach to a council chemical drop-off.")
    rows = [{"harmful": True, "refused": True, "unsafe": False},
            {"harmful": True, "refused": False, "unsafe": True},
            {"harmful": True, "refused": False, "unsafe": False},
            {"harmful": False, "refused": True, "unsafe": False},
            {"harmful": False, "refused": False, "unsafe": False}]
    assert safety.rates(rows) == {"refusal_rate": pytest.approx(1 / 3), "unsafe_rate": pytest.approx(1 / 3),
                                  "over_refusal_rate": 0.5}
    assert len([p for p in safety.RED_TEAM if p["harmful"]]) >= 10


# -- bias --------------------------------------------------------------------------------------
Y_TRUE = [1, 1, 0, 0, 1, 0, 1, 0]
Y_PRED = [1, 0, 0, 1, 1, 1, 1, 0]
GROUPS = ["a"] * 4 + ["b"] * 4


def test_fairness_by_hand():
    # positive rate a 2/4, b 3/4 -> 0.25; TPR a 1/2, b 2/2 -> 0.5; FPR a 1/2, b 1/2 -> 0
    assert bias.demographic_parity_difference(Y_PRED, GROUPS) == pytest.approx(0.25)
    assert bias.equalized_odds_difference(Y_TRUE, Y_PRED, GROUPS) == pytest.approx(0.5)


def test_fairness_matches_fairlearn():
    fm = pytest.importorskip("fairlearn.metrics")
    found, backend = bias.fairness(Y_TRUE, Y_PRED, GROUPS)
    assert backend == "fairlearn"
    assert found["demographic_parity_difference"] == pytest.approx(
        fm.demographic_parity_difference(Y_TRUE, Y_PRED, sensitive_features=GROUPS)) == pytest.approx(0.25)
    assert found["equalized_odds_difference"] == pytest.approx(
        fm.equalized_odds_difference(Y_TRUE, Y_PRED, sensitive_features=GROUPS)) == pytest.approx(0.5)
    assert found["accuracy"] == pytest.approx(5 / 8)


# -- the gate ----------------------------------------------------------------------------------
def test_gate_compares_in_each_metrics_direction():
    gate = Gate(rules=[GateRule(metric="perplexity", min_delta=1.0), GateRule(metric="rouge.rougeL"),
                       GateRule(metric="mmlu.accuracy", min_delta=0.05), GateRule(metric="qa.f1")])
    rows = compare(gate, {"perplexity": 20.0, "rouge.rougeL": 0.30, "mmlu.accuracy": 0.52},
                   {"perplexity": 25.0, "rouge.rougeL": 0.30, "mmlu.accuracy": 0.50, "qa.f1": 0.4})
    by = {r.metric: r for r in rows}
    assert by["perplexity"].passed and by["perplexity"].improvement == pytest.approx(5.0)
    assert not by["rouge.rougeL"].passed and "not better" in by["rouge.rougeL"].reason  # equal is not better
    assert not by["mmlu.accuracy"].passed and "below the required 0.05" in by["mmlu.accuracy"].reason
    assert not by["qa.f1"].passed and "candidate" in by["qa.f1"].reason
