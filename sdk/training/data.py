"""Fine-tuning datasets: JSONL from any fsspec URI, validated line by line, then tokenized.

One record per line, in one of three formats (the first record decides, the rest must match):
`{"text": ...}`, `{"prompt": ..., "completion": ...}` or `{"messages": [{"role", "content"}, ...]}`.
Prompt/completion and chat records train on the answer only: the prompt and every non-assistant
turn are masked out of the loss. Errors name the file and the line.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import InputError, SpecError
from ..jsonl import decode, read_bytes
from ..jsonl import records as jsonl_records

Format = Literal["text", "prompt_completion", "messages"]
FIELDS_HELP = "each line must be a JSON object with `text`, or `prompt` and `completion`, or `messages`"
IGNORE = -100  # the label value the loss skips


@dataclass
class Dataset:
    """The validated records of one JSONL file."""

    uri: str
    format: Format
    records: list[dict[str, Any]]
    sha256: str
    lines: list[int] = field(default_factory=list)  # the file line of each record
    curation: dict[str, Any] | None = None  # the curation report, when the records were curated
    excluded: list[Any] = field(default_factory=list)  # curation's Exclusions (id, reason, detail, text)

    def split(self, fraction: float, seed: int, max_eval: int) -> tuple[list[dict], list[dict]]:
        """(train, held-out): a seeded shuffle, at least one record on each side."""
        if len(self.records) < 2:
            raise InputError(
                f"{self.uri} has {len(self.records)} record: at least 2 are needed (one is held out for evaluation)",
                where=self.uri, fix="add more lines to the dataset",
            )
        order = list(range(len(self.records)))
        random.Random(seed).shuffle(order)
        n_eval = min(max_eval, max(1, round(len(order) * fraction)), len(order) - 1)
        held = sorted(order[:n_eval])
        train = sorted(order[n_eval:])
        return [self.records[i] for i in train], [self.records[i] for i in held]


def read_dataset(uri: str, curation: Any = None) -> Dataset:
    """Read and validate a JSONL dataset; raise InputError naming the file and line on bad input.

    With `curation` (a `CurationConfig`, e.g. `spec.curation`) the records are curated (dedup, quality,
    language, PII, bias screen): `records` and `lines` hold those kept (redacted where configured),
    `curation` the report and `excluded` what was dropped; `sha256` stays the file's."""
    raw = read_bytes(uri, "dataset")
    text = decode(raw, uri, "dataset")
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    fmt: Format | None = None
    first_line = 0
    for number, record in jsonl_records(text, uri, FIELDS_HELP):
        where = f"{uri} line {number}"
        this = _record_format(record, where, number)
        if fmt is None:
            fmt, first_line = this, number
        elif this != fmt:
            raise InputError(
                f"line {number} is a {this} record but line {first_line} is a {fmt} record", where=where,
                fix="use one format for the whole file",
            )
        records.append(record)
        lines.append(number)
    if fmt is None:
        raise InputError(f"dataset {uri} is empty: no JSON lines", where=uri, fix=FIELDS_HELP)
    dataset = Dataset(uri=uri, format=fmt, records=records, sha256=hashlib.sha256(raw).hexdigest(), lines=lines)
    return curate_dataset(dataset, curation) if curation is not None else dataset


def curate_dataset(dataset: Dataset, config: Any) -> Dataset:
    """`dataset` with its records curated by `config` (a `CurationConfig`); see `read_dataset`.

    Each record's texts (text; prompt and completion; each message's content) are judged together and
    redacted one by one, so a record keeps its format. Curating every record away is an InputError."""
    from ..curation import curate
    from ..curation.io import record_items, with_parts

    result = curate(record_items(dataset.records, dataset.lines, dataset.uri), config)
    line_of = {f"{dataset.uri}#{n}": n for n in dataset.lines}
    kept = [with_parts(i.metadata["_record"], i.parts, i.metadata) for i in result.kept]
    if not kept:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.report.dropped_by_reason.items()))
        raise InputError(f"curation dropped every record of {dataset.uri} ({reasons})", where=dataset.uri,
                         fix="check the data, or loosen the curation config (docs/curation.md)")
    return Dataset(uri=dataset.uri, format=dataset.format, records=kept, sha256=dataset.sha256,
                   lines=[line_of[i.id] for i in result.kept], curation=result.report.model_dump(mode="json"),
                   excluded=result.excluded)


def write_curation(dataset: Dataset, folder: str) -> dict[str, str]:
    """Write a curated dataset's exclusions and report (JSON, HTML) under `folder`; returns their URIs."""
    from ..curation.io import exclusions_text, write_report, write_text
    from ..curation.report import CurationReport

    if dataset.curation is None:
        return {}
    root = folder.rstrip("/")
    uris = {"exclusions": f"{root}/curation-exclusions.jsonl", "report": f"{root}/curation-report.json",
            "html": f"{root}/curation-report.html"}
    report = CurationReport.model_validate({**dataset.curation, "exclusions": uris["exclusions"]})
    write_text(uris["exclusions"], exclusions_text(dataset.excluded))
    write_report(report, uris["report"], uris["html"], f"Curation of {dataset.uri}")
    dataset.curation = report.model_dump(mode="json")
    return uris


