"""MMLU accuracy checked against log-likelihood choices computed here, independently of
stackwise's scoring code: on the tiny random Llama the tests use (`stackwise.training.tiny`),
each choice's letter is scored with plain transformers/torch, the most likely letter is the
prediction, and stackwise's `mmlu.accuracy` (and each row's choice) must equal what follows."""

from __future__ import annotations

import functools
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

LETTERS = "ABCDEFGHIJ"
TEXTS = [
    f"The {animal} near the {place} saw {n} {thing} at {hour} o'clock, and the answer was {letter}."
    for animal, place, thing in [("cat", "river", "boats"), ("dog", "station", "trains"), ("bird", "market", "carts"),
                                 ("horse", "school", "books"), ("fox", "harbour", "ships"), ("owl", "forest", "trees")]
    for n, hour, letter in [("two", "nine", "A"), ("three", "ten", "B"), ("five", "noon", "C"), ("seven", "six", "D"),
                            ("eight", "four", "E")]
]
# The fixture: questions with 2 to 5 choices, answers as letters and as indexes, with and
# without a subject. The answers are fixed here, not derived from any model.
RECORDS = [
    {"question": "What is 2 + 2?", "choices": ["3", "4", "5", "6"], "answer": "B"},
    {"question": "Which animal barks?", "choices": ["cat", "dog", "owl", "fox"], "answer": 1, "subject": "biology"},
    {"question": "Which one is a colour?", "choices": ["red", "seven"], "answer": "A"},
    {"question": "Where do ships dock?", "A": "forest", "B": "school", "C": "harbour", "D": "station", "answer": "C"},
    {"question": "How many legs has a bird?", "choices": ["one", "two", "three", "four", "five"], "answer": "B"},
    {"question": "What comes after nine?", "choices": ["ten", "eight", "noon"], "answer": 0, "subject": "arithmetic"},
    {"question": "Which is a vehicle?", "choices": ["tree", "book", "cart", "owl"], "answer": "C"},
    {"question": "Which is not an animal?", "choices": ["horse", "fox", "river", "cat"], "answer": "C"},
    {"question": "When is midday?", "choices": ["six", "four", "nine", "noon"], "answer": "D", "subject": "time"},
    {"question": "Which word is a number?", "choices": ["market", "harbour", "station", "eight"], "answer": "D"},
    {"question": "What do trains stop at?", "choices": ["station", "forest"], "answer": "A"},
    {"question": "Which of these is read?", "choices": ["boats", "carts", "ships", "books"], "answer": 3},
]


def _choices(record: dict) -> list[str]:
    return record["choices"] if "choices" in record else [record[k] for k in "ABCD"]


def _gold(record: dict) -> int:
    answer = record["answer"]
    return answer if isinstance(answer, int) else LETTERS.index(answer)


def _prompt(record: dict) -> str:
    # The documented format (stackwise.evaluation.mmlu), written out here rather than imported.
    subject = f" about {record['subject']}" if record.get("subject") else ""
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(_choices(record)))
    return f"The following is a multiple choice question{subject}.\n\n{record['question']}\n{lines}\nAnswer:"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    from stackwise.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("mmlu-tiny") / "model", TEXTS, vocab_size=300)


@functools.lru_cache(maxsize=2)
def _plain(folder: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()


def _reference_logliks(folder, record: dict) -> list[float]:
    """log P(" X" | prompt) for each choice letter X, each scored in its own forward pass:
    BOS + prompt tokens + letter tokens, the letter's token log-probabilities summed."""
    tok, model = _plain(str(folder))
    context = [tok.bos_token_id] + tok(_prompt(record), add_special_tokens=False)["input_ids"]
    scores = []
    for i in range(len(_choices(record))):
        letter = tok(" " + LETTERS[i], add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + letter])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        scores.append(sum(float(logp[len(context) - 1 + j, t]) for j, t in enumerate(letter)))
    return scores


def test_mmlu_accuracy_equals_hand_computed_loglik_choices(tiny, tmp_path):
    from stackwise.evaluation.data import read_eval_data
    from stackwise.evaluation.lm import load
    from stackwise.evaluation.runner import run_model_suites
    from stackwise.specs import EvaluateSpec

    expected, least = [], []
    for record in RECORDS:
        scores = _reference_logliks(tiny, record)
        assert len(set(scores)) == len(scores)  # no ties: the prediction is well defined
        expected.append(max(range(len(scores)), key=scores.__getitem__))
        least.append(min(range(len(scores)), key=scores.__getitem__))
    accuracy = sum(p == _gold(r) for p, r in zip(expected, RECORDS)) / len(RECORDS)
    # The fixture tells a right scorer from the wrong ones: picking the least likely letter, or
    # always the same letter, would give another accuracy or other choices.
    assert sum(p == _gold(r) for p, r in zip(least, RECORDS)) / len(RECORDS) != accuracy
    assert len(set(expected)) > 1 or accuracy != sum(_gold(r) == expected[0] for r in RECORDS) / len(RECORDS)

    data = tmp_path / "mmlu.jsonl"
    data.write_text("".join(json.dumps({"suite": "mmlu", **r}) + "\n" for r in RECORDS))
    spec = EvaluateSpec(model=str(tiny), suites=["mmlu"], data=str(data))
    metrics, rows = run_model_suites(spec, read_eval_data(str(data)), load(str(tiny)), None, "t")
    rows = [r for r in rows if r["suite"] == "mmlu"]
    assert [r["chosen"] for r in rows] == [LETTERS[p] for p in expected]
    assert [r["answer"] for r in rows] == [LETTERS[_gold(r)] for r in RECORDS]
    for row, record in zip(rows, RECORDS):
        assert row["logliks"] == pytest.approx(_reference_logliks(tiny, record), abs=1e-3)
    assert metrics["mmlu.accuracy"] == pytest.approx(accuracy)
