"""What a cloud job's spec must pass before any cloud call: a job spec with its run name set
(`with_run`), no path of this machine in it (`check_paths`: the job cannot read it), and a
`max_runtime_s` the cloud runs (`check_max_runtime`)."""

from __future__ import annotations

import os
import secrets
from typing import Any

from stackwise.errors import SpecError


def with_run(spec: Any, new: bool = False, run_name: str | None = None) -> Any:
    """The spec to submit: checked, with `run_name` set (a random one for `new`)."""
    check_spec(spec)
    if new and run_name:
        raise SpecError("--new and --run-name exclude each other", where="submit(new=..., run_name=...)",
                        fix="--new starts a fresh run under a random run name; --run-name NAME names it yourself")
    if new:
        run_name = secrets.token_hex(4)
    if run_name is None or run_name == spec.run_name:
        return spec
    from pydantic import ValidationError

    try:
        return type(spec).model_validate({**spec.model_dump(), "run_name": run_name})
    except ValidationError as exc:
        raise SpecError(exc.errors()[0]["msg"].removeprefix("Value error, "), where="--run-name",
                        fix="use 1-12 lowercase letters, digits or '-'") from None


def check_spec(spec: Any) -> None:
    """Refuse, before any cloud call, what is not a job spec."""
    from stackwise.specs import JOB_SPECS

    if not isinstance(spec, JOB_SPECS):
        raise SpecError(
            f"cannot submit {type(spec).__name__}: not a job spec",
            where="submit(spec)",
            fix="pass an IndexSpec, FineTuneSpec or EvaluateSpec",
        )


# The spec fields that name data the job reads, per kind (a cloud job cannot read the user's disk).
DATA_FIELDS = {"index": ("source",), "finetune": ("data",), "evaluate": ("data", "train_data")}
MODEL_FIELDS = {"finetune": ("base",), "evaluate": ("model", "baseline")}


_UPLOAD = {"s3": "e.g. `aws s3 cp --recursive DIR s3://...`", "gs": "e.g. `gcloud storage cp -r DIR gs://...`",
           "az": "e.g. `az storage blob upload-batch`"}


def is_local(value: str) -> bool:
    return "://" not in value or value.startswith(("file://", "local://"))


def _looks_like_path(value: str) -> bool:
    return value.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(value)


def check_paths(spec: Any, stack: Any) -> None:
    """Refuse, before any cloud call, a spec that names a file on this machine: the job runs in
    the cloud and cannot read it. Data fields must be URIs (s3://, gs://, az://, hf://, ...);
    a model field may also be a short name, a hub id or a registry reference, but not a path."""
    store = stack.outputs.artifact_store.rstrip("/")
    scheme = store.split("://", 1)[0]
    for field in DATA_FIELDS.get(spec.kind, ()) + MODEL_FIELDS.get(spec.kind, ()):
        raw = getattr(spec, field, None)
        for value in raw if isinstance(raw, list) else [raw]:
            if not isinstance(value, str) or not is_local(value):
                continue
            if field in MODEL_FIELDS.get(spec.kind, ()) and not _looks_like_path(value):
                continue  # a shipped short name or a Hugging Face id
            raise SpecError(
                f"{field} {value!r} is a path on this machine, which a {stack.cloud} job cannot read",
                where=f"spec.{field} (stack {stack.name!r})",
                fix=f"upload it under the stack's artifact store, `{store}/data/...` "
                f"({_UPLOAD.get(scheme, 'with your cloud CLI')}), and pass that URI, or pass any s3://, "
                "gs:// or az:// URI the job can read",
            )


def check_max_runtime(spec: Any, limit_s: int | None, service: str) -> None:
    """Refuse, before any cloud call, a `compute.max_runtime_s` beyond `limit_s`, the longest run
    the cloud's job `service` accepts (each compute adapter states its own limit and its source)."""
    asked = int(spec.compute.max_runtime_s)
    if limit_s is None or asked <= limit_s:
        return
    raise SpecError(
        f"compute.max_runtime_s {asked} is more than {service}: at most {limit_s} s ({limit_s // 86400} days)",
        where="spec.compute.max_runtime_s",
        fix=f"set max_runtime_s to {limit_s} or less; a longer fine-tune resumes from its checkpoints when "
        "submitted again (the next attempt of the same spec)",
    )


