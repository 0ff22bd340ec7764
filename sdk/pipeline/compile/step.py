"""The command of every step of a compiled pipeline, inside the stack's training image:

    python -m stackwise.pipeline.compile.step --file <bundle>/stackwise.yaml --stack S --only STEP
                                              [--record DIR] [--after DIR ...]

A container has no `stacks/` folder and no outputs file, so this copies the stack's file and outputs from the
bundle (`_stack/`, written by `stackwise pipeline compile --upload`) to a temporary folder, points
STACKWISE_STACKS_DIR and STACKWISE_OUTPUTS at them, and runs

    stackwise pipeline run --file <bundle>/stackwise.yaml --stack S --only STEP --json

printing its run record and exiting with its exit code (4 when a promotion gate refuses: the managed
pipeline's step fails, and the steps after it do not run). The upstream steps' outputs come from the
pipeline's cache in the artifact store.

Azure ML orders pipeline nodes only through data: there, each node writes its run record to `--record DIR`
(`record.json`, a `uri_folder` output) and takes each upstream node's as `--after DIR`; a record that does
not show that step succeeded (or cached) stops this one before it starts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .bundle import OUTPUTS_NAME, STACK_FOLDER, stack_file_name

RECORD = "record.json"
DONE = ("succeeded", "cached")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stackwise.pipeline.compile.step",
                                     description="Run one step of a compiled stackwise pipeline.")
    parser.add_argument("--file", required=True, help="The bundled pipeline file's URI.")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--only", required=True, help="The step to run.")
    parser.add_argument("--record", help="A folder to write this run's record to (record.json).")
    parser.add_argument("--after", action="append", default=[], help="An upstream step's record folder.")
    return parser.parse_args(argv)


def check_upstream(folder: str) -> str | None:
    """Why the run record in `folder` does not let the next step start (None: it does)."""
    path = Path(folder) / RECORD if Path(folder).is_dir() else Path(folder)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"no readable run record at {path} ({exc})"
    only = (record.get("options") or {}).get("only") or []
    steps = record.get("steps") or {}
    bad = [f"{n}: {steps.get(n, {}).get('state', 'missing')}" for n in only if steps.get(n, {}).get("state") not in DONE]
    if not only or bad:
        return f"the upstream run {record.get('run')} did not finish its step ({', '.join(bad) or 'no step'})"
    return None


def main(argv: list[str] | None = None) -> int:
    from ...userinput import read_remote_bytes

    args = _arguments(argv)
    for folder in args.after:
        problem = check_upstream(folder)
        if problem:
            sys.stderr.write(f"stackwise: step {args.only} not started: {problem}\n")
            return 1
    base = args.file.rsplit("/", 1)[0]
    work = Path(tempfile.mkdtemp(prefix="stackwise-step-"))
    (work / "stacks").mkdir()
    (work / "stacks" / f"Pulumi.{args.stack}.yaml").write_bytes(
        read_remote_bytes(f"{base}/{stack_file_name(args.stack)}", what="stack file",
                          fix="upload the bundle: stackwise pipeline compile ... --upload"))
    (work / OUTPUTS_NAME).write_bytes(read_remote_bytes(f"{base}/{STACK_FOLDER}/{OUTPUTS_NAME}", what="stack outputs",
                                                        fix="upload the bundle: stackwise pipeline compile ... --upload"))
    env = {**os.environ, "STACKWISE_STACKS_DIR": str(work / "stacks"), "STACKWISE_OUTPUTS": str(work / OUTPUTS_NAME),
           "PYTHONUNBUFFERED": "1"}
    command = ["pipeline", "run", "--file", args.file, "--stack", args.stack, "--only", args.only, "--json"]
    sys.stderr.write("$ stackwise " + " ".join(command) + "\n")
    sys.stderr.flush()
    proc = subprocess.run([sys.executable, "-m", "stackwise.cli", *command], env=env, stdout=subprocess.PIPE,
                          text=True)
    sys.stdout.write(proc.stdout)
    if args.record:
        Path(args.record).mkdir(parents=True, exist_ok=True)
        (Path(args.record) / RECORD).write_text(proc.stdout or "{}", encoding="utf-8")
    return proc.returncode


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # a StackwiseError (bad bundle, no store access): its message, no traceback
        from ...errors import StackwiseError

        if not isinstance(exc, StackwiseError):
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)
