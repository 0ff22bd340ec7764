"""The evaluation workload: `python -m stackwise.workloads.evaluate --spec spec.json`.

Evaluates a candidate model (and optionally a baseline) with the spec's suites on one dataset:
- the leakage guard runs first: evaluation records found in the training data (the spec's
  `train_data`, plus the datasets the registry's lineage names for registered models) fail the
  job with exit 2 unless `allow_leakage`;
- each model evaluated gets one MLflow run (experiment `stackwise-evaluate`): the spec as
  parameters, the metrics, the per-example table (examples.jsonl, and an MLflow table), tags
  naming the model version and the data's sha256 (what the promotion gate matches on);
- outputs go to `<artifact store>/evaluations/<spec digest>/`: examples-<role>.jsonl,
  report.html and report.md with one plot per suite, candidate against baseline.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from ..contract import JobContext
from ..progress import emit as emit_progress
from ..reports import EvalReport, ModelResult
from ..specs import EvaluateSpec
from ._runtime import main


def _registered(ref: str | None) -> tuple[str, str] | None:
    """(name, version) of a pinned models:/NAME/VERSION reference."""
    if ref and ref.startswith("models:/"):
        name, _, version = ref.removeprefix("models:/").partition("/")
        if version.isdigit():
            return name, version
    return None


def _output_folder(spec: EvaluateSpec, context: JobContext) -> tuple[Path, str]:
    from ..paths import state_dir

    store = context.artifact_store.rstrip("/")
    uri = f"{store}/evaluations/{spec.digest()}"
    if "://" in store and not store.startswith("file://"):
        return state_dir() / "evaluations" / spec.digest(), uri
    return Path(uri.removeprefix("file://")), uri


def _search(spec: EvaluateSpec, context: JobContext):
    """Search the job context's vector store with the index's own embedding model."""
    if not spec.index:
        return None
    from ..embeddings import load_embedder
    from ..vectors import open_store

    store = open_store(context.vector_store)
    embedder = load_embedder(store.describe(spec.index).model)

    def search(query: str, k: int) -> list[tuple[str, str]]:
        vector = embedder.encode([query])[0]
        return [(hit.doc_id, hit.text) for hit in store.query(spec.index, vector, k=k)]

    return search


def _lineage_data(refs: list[str], context: JobContext) -> list[str]:
    """Training datasets the registry's lineage names for these (pinned) references."""
    found = []
    for ref in refs:
        reg = _registered(ref)
        if not reg:
            continue
        from ..model_registry import Registry

        lineage = Registry(context).record_lineage(*reg)
        if lineage.get("data"):
            found.append(lineage["data"])
    return found


