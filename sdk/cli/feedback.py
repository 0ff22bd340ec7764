"""`stackwise feedback list|review|export`, and the online A/B figures `stackwise endpoints --stats`
prints (`endpoint_stats` + `print_endpoint_stats`).

Review is interactive and reads plain lines, so it also works with stdin piped: per answer it shows
the question, the cited sources, the answer and its feedback, then asks a (approve), c (correct:
asks for the corrected answer), s (skip) or q (quit); end of input quits. Bad input (an unknown
format, a bad filter) raises StackwiseError, which the CLI prints and maps to exit 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any, Optional

import typer

from ..errors import InputError
from .common import JsonOpt, StackOpt
from .render import get_console, print_json

feedback_app = typer.Typer(help="Feedback on served answers: list it, review answers in the terminal, export "
                                "reviewed ones as evaluation data or Label Studio tasks.", no_args_is_help=True)

AppOpt = Annotated[Optional[str], typer.Option("--app", help="Only answers of this RAG app.")]
VersionOpt = Annotated[Optional[str], typer.Option("--version", help="Only answers of this version.")]
EndpointOpt = Annotated[Optional[str], typer.Option("--endpoint", "-e", help="Only answers of this endpoint.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Include answers nobody gave feedback on.")]
LimitOpt = Annotated[int, typer.Option("--limit", min=1, max=100000, help="At most this many answers.")]
FORMATS = ("eval", "label-studio")
LABEL_STUDIO_CONFIG = """<View>
  <Header value="Question"/>
  <Text name="question" value="$question"/>
  <Header value="Retrieved sources"/>
  <Text name="sources" value="$sources"/>
  <Header value="Answer (edit it to correct it)"/>
  <TextArea name="answer" toName="question" editable="true" rows="6" maxSubmissions="1"/>
  <Choices name="verdict" toName="question" choice="single">
    <Choice value="approve"/>
    <Choice value="correct"/>
    <Choice value="reject"/>
  </Choices>
</View>
"""


def _store(stack: str | None):
    from ..feedback import FeedbackStore

    return FeedbackStore.for_stack(stack)


def _short(text: str, limit: int = 60) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _item_json(item: Any) -> dict[str, Any]:
    return {**item.model_dump(), "score": item.score}


@feedback_app.command("list")
def feedback_list(
    app: AppOpt = None,
    version: VersionOpt = None,
    endpoint: EndpointOpt = None,
    unreviewed: Annotated[bool, typer.Option("--unreviewed", help="Only answers no reviewer has judged.")] = False,
    all_answers: AllOpt = False,
    limit: LimitOpt = 100,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List served answers that got feedback, newest first, with their score and review."""
    items = _store(stack).list(app=app, version=version, endpoint=endpoint, reviewed=False if unreviewed else None,
                               with_feedback=None if all_answers else True, limit=limit)
    if as_json:
        print_json([_item_json(i) for i in items])
        return
    from rich.table import Table

    table = Table("request id", "app / model", "version", "question", "answer", "score", "feedback", "review",
                  title=f"{len(items)} answers")
    for item in items:
        rec = item.record
        notes = "; ".join(filter(None, (f.label or (f"comment: {_short(f.comment, 30)}" if f.comment else None)
                                        or (f"correction: {_short(f.correction, 30)}" if f.correction else None)
                                        for f in item.feedback)))
        table.add_row(rec["request_id"], rec["app"] or rec["model"] or "-", rec["version"] or "-",
                      _short(item.question, 40), _short(rec["answer"], 40),
                      "-" if item.score is None else f"{item.score:.2f}", notes or "-",
                      f"{item.review.decision} ({item.review.reviewer})" if item.review else "-")
    get_console().print(table)


