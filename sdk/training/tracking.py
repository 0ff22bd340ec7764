"""MLflow logging of a fine-tuning run: parameters, the loss curve, perplexity, the saved
adapter (or model) and its card as artifacts, and a new version of the registered model.

The tracking URI comes from the stack (a local SQLite store on the local stack); run artifacts
go under the stack's artifact store (`<store>/mlflow`), never into the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXPERIMENT = "stackwise-finetune"


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)
    return flat


def artifact_location(output_uri: str) -> str:
    store = output_uri.rsplit("/finetune/", 1)[0]
    if "://" in store and not store.startswith("file://"):
        return f"{store}/mlflow"
    return Path(store.removeprefix("file://"), "mlflow").resolve().as_uri()


def log_run(plan: Any, report: Any, history: list[dict[str, Any]], output: Path,
            card: Path) -> tuple[str, str, str]:
    """Log the run and register its output; returns (run id, registered model name, version)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ..model_registry import code_version

    spec = plan.spec
    if plan.tracking_uri:
        mlflow.set_tracking_uri(plan.tracking_uri)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = (experiment.experiment_id if experiment else
                     client.create_experiment(EXPERIMENT, artifact_location=artifact_location(plan.output_uri)))
    name = spec.model_name
    with mlflow.start_run(experiment_id=experiment_id, run_name=plan.output_uri.rsplit("/", 1)[-1]) as run:
        mlflow.log_params({k: v[:6000] for k, v in _flatten(spec.model_dump(mode="json")).items()})
        mlflow.set_tags({"stackwise.spec_digest": spec.digest(), "stackwise.output": plan.output_uri,
                         "stackwise.dataset_sha256": report.dataset_sha256})
        for entry in history:
            step = int(entry.get("step", 0))
            for key in ("loss", "learning_rate", "grad_norm"):
                if isinstance(entry.get(key), (int, float)):
                    mlflow.log_metric(f"train.{key}", float(entry[key]), step=step)
        ppl = report.perplexity
        metrics = {"perplexity.before": ppl.before, "perplexity.after": ppl.after,
                   "tokens_per_s": report.tokens_per_s, "peak_memory_mb": report.peak_memory_mb,
                   "steps": report.steps}
        if ppl.reloaded is not None:
            metrics["perplexity.reloaded"] = ppl.reloaded
        if report.train_loss is not None:
            metrics["train.final_loss"] = report.train_loss
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(output), artifact_path="model")
        mlflow.log_artifact(str(card))
        source = mlflow.get_artifact_uri("model")
        run_id = run.info.run_id
    try:
        client.create_registered_model(name, description=f"stackwise fine-tunes of {spec.base}")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    from ..licences import licence_record

    licence = {f"licence.{k}": v for k, v in licence_record(spec.base, spec.licence).items()
               if k != "base" and v}
    version = client.create_model_version(
        name, source=source, run_id=run_id,
        tags={"base": spec.base, "method": spec.method, "dataset_sha256": report.dataset_sha256, **licence,
              # lineage is complete from the moment the version exists, not only after a first eval
              **{f"lineage.{k}": str(v)[:5000] for k, v in {
                  "base": spec.base, "data": spec.data, "method": spec.method,
                  "dataset_sha256": report.dataset_sha256, "adapter": source,
                  "training_run": run_id, "code_version": code_version()}.items() if v}},
        description=f"{spec.method} on {spec.data}: held-out perplexity {ppl.before} -> {ppl.after}",
    )
    return run_id, name, str(version.version)
