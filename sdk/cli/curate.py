"""`stackwise curate SOURCE --out URI`: dedup, quality, language, PII and bias screens on documents
or a fine-tune dataset, writing the kept items, the exclusions and the report (JSON and HTML).

`curate_command` is the command; the main CLI mounts it with `app.command("curate")(curate_command)`.
`curate_app` is the same command as a one-command Typer app (tests; `python -m stackwise.cli.curate`).
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any, Optional

import typer

curate_app = typer.Typer(help="Curate documents or a fine-tune dataset.", add_completion=False)


def _load_source(source: str, follow_links: bool) -> tuple[str, list[Any], Any]:
    """(kind, items, originals): a single .jsonl file is a fine-tune dataset (records keep their
    format), anything else documents as `stackwise index` reads them."""
    from ..curation.io import record_items
    from ..curation.run import Item

    if source.lower().endswith(".jsonl") and not any(c in source for c in "*?["):
        from ..training.data import read_dataset

        dataset = read_dataset(source)
        return "records", record_items(dataset.records, dataset.lines, dataset.uri), dataset
    from ..documents import Source, read_documents

    documents, skipped = read_documents(Source(source, follow_links=follow_links))
    items = [Item(d.doc_id, [d.text], dict(d.metadata)) for d in documents]
    return "documents", items, skipped


def _kept_lines(kind: str, kept: list[Any]) -> list[str]:
    from ..curation.io import with_parts

    if kind == "records":
        return [json.dumps(with_parts(i.metadata["_record"], i.parts, i.metadata), ensure_ascii=False) for i in kept]
    return [json.dumps({"id": i.id, "text": i.parts[0], **{k: v for k, v in i.metadata.items() if k != "text"}},
                       ensure_ascii=False) for i in kept]


def curate_to(source: str, out: str, cfg: Any, *, state: str | None = None, tracking_uri: str | None = None,
              follow_links: bool = False, title: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Curate SOURCE into the folder OUT (curated.jsonl, exclusions.jsonl, report.json, report.html) and
    return (the CurationReport, it as a dict with `outputs` (the URIs written) and `mlflow_run_id`). The command and the
    pipeline's curate step both call it."""
    from ..curation import curate
    from ..curation.io import write_outputs

    title = title or f"Curation of {source}"
    kind, items, extra = _load_source(source, follow_links)
    result = curate(items, cfg, state_folder=state)
    uris = write_outputs(out, result, _kept_lines(kind, result.kept), title)
    report = result.report
    run_id = None
    if tracking_uri:
        from ..curation.report import log_to_mlflow, render_html

        run_id = log_to_mlflow(report, tracking_uri, f"curate-{out.rstrip('/').rsplit('/', 1)[-1]}",
                               render_html(report, title), {"source": source})
    data = {**report.model_dump(mode="json"), "outputs": uris, "mlflow_run_id": run_id}
    if kind == "documents" and extra:
        data["skipped"] = [{"path": s.path, "reason": s.reason} for s in extra]
    return report, data


@curate_app.command()
def curate_command(
    source: Annotated[str, typer.Argument(help="A file, folder or glob of documents (local or fsspec URI), or a "
                                          "JSONL dataset (text, prompt/completion or messages).")],
    out: Annotated[str, typer.Option("--out", help="Folder (local or fsspec URI) for curated.jsonl, "
                                     "exclusions.jsonl, report.json and report.html.")],
    config: Annotated[Optional[str], typer.Option("--config", help="A curation YAML file (docs/curation.md); "
                                                  "default: every step with its published defaults.")] = None,
    state: Annotated[Optional[str], typer.Option("--state", help="Folder of the dedup state: documents kept by "
                                                 "earlier runs count as duplicates (created if missing).")] = None,
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="Also log the report to this "
                                                        "MLflow tracking URI.")] = None,
    follow_links: Annotated[bool, typer.Option("--follow-links", help="Read symbolic links leading outside "
                                               "a folder source.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
) -> None:
    """Curate SOURCE: drop duplicates, low-quality text and other languages, find or redact PII, screen for
    bias terms. Nothing is lost: dropped items go to exclusions.jsonl with their reason."""
    from ..curation import CurationConfig, load_config

    cfg = load_config(config) if config else CurationConfig()
    report, data = curate_to(source, out, cfg, state=state, tracking_uri=tracking_uri, follow_links=follow_links)
    uris = data["outputs"]
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    lines = [f"curated {report.documents} items from {source}: kept {report.kept}, dropped {report.dropped}"]
    lines += [f"  dropped {n:>6}  {reason}" for reason, n in sorted(report.dropped_by_reason.items())]
    lines += [f"  {'redacted' if report.redacted else 'PII found'} {n:>5}  {entity}"
              for entity, n in sorted((report.redacted or report.pii_found).items())]
    if report.languages:
        lines.append("  languages: " + ", ".join(f"{k} {v}" for k, v in sorted(report.languages.items())))
    lines.append(f"  outputs: {uris['kept']}, {uris['exclusions']}, {uris['report']}, {uris['html']}")
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    """Run the command alone, with the main CLI's error handling (a StackwiseError exits with its code)."""
    from ..errors import StackwiseError

    try:
        curate_app()
    except StackwiseError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
