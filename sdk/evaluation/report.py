"""The evaluation report: Markdown and a self-contained HTML page (plots inlined as PNG data
URIs, so it opens offline anywhere), with one matplotlib bar chart per suite comparing the
candidate with the baseline."""

from __future__ import annotations

import base64
import html
import textwrap
from pathlib import Path
from typing import Any

from .gate import LOWER_IS_BETTER


def _suite(metric: str) -> str:
    return metric.split(".", 1)[0]


def _plots(folder: Path, candidate: tuple[str, dict[str, float]],
           baseline: tuple[str, dict[str, float]] | None) -> dict[str, Path]:
    from ..registry import require

    require("matplotlib", "eval", "the evaluation report's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[str]] = {}
    for metric in candidate[1]:
        groups.setdefault(_suite(metric), []).append(metric)
    out = {}
    for suite, metrics in groups.items():
        fig, ax = plt.subplots(figsize=(max(4.0, 1.8 * len(metrics) + 1.5), 3.6), dpi=100)
        width = 0.38 if baseline else 0.6
        xs = range(len(metrics))
        bars = ax.bar([x - (width / 2 if baseline else 0) for x in xs], [candidate[1][m] for m in metrics], width,
                      label=candidate[0], color="#2b6cb0")
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
        if baseline:
            bars = ax.bar([x + width / 2 for x in xs], [baseline[1].get(m, float("nan")) for m in metrics], width,
                          label=baseline[0], color="#a0aec0")
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
                 baseline: tuple[str, dict[str, float]] | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and plot-<suite>.png into `folder`; returns (html, md)."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(folder, candidate, baseline)
    header = ["metric", candidate[0]] + ([baseline[0], "delta"] if baseline else [])
    rows = []
    for metric, value in candidate[1].items():
        row = [metric, _fmt(value)]
        if baseline:
            other = baseline[1].get(metric)
            row += [_fmt(other), "-" if other is None else f"{value - other:+.4f}"]
        rows.append(row)

    md = [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in meta.items()] + [""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += ["", "Lower is better for: " + ", ".join(sorted(m for m in candidate[1] if m in LOWER_IS_BETTER) or ["-"]), ""]
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