def _show(console: Any, item: Any, position: str) -> None:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    rec = item.record
    title = (f"{position}  request {rec['request_id']}  {rec['app'] or rec['model'] or '-'}"
             f"{' v' + rec['version'] if rec['version'] else ''}  ({rec['endpoint']})")
    console.print(Panel(Text(item.question or "(no question)"), title=Text(title), title_align="left"))
    if rec["sources"]:
        sources = Table("#", "document", "chunk", "score", box=None)
        for n, source in enumerate(rec["sources"], 1):
            score = source.get("score")
            sources.add_row(str(n), Text(str(source.get("doc_id") or source.get("source") or "-")),
                            Text(str(source.get("id") or "-")), "-" if score is None else f"{float(score):.3f}")
        console.print(sources)
    console.print(Panel(Text(rec["answer"] or "(empty answer)"), title="answer", title_align="left"))
    for f in item.feedback:
        parts = [f"from {f.user or 'anonymous'}:"]
        if f.score is not None:
            parts.append(f"score {f.score:.2f}" + (f" ({f.label})" if f.label else ""))
        if f.comment:
            parts.append(f"comment: {f.comment}")
        if f.correction:
            parts.append(f"correction: {f.correction}")
        console.print(Text("feedback " + " ".join(parts)))
    if not item.feedback:
        console.print(Text("no feedback"))


def _ask(question: str, choices: tuple[str, ...] | None = None, default: str | None = None) -> str | None:
    """One line from the terminal or a pipe (asked again until it is one of `choices`); None at
    end of input or on Ctrl-C."""
    while True:
        try:
            answer = typer.prompt(question, default=default, show_default=default is not None)
        except typer.Abort:
            return None
        answer = str(answer)
        if not sys.stdin.isatty():
            typer.echo(answer)  # piped input is not echoed: keep the transcript readable
        if not choices or answer.strip().lower() in choices:
            return answer.strip().lower() if choices else answer
        typer.echo(f"answer one of: {', '.join(choices)}")


@feedback_app.command("review")
def feedback_review(
    app: AppOpt = None,
    version: VersionOpt = None,
    endpoint: EndpointOpt = None,
    all_answers: AllOpt = False,
    limit: LimitOpt = 100,
    reviewer: Annotated[Optional[str], typer.Option("--reviewer",
                                                    help="Your name on the reviews (default: your login).")] = None,
    approve_all: Annotated[bool, typer.Option("--approve-all",
                                              help="Approve every listed answer without asking.")] = False,
    request_id: Annotated[Optional[str], typer.Option("--request-id", help="Review this one answer (again, if it "
                                                      "was reviewed already).")] = None,
    stack: StackOpt = None,
) -> None:
    """Review unreviewed answers in the terminal, oldest first: a approve, c correct, s skip, q quit."""
    store = _store(stack)
    who = reviewer or _login()
    items = [store.get(request_id)] if request_id is not None else store.list(
        app=app, version=version, endpoint=endpoint, reviewed=False, with_feedback=None if all_answers else True,
        limit=limit, oldest_first=True)
    console = get_console()
    if not items:
        console.print("nothing to review" + ("" if all_answers else " (add --all to include answers without feedback)"))
        return
    done = {"approved": 0, "corrected": 0, "skipped": 0}
    for n, item in enumerate(items, 1):
        _show(console, item, f"[{n}/{len(items)}]")
        choice = "a" if approve_all else _ask("[a]pprove, [c]orrect, [s]kip, [q]uit", ("a", "c", "s", "q"))
        if choice in (None, "q"):
            break
        if choice == "s":
            done["skipped"] += 1
            continue
        if choice == "a":
            store.review(item.record["request_id"], approve=True, reviewer=who)
            done["approved"] += 1
            continue
        suggestion = next((f.correction for f in reversed(item.feedback) if f.correction), None)
        corrected = _ask("corrected answer", default=suggestion)
        if corrected is None:
            break
        if not corrected.strip():
            console.print("an empty correction: skipped")
            done["skipped"] += 1
            continue
        store.review(item.record["request_id"], approve=False, correction=corrected.strip(), reviewer=who)
        done["corrected"] += 1
    left = len(items) - sum(done.values())
    console.print(f"reviewed by {who}: {done['approved']} approved, {done['corrected']} corrected, "
                  f"{done['skipped']} skipped, {left} left", markup=False)


def _login() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "reviewer"