def _record_format(record: dict[str, Any], where: str, number: int) -> Format:
    def text_field(key: str) -> None:
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"line {number}: field {key!r} must be a non-empty string", where=where, fix=FIELDS_HELP)

    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise InputError(f"line {number}: 'messages' must be a non-empty list", where=where, fix=FIELDS_HELP)
        for i, message in enumerate(messages):
            if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                    or not isinstance(message.get("content"), str)):
                raise InputError(f"line {number}: messages[{i}] needs string fields 'role' and 'content'",
                                 where=where, fix='e.g. {"role": "user", "content": "..."}')
        if not any(m["role"] == "assistant" for m in messages):
            raise InputError(f"line {number}: no message has role 'assistant', so there is nothing to learn",
                             where=where, fix="add the assistant's answer")
        return "messages"
    if "prompt" in record or "completion" in record:
        for key in ("prompt", "completion"):
            if key not in record:
                other = "completion" if key == "prompt" else "prompt"
                raise InputError(f"line {number} has {other!r} but no {key!r}", where=where, fix=FIELDS_HELP)
            text_field(key)
        return "prompt_completion"
    if "text" in record:
        text_field("text")
        return "text"
    fields = ", ".join(sorted(record)) or "none"
    raise InputError(f"line {number} has none of the fields text, prompt/completion, messages (it has: {fields})",
                     where=where, fix=FIELDS_HELP)


# -- tokenization ------------------------------------------------------------------------------
def _fallback_chat(messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """Render a chat without a tokenizer template (ChatML-like): train on assistant turns only."""
    segments = []
    for message in messages:
        head = f"<|{message['role']}|>\n"
        if message["role"] == "assistant":
            segments += [(head, False), (message["content"] + "\n", True)]
        else:
            segments.append((head + message["content"] + "\n", False))
    return segments


def _template_segments(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[str, bool]] | None:
    """Cut a chat rendered by the tokenizer's template into (text, trained) pieces, or None when
    the template does not render each conversation as a prefix of its continuation."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        full = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            return None
        segments += [(prefix[len(done):], False), (full[len(prefix):], True)]
        done = full
    return [(text, trained) for text, trained in segments if text]


def encode(record: dict[str, Any], fmt: Format, tokenizer: Any, chat_template: bool) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one record; labels are IGNORE where the loss must not look."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if fmt == "text":
        ids = tokenizer(record["text"])["input_ids"] + eos
        return ids, list(ids)
    has_template = chat_template and bool(getattr(tokenizer, "chat_template", None))
    if fmt == "prompt_completion":
        messages = [{"role": "user", "content": record["prompt"]},
                    {"role": "assistant", "content": record["completion"]}]
        segments = _template_segments(tokenizer, messages) if has_template else None
        if segments is None:
            segments = [(record["prompt"], False), (record["completion"], True)]
    else:
        segments = _template_segments(tokenizer, record["messages"]) if has_template else None
        if segments is None:
            segments = _fallback_chat(record["messages"])
    ids: list[int] = []
    labels: list[int] = []
    bos = getattr(tokenizer, "bos_token_id", None)
    if not has_template and bos is not None:
        ids.append(bos)
        labels.append(IGNORE)
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE] * len(piece)
    if not has_template:
        ids += eos
        labels += eos
    return ids, labels


def tokenize(records: list[dict], fmt: Format, tokenizer: Any, max_len: int, packing: bool,
             chat_template: bool = True) -> list[dict[str, list[int]]]:
    """Examples of at most `max_len` tokens: each record truncated, or all packed end to end."""
    encoded = [encode(r, fmt, tokenizer, chat_template) for r in records]
    if packing:
        flat_ids = [t for ids, _ in encoded for t in ids]
        flat_labels = [t for _, labels in encoded for t in labels]
        examples = [
            {"input_ids": flat_ids[i: i + max_len], "labels": flat_labels[i: i + max_len]}
            for i in range(0, len(flat_ids), max_len)
        ]
    else:
        examples = [{"input_ids": ids[:max_len], "labels": labels[:max_len]} for ids, labels in encoded]
    # An example whose trained tokens all fell past max_len would only add zero-loss noise.
    return [e for e in examples if len(e["input_ids"]) > 1 and any(x != IGNORE for x in e["labels"][1:])]


def check_max_seq_length(max_len: int, model_max: int | None, where: str) -> None:
    """A sequence length the model cannot attend over is a spec error, not a crash mid-run."""
    if model_max and max_len > model_max:
        raise SpecError(
            f"training.max_seq_length {max_len} exceeds the model's context of {model_max} tokens",
            where=where, fix=f"set max_seq_length to at most {model_max}",
        )


class Collator:
    """Pads a batch (labels with IGNORE) and counts the real tokens it has seen."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            labels[row, :n] = torch.tensor(example["labels"])
            mask[row, :n] = 1
        self.tokens += int(mask.sum())
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}
