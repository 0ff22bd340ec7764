"""How the CLI prints: the console, JSON, and the human form of each report (index, fine-tune,
evaluation, promotion gate, deployment, plan, placement) and of a job's progress events."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any


def get_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _jsonable(value: Any) -> Any:
    """A job report (a mapping, not a dict) as its JSON object; anything else as text."""
    return dict(value.items()) if isinstance(value, Mapping) else str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def progress_text(job_id: str, event: dict[str, Any]) -> str:
    """The bar's label: the stage, plus the training numbers (loss, tokens/s) when a workload sends them."""
    parts = [f"{job_id}: {event['stage']}"]
    if event.get("loss") is not None:
        parts.append(f"loss {event['loss']:.3f}")
    if event.get("tokens_per_s") is not None:
        parts.append(f"{event['tokens_per_s']:,.0f} tok/s")
    return "  ".join(parts)


def print_rendered(rendered: Any, as_json: bool) -> None:
    """`--dry-run`: the backend's request as data (YAML documents for Kubernetes manifests)."""
    if as_json or not isinstance(rendered, list):
        print(json.dumps(rendered, indent=2, sort_keys=True))
        return
    import yaml

    print(yaml.safe_dump_all(rendered, sort_keys=False, width=120), end="")


SKIPPED_SHOWN = 20  # skipped files listed one per line; `--json` has them all


def print_index_report(report: Mapping[str, Any]) -> None:
    from ..reports import IndexReport

    r = IndexReport.of(report) if not isinstance(report, IndexReport) else report
    console = get_console()
    console.print(
        f"index {r.index} from {r.source} ({r.model}): "
        f"{r.documents} documents, {r.chunks} chunks in {r.seconds:.1f} s",
        markup=False,
    )
    console.print(
        f"  added {r.added}  replaced {r.replaced} (removed {r.removed} stale)  "
        f"unchanged {r.unchanged}  pruned {r.pruned}"
    )
    if r.embedding_backend:
        console.print(f"  embedded {r.embedded} chunks on {r.embedding_backend}", markup=False)
    if r.recovered_version is not None:
        console.print(f"  the index was damaged: restored its last good version {r.recovered_version} first")
    if r.migrated:
        console.print(f"  re-keyed {r.migrated} documents indexed under another spelling of their path")
    for item in r.skipped[:SKIPPED_SHOWN]:
        console.print(f"  skipped {item.path}: {item.reason}", markup=False)
    if len(r.skipped) > SKIPPED_SHOWN:
        console.print(f"  ... and {len(r.skipped) - SKIPPED_SHOWN} more skipped files (`--json` lists them all)",
                      markup=False)


def print_finetune_report(report: Mapping[str, Any]) -> None:
    from ..reports import FineTuneReport

    r = FineTuneReport.of(report) if not isinstance(report, FineTuneReport) else report
    console = get_console()
    ppl = r.perplexity
    resumed = f", resumed from step {r.resumed_from_step}" if r.resumed_from_step else ""
    console.print(
        f"fine-tuned {r.base} ({r.method}) on {r.data}: {r.steps} steps{resumed}, "
        f"{r.processes} process(es) ({r.strategy}, {r.device}, {r.precision}) "
        f"in {r.seconds:.0f} s, {r.tokens_per_s:,.0f} tokens/s",
        markup=False,
    )
    console.print(f"  held-out perplexity {ppl.before:.2f} -> {ppl.after:.2f} "
                  f"(reloaded from disk: {ppl.reloaded}) on {ppl.eval_examples} examples", markup=False)
    for key in ("adapter", "model", "merged", "model_card"):
        if getattr(r, key):
            console.print(f"  {key}: {getattr(r, key)}", markup=False)
    if r.registered_model:
        console.print(f"  registered: {r.registered_model} version {r.registered_version}", markup=False)
    if r.tracking_error:
        console.print(f"  MLflow logging failed: {r.tracking_error}", markup=False)


def print_placement(placement: Any) -> None:
    """One line before submit on a cloud stack: where the job runs and what it should cost."""
    if placement.cloud == "local" or placement.gpu is None:
        return
    where = f"{placement.count} x {placement.gpu}" + (f" ({placement.instance})" if placement.instance else "")
    if placement.chosen:
        where += f", the cheapest allowed GPU holding {placement.memory_gb_needed:.1f} GB"
    cost = (f"estimate {placement.hours:,.2f} h, ${placement.usd:,.2f}" if placement.usd is not None
            else "no estimate")
    if placement.upper_bound_usd is not None:
        cost += f" (at most ${placement.upper_bound_usd:,.2f} at max_runtime_s)"
    if placement.max_job_cost_usd is not None:
        cost += f"; limit ${placement.max_job_cost_usd:,.2f}"
    console = get_console(stderr=True)
    console.print(f"placement: {where}; {'spot' if placement.spot else 'on-demand'}; {cost}", markup=False)
    for note in placement.notes:
        console.print(f"  note: {note}", markup=False)


