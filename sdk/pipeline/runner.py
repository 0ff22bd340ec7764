"""Running a pipeline: cache keys, the steps to run, independent steps in parallel, resumable.

A step's cache key hashes its kind, its `with` as written, the params it reads, the content of its data
inputs (stackwise.pipeline.hashing) and the keys of the steps it refers to, and the stack. A step whose
key has a cached result is skipped with its recorded outputs; a changed document changes the key of the
steps that read it and of everything downstream, and nothing else. A step that fails blocks its
downstream steps; a promotion gate that refuses stops them with exit 4 (nothing deployed).
"""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import SpecError, StackwiseError
from .hashing import Hasher, digest
from .kinds import data_inputs, resolve
from .spec import Pipeline
from .state import PipelineState
from .steps import EXECUTORS, StepContext

KEY_VERSION = 1


@dataclass
class Options:
    stack: str
    only: list[str] = field(default_factory=list)
    from_: str | None = None
    until: str | None = None
    force: bool = False
    dry_run: bool = False
    parallel: int = 4


def state_for(pipeline: Pipeline, stack: Any) -> PipelineState:
    return PipelineState(f"{str(stack.outputs.artifact_store).rstrip('/')}/pipelines/{pipeline.name}")


def cache_keys(pipeline: Pipeline, stack_name: str, hasher: Hasher) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(step -> cache key, step -> {input key: content hash}), in dependency order."""
    keys: dict[str, str] = {}
    hashes: dict[str, dict[str, str]] = {}
    for name in pipeline.order:
        step = pipeline.step(name)
        where = f"{pipeline.path}: steps.{name}"
        hashes[name] = {key: hasher.hash(value, f"{where}.{key if key.startswith('deps') else 'with.' + key}")
                        for key, value in data_inputs(pipeline, name)}
        params = {r.name: pipeline.file.params[r.name] for r in pipeline.refs if r.step == name and r.target == "params"}
        keys[name] = digest({"v": KEY_VERSION, "kind": step.kind, "with": step.with_, "deps": step.deps,
                             "outs": step.outs, "params": params, "inputs": hashes[name], "stack": stack_name,
                             "upstream": {up: keys[up] for up in sorted(pipeline.upstream[name])}})
    return keys, hashes


def selected(pipeline: Pipeline, options: Options) -> set[str]:
    chosen = set(pipeline.order)
    for flag, name in (("--from", options.from_), ("--until", options.until), *(("--only", n) for n in options.only)):
        if name is not None and name not in pipeline.file.steps:
            raise SpecError(f"{flag} {name}: the pipeline has no such step", where=str(pipeline.path),
                            fix=f"steps: {', '.join(pipeline.order)}")
    if options.only:
        chosen &= set(options.only)
    if options.from_:
        chosen &= {options.from_} | pipeline.downstream(options.from_)
    if options.until:
        chosen &= {options.until} | pipeline.ancestors(options.until)
    return chosen


def output_hashes(pipeline: Pipeline, name: str, outputs: dict[str, Any], hasher: Hasher) -> dict[str, str]:
    """Content hashes of a step's file outputs (data and file types), recorded with its cached result."""
    from .spec import outputs_of

    types = outputs_of(pipeline.step(name))
    out = {}
    for key, value in outputs.items():
        if types.get(key) in ("data", "file") and isinstance(value, str) and value:
            try:
                out[key] = hasher.hash(value, f"{pipeline.path}: steps.{name}.outputs.{key}")
            except StackwiseError:
                out[key] = "missing"
    return out


def cached_entry(pipeline: Pipeline, state: PipelineState, name: str, key: str, hasher: Hasher) -> dict[str, Any] | None:
    """The cached result of `name` at `key`, if its output files still hold what the step wrote."""
    entry = state.read("cache", f"{name}-{key}.json")
    if entry is None:
        return None
    recorded = entry.get("output_hashes") or {}
    if recorded and output_hashes(pipeline, name, {k: entry["outputs"].get(k) for k in recorded}, hasher) != recorded:
        return None  # rewritten since (a later run of another key wrote the same folder): run again
    return entry


