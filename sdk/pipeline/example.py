"""`stackwise pipeline example DIR`: the quickstart's lifecycle as a pipeline project, data included."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import InputError

CURATION = """# docs/curation.md: every step with its published defaults; PII is redacted before indexing.
pii: {mode: redact}
"""


def write_example(folder: Path, force: bool = False, eval_passages: int = 24) -> list[Path]:
    from .. import quickstart

    files = {folder / "stackwise.yaml": resources.files("stackwise").joinpath("data/example_pipeline.yaml")
             .read_text("utf-8"),
             folder / "gates.yaml": quickstart.QUICKSTART_GATE, folder / "curation.yaml": CURATION}
    data = [folder / "data" / n for n in ("lee_docs.jsonl", "lee_passages.jsonl", "lee_eval.jsonl")]
    existing = [p for p in [*files, *data] if p.exists()]
    if existing and not force:
        raise InputError(f"{existing[0]} exists", where=str(folder), fix="choose another folder, or pass --force")
    folder.mkdir(parents=True, exist_ok=True)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
    quickstart.write_corpus(data[0])
    quickstart.write_finetune_corpus(data[1])
    quickstart.write_eval_data(data[2], passages=eval_passages, questions=0)
    return [*files, *data]