@feedback_app.command("export")
def feedback_export(
    out: Annotated[str, typer.Option("--out", "-o", help="File to write (JSONL for eval, JSON for label-studio).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="eval (records for `stackwise eval`: qa and retrieval) "
                                                            "or label-studio (tasks).")] = "eval",
    app: AppOpt = None,
    version: VersionOpt = None,
    include_unreviewed: Annotated[bool, typer.Option("--include-unreviewed", help="eval: also use users' corrections "
                                                     "nobody reviewed as expected answers.")] = False,
    with_predictions: Annotated[bool, typer.Option(
        "--with-predictions", help="eval: add the served answer as `prediction`, so `stackwise eval` scores "
                                   "what was served.")] = False,
    stack: StackOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Export reviewed answers as evaluation JSONL (`stackwise eval --data FILE --suite qa,retrieval`) or as
    Label Studio tasks (with a labeling config written beside them)."""
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt[:40]!r}", where="--format",
                         fix="use --format eval or --format label-studio")
    store = _store(stack)
    if fmt == "eval":
        counts = store.export_eval(out, reviewed_only=not include_unreviewed, include_predictions=with_predictions,
                                   app=app, version=version)
        result: dict[str, Any] = {"format": fmt, "path": out, "records": counts}
        message = (f"wrote {counts['qa']} qa and {counts['retrieval']} retrieval records to {out}; evaluate with: "
                   f"stackwise eval --data {out} --suite qa --model MODEL")
    else:
        from pathlib import Path

        tasks = store.export_label_studio(out, app=app)
        config = Path(out).with_suffix(".label-config.xml")
        config.write_text(LABEL_STUDIO_CONFIG, encoding="utf-8")
        result = {"format": fmt, "path": out, "tasks": tasks, "label_config": str(config)}
        message = f"wrote {tasks} Label Studio tasks to {out} (labeling config: {config})"
    if as_json:
        print_json(result)
    else:
        get_console().print(message, markup=False)


# -- `stackwise endpoints --stats` -------------------------------------------------------------------
def endpoint_stats(stack: Any = None, endpoint: str | None = None, app: str | None = None,
                   alpha: float = 0.05) -> dict[str, Any]:
    """Online figures per served version of `endpoint` (None: every endpoint) with significance
    tests between every pair of versions (b against a, a being the one listed first)."""
    from itertools import combinations

    from ..feedback import FeedbackStore, compare_versions

    store = stack if isinstance(stack, FeedbackStore) else FeedbackStore.for_stack(stack)
    versions = store.stats(endpoint=endpoint, app=app)
    comparisons = [compare_versions(a, b, alpha) for a, b in list(combinations(versions, 2))[:10]]
    rows = [{**v.model_dump(exclude={"scores"}), "label": v.label} for v in versions]
    return {"endpoint": endpoint, "app": app, "alpha": alpha, "versions": rows, "comparisons": comparisons}


def print_endpoint_stats(result: dict[str, Any], console: Any = None) -> None:
    """Rich table of `endpoint_stats`, then one line per comparison."""
    from rich.table import Table

    console = console or get_console()
    fmt = lambda v, spec=".2f": "-" if v is None else format(v, spec)  # noqa: E731
    table = Table("version", "answers", "errors", "feedback", "mean score", "p50 ms", "p99 ms", "ttft p50 ms",
                  "refusal rate", title=f"online metrics{' of ' + result['endpoint'] if result['endpoint'] else ''}")
    for v in result["versions"]:
        table.add_row(v["label"], str(v["answers"]), str(v["errors"]), str(v["feedback"]), fmt(v["mean_score"]),
                      fmt(v["latency_p50_ms"], ".1f"), fmt(v["latency_p99_ms"], ".1f"), fmt(v["ttft_p50_ms"], ".1f"),
                      fmt(v["refusal_rate"], ".3f"))
    console.print(table)
    if not result["versions"]:
        console.print("no answers recorded yet")
    for c in result["comparisons"]:
        s, r = c["score"], c["refusal"]
        verdict = lambda t: "significant" if t["significant"] else "not significant"  # noqa: E731
        score = (f"score {fmt(s['diff'], '+.3f')} (Welch t-test p={fmt(s['p_value'], '.3g')}, d={fmt(s['cohens_d'])}, "
                 f"{verdict(s)})" if s["p_value"] is not None else f"score: {s.get('note', 'no test')}")
        refusal = (f"refusal rate {fmt(r['diff'], '+.3f')} (Fisher exact p={fmt(r['p_value'], '.3g')}, {verdict(r)})"
                   if r["p_value"] is not None else "refusal rate: no answers")
        console.print(f"{c['b']} vs {c['a']}: {score}; {refusal} at {c['alpha']:g}", markup=False)