def plan(pipeline: Pipeline, options: Options, state: PipelineState, keys: dict[str, str],
         hasher: Hasher) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """(step -> "cached" | "run" | "excluded", step -> its cached entry); refuses a selection whose upstream
    has no cached result."""
    chosen = selected(pipeline, options)
    out: dict[str, str] = {}
    entries: dict[str, dict[str, Any]] = {}
    for name in pipeline.order:
        entry = cached_entry(pipeline, state, name, keys[name], hasher)
        cached = entry is not None
        if entry is not None:
            entries[name] = entry
        if name in chosen:
            out[name] = "cached" if cached and not options.force else "run"
        else:
            out[name] = "cached" if cached else "excluded"
    for name in pipeline.order:
        if out[name] == "run":
            for up in pipeline.upstream[name]:
                if out[up] == "excluded":
                    raise SpecError(f"step {name!r} needs step {up!r}, which is not selected and has no cached "
                                    "result for its current inputs", where=str(pipeline.path),
                                    fix=f"run it too (drop --only/--from/--until, or add --only {up})")
    return out, {name: entries[name] for name in pipeline.order if out[name] == "cached"}


class Runner:
    def __init__(self, pipeline: Pipeline, options: Options, view: Any):
        from ..stack import load_stack

        self.pipeline = pipeline
        self.options = options
        self.view = view
        self.stack = load_stack(options.stack)
        self.state = state_for(pipeline, self.stack)
        self.record: dict[str, Any] = {}
        self._saving = threading.RLock()  # the record is mutated by step threads, saved by all
        self._stop = threading.Event()  # set on Ctrl-C: step threads stop following their jobs
        self._prepared: tuple[Any, ...] | None = None

    def _save(self) -> None:
        with self._saving:
            self.state.write(self.record, "runs", f"{self.record['run']}.json")

    def _lookup(self, outputs: dict[str, dict[str, Any]]) -> Callable[[str, str, str | None], Any]:
        def lookup(target: str, name: str, output: str | None) -> Any:
            if target == "params":
                return self.pipeline.file.params[name]
            return outputs[name][output or ""]

        return lookup

    def prepare(self) -> dict[str, str]:
        """Hash the inputs and decide what runs (step -> "cached" | "run" | "excluded"), once per runner:
        `pipeline watch` asks first, then runs what this found."""
        if self._prepared is None:
            memo = self.state.read("hashes.json") or {}
            hasher = Hasher(self.pipeline.root, memo)
            keys, hashes = cache_keys(self.pipeline, self.stack.name, hasher)
            decided, entries = plan(self.pipeline, self.options, self.state, keys, hasher)
            self._prepared = (memo, keys, hashes, decided, entries)
        return self._prepared[3]

    def run(self) -> dict[str, Any]:
        pipeline, options = self.pipeline, self.options
        self.prepare()
        memo, keys, hashes, decided, entries = self._prepared
        run_id = PipelineState.new_run_id()
        file_sha = hashlib.sha256(pipeline.path.read_bytes()).hexdigest()
        self.record = {"run": run_id, "pipeline": pipeline.name, "file": str(pipeline.path), "file_sha256": file_sha,
                       "stack": self.stack.name, "started": time.time(), "status": "dry-run" if options.dry_run else "running",
                       "options": {"only": options.only, "from": options.from_, "until": options.until,
                                   "force": options.force},
                       "steps": {n: {"kind": pipeline.step(n).kind, "key": keys[n], "inputs": hashes[n],
                                     "state": {"run": "pending", "cached": "cached", "excluded": "excluded"}[decided[n]]}
                                 for n in pipeline.order}}
        outputs: dict[str, dict[str, Any]] = {}
        for name in pipeline.order:
            if decided[name] == "cached":
                cached = entries[name]
                outputs[name] = cached["outputs"]
                self.record["steps"][name].update(outputs=cached["outputs"], cached_from=cached.get("run"))
        self.view.start(self.record)
        if options.dry_run:
            self.record["finished"] = time.time()
            self.view.finish(self.record)
            return self.record
        self.state.lock()
        try:
            self.state.write(memo, "hashes.json")
            self._save()
            self._execute(decided, keys, outputs)
        except KeyboardInterrupt:
            self.record["status"] = "interrupted"
            for step in self.record["steps"].values():
                if step["state"] == "running":
                    step["state"] = "interrupted"
            raise
        finally:
            self.record["finished"] = time.time()
            self._save()
            self.state.unlock()
            self.view.finish(self.record)
        return self.record

    def _execute(self, decided: dict[str, str], keys: dict[str, str], outputs: dict[str, dict[str, Any]]) -> None:
        pipeline = self.pipeline
        todo = [n for n in pipeline.order if decided[n] == "run"]
        done = {n for n in pipeline.order if decided[n] == "cached"}
        failed: set[str] = set()
        running: dict[Future[Any], str] = {}
        with ThreadPoolExecutor(max_workers=max(1, self.options.parallel)) as pool:
            while todo or running:
                for name in list(todo):
                    ups = pipeline.upstream[name]
                    if ups & failed:
                        todo.remove(name)
                        failed.add(name)
                        self._set(name, "blocked", detail="an upstream step did not succeed")
                    elif ups <= done:
                        todo.remove(name)
                        self._set(name, "running")
                        running[pool.submit(self._one, name, keys[name], outputs)] = name
                if not running:
                    for name in todo:  # cannot happen after plan(); never spin
                        self._set(name, "blocked", detail="its upstream steps did not run")
                    break
                try:
                    finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                except KeyboardInterrupt:
                    # Ctrl-C: step threads stop following their jobs (which keep running) and end; the
                    # pool's exit waits only for that, never for a job.
                    self._stop.set()
                    raise
                for future in finished:
                    name = running.pop(future)
                    try:
                        outputs[name] = future.result()
                        done.add(name)
                    except BaseException as exc:  # noqa: BLE001 - recorded, shown, and re-raised as the exit code
                        failed.add(name)
                        self._failed(name, exc)
        states = [s["state"] for s in self.record["steps"].values()]
        self.record["status"] = ("gate-failed" if "gate-failed" in states else "failed" if failed else "succeeded")

    def _set(self, name: str, state: str, **extra: Any) -> None:
        with self._saving:
            step = self.record["steps"][name]
            step["state"] = state
            step.update(extra)
            if state == "running":
                step["started"] = time.time()
            elif "started" in step:
                step["seconds"] = round(time.time() - step["started"], 2)
            self._save()
            self.view.update(name, dict(step))

    def _failed(self, name: str, exc: BaseException) -> None:
        from ..model_registry import GateFailed

        if isinstance(exc, GateFailed):
            self._set(name, "gate-failed", error=exc.what, exit_code=exc.exit_code)
        elif isinstance(exc, StackwiseError):
            self._set(name, "failed", error=str(exc), exit_code=exc.exit_code)
        elif isinstance(exc, KeyboardInterrupt):
            self._set(name, "interrupted")
        else:
            self._set(name, "failed", error=f"{type(exc).__name__}: {exc}", exit_code=1)

    def _one(self, name: str, key: str, outputs: dict[str, dict[str, Any]]) -> dict[str, Any]:
        step = self.record["steps"][name]

        def progress(text: str) -> None:
            with self._saving:
                step["detail"] = text
                self.view.update(name, dict(step))

        ctx = StepContext(self.pipeline, name, key, self.record["run"], self.stack.name, self.state, progress,
                          stop=self._stop)
        ctx.details["inputs"] = {"data": step["inputs"],
                                 "upstream": {u: self.record["steps"][u]["key"] for u in self.pipeline.upstream[name]}}
        try:
            values = resolve(self.pipeline, name, self._lookup(outputs))
            result = EXECUTORS[self.pipeline.step(name).kind](ctx, values)
        finally:
            with self._saving:
                step.update({k: v for k, v in ctx.details.items() if k != "inputs"})
        written = output_hashes(self.pipeline, name, result, Hasher(self.pipeline.root, {}))
        with self._saving:
            self.state.write({"step": name, "kind": self.pipeline.step(name).kind, "key": key, "outputs": result,
                              "output_hashes": written, "run": self.record["run"], "finished": time.time()},
                             "cache", f"{name}-{key}.json")
        self.state.remove(*ctx.inflight)
        self._set(name, "succeeded", outputs=result)
        return result


def exit_code(record: dict[str, Any]) -> int:
    if record["status"] == "gate-failed":
        return 4
    codes = [s.get("exit_code", 1) for s in record["steps"].values() if s["state"] in ("failed",)]
    return max(codes) if codes else 0
