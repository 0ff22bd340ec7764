"""The evaluation report: Markdown and a self-contained HTML page (plots inlined as PNG data
URIs, so it opens offline anywhere), with one matplotlib bar chart per suite comparing the
candidate with the baseline, and with any further models compared (`others`: more columns and
more bars, e.g. a plain model, a fine-tuned one, a RAG app and a hybrid side by side)."""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import Any

from .gate import LOWER_IS_BETTER


def _suite(metric: str) -> str:
    return metric.split(".", 1)[0]


_OTHER_COLORS = ("#dd6b20", "#38a169", "#805ad5", "#d53f8c", "#319795", "#d69e2e", "#718096", "#e53e3e")


def _metrics(models: list[tuple[str, dict[str, float]]]) -> list[str]:
    """Every metric any model has, in the order first seen (the candidate's first)."""
    return list(dict.fromkeys(m for _, metrics in models for m in metrics))


def _plots(folder: Path, candidate: tuple[str, dict[str, float]],
           baseline: tuple[str, dict[str, float]] | None,
           others: list[tuple[str, dict[str, float]]] | None = None) -> dict[str, Path]:
    from ..registry import require

    require("matplotlib", "eval", "the evaluation report's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = others or []
    groups: dict[str, list[str]] = {}
    for metric in _metrics([candidate, *([baseline] if baseline else []), *others]):
        groups.setdefault(_suite(metric), []).append(metric)
    out = {}
    series = [(candidate, "#2b6cb0"), *([(baseline, "#a0aec0")] if baseline else []),
              *zip(others, _OTHER_COLORS * (1 + len(others) // len(_OTHER_COLORS)))]
    for suite, metrics in groups.items():
        fig, ax = plt.subplots(figsize=(max(4.0, (1.8 + 0.5 * len(others)) * len(metrics) + 1.5), 3.6), dpi=100)
        width = {1: 0.6, 2: 0.38}.get(len(series), 0.8 / len(series))
        xs = range(len(metrics))
        for i, ((label, values), color) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            bars = ax.bar([x + offset for x in xs], [values.get(m, float("nan")) for m in metrics], width,
                          label=label, color=color)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([textwrap.fill(m.split(".", 1)[-1].replace("_", " "), 18)
                            + ("\n(lower is better)" if m in LOWER_IS_BETTER else "") for m in metrics], fontsize=8)
        ax.margins(y=0.15)
        ax.set_title(suite)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"plot-{suite}.png"
        fig.savefig(path)
        plt.close(fig)
        out[suite] = path
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def write_report(folder: Path, title: str, meta: dict[str, Any], candidate: tuple[str, dict[str, float]],
                 baseline: tuple[str, dict[str, float]] | None = None,
                 others: list[tuple[str, dict[str, float]]] | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and plot-<suite>.png into `folder`; returns (html, md).

    Columns: metric, candidate, baseline and delta (candidate - baseline) when there is a
    baseline, then one column per model of `others`; a metric a model lacks shows "-"."""
    folder.mkdir(parents=True, exist_ok=True)
    others = others or []
    plots = _plots(folder, candidate, baseline, others)
    header = ["metric", candidate[0]] + ([baseline[0], "delta"] if baseline else []) + [o[0] for o in others]
    rows = []
    for metric in _metrics([candidate, *([baseline] if baseline else []), *others]):
        value = candidate[1].get(metric)
        row = [metric, _fmt(value)]
        if baseline:
            other = baseline[1].get(metric)
            row += [_fmt(other), "-" if other is None or value is None else f"{value - other:+.4f}"]
        row += [_fmt(o[1].get(metric)) for o in others]
        rows.append(row)

    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    shown = [r[0] for r in rows]
    md += ["", "Lower is better for: " + ", ".join(sorted(m for m in shown if m in LOWER_IS_BETTER) or ["-"]), ""]
    md += [f"![{suite}]({path.name})" for suite, path in plots.items()]
    md_path = folder / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")

    esc = html.escape
    imgs = "".join(
        f'<figure><img alt="{esc(suite)}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
        f"<figcaption>{esc(suite)}</figcaption></figure>"
        for suite, path in plots.items()
    )
    table = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    facts = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in meta.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:1em}}</style></head><body>
<h1>{esc(title)}</h1><ul>{facts}</ul><table>{table}</table>{imgs}</body></html>"""
    html_path = folder / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return html_path, md_path
