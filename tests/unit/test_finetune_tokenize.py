"""Tokenization of the three dataset formats on a real (tiny, offline-built) tokenizer: the loss
sees answers only, chat templates render turns, packing fills sequences."""

from __future__ import annotations


import pytest

pytest.importorskip("transformers")

from stackwise.errors import SpecError  # noqa: E402
from stackwise.training.data import IGNORE, check_max_seq_length, encode, tokenize  # noqa: E402

TEXTS = ["The bushfires near Sydney destroyed homes.", "Cricket: Australia won the test match by ten runs."] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from stackwise.training.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS, vocab_size=300)
    return AutoTokenizer.from_pretrained(folder)


def trained_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE])


def test_text_trains_on_every_token(tokenizer):
    ids, labels = encode({"text": "Cricket match"}, "text", tokenizer, True)
    assert ids == labels and ids[-1] == tokenizer.eos_token_id


def test_prompt_completion_with_the_chat_template_trains_on_the_answer_only(tokenizer):
    ids, labels = encode({"prompt": "Who won?", "completion": "Australia won."}, "prompt_completion", tokenizer, True)
    assert trained_text(tokenizer, ids, labels) == "Australia won.<|im_end|>\n"
    assert tokenizer.decode(ids).startswith("<|im_start|>user\nWho won?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_completion_without_template_masks_the_prompt(tokenizer):
    ids, labels = encode({"prompt": "Who won?", "completion": " Australia"}, "prompt_completion", tokenizer, False)
    assert trained_text(tokenizer, ids, labels) == " Australia</s>"
    assert labels[0] == IGNORE


def test_chat_trains_on_every_assistant_turn_and_nothing_else(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fires?"},
                {"role": "assistant", "content": "Near Sydney."}, {"role": "user", "content": "Cricket?"},
                {"role": "assistant", "content": "Australia won."}]
    ids, labels = encode({"messages": messages}, "messages", tokenizer, True)
    assert trained_text(tokenizer, ids, labels) == "Near Sydney.<|im_end|>\nAustralia won.<|im_end|>\n"
    assert "Be brief." in tokenizer.decode(ids)


def test_packing_fills_sequences_and_truncation_caps_them(tokenizer):
    records = [{"text": t} for t in TEXTS]
    packed = tokenize(records, "text", tokenizer, max_len=32, packing=True)
    assert all(len(e["input_ids"]) == 32 for e in packed[:-1])
    total = sum(len(encode(r, "text", tokenizer, True)[0]) for r in records)
    assert sum(len(e["input_ids"]) for e in packed) == total
    plain = tokenize(records, "text", tokenizer, max_len=5, packing=False)
    assert len(plain) == len(records) and all(len(e["input_ids"]) == 5 for e in plain)


def test_sequence_length_beyond_the_model_context_is_a_spec_error():
    check_max_seq_length(512, 512, "training.max_seq_length")
    with pytest.raises(SpecError, match="exceeds the model's context of 512 tokens"):
        check_max_seq_length(4096, 512, "training.max_seq_length")
