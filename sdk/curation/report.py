"""The curation report: JSON (a pydantic model), a standalone HTML page with a bar chart, MLflow.

Counts only: no value a PII recognizer found is ever in a report (entity types and counts are).
"""

from __future__ import annotations

import html
import json
from typing import Any

from pydantic import BaseModel, Field


class Cluster(BaseModel):
    """A kept document and the documents dropped as its (near-)duplicates."""

    kept: str
    duplicates: list[str] = Field(default_factory=list)
    similarity: list[float] = Field(default_factory=list, description="Estimated Jaccard of each duplicate.")


class CurationReport(BaseModel):
    """What a curation run did."""

    documents: int = 0
    kept: int = 0
    dropped: int = 0
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    pii_found: dict[str, int] = Field(default_factory=dict, description="Entity type -> matches (all documents "
                                      "scanned, kept or dropped).")
    redacted: dict[str, int] = Field(default_factory=dict, description="Entity type -> values replaced.")
    pii_documents: int = 0
    languages: dict[str, int] = Field(default_factory=dict, description="Document language -> documents seen.")
    paragraphs_removed: dict[str, int] = Field(default_factory=dict, description="Language -> paragraphs removed.")
    boilerplate_lines_removed: int = 0
    near_duplicate_clusters: list[Cluster] = Field(default_factory=list)
    clusters_total: int = 0
    bias: dict[str, Any] | None = None
    state: str | None = Field(None, description="Where the dedup state lives (cross-run duplicates).")
    state_documents: int = Field(0, description="Documents the earlier state held when this run started.")
    state_note: str | None = None
    exclusions: str | None = Field(None, description="The JSONL file of dropped documents (id, reason, text).")
    removed_from_index: int = Field(0, description="Chunks of dropped documents deleted from the index.")
    mlflow_run_id: str | None = None
    tracking_error: str | None = Field(None, description="Why logging to MLflow failed (the run went on).")
    bytes_in: int = 0
    seconds: float = 0.0
    shards: int = 1

    def count(self, table: str, key: str, n: int = 1) -> None:
        counts = getattr(self, table)
        counts[key] = counts.get(key, 0) + n


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of an index job's shards: counts summed, clusters joined."""
    from .screens import BiasScreen

    merged = CurationReport.model_validate(reports[0])
    bias = BiasScreen.model_validate(reports[0]["bias"]) if reports[0].get("bias") else None
    for raw in reports[1:]:
        other = CurationReport.model_validate(raw)
        for name in ("documents", "kept", "dropped", "pii_documents", "boilerplate_lines_removed", "clusters_total",
                     "removed_from_index", "bytes_in", "shards", "state_documents"):
            setattr(merged, name, getattr(merged, name) + getattr(other, name))
        for table in ("dropped_by_reason", "pii_found", "redacted", "languages", "paragraphs_removed"):
            for key, n in getattr(other, table).items():
                merged.count(table, key, n)
        merged.near_duplicate_clusters += other.near_duplicate_clusters
        merged.seconds = max(merged.seconds, other.seconds)
        merged.state_note = merged.state_note or other.state_note
        if other.exclusions and other.exclusions != merged.exclusions:
            merged.exclusions = ",".join(filter(None, [merged.exclusions, other.exclusions]))
        if raw.get("bias"):
            extra = BiasScreen.model_validate(raw["bias"])
            bias = extra if bias is None else (bias.merge(extra) or bias)
    merged.bias = bias.summary() if bias else None
    return merged.model_dump(mode="json")


