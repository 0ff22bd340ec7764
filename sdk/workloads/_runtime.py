"""What every workload entrypoint shares: argument parsing, spec loading, and writing the
result (or the error) where the compute backend collects it (progress lines: stackwise.progress).

A workload fails as the CLI does: a StackwiseError is printed and recorded (`error.json`) with
its what, where and fix, exit code 2 (or the error's own); anything else is a bug, recorded as
one line naming the log that holds its traceback, exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from ..contract import JobContext
from ..errors import SpecError, StackwiseError
from ..progress import result_line

S = TypeVar("S", bound=BaseModel)


def load_spec(path: str, model: type[S]) -> S:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", where=path, fix="pass --spec FILE") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise SpecError(f"invalid spec at {key}: {first['msg']}", where=path, fix="correct the spec") from None


def _write_json(path: str, payload: dict[str, Any]) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    os.replace(tmp, target)


ENV_CONTEXT = "STACKWISE_CONTEXT"


def load_context(path: str | None) -> JobContext:
    """The job context `submit` sent (`--context FILE`, else `$STACKWISE_CONTEXT`); exit 2 without one."""
    path = path or os.environ.get(ENV_CONTEXT)
    if not path:
        raise SpecError("no job context: a workload reads its stack's artifact store, vector store and tracking "
                        "URI from the context its job was submitted with", where="--context / $STACKWISE_CONTEXT",
                        fix="submit the job through stackwise (platform.index/finetune/evaluate or the CLI), or pass "
                        "--context FILE with a JobContext JSON (stackwise.contract.JobContext)")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read the job context: {exc.strerror}", where=path,
                        fix="pass --context FILE with the JobContext JSON the job was submitted with") from None
    try:
        return JobContext.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise SpecError(f"invalid job context at {key}: {first['msg']}", where=path,
                        fix="resubmit the job with this version of stackwise (the context is written by submit)") from None


def log_location() -> str:
    """Where this job's output (and so a traceback) is kept, in words."""
    job_dir, job_id = os.environ.get("STACKWISE_JOB_DIR"), os.environ.get("STACKWISE_JOB_ID")
    if job_dir:
        return str(Path(job_dir) / "log.txt")
    return f"the job's log (`stackwise jobs logs {job_id}`)" if job_id else "this process's standard error"


def unexpected_error(kind: str, exc: BaseException) -> str:
    """One line for an exception no workload raises on purpose (a bug), naming the log that holds
    its traceback."""
    from ..secrets import redact

    detail = " ".join(redact(str(exc)).split())
    if len(detail) > 200:
        detail = detail[:197] + "..."
    return (f"unexpected {type(exc).__name__} in the {kind} workload" + (f": {detail}" if detail else "")
            + f" (a bug in stackwise: the traceback is in {log_location()})")


def main(kind: str, model: type[S], run: Callable[[S, JobContext], BaseModel]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m stackwise.workloads.{kind}")
    parser.add_argument("--spec", required=True, help="path to the job spec (JSON)")
    parser.add_argument("--context", help="path to the job context (JSON; default: $STACKWISE_CONTEXT)")
    parser.add_argument("--result", help="where to write the result JSON (default: stdout only)")
    args = parser.parse_args()
    error_path = str(Path(args.result).with_name("error.json")) if args.result else None
    try:
        spec = load_spec(args.spec, model)
        context = load_context(args.context)
        result = run(spec, context)
    except StackwiseError as exc:
        from ..secrets import redact

        message = redact(str(exc))  # a secret resolved by the job never reaches its log or error.json
        print(f"error: {message}", file=sys.stderr, flush=True)
        if error_path:
            _write_json(error_path, {"error": message, "what": redact(exc.what), "where": redact(exc.where or ""),
                                     "fix": redact(exc.fix or ""), "exit_code": exc.exit_code})
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:  # noqa: BLE001 - a bug: its traceback goes to the log, one line to the record
        import traceback

        from ..secrets import redact

        sys.stderr.write(redact("".join(traceback.format_exception(exc))))
        sys.stderr.flush()
        message = unexpected_error(kind, exc)
        print(f"error: {message}", file=sys.stderr, flush=True)
        if error_path:
            _write_json(error_path, {"error": message, "exit_code": 1})
        raise SystemExit(1) from None
    payload = result.model_dump(mode="json")
    if args.result:
        _write_json(args.result, payload)
    print(result_line(payload), flush=True)
