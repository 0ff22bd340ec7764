"""The fine-tuning workload: `python -m stackwise.workloads.finetune --spec spec.json`.

LoRA, QLoRA (bitsandbytes 4-bit NF4) or full fine-tuning of a causal LM on a JSONL dataset,
with transformers + peft. The same entrypoint runs in a local process or a cloud training job.

- Bad input (dataset, spec, base model) fails before any model loads, naming the file and
  line, with exit code 2.
- Outputs go to `<artifact store>/finetune/<name>-<spec digest>/`: `checkpoints/`, `adapter/`
  (or `model/` for full), `merged/` when asked, and `README.md`, the model card.
- Checkpoints are saved every `training.checkpoint_every` steps; running the same spec again
  (a restarted spot job, or a rerun after SIGKILL) resumes from the last complete checkpoint.
- More than one process (`compute.count` x `compute.nodes`) runs under torchrun; the command
  and the strategy's configuration come from `stackwise.training.launch`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ..contract import JobContext
from ..errors import JobFailedError, StackwiseError
from ..specs import FineTuneSpec
from ..reports import FineTuneReport
from ..training.trainer import prepare, train
from ._runtime import main


def _result_path() -> str:
    job_dir = os.environ.get("STACKWISE_JOB_DIR")
    if job_dir:
        return str(Path(job_dir) / "finetune-report.json")
    import tempfile

    return str(Path(tempfile.mkdtemp(prefix="stackwise-finetune-")) / "finetune-report.json")


def run_finetune(spec: FineTuneSpec, context: JobContext) -> FineTuneReport:
    plan = prepare(spec, context, _result_path())
    import torch

    from ..training.launch import check_runnable, torchrun_command

    check_runnable(spec, torch.cuda.device_count())
    if spec.compute.processes == 1:
        report = train(plan)
        assert report is not None
        return report
    plan_file = Path(plan.result_path).with_name("finetune-plan.json")
    plan_file.parent.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(plan.model_dump_json(indent=2), encoding="utf-8")
    result = Path(plan.result_path)
    result.unlink(missing_ok=True)
    cmd = torchrun_command(spec, ["--plan", str(plan_file)], env=os.environ)
    print("launching: " + " ".join(cmd), flush=True)
    code = subprocess.call(cmd, stdin=subprocess.DEVNULL)
    worker_error = result.with_name("worker-error.json")
    if code != 0 and worker_error.is_file():
        data = json.loads(worker_error.read_text())
        raise _Relayed(data["error"], data.get("exit_code", 2))
    if code != 0 or not result.is_file():
        raise JobFailedError(f"the distributed run exited with code {code}", where=" ".join(cmd[:6]),
                             fix="read the job log: every rank writes there")
    return FineTuneReport.model_validate_json(result.read_text())


class _Relayed(StackwiseError):
    """An error a rank already explained: pass its message and exit code through unchanged."""

    def __init__(self, message: str, exit_code: int):
        self.exit_code = exit_code
        super().__init__(message)


if __name__ == "__main__":
    main("finetune", FineTuneSpec, run_finetune)