def print_eval_report(report: Mapping[str, Any]) -> None:
    from rich.table import Table

    from ..reports import EvalReport

    r = EvalReport.of(report) if not isinstance(report, EvalReport) else report
    cand, base, others = r.candidate, r.baseline, r.compare
    table = Table("metric", f"candidate ({cand.pinned or cand.ref})",
                  *([f"baseline ({base.pinned or base.ref})", "delta"] if base else []),
                  *[f"{o.role} ({o.ref})" for o in others],
                  title=f"evaluation on {r.data} (sha256 {r.data_sha256[:12]})")
    metrics = list(dict.fromkeys([*cand.metrics, *(m for o in others for m in o.metrics)]))
    for metric in metrics:
        value = cand.metrics.get(metric)
        row = [metric, "-" if value is None else f"{value:.4f}"]
        if base:
            other = base.metrics.get(metric)
            row += ["-" if other is None else f"{other:.4f}",
                    "-" if other is None or value is None else f"{value - other:+.4f}"]
        row += ["-" if o.metrics.get(metric) is None else f"{o.metrics[metric]:.4f}" for o in others]
        table.add_row(*row)
    console = get_console()
    console.print(table)
    leak = r.leakage
    console.print(f"leakage: {leak.get('leaked', 0)} of {leak.get('checked', 0)} records found in "
                  f"{', '.join(leak.get('training_data') or []) or 'no known training data'}", markup=False)
    for result in (cand, base, *others):
        if result and result.mlflow_run_id:
            console.print(f"MLflow run ({result.role}): {result.mlflow_run_id}", markup=False)
    if r.tracking_error:
        console.print(f"MLflow logging failed: {r.tracking_error}", markup=False)
    console.print(f"report: {r.report_html} (and {r.report_md})", markup=False)


def print_gate(result: Any) -> None:
    """The promotion gate's table of a PromotionResult (stackwise.model_registry)."""
    from rich.table import Table

    table = Table("metric", "better", "candidate", "champion", "improvement", "required", "result",
                  title=f"{result.model}: candidate v{result.candidate} vs champion v{result.champion_before}")
    for row in result.rows:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        table.add_row(row["metric"], row["direction"], fmt(row["candidate"]), fmt(row["champion"]),
                      "-" if row["improvement"] is None else f"{row['improvement']:+.4f}", f"{row['min_delta']:g}",
                      "pass" if row["passed"] else f"FAIL: {row['reason']}")
    get_console().print(table)


def print_deployment(dep: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("version", "traffic", "state", "variant", "artifact",
                  title=f"endpoint {dep['endpoint']} ({dep['cloud']}): {dep['state']}" + (f"  {dep['url']}" if dep["url"] else ""))
    for v in dep["variants"]:
        table.add_row(f"{v['model']}:{v['version']}", f"{v['traffic']}%", v["state"], v["name"] or "-", v["artifact_uri"] or "-")
    get_console().print(table)


def fmt_time(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def print_plan(result: dict[str, Any]) -> None:
    from rich.table import Table

    console = get_console()
    table = Table("type", "name", "parent", "key settings", title=f"stack {result['stack']}: "
                  f"{sum(not r['component'] for r in result['resources'])} resources ({result['cloud']}, {result['region']})")
    for r in result["resources"]:
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        table.add_row(r["type"], r["name"], r["parent"] or "-", settings)
    console.print(table)
    console.print("outputs (the stack contract):")
    for key, value in result["outputs"].items():
        if value not in (None, [], {}):
            console.print(f"  {key}: {json.dumps(value)}", markup=False)
    cost = result["cost"]
    console.print(f"estimated monthly cost: ${cost['monthly_usd']:,.2f} (budget ${result['budget_usd']:,.2f})")
    for item in cost["items"]:
        console.print(f"  ${item['monthly_usd']:>10,.2f}  {item['resource']}: {item['basis']}", markup=False)
    console.print(f"  ({cost['note']}; planned in {result['seconds']} s)", markup=False)
