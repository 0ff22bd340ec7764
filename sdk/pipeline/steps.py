"""Running one step of each kind on the active stack (see kinds.py for what each takes and outputs)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InputError, JobFailedError, JobNotFoundError, SpecError
from .kinds import CHAMPION_WORDS, build_spec, model_ref

if TYPE_CHECKING:
    from .spec import Pipeline
    from .state import PipelineState


@dataclass
class StepContext:
    pipeline: "Pipeline"
    name: str
    key: str
    run_id: str
    stack: str
    state: "PipelineState"
    progress: Callable[[str], None]
    stop: Any = None  # a threading.Event the runner sets on Ctrl-C: stop following, leave the job running
    details: dict[str, Any] = field(default_factory=dict)  # recorded in the run record beside the outputs
    _platform: Any = None

    @property
    def platform(self) -> Any:
        if self._platform is None:
            from ..platform import connect

            self._platform = connect(self.stack)
        return self._platform

    @property
    def where(self) -> str:
        return f"{self.pipeline.path}: steps.{self.name}"

    @property
    def inflight(self) -> tuple[str, str]:
        return ("inflight", f"{self.name}-{self.key}.json")


def _follow(ctx: StepContext, handle: Any) -> dict[str, Any]:
    delay, last = 0.3, None
    while True:
        info = handle.info()
        label = f"job {handle.id}: {info.state.value}"
        if label != last:
            ctx.progress(label)
            last = label
        if info.state.terminal:
            break
        if ctx.stop is not None and ctx.stop.wait(delay):
            raise KeyboardInterrupt  # the job keeps running: the next run follows it (inflight/)
        if ctx.stop is None:
            time.sleep(delay)
        delay = min(delay * 1.5, 3.0)
    return handle.result()


def run_job(ctx: StepContext, submit: Callable[[], Any]) -> dict[str, Any]:
    """Follow the job an earlier (killed) run submitted for this step and key, or submit one and record it
    before following it: a rerun never submits a finished step again."""
    from ..jobs import JobState

    earlier = ctx.state.read(*ctx.inflight)
    if earlier:
        try:
            handle = ctx.platform.jobs.get(earlier["job"])
            info = handle.info()
        except JobNotFoundError:
            info = None
        if info is not None and info.state is JobState.SUCCEEDED:
            ctx.progress(f"job {handle.id} (run {earlier['run']}) finished while no run watched: result taken")
            ctx.details["job"] = handle.id
            return info.outputs
        if info is not None and not info.state.terminal:
            ctx.progress(f"following job {handle.id}, submitted by run {earlier['run']}")
            ctx.details["job"] = handle.id
            return _follow(ctx, handle)
    handle = submit()
    ctx.details["job"] = handle.id
    ctx.state.write({"job": handle.id, "run": ctx.run_id, "submitted": time.time()}, *ctx.inflight)
    return _follow(ctx, handle)


# -- kinds ----------------------------------------------------------------------------------------
def curate(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    from ..cli.curate import curate_to
    from ..curation import CurationConfig, load_config
    from ..curation.config import parse_config

    raw = w.get("config")
    cfg = (parse_config(raw, f"{ctx.where}.with.config") if isinstance(raw, dict)
           else load_config(raw) if raw else CurationConfig())
    # One folder per step, not per key: an index reading it sees the same documents (ids) again and updates
    # only what changed. A cached result whose files were rewritten since is not reused (runner.verified).
    out = ctx.state.uri("outputs", ctx.name)
    _, data = curate_to(w["source"], out, cfg, title=f"Curation of {w['source']} (pipeline step {ctx.name})")
    ctx.details["curation"] = {k: data[k] for k in ("documents", "kept", "dropped", "dropped_by_reason") if k in data}
    ctx.progress(f"kept {data.get('kept')} of {data.get('documents')}")
    uris = data["outputs"]
    return {"data": uris["kept"], "exclusions": uris["exclusions"], "report": uris["html"]}


def index(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    platform = ctx.platform
    spec = build_spec("index", w, platform.stack.outputs.embedding_model)
    report = run_job(ctx, lambda: platform.index(spec))
    ctx.details["report"] = {k: report.get(k) for k in ("documents", "chunks", "embedded", "skipped", "deleted")
                             if k in report}
    return {"index": spec.index}


def finetune(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    platform = ctx.platform
    spec, placement = platform.plan_finetune(build_spec("finetune", w))
    ctx.details["placement"] = placement.model_dump(exclude_defaults=True)
    report = run_job(ctx, lambda: platform.finetune(spec))
    name, version = report.get("registered_model"), report.get("registered_version")
    if not name or not version:
        raise SpecError(f"fine-tune step {ctx.name!r} registered no model version (the stack has no tracking URI)",
                        where=ctx.where, fix="give the stack a tracking URI (MLflow), which outputs.model needs")
    platform.models.record_lineage(name, str(version), {
        "pipeline": ctx.pipeline.name, "pipeline_run": ctx.run_id, "pipeline_step": ctx.name,
        "pipeline_inputs": json.dumps(ctx.details.get("inputs", {}), sort_keys=True)})
    ctx.details["report"] = {k: report.get(k) for k in ("steps", "seconds", "perplexity") if k in report}
    return {"model": f"models:/{name}/{version}", "adapter": report.get("adapter")}


def evaluate(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    platform = ctx.platform
    w = dict(w)
    if str(w.get("baseline", "")).lower() in CHAMPION_WORDS:
        name, version = model_ref(w.get("model", ""), f"{ctx.where}.with.model")
        from ..model_registry import CHAMPION

        champion = platform.models.alias_version(name, CHAMPION)
        w["baseline"] = f"models:/{name}/{champion}" if champion and champion != version else None
        ctx.progress(f"baseline: {w['baseline'] or 'none (no other champion yet)'}")
    spec = build_spec("evaluate", {k: v for k, v in w.items() if v is not None})
    report = run_job(ctx, lambda: platform.evaluate(spec))
    metrics = (report.get("candidate") or {}).get("metrics", {})
    ctx.details["baseline"] = w.get("baseline")
    ctx.details["metrics"] = metrics
    ctx.details["baseline_metrics"] = (report.get("baseline") or {}).get("metrics")
    ctx.details["report_md"] = report.get("report_md")
    return {"report": report.get("report_html"), "metrics": metrics}


def promote(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    from ..model_registry import GateFailed

    name, version = model_ref(w["model"], f"{ctx.where}.with.model")
    try:
        result = ctx.platform.models.promote(name, w["gate"], version=version)
    except GateFailed as exc:
        if exc.result is not None:
            ctx.details["gate"] = exc.result.model_dump()
        raise
    ctx.details["gate"] = result.model_dump()
    ctx.progress(f"{'promoted' if result.promoted else 'kept'}: champion {name} version {result.champion_after}")
    return {"champion": f"models:/{name}/{result.champion_after}", "promoted": bool(result.promoted)}


def deploy(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    name, version = model_ref(w["model"], f"{ctx.where}.with.model")
    traffic = w.get("traffic")
    dep = ctx.platform.deploy(f"{name}:{version}", traffic=traffic, endpoint=w.get("endpoint")).as_dict()
    ctx.details["deployment"] = {"endpoint": dep["endpoint"], "url": dep.get("url"),
                                 "variants": [f"{v['model']}:{v['version']}={v['traffic']}%" for v in dep["variants"]]}
    return {"endpoint": dep["endpoint"]}


def serve_check(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    from .servecheck import check

    answer = check(ctx, w)
    return {"answer": answer}


def run_command(ctx: StepContext, w: dict[str, Any]) -> dict[str, Any]:
    from .hashing import local_path

    command = w["command"]
    argv = command if isinstance(command, list) else ["bash", "-c", command]
    env = {**os.environ, **{k: str(v) for k, v in (w.get("env") or {}).items()}, "STACKWISE_STACK": ctx.stack}
    ctx.progress(f"$ {command if isinstance(command, str) else ' '.join(map(str, command))}"[:120])
    import tempfile

    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as log:
        try:
            proc = subprocess.Popen([str(a) for a in argv], cwd=str(ctx.pipeline.root), env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            raise SpecError(f"step {ctx.name!r} cannot start its command: {exc.strerror or exc}",
                            where=f"{ctx.where}.with.command", fix="check the command and its path") from None
        while proc.poll() is None:
            if ctx.stop is not None and ctx.stop.wait(0.2):
                proc.terminate()  # Ctrl-C: a command is no job, nothing follows it later; rerun starts it again
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                raise KeyboardInterrupt
            if ctx.stop is None:
                proc.wait()
        log.seek(0)
        output = log.read()
    ctx.details["output_tail"] = output[-2000:]
    if proc.returncode != 0:
        raise JobFailedError(f"step {ctx.name!r}: its command exited {proc.returncode}: {output.strip()[-400:]}",
                             where=f"{ctx.where}.with.command", fix="fix the command; the rerun starts from this step")
    outputs = {}
    for out, path in ctx.pipeline.step(ctx.name).outs.items():
        target = local_path(path, ctx.pipeline.root)
        if not target.exists():
            raise InputError(f"step {ctx.name!r} declares output {out} at {path}, which its command did not write",
                             where=f"{ctx.where}.outs.{out}", fix="write that path in the command, or fix `outs`")
        outputs[out] = str(target)
    return outputs


EXECUTORS: dict[str, Callable[[StepContext, dict[str, Any]], dict[str, Any]]] = {
    "curate": curate, "index": index, "finetune": finetune, "evaluate": evaluate, "promote": promote,
    "deploy": deploy, "serve-check": serve_check, "run": run_command,
}
