"""The job log's line protocol: progress events and the result line, written by workloads and
read by followers (the local supervisor, which sums sharded jobs' events, and the CLI's bars).

A progress line is `@@progress ` then one JSON object with at least `stage`, `done` and `total`
(a workload may add fields: `loss`, `tokens_per_s`, `documents`, ...); the result line is
`@@result ` then the job's report as JSON. Both prefixes are written here only: every emitter
and parser of the protocol uses this module. It imports nothing of stackwise, so the code that
runs inside a job may use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

PROGRESS_PREFIX = "@@progress "
RESULT_PREFIX = "@@result "


def progress_line(event: Mapping[str, Any]) -> str:
    """The log line of one progress event."""
    return PROGRESS_PREFIX + json.dumps(dict(event))


def emit(stage: str, done: int, total: int, **extra: Any) -> None:
    """One machine-readable progress line in the job log (stdout); followers render it as a bar."""
    event = {"stage": stage, "done": done, "total": total, "t": round(time.time(), 3), **extra}
    print(progress_line(event), flush=True)


def parse(line: str) -> dict[str, Any] | None:
    """The event of a progress line; None for any other line, or one whose JSON is not an
    object with a `stage` (such a line is kept as ordinary output)."""
    if not line.startswith(PROGRESS_PREFIX):
        return None
    try:
        event = json.loads(line[len(PROGRESS_PREFIX):])
    except ValueError:
        return None
    return event if isinstance(event, dict) and "stage" in event else None


def result_line(payload: Mapping[str, Any]) -> str:
    """The log line that carries a job's report (the last thing a workload prints)."""
    return RESULT_PREFIX + json.dumps(dict(payload))
