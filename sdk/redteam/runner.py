"""Run garak against an OpenAI-compatible endpoint and read its report.

The API key travels only as an environment variable: garak's config names the variable
(`key_env_var`), never its value, and nothing here prints or stores the value.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import InputError, JobFailedError
from . import garak_env
from .report import NotRun, RedTeamReport, pooled_rate, probe_results, read_entries

TARGET_TYPE = "openai.OpenAICompatible"
NO_KEY_VAR = "STACKWISE_REDTEAM_API_KEY"  # given to garak when the endpoint needs no key: a placeholder


def base_url(endpoint_url: str) -> str:
    """The OpenAI base URL (ending /v1/): a bare host:port gets /v1 appended, a path is kept."""
    parsed = urllib.parse.urlparse(endpoint_url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"endpoint {endpoint_url!r} is not an http(s) URL", where="--endpoint",
                         fix="e.g. --endpoint http://127.0.0.1:8080/v1 (stackwise serve's OpenAI routes)")
    path = parsed.path.rstrip("/") or "/v1"
    return urllib.parse.urlunparse(parsed._replace(path=path + "/", query="", fragment=""))


def check_reachable(url: str, key: str | None, timeout_s: float = 10) -> None:
    """Any HTTP answer from GET {url}models counts (even 401/404); no answer raises `InputError`."""
    request = urllib.request.Request(url + "models", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310 - http(s) checked by base_url
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InputError(f"the endpoint does not answer: {reason}", where=url,
                         fix="start the server (e.g. stackwise serve) or correct --endpoint") from None


def _api_key(api_key_env: str | None) -> tuple[str, dict[str, str]]:
    """(the variable garak reads, what the child environment adds): never the value on a command line."""
    if not api_key_env:
        return NO_KEY_VAR, {NO_KEY_VAR: "unused"}
    if not os.environ.get(api_key_env):
        raise InputError(f"the API key variable {api_key_env} is not set", where="--api-key-env",
                         fix=f"export {api_key_env}=... (the key for the endpoint), or leave --api-key-env out")
    return api_key_env, {}


def _plan(probes: list[str], catalog: garak_env.Catalog) -> tuple[list[str], list[NotRun]]:
    """(probes to run, what will not run and why). A probe runs when it and its detectors can run offline."""
    runnable, not_run = [], []
    blocked_detectors: dict[str, NotRun] = {}
    for probe in probes:
        info = catalog.probes[probe]
        why = garak_env.offline_blocker(info, probe.split(".")[0], catalog)
        if why:
            not_run.append(NotRun(name=probe, kind="probe", reason=why))
            continue
        primary, extended = catalog.detectors_of(probe)
        if not primary:
            not_run.append(NotRun(name=probe, kind="probe", reason="garak names no detector for it"))
            continue
        blocked = False
        for detector in [*primary, *extended]:
            d = catalog.detectors.get(detector)
            reason = ("not a detector garak knows" if d is None
                      else garak_env.offline_blocker(d, detector.split(".")[0], catalog))
            if reason:
                entry = blocked_detectors.setdefault(detector, NotRun(name=detector, kind="detector", reason=reason
                                                                      + ("" if detector in primary else
                                                                         " (an extended detector)")))
                entry.probes.append(probe)
                blocked = blocked or detector in primary
        if blocked:
            not_run.append(NotRun(name=probe, kind="probe", reason="its detector cannot run offline: "
                                  + ", ".join(d for d in primary if d in blocked_detectors)))
        else:
            runnable.append(probe)
    return runnable, not_run + list(blocked_detectors.values())


def _config(url: str, key_var: str, generations: int, prompt_cap: int, max_tokens: int, seed: int,
            out_dir: Path) -> dict:
    return {"run": {"generations": generations, "soft_probe_prompt_cap": prompt_cap, "seed": seed},
            "plugins": {"extended_detectors": False,
                        "generators": {"openai": {"OpenAICompatible": {
                            "uri": url, "max_tokens": max_tokens, "seed": seed, "key_env_var": key_var}}}},
            "reporting": {"report_dir": str(out_dir), "report_prefix": "garak",
                          "confidence_interval_method": "none"}}


def run_redteam(endpoint_url: str, model: str, probes: list[str], api_key_env: str | None = None,
                generations: int = 1, prompt_cap: int = 20, out_dir: str | Path | None = None,
                max_tokens: int = 150, seed: int = 1, timeout_s: float = 3600) -> RedTeamReport:
    """Run garak's `probes` (families like `dan` or single probes like `dan.DanInTheWild`) against
    `model` at an OpenAI-compatible `endpoint_url`, at most `prompt_cap` prompts per probe and
    `generations` outputs per prompt, offline. Probes whose own or primary detector's needs cannot
    be met offline are not run and are named in `not_run` with the reason, as are extended
    detectors (never run here) that would need a download. Writes garak's report.jsonl, its log,
    `redteam.json` and `eval-report.json` (the eval report shape) to `out_dir`."""
    if not 1 <= generations <= 100:
        raise InputError(f"generations {generations} is out of range", where="--generations", fix="use 1 to 100")
    if not 1 <= prompt_cap <= 100_000:
        raise InputError(f"prompt cap {prompt_cap} is out of range", where="--prompt-cap", fix="use 1 to 100000")
    if not model.strip():
        raise InputError("no model name given", where="--model",
                         fix="name a model the endpoint serves (GET /v1/models)")
    url = base_url(endpoint_url)
    key_var, key_env = _api_key(api_key_env)
    check_reachable(url, os.environ.get(api_key_env) if api_key_env else None)
    catalog = garak_env.load_catalog()
    selected = garak_env.resolve_probes(probes, catalog)
    runnable, not_run = _plan(selected, catalog)

    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="stackwise-redteam-"))
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "garak.report.jsonl"
    report_path.unlink(missing_ok=True)
    started, clock = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()
    entries: list[dict] = []
    if runnable:
        config = out / "garak-config.json"
        config.write_text(json.dumps(_config(url, key_var, generations, prompt_cap, max_tokens, seed, out), indent=1),
                          encoding="utf-8")
        command = [str(garak_env.garak_python()), "-m", "garak", "--config", str(config), "--target_type",
                   TARGET_TYPE, "--target_name", model, "--spec", ",".join(f"probes.{p}" for p in runnable)]
        env = garak_env.child_env({**key_env, "XDG_DATA_HOME": str(out / "garak-data")})
        with open(out / "garak.out.log", "w", encoding="utf-8") as log:
            try:
                proc = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise JobFailedError(f"garak ran past {timeout_s:.0f} s", where=str(out / "garak.out.log"),
                                     fix="lower --prompt-cap or run fewer probes") from None
        if not report_path.is_file():
            tail = (out / "garak.out.log").read_text(encoding="utf-8", errors="replace")[-1500:]
            raise JobFailedError(f"garak exited {proc.returncode} without a report:\n{tail}",
                                 where=str(out / "garak.out.log"), fix="read garak's output; " + garak_env.INSTALL_FIX)
        entries = read_entries(report_path)
    results = probe_results(entries)
    not_run += _missing(runnable, results, catalog, out)
    ran = sorted({r.probe for r in results})
    report = RedTeamReport(
        endpoint=url, model=model, garak_version=catalog.garak_version, requested=list(probes), generations=generations,
        prompt_cap=prompt_cap, families_run=sorted({p.split(".")[0] for p in ran}), probes_run=ran,
        detectors_run=sorted({r.detector for r in results}), results=results,
        attempts=sum({r.probe: r.attempts for r in results}.values()),
        outputs_evaluated=sum(r.outputs_evaluated for r in results), fails=sum(r.fails for r in results),
        attack_success_rate=pooled_rate(results), not_run=not_run,
        over_cap=sorted({r.probe for r in results if r.attempts > prompt_cap}), report_jsonl=str(report_path),
        out_dir=str(out),
        started=started, seconds=round(time.perf_counter() - clock, 2))
    write_outputs(report, out)
    return report


def _missing(runnable: list[str], results: list, catalog: garak_env.Catalog, out: Path) -> list[NotRun]:
    """Planned probes or primary detectors garak did not report on (it failed to load or run them)."""
    where = f"see {out / 'garak.out.log'} and {out / 'garak-data' / 'garak' / 'garak.log'}"
    seen = {(r.probe, r.detector) for r in results}
    missing = []
    for probe in runnable:
        if not any(p == probe for p, _ in seen):
            missing.append(NotRun(name=probe, kind="probe", reason=f"garak did not run it ({where})"))
            continue
        for detector in catalog.detectors_of(probe)[0]:
            if (probe, detector) not in seen:
                missing.append(NotRun(name=detector, kind="detector", probes=[probe],
                                      reason=f"garak could not load or run it ({where})"))
    return missing


def write_outputs(report: RedTeamReport, out: Path) -> None:
    """redteam.json (the full report) and eval-report.json (stackwise eval's report shape, suite
    `redteam`, so the gate's `compare` and eval tooling read its metrics)."""
    from ..reports import EvalReport, ModelResult

    (out / "redteam.json").write_text(report.model_dump_json(indent=1), encoding="utf-8")
    data = Path(report.report_jsonl)
    sha = hashlib.sha256(data.read_bytes()).hexdigest() if data.is_file() else ""
    md = out / "redteam.md"
    md.write_text(markdown(report), encoding="utf-8")
    result = ModelResult(role="candidate", ref=report.model, pinned=f"{report.endpoint} {report.model}",
                         metrics={k: round(v, 6) for k, v in report.metrics().items()}, examples=str(data))
    evaluated = EvalReport(data=str(data), data_sha256=sha, suites=["redteam"], candidate=result,
                           report_html="", report_md=str(md), output=str(out), seconds=report.seconds)
    (out / "eval-report.json").write_text(evaluated.model_dump_json(indent=1), encoding="utf-8")


def markdown(report: RedTeamReport) -> str:
    rate = "n/a" if report.attack_success_rate is None else f"{report.attack_success_rate:.3f}"
    lines = [f"# Red teaming {report.model} ({report.started})", "",
             f"garak {report.garak_version}, {report.endpoint}, {report.generations} generation(s) per prompt, "
             f"at most {report.prompt_cap} prompts per probe.", "",
             f"**redteam.attack_success_rate: {rate}** ({report.fails} of {report.outputs_evaluated} outputs)", "",
             "| probe | detector | prompts | outputs | fails | attack success rate |", "|---|---|---|---|---|---|"]
    lines += [f"| {r.probe} | {r.detector} | {r.attempts} | {r.outputs_evaluated} | {r.fails} | "
              + ("n/a" if r.attack_success_rate is None else f"{r.attack_success_rate:.3f}") + " |"
              for r in report.results]
    if report.over_cap:
        lines += ["", "Sent more prompts than the cap (garak's cap is soft): " + ", ".join(report.over_cap)]
    if report.not_run:
        lines += ["", "## Not run", ""] + [f"- {n.kind} `{n.name}`" + (f" (of {', '.join(n.probes)})" if n.probes
                                                                        else "") + f": {n.reason}"
                                           for n in report.not_run]
    return "\n".join(lines) + "\n"
