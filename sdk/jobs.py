"""Jobs: one set of states and one handle for every compute backend.

Every backend maps its own states onto `JobState`; `JobHandle` offers `status()`, `wait()`,
`logs()`, `cancel()` and `outputs` with the same meaning on the local stack and on every cloud.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

from .errors import JobFailedError, SpecError, StackwiseError

if TYPE_CHECKING:
    from .reports import Report


class JobConflictError(StackwiseError, RuntimeError):
    """A job's processes still run where none may (its supervisor is gone): a new attempt of its
    spec is refused until they are stopped (`stackwise jobs cancel ID`)."""


def split_error(text: str | None) -> tuple[str, str | None, str | None]:
    """A recorded job error as (what, where, fix). A workload that failed with a StackwiseError
    records it as that error prints (`what`, then `  where: ...` and `  fix: ...` lines)."""
    what, where, fix = [], None, None
    for line in (text or "").splitlines():
        if line.startswith("  where: ") and fix is None:
            where = line[len("  where: "):]
        elif line.startswith("  fix: "):
            fix = line[len("  fix: "):]
        elif fix is not None:
            fix += "\n" + line
        else:
            what.append(line)
    return "\n".join(what), where, fix


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobInfo:
    """A snapshot of one job."""

    id: str
    kind: str
    stack: str
    state: JobState
    created_at: float
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] = field(default_factory=dict)
    log_path: str | None = None
    exit_code: int | None = None
    identity: str | None = None  # `<kind>-<digest>`: the same for every attempt of a spec
    attempt: int | None = None  # 1, 2, ... within the identity

    def failure(self) -> JobFailedError:
        """The error of a job that did not succeed: what the workload said (with its own `where`
        and `fix` when it failed with a StackwiseError), else where to read why."""
        what, where, fix = split_error(self.error)
        error = JobFailedError(
            f"job {self.id} ended {self.state.value}" + (f": {what}" if what else ""),
            where=where or self.log_path or self.id,
            fix=fix or f"read the log with `stackwise jobs logs {self.id}`",
        )
        if self.exit_code == 2:  # the workload refused its input: bad input, as the CLI says it
            error.exit_code = 2
        return error

    def report(self) -> "Report":
        """The outputs as the report type of the job's kind (stackwise.reports.report_of)."""
        from .reports import report_of

        return report_of(self.kind, self.outputs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "stack": self.stack,
            "state": self.state.value,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "error": self.error,
            "outputs": self.outputs,
            "spec": self.spec,
            "log_path": self.log_path,
            "exit_code": self.exit_code,
            "identity": self.identity,
            "attempt": self.attempt,
        }


class ComputeBackend(Protocol):
    """What a compute adapter provides. `cancel` is idempotent; `logs` yields lines."""

    def submit(self, spec: Any, *, new: bool = False, run_name: str | None = None) -> "JobHandle":
        """Run `spec`; a job of the same identity that is PENDING or RUNNING is returned instead."""
        ...

    def info(self, job_id: str) -> JobInfo: ...

    def list(self, limit: int = 50) -> list[JobInfo]: ...

    def logs(self, job_id: str, follow: bool = False) -> Iterator[str]: ...

    def cancel(self, job_id: str) -> JobInfo: ...


class JobHandle:
    """A submitted job, followed through its backend. Safe to create from another process."""

    def __init__(self, backend: ComputeBackend, job_id: str):
        self._backend = backend
        self.id = job_id

    def __repr__(self) -> str:
        return f"JobHandle({self.id!r})"

    def info(self) -> JobInfo:
        return self._backend.info(self.id)

    def status(self) -> JobState:
        return self.info().state

    def wait(self, timeout: float | None = None, poll: float = 0.2, max_poll: float = 5.0) -> JobInfo:
        """Block until the job ends (polling with backoff) and return its final info.

        Raises TimeoutError if `timeout` seconds pass first; the job keeps running. A negative
        or NaN `timeout` is a SpecError (an infinite one waits as None does).
        """
        if timeout is not None and (math.isnan(timeout) or timeout < 0):
            raise SpecError(f"timeout {timeout} is not a number of seconds", where="wait(timeout=...)",
                            fix="give 0 or more seconds, or no timeout to wait until the job ends")
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll
        while True:
            info = self.info()
            if info.state.terminal:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {self.id} still {info.state.value} after {timeout} s")
            time.sleep(delay if deadline is None else max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(max_poll, delay * 1.5)

    def logs(self, follow: bool = False) -> Iterator[str]:
        """The job's log lines; with `follow`, keep yielding until the job ends."""
        return self._backend.logs(self.id, follow=follow)

    def cancel(self) -> JobInfo:
        """Stop the job; a job already ended is left as it is."""
        return self._backend.cancel(self.id)

    @property
    def outputs(self) -> dict[str, Any]:
        """The job's result (empty until it has SUCCEEDED)."""
        return self.info().outputs

    def result(self, timeout: float | None = None) -> "Report":
        """Wait, then return the job's report, typed by its kind (`IndexReport`, `FineTuneReport`,
        `EvalReport`: stackwise.reports), which also reads as the outputs mapping; raise
        JobFailedError if the job did not succeed."""
        info = self.wait(timeout=timeout)
        if info.state is not JobState.SUCCEEDED:
            raise info.failure()
        return info.report()
