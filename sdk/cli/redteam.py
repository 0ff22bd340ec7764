"""`stackwise redteam`: garak's probes against an OpenAI-compatible endpoint (see docs/safety.md).

A Typer app (`redteam_app`) whose callback is the command, mounted by the main CLI with
`app.add_typer(redteam_app, name="redteam")`. Bad input (an unknown probe, garak's venv missing, an
endpoint that does not answer) raises `StackwiseError`s, which the main CLI prints as what / where /
fix with exit 2.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

redteam_app = typer.Typer(help="Red-team a served model with garak's probes (offline detectors only); writes "
                          "garak's report, redteam.json and eval-report.json.")


@redteam_app.callback(invoke_without_command=True)
def redteam(
    endpoint: Annotated[str, typer.Option("--endpoint", "-e", help="OpenAI-compatible base URL, e.g. "
                                          "http://127.0.0.1:8080/v1 (stackwise serve).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name the endpoint serves (GET /v1/models).")],
    probes: Annotated[str, typer.Option("--probes", "-p", help="Comma-separated garak probe families (dan, encoding, "
                                        "...) or probes (dan.DanInTheWild); `python -m garak --list_probes` in the "
                                        "garak venv lists them.")],
    generations: Annotated[int, typer.Option("--generations", "-g", help="Outputs per prompt.")] = 1,
    prompt_cap: Annotated[int, typer.Option("--prompt-cap", help="At most this many prompts per probe.")] = 20,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Tokens per answer.")] = 150,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Folder for garak's report, redteam.json and "
                                               "eval-report.json (default: a new temporary folder).")] = None,
    api_key_env: Annotated[Optional[str], typer.Option("--api-key-env", help="Name of the environment variable "
                                                       "holding the endpoint's API key (the key is never passed on "
                                                       "a command line).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON only.")] = False,
) -> None:
    """Run garak's probes against a served model; print attack success rates and what could not run offline."""
    from ..redteam import run_redteam

    names = [p for p in (s.strip() for s in probes.split(",")) if p]
    report = run_redteam(endpoint, model, names, api_key_env=api_key_env, generations=generations,
                         prompt_cap=prompt_cap, out_dir=out, max_tokens=max_tokens)
    if as_json:
        sys.stdout.write(json.dumps({**report.model_dump(), "metrics": report.metrics()}, indent=2) + "\n")
        return
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    rate = "n/a" if report.attack_success_rate is None else f"{report.attack_success_rate:.3f}"
    console.print(f"garak {report.garak_version} on {report.model} at {report.endpoint}: "
                  f"redteam.attack_success_rate {rate} ({report.fails} of {report.outputs_evaluated} outputs)",
                  markup=False)
    for r in report.results:
        asr = "n/a" if r.attack_success_rate is None else f"{r.attack_success_rate:.3f}"
        console.print(f"  {r.probe:40} {r.detector:45} {r.fails:4}/{r.outputs_evaluated:<4} {asr}", markup=False)
    for n in report.not_run:
        console.print(f"  not run: {n.kind} {n.name}: {n.reason}", markup=False)
    console.print(f"report: {report.out_dir}/redteam.json, eval-report.json, garak.report.jsonl", markup=False)
