"""A run as Markdown (CI job summaries: `stackwise pipeline show latest --markdown >> $GITHUB_STEP_SUMMARY`)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(record: dict[str, Any]) -> str:
    lines = [f"## Pipeline `{record['pipeline']}` on `{record['stack']}`: {record['status']}", "",
             f"Run `{record['run']}`.", "", "| step | kind | state | seconds | outputs |", "|---|---|---|---|---|"]
    for name, step in record["steps"].items():
        outputs = ", ".join(f"{k}: `{v}`" for k, v in (step.get("outputs") or {}).items() if not isinstance(v, dict))
        seconds = f"{step['seconds']:.1f}" if "seconds" in step else ""
        lines.append(f"| {name} | {step['kind']} | {step['state']} | {seconds} | {step.get('error') or outputs} |"
                     .replace("\n", " "))
    for name, step in record["steps"].items():
        if step.get("metrics"):
            base = step.get("baseline_metrics") or {}
            lines += ["", f"### Evaluation `{name}`" + (f" against `{step['baseline']}`" if step.get("baseline") else ""),
                      "", "| metric | candidate | baseline |", "|---|---|---|"]
            lines += [f"| {m} | {_fmt(v)} | {_fmt(base.get(m, ''))} |" for m, v in step["metrics"].items()]
        gate = step.get("gate")
        if gate:
            verdict = "promoted" if gate.get("promoted") else "refused"
            lines += ["", f"### Gate `{name}`: {verdict} (champion {gate.get('champion_before')} -> "
                      f"{gate.get('champion_after')})"]
            if gate.get("rows"):
                lines += ["", "| metric | candidate | champion | passed |", "|---|---|---|---|"]
                lines += [f"| {r.get('metric')} | {_fmt(r.get('candidate'))} | {_fmt(r.get('champion'))} | "
                          f"{'yes' if r.get('passed') else 'no'} |" for r in gate["rows"]]
    return "\n".join(lines) + "\n"