def run_evaluate(spec: EvaluateSpec, context: JobContext) -> EvalReport:
    from ..evaluation import leakage
    from ..evaluation.data import read_eval_data
    from ..evaluation.lm import pin
    from ..evaluation.runner import model_roles, run_model_suites, run_retrieval

    started = time.perf_counter()
    data = read_eval_data(spec.data)
    roles = model_roles(spec)
    pinned = {role: pin(ref, context) for role, ref in roles if ref}
    # The leakage guard, before any model loads.
    train_uris = list(dict.fromkeys([*spec.train_data, *_lineage_data(list(pinned.values()), context)]))
    scored = [pair for suite in spec.suites if suite != "retrieval" for pair in data.for_suite(suite, spec.max_examples)]
    leak = leakage.check(scored, train_uris, spec.allow_leakage, spec.data) if train_uris else \
        {"training_data": [], "checked": len(scored), "leaked": 0, "allowed": spec.allow_leakage,
         "note": "no training data known: pass train_data, or evaluate a registered model"}

    search = _search(spec, context)
    shared: dict[str, float] = {}
    shared_rows: list[dict] = []
    if "retrieval" in spec.suites:
        shared, shared_rows = run_retrieval(spec, data, search)

    folder, output_uri = _output_folder(spec, context)
    folder.mkdir(parents=True, exist_ok=True)
    results: dict[str, ModelResult] = {}
    for role, ref in roles:
        if role != "candidate" and not ref:
            continue
        metrics, rows = dict(shared), list(shared_rows)
        if ref:
            from ..evaluation.lm import load

            emit_progress(f"{role}: load", 0, 1, model=ref)
            lm = load(pinned[role], spec.max_seq_length, spec.generation.chat_template, context)
            found, model_rows = run_model_suites(spec, data, lm, search, role)
            metrics.update(found)
            rows += model_rows
            del lm
            gc.collect()
        examples = folder / f"examples-{role}.jsonl"
        examples.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows), encoding="utf-8")
        reg = _registered(pinned.get(role))
        results[role] = ModelResult(role=role, ref=ref or f"index:{spec.index}", pinned=pinned.get(role) or "",
                                    registered_model=reg[0] if reg else None, version=reg[1] if reg else None,
                                    metrics={k: round(v, 6) for k, v in metrics.items()}, examples=str(examples))

    cand, base = results["candidate"], results.get("baseline")
    others = [results[role] for role, _ in roles[2:]]
    from ..evaluation.report import write_report

    meta = {"data": spec.data, "data sha256": data.sha256[:16], "suites": ", ".join(spec.suites),
            "candidate": cand.pinned or cand.ref, "baseline": (base.pinned or base.ref) if base else "-",
            **{o.role: f"{o.ref} ({o.pinned})" if o.pinned != o.ref else o.ref for o in others},
            "leakage": f"{leak['leaked']} of {leak['checked']} records found in training data"
                       + (" (allowed)" if leak["leaked"] else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    html_path, md_path = write_report(folder, "stackwise evaluation", meta, ("candidate", cand.metrics),
                                      ("baseline", base.metrics) if base else None,
                                      [(f"{o.role} ({o.ref})", o.metrics) for o in others])
    report = EvalReport(
        data=spec.data, data_sha256=data.sha256, suites=spec.suites, candidate=cand, baseline=base, compare=others,
        deltas={k: round(v - base.metrics[k], 6) for k, v in cand.metrics.items() if base and k in base.metrics},
        leakage=leak, report_html=str(html_path), report_md=str(md_path), output=output_uri, seconds=0.0,
    )
    try:
        _track(spec, report, data, folder, context)
    except Exception as exc:  # results are saved; a tracking outage must not lose them
        report.tracking_error = f"{type(exc).__name__}: {exc}"
        print(f"warning: MLflow logging failed: {report.tracking_error}", flush=True)
    if output_uri.rstrip("/") != str(folder).rstrip("/"):
        import fsspec

        fs, root = fsspec.core.url_to_fs(output_uri)
        fs.put(str(folder).rstrip("/") + "/", root.rstrip("/") + "/", recursive=True)
    report.seconds = round(time.perf_counter() - started, 2)
    return report


def _track(spec: EvaluateSpec, report: EvalReport, data: Any, folder: Path, context: JobContext) -> None:
    import mlflow

    from ..model_registry import EVAL_EXPERIMENT, Registry, code_version
    from ..training.tracking import _flatten

    registry = Registry(context)
    experiment = registry.experiment_id(EVAL_EXPERIMENT)
    for result in (report.candidate, report.baseline, *report.compare):
        if result is None:
            continue
        with mlflow.start_run(experiment_id=experiment, run_name=f"eval-{result.role}-{spec.digest()}") as run:
            mlflow.log_params({k: v[:6000] for k, v in _flatten(spec.model_dump(mode="json")).items()})
            mlflow.set_tags({
                "stackwise.role": result.role, "stackwise.model_ref": result.ref, "stackwise.model": result.pinned,
                "stackwise.model_name": result.registered_model or "", "stackwise.model_version": result.version or "",
                "stackwise.data": spec.data, "stackwise.data_sha256": data.sha256,
                "stackwise.suites": ",".join(spec.suites), "stackwise.spec_digest": spec.digest(),
                "stackwise.code_version": code_version(),
            })
            mlflow.log_metrics({k: v for k, v in result.metrics.items() if v == v})  # NaN has no place in a gate
            mlflow.log_artifact(result.examples)
            rows = [json.loads(line) for line in Path(result.examples).read_text().splitlines()]
            if rows:
                try:
                    columns = sorted({k for r in rows for k in r})
                    mlflow.log_table({c: [json.dumps(r.get(c), default=str) if isinstance(r.get(c), (list, dict))
                                          else r.get(c) for r in rows] for c in columns},
                                     artifact_file=f"examples-{result.role}.json")
                except Exception as exc:  # the JSONL above is the table of record
                    print(f"note: MLflow table not logged ({type(exc).__name__}: {exc})", flush=True)
            if result.role == "candidate":
                for name in ("report.html", "report.md", *(p.name for p in folder.glob("plot-*.png"))):
                    mlflow.log_artifact(str(folder / name), artifact_path="report")
            result.mlflow_run_id = run.info.run_id
        if result.registered_model and result.version:
            registry.add_evaluation(result.registered_model, result.version, run.info.run_id)


if __name__ == "__main__":
    main("evaluate", EvaluateSpec, run_evaluate)
