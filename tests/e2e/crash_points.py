"""Run the index workload with a SIGKILL planted at the N-th occurrence of one event.

A launcher for tests/e2e/test_crash_safety.py that adds no hook to product code: inside the
process that runs the workload it wraps the functions through which the workload changes the
store (each LanceDB table method that commits a version, and creating the table) and the
embedding call, then calls the workload's own entrypoint (`_runtime.main` with `run_index`:
what `python -m stackwise.workloads.index --spec S --context C` runs).

Every occurrence of an event prints `@@event KIND N` to the run's log (N counts that kind), so
a clean instrumented run lists the kill points. A request's `kill` is `KIND:N:WHEN`: the run
SIGKILLs itself at the N-th KIND `before` the call, `after` it returned, or inside it: a
watcher thread kills the process as soon as the call has written a new file under `watch`
(`during`: any file, mostly the first data file, still being written; `late`: a transaction or
version file, the commit publishing its version), or when the call returns if it wrote no such
file first. `batch_chunks` lowers the workload's BATCH_CHUNKS so a tiny corpus makes several
commits; `runs: 2` runs the workload twice in one process (the second run shows whether a
finished index needs anything more).

    python tests/e2e/crash_points.py serve

loads the embedding model and imports LanceDB once, then reads one JSON request a line on stdin
and answers each with one JSON line (`{"returncode": ...}`, negative for a signal, as subprocess
gives it) once the run, a forked child with its output in the request's `log`, has ended. No
store is opened and nothing is embedded before the fork, so the parent has no Lance runtime or
torch thread pool that a child would inherit half-copied; LanceDB's one import-time thread is
started again in each child (`_restart_lancedb_loop`). `python tests/e2e/crash_points.py
'{"argv": [...], ...}'` runs one request in the process itself (for debugging a kill point).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any

EVENT_PREFIX = "@@event "
KILLED_PREFIX = "@@killed "
WHENS = ("before", "during", "late", "after")
# Files whose appearance means a Lance commit is publishing its version (`late` kills there).
LATE_MARKS = ("_transactions", "_versions")
MODEL = "all-MiniLM-L6-v2"
# Every LanceTable method that commits a new table version (merge_insert(...).execute ends in _do_merge).
TABLE_WRITES = [("add", "add"), ("delete", "delete"), ("_do_merge", "merge_insert"), ("add_columns", "add_columns"),
                ("update_field_metadata", "field_metadata"), ("restore", "restore"), ("create_index", "create_index"),
                ("optimize", "optimize")]


def _files(root: str) -> set[str]:
    found = set()
    for folder, _, names in os.walk(root):
        found.update(os.path.join(folder, n) for n in names)
    return found


class Killer:
    """Counts events and SIGKILLs this process at the planted one."""

    def __init__(self, kill: str | None, watch: str | None):
        self.counts: dict[str, int] = {}
        self.event, self.nth, self.when = None, 0, "before"
        if kill:
            event, nth, when = kill.split(":")
            if when not in WHENS:
                raise SystemExit(f"kill: WHEN must be one of {WHENS}, not {when!r}")
            self.event, self.nth, self.when = event, int(nth), when
        self.watch = watch

    def die(self, why: str) -> None:
        sys.stdout.write(f"{KILLED_PREFIX}{why}\n")
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def wrap(self, owner: Any, attribute: str, event: str) -> None:
        original = getattr(owner, attribute)
        killer = self

        def wrapper(*args, **kwargs):
            n = killer.counts[event] = killer.counts.get(event, 0) + 1
            print(f"{EVENT_PREFIX}{event} {n}", flush=True)
            if event != killer.event or n != killer.nth:
                return original(*args, **kwargs)
            where = f"{event} {n} {killer.when}"
            if killer.when == "before":
                killer.die(where)
            if killer.when in ("during", "late"):
                killer.kill_on_first_write(where, late=killer.when == "late")
            result = original(*args, **kwargs)
            killer.die(where + (" (the call returned before a new file was seen)" if killer.when != "after" else ""))
            return result

        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        setattr(owner, attribute, wrapper)

    def kill_on_first_write(self, where: str, late: bool) -> None:
        """Kill this process from a thread as soon as a file appears under `watch` (with `late`: a
        transaction or version file); the call runs on meanwhile."""
        if not self.watch:
            raise SystemExit("kill ...:during needs a folder to watch")
        before = _files(self.watch)

        def poll() -> None:
            while True:  # the workload's thread waits on Lance without the GIL: this loop runs meanwhile
                new = [f for f in _files(self.watch) - before
                       if not late or any(m in f.split(os.sep) for m in LATE_MARKS)]
                if new:
                    self.die(f"{where} (first new file: {os.path.relpath(min(new), self.watch)})")

        threading.Thread(target=poll, daemon=True).start()


def _preloaded(embedder: Any) -> None:
    """Let the workload use the model loaded before the fork instead of loading it again."""
    import stackwise.workloads.index as index
    from stackwise.embeddings import canonical_name

    load = index.load_embedder

    def load_embedder(model: str, device: str = "cpu", backend: str = "auto"):
        if embedder is not None and canonical_name(model) == embedder.name and device == "cpu":
            return embedder
        return load(model, device, backend)

    index.load_embedder = load_embedder


def run(request: dict[str, Any], embedder: Any = None) -> None:
    """Run the workload as `request` says (in this process; it may never return: SIGKILL)."""
    os.environ.update(request.get("env") or {})
    killer = Killer(request.get("kill"), request.get("watch"))
    from lancedb.db import LanceDBConnection
    from lancedb.table import LanceTable

    import stackwise.workloads.index as index
    from stackwise.embeddings import Embedder
    from stackwise.specs import IndexSpec
    from stackwise.workloads._runtime import main as workload_main

    if request.get("batch_chunks"):
        index.BATCH_CHUNKS = request["batch_chunks"]  # read at call time by run_index and _migrate_ids
    _preloaded(embedder)
    killer.wrap(Embedder, "encode", "embed")
    killer.wrap(LanceDBConnection, "create_table", "create_table")
    for attribute, event in TABLE_WRITES:
        killer.wrap(LanceTable, attribute, event)
    for _ in range(request.get("runs", 1)):
        sys.argv = ["python -m stackwise.workloads.index", *request["argv"]]
        workload_main("index", IndexSpec, index.run_index)
    if killer.event is not None:
        raise SystemExit(f"the workload ended before {killer.event} {killer.nth} "
                         f"(it occurred {killer.counts.get(killer.event, 0)} times)")


def _restart_lancedb_loop() -> None:
    """LanceDB's sync API runs its calls on an event-loop thread started when it is imported
    (`lancedb.background_loop.LOOP`); a fork copies no thread, so a child starts its own, as
    the loop's constructor does. (Its native runtime starts on first use: in the child.)"""
    from lancedb.background_loop import LOOP

    getattr(LOOP, "_start", LOOP.__init__)()


def _child(request: dict[str, Any], embedder: Any) -> None:
    """The forked child: output to the request's log, run, and leave by os._exit only."""
    code = 1
    try:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        _restart_lancedb_loop()
        run(request, embedder)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else (1 if exc.code else 0)
    except BaseException:  # noqa: BLE001 - reported in the log; the child must never return to the server loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # whatever a library prints goes to stderr, not into the replies
    from importlib import import_module

    from stackwise.embeddings import load_embedder

    for module in ("stackwise.adapters.vectors.embedded", "stackwise.workloads.index"):
        import_module(module)  # LanceDB, pyarrow, numpy and the workload: imported once, shared by every child
    embedder = load_embedder(MODEL)
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request, embedder)
        deadline = time.monotonic() + request.get("timeout", 300)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                replies.write(json.dumps({"returncode": None, "timed_out": True}) + "\n")
                break
            time.sleep(0.02)


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:  # one run in this process: a JSON request as the only argument
        run(json.loads(sys.argv[1]))
