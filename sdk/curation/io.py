"""Reading what curation takes (documents, fine-tune records) and writing what it gives back."""

from __future__ import annotations

import json
from typing import Any

from .report import CurationReport, render_html
from .run import CurationResult, Exclusion, Item

OUTPUTS = {"kept": "curated.jsonl", "exclusions": "exclusions.jsonl", "report": "report.json",
           "html": "report.html"}


def record_parts(record: dict[str, Any]) -> list[str]:
    """The texts of a fine-tune record: `text`, or prompt and completion, or each message's content."""
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    if "prompt" in record:
        return [record["prompt"], record["completion"]]
    return [record["text"]]


def with_parts(record: dict[str, Any], parts: list[str], metadata: dict[str, Any]) -> dict[str, Any]:
    """`record` with its texts replaced by `parts` and tags (`language`, ...) added."""
    out = dict(record)
    if "messages" in record:
        out["messages"] = [{**m, "content": p} for m, p in zip(record["messages"], parts)]
    elif "prompt" in record:
        out["prompt"], out["completion"] = parts
    else:
        out["text"] = parts[0]
    for key in ("language", "paragraph_languages"):
        if key in metadata:
            out[key] = metadata[key]
    return out


def record_items(records: list[dict[str, Any]], lines: list[int], uri: str) -> list[Item]:
    """Items of a fine-tune dataset: id `<uri>#<line number>`, the record as metadata."""
    return [Item(f"{uri}#{n}", record_parts(r), {"_record": r}) for r, n in zip(records, lines)]


def write_text(uri: str, text: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def exclusions_text(excluded: list[Exclusion]) -> str:
    return "".join(e.json_line() + "\n" for e in excluded)


def write_outputs(out: str, result: CurationResult, kept_lines: list[str], title: str) -> dict[str, str]:
    """Write kept lines, exclusions, report JSON and HTML under the folder `out`; returns their URIs."""
    folder = out.rstrip("/")
    uris = {key: f"{folder}/{name}" for key, name in OUTPUTS.items()}
    result.report.exclusions = uris["exclusions"]
    write_text(uris["kept"], "".join(line + "\n" for line in kept_lines))
    write_text(uris["exclusions"], exclusions_text(result.excluded))
    write_report(result.report, uris["report"], uris["html"], title)
    return uris


def write_report(report: CurationReport, json_uri: str, html_uri: str, title: str) -> None:
    write_text(json_uri, json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    write_text(html_uri, render_html(report, title))
