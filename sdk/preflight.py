"""The checks a job's input gets before it is submitted (`spec.preflight()`), so a bad input is
refused at once with its what, where and fix (exit 2) instead of failing a job minutes later.

They read only local input (a path or file:// URI): a remote source is read by the job itself.
They are the checks the workloads make first, run early: a job given the same input anyway fails
with the same error. Imported on first use (they load the readers of their kind).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .specs import EvaluateSpec, FineTuneSpec, IndexSpec


def _local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def check_index(spec: "IndexSpec") -> None:
    """A source that is missing or has no document to read. Only a file named directly is read
    here; the files of a folder or glob are read by the job."""
    from .documents import SUPPORTED, Source, read_documents
    from .errors import InputError

    resolved = Source(spec.source)
    if resolved.direct:
        read_documents(resolved)
    elif not any(f.lower().endswith(SUPPORTED) for f in resolved.files):
        raise InputError(
            f"no documents to index in {spec.source}: no files ending in {', '.join(SUPPORTED)}",
            where="SOURCE",
            fix="point SOURCE at a folder or glob that holds such files",
        )


def check_finetune(spec: "FineTuneSpec") -> None:
    """A local dataset or base path that is wrong (no torch needed)."""
    from .training.data import read_dataset
    from .training.models import check_base

    check_base(spec.base)
    if _local(spec.data):
        read_dataset(spec.data)


def check_evaluate(spec: "EvaluateSpec") -> None:
    """A local evaluation file that is missing or malformed."""
    if _local(spec.data):
        from .evaluation.data import read_eval_data

        read_eval_data(spec.data)


CHECKS = {"index": check_index, "finetune": check_finetune, "evaluate": check_evaluate}