# -- HTML ----------------------------------------------------------------------------------------
def _bars(title: str, counts: dict[str, Any]) -> str:
    """A horizontal bar chart in inline SVG (no plotting library needed), with the numbers beside."""
    items = sorted(((k, float(v)) for k, v in counts.items()), key=lambda kv: -kv[1])
    if not items:
        return f"<h2>{html.escape(title)}</h2><p>none</p>"
    top = max(v for _, v in items) or 1.0
    row, label_w, bar_w = 22, 300, 360
    rows = []
    for i, (key, value) in enumerate(items):
        y = i * row
        width = max(1.0, bar_w * value / top)
        shown = f"{value:g}"
        rows.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(key)}</text>'
                    f'<rect x="{label_w}" y="{y + 3}" width="{width:.1f}" height="{row - 6}" fill="#4c78a8"/>'
                    f'<text x="{label_w + width + 6:.1f}" y="{y + 15}">{shown}</text>')
    height = row * len(items)
    return (f"<h2>{html.escape(title)}</h2><svg xmlns='http://www.w3.org/2000/svg' width='{label_w + bar_w + 80}' "
            f"height='{height}' font-family='sans-serif' font-size='12'>{''.join(rows)}</svg>")


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def render_html(report: CurationReport, title: str = "Curation report") -> str:
    """A standalone HTML page: summary table, bar charts of drops, PII, languages and bias terms."""
    summary = _table([("documents", report.documents), ("kept", report.kept), ("dropped", report.dropped),
                      ("documents with PII", report.pii_documents),
                      ("boilerplate lines removed", report.boilerplate_lines_removed),
                      ("near-duplicate clusters", report.clusters_total),
                      ("earlier state", f"{report.state_documents} documents in {report.state}" if report.state
                       else "none"), ("exclusions file", report.exclusions or "none"),
                      ("seconds", report.seconds)])
    parts = [f"<h1>{html.escape(title)}</h1>", summary,
             _bars("Dropped, by reason", report.dropped_by_reason),
             _bars("PII found, by entity type", report.pii_found),
             _bars("PII redacted, by entity type", report.redacted),
             _bars("Document languages", report.languages)]
    if report.paragraphs_removed:
        parts.append(_bars("Paragraphs removed, by language", report.paragraphs_removed))
    if report.bias:
        for axis, groups in report.bias.get("mentions", {}).items():
            parts.append(_bars(f"Bias screen: {axis} term mentions", groups))
        parts.append(f"<p>toxic terms: {report.bias.get('toxic_terms', 0)} "
                     f"({report.bias.get('toxic_rate_per_1k_words', 0)} per 1,000 words) in "
                     f"{report.bias.get('toxic_documents', 0)} documents</p>")
    if report.near_duplicate_clusters:
        rows = "".join(f"<tr><td>{html.escape(c.kept)}</td><td>{html.escape(', '.join(c.duplicates))}</td></tr>"
                       for c in report.near_duplicate_clusters)
        parts.append(f"<h2>Duplicate clusters (first {len(report.near_duplicate_clusters)} of "
                     f"{report.clusters_total})</h2><table><tr><th>kept</th><th>dropped as duplicates</th></tr>"
                     f"{rows}</table>")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1000px}table{border-collapse:collapse}"
             "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


# -- MLflow --------------------------------------------------------------------------------------
EXPERIMENT = "stackwise-curation"


def mlflow_metrics(report: CurationReport) -> dict[str, float]:
    """Flat metric names for MLflow: kept, dropped, dropped.<reason>, pii.<type>, redacted.<type>, ..."""
    metrics: dict[str, float] = {"documents": report.documents, "kept": report.kept, "dropped": report.dropped,
                                 "pii_documents": report.pii_documents, "clusters": report.clusters_total}
    for prefix, table in (("dropped", report.dropped_by_reason), ("pii", report.pii_found),
                          ("redacted", report.redacted), ("language", report.languages)):
        for key, n in table.items():
            metrics[f"{prefix}.{key}".replace(":", "_")] = n
    if report.bias:
        metrics["bias.toxic_rate_per_1k_words"] = report.bias.get("toxic_rate_per_1k_words", 0.0)
    return metrics


def log_to_mlflow(report: CurationReport, tracking_uri: str, run_name: str, html_text: str,
                  tags: dict[str, str] | None = None) -> str:
    """Log the report (metrics, the JSON and the HTML page as artifacts) as one MLflow run; returns its id."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    run_id = run.info.run_id
    try:
        for key, value in mlflow_metrics(report).items():
            client.log_metric(run_id, key, float(value))
        client.log_text(run_id, json.dumps(report.model_dump(mode="json"), indent=2), "curation/report.json")
        client.log_text(run_id, html_text, "curation/report.html")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return run_id
