"""What a person sees while a pipeline runs: a Rich live table on a terminal, one line per change
elsewhere (CI logs, pipes), nothing with --json (the run record is printed at the end instead)."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

STYLE = {"succeeded": "green", "cached": "dim", "running": "cyan", "pending": "white", "failed": "red",
         "gate-failed": "red", "blocked": "yellow", "excluded": "dim", "interrupted": "yellow"}


def summary_line(record: dict[str, Any]) -> str:
    counts: dict[str, int] = {}
    for step in record["steps"].values():
        counts[step["state"]] = counts.get(step["state"], 0) + 1
    parts = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    return f"pipeline {record['pipeline']} run {record['run']} on stack {record['stack']}: {record['status']} ({parts})"


class LineView:
    """One line per state change, to stderr (CI logs)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._last: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def _print(self, text: str) -> None:
        if not self.quiet:
            with self._lock:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()

    def start(self, record: dict[str, Any]) -> None:
        todo = [n for n, s in record["steps"].items() if s["state"] == "pending"]
        cached = [n for n, s in record["steps"].items() if s["state"] == "cached"]
        verb = "would run" if record["status"] == "dry-run" else "to run"
        self._print(f"pipeline {record['pipeline']} on stack {record['stack']} (run {record['run']}): "
                    f"{len(todo)} {verb} ({', '.join(todo) or 'none'}), {len(cached)} cached"
                    + (f" ({', '.join(cached)})" if cached else ""))

    def update(self, name: str, step: dict[str, Any]) -> None:
        mark = (step["state"], str(step.get("detail", "")))
        if self._last.get(name) == mark:
            return
        self._last[name] = mark
        seconds = f"{step['seconds']:7.1f}s" if "seconds" in step and step["state"] != "running" else " " * 8
        text = f"  {seconds} {name:<14} {step['state']:<12} {step.get('error') or step.get('detail') or ''}"
        self._print(text.rstrip()[:400])

    def finish(self, record: dict[str, Any]) -> None:
        self._print(summary_line(record))


class LiveView(LineView):
    """A Rich table of the steps, redrawn as they change (a terminal only)."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console
        from rich.live import Live

        self.console = Console(stderr=True)
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.record: dict[str, Any] = {}
        self.t0 = time.monotonic()

    def _table(self) -> Any:
        from rich.table import Table

        table = Table("step", "kind", "state", "time", "detail", title=f"pipeline {self.record.get('pipeline')} "
                      f"on {self.record.get('stack')} (run {self.record.get('run')})", title_justify="left")
        for name, step in self.record.get("steps", {}).items():
            if step["state"] == "running" and "started" in step:
                elapsed = f"{time.time() - step['started']:.0f}s"
            else:
                elapsed = f"{step['seconds']:.1f}s" if "seconds" in step else ""
            table.add_row(name, step["kind"], f"[{STYLE.get(step['state'], 'white')}]{step['state']}[/]", elapsed,
                          str(step.get("error") or step.get("detail") or "")[:90])
        return table

    def start(self, record: dict[str, Any]) -> None:
        self.record = {**record, "steps": dict(record["steps"])}  # a copy: the runner owns the record
        self.live.start()
        self.live.update(self._table())

    def update(self, name: str, step: dict[str, Any]) -> None:
        self.record["steps"][name] = step
        self.live.update(self._table())

    def finish(self, record: dict[str, Any]) -> None:
        self.record = {**record, "steps": dict(record["steps"])}
        self.live.update(self._table())
        self.live.stop()
        self.console.print(summary_line(record))


def make_view(as_json: bool) -> LineView:
    if as_json:
        return LineView(quiet=True)
    if sys.stderr.isatty():
        return LiveView()
    return LineView()
