"""One rank of a distributed fine-tuning job: `torchrun ... -m stackwise.training.worker --plan plan.json`.

The job's main process validated the input and wrote the plan; rank 0 writes the report to
the plan's `result_path`, where the main process reads it. An error a user can fix exits 2
with error.json beside the result, as a single-process job would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import StackwiseError
from .trainer import Plan, train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m stackwise.training.worker")
    parser.add_argument("--plan", required=True)
    args = parser.parse_args()
    plan = Plan.model_validate_json(Path(args.plan).read_text(encoding="utf-8"))
    try:
        train(plan)
    except StackwiseError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        error = Path(plan.result_path).with_name("worker-error.json")
        error.write_text(json.dumps({"error": str(exc), "exit_code": exc.exit_code}))
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
