"""The model registry: MLflow's registry on the stack's tracking URI, with aliases, lineage and
an evaluation gate.

- Aliases: `candidate` names the version under review, `champion` the one in service. They move
  only through `set_alias` and `promote`; `promote` alone moves `champion` and
  `previous-champion` (reserved, in any case), and only when the gate passes.
- Names and aliases are checked (`check_model_name`, `check_alias`) before anything is written:
  MLflow's own rules plus the grammar of model references (`chat:3`, `chat@champion`).
- Lineage: every version carries tags `lineage.base`, `lineage.dataset_sha256`, `lineage.data`,
  `lineage.adapter` (the artifact it serves), `lineage.code_version` and
  `lineage.evaluation_runs` (MLflow run ids of its evaluations, appended by each evaluation).
- Evaluations: one MLflow run per model evaluated, in experiment `stackwise-evaluate`, tagged
  with the model version and the sha256 of the evaluation data, so the gate compares candidate
  and champion on the same data only.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .errors import InputError, SpecError, StackwiseError
from .userinput import shorten

EVAL_EXPERIMENT = "stackwise-evaluate"
MODELS_EXPERIMENT = "stackwise-models"
CANDIDATE, CHAMPION, PREVIOUS_CHAMPION = "candidate", "champion", "previous-champion"
#: Aliases only `promote` moves (compared case-insensitively).
RESERVED_ALIASES = (CHAMPION, PREVIOUS_CHAMPION)
# The grammar of model references (stackwise.deploy.ModelRef: NAME:VERSION, NAME@ALIAS), which
# is also inside MLflow's rules (no '/', ':', '..' or leading '/' in names; \w and '-' in aliases).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
ALIAS_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
VERSION = re.compile(r"[1-9][0-9]{0,9}")


class GateFailed(StackwiseError, RuntimeError):
    """The candidate did not beat the champion on every gated metric (exit 4).

    `result` is the gate's verdict, every gated metric compared (what `promote` returns when it
    passes); None when there was nothing to compare (the candidate has no evaluation)."""

    exit_code = 4

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None,
                 result: PromotionResult | None = None):
        super().__init__(what, where=where, fix=fix)
        self.result = result


class PromotionResult(BaseModel):
    model: str
    candidate: str
    champion_before: str | None
    champion_after: str | None
    promoted: bool
    data_sha256: str | None
    rows: list[dict[str, Any]] = Field(description="One row per gated metric (stackwise.evaluation.gate.GateRow).")
    note: str = ""


def code_version() -> str:
    """stackwise's version, plus the git commit of its source tree when it runs from a checkout."""
    from .version import version_string

    return version_string()


def _mlflow_refuses(check: str, value: str) -> str | None:
    """MLflow's own verdict on a name or alias (its validation module), None when it accepts it
    or MLflow is not installed."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.utils import validation
    except ImportError:
        return None
    try:
        for name in (check, *(("_validate_model_alias_name_reserved",) if "alias" in check else ())):
            getattr(validation, name, lambda _v: None)(value)
    except MlflowException as exc:
        return exc.message
    return None


def check_model_name(name: str) -> str:
    """`name` if it is a valid registered model name, else `SpecError` (nothing is written)."""
    fix = ("use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit "
           "(e.g. chat-support); names appear in references like chat:3 and chat@champion")
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise SpecError(f"invalid model name {shorten(name)}", where="model name", fix=fix)
    refused = _mlflow_refuses("_validate_model_name", name)
    if refused:
        raise SpecError(f"invalid model name {shorten(name)}: MLflow says: {shorten(refused, 200)}",
                        where="model name", fix=fix)
    return name


def check_alias(alias: str, allow_reserved: bool = False) -> str:
    """`alias` if stackwise may set it, else `SpecError` (nothing is written).

    Refused: what MLflow refuses (empty, characters other than letters, digits, '_', '-',
    `latest`, `v1`-style version names), an alias not starting with a letter (it could not be
    written in a reference `NAME@ALIAS`), `champion` and `previous-champion` in any case unless
    `allow_reserved` (only `promote` moves them), and case variants of stackwise's aliases."""
    fix = "use 1-63 letters, digits, '_' or '-', starting with a letter (e.g. candidate, staging)"
    if not isinstance(alias, str) or not ALIAS_NAME.fullmatch(alias):
        raise SpecError(f"invalid alias {shorten(alias)}", where="alias", fix=fix)
    lowered = alias.lower()
    if lowered in RESERVED_ALIASES and not allow_reserved:
        raise SpecError(f"the {lowered} alias moves only through the promotion gate", where=f"alias {alias}",
                        fix="stackwise promote NAME --version N --gate gates.yaml")
    if lowered in (CANDIDATE, *RESERVED_ALIASES) and alias != lowered:
        raise SpecError(f"alias {alias!r} differs from stackwise's {lowered!r} only in case", where=f"alias {alias}",
                        fix=f"write {lowered}" + ("" if lowered == CANDIDATE else
                                                  " (and move it with `stackwise promote`)"))
    refused = _mlflow_refuses("_validate_model_alias_name", alias)
    if refused:
        raise SpecError(f"invalid alias {alias!r}: MLflow says: {shorten(refused, 200)}", where=f"alias {alias}",
                        fix=fix + "; not latest or v<number>, which MLflow reserves")
    return alias


def check_version(version: Any) -> str:
    """`version` as text if it is a model version number (1, 2, ...), else `SpecError`."""
    text = str(version).strip() if isinstance(version, (str, int)) and not isinstance(version, bool) else ""
    if not VERSION.fullmatch(text):
        raise SpecError(f"invalid model version {shorten(version)}", where="version",
                        fix="give a version number, e.g. 3 (see `stackwise models show NAME`)")
    return text


def _artifact_root(store: str) -> str:
    store = store.rstrip("/")
    if "://" in store and not store.startswith("file://"):
        return f"{store}/mlflow"
    return Path(store.removeprefix("file://"), "mlflow").resolve().as_uri()


class Registry:
    """The active stack's MLflow registry (and evaluation runs)."""

    def __init__(self, stack: Any = None):
        """`stack`: a Stack, a stack name (None: the active stack), or a running job's JobContext
        (jobs never resolve a stack by name)."""
        from .contract import JobContext
        from .registry import require

        require("mlflow", "train", "the model registry")
        import mlflow
        from mlflow.tracking import MlflowClient

        if isinstance(stack, JobContext):
            self.stack = None
            self.tracking_uri, store = stack.tracking_uri, stack.artifact_store
        else:
            from .stack import load_stack

            self.stack = stack if stack is not None and not isinstance(stack, str) else load_stack(stack)
            self.tracking_uri, store = self.stack.outputs.tracking_uri, self.stack.outputs.artifact_store
        if self.tracking_uri:
            mlflow.set_tracking_uri(self.tracking_uri)
        self.artifact_root = _artifact_root(store)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)

    # -- experiments -------------------------------------------------------------------------
    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found:
            return found.experiment_id
        return self.client.create_experiment(name, artifact_location=f"{self.artifact_root}/{name}")

    # -- versions ----------------------------------------------------------------------------
    def _not_found(self, what: str, name: str) -> InputError:
        return InputError(f"{what} is not in the model registry", where=f"tracking URI {self.tracking_uri}",
                          fix=f"list models with `stackwise models list`; `stackwise models show {name}`")

    def version(self, name: str, version: str) -> Any:
        try:
            return self.client.get_model_version(name, str(version))
        except Exception:  # mlflow raises MlflowException (RESOURCE_DOES_NOT_EXIST)
            raise self._not_found(f"model {name} version {version}", name) from None

    def version_by_alias(self, name: str, alias: str) -> Any:
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except Exception:
            raise self._not_found(f"alias {alias!r} of model {name}", name) from None

    def alias_version(self, name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(name, alias).version)
        except Exception:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `alias` at an existing version. `champion` and `previous-champion` are refused
        (they move only through `promote`), as is any alias `check_alias` refuses."""
        check_model_name(name)
        check_alias(alias)
        version = check_version(version)
        self.version(name, version)
        self.client.set_registered_model_alias(name, alias, version)

    def register(self, folder: str, name: str, lineage: dict[str, str] | None = None,
                 description: str = "", copy: bool = True, alias: str | None = None) -> str:
        """Make `folder` (a saved model or adapter) a new version of `name`; returns the version.
        With `copy` (the default) the folder is logged as a run's artifact, so the version outlives
        it; without, the version points at the folder in place (a large base model on this
        machine). Lineage tags are recorded on the version; `alias` (never champion) is pointed at
        it. The name, alias and folder are checked before anything is logged: a refusal leaves no
        run and no copied artifact."""
        import mlflow
        from mlflow.exceptions import MlflowException

        check_model_name(name)
        if alias is not None:
            check_alias(alias)
        path = Path(folder).resolve()
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise InputError(f"{folder} is not a saved model or adapter (no config.json)", where=folder,
                             fix="register a folder written by save_pretrained")
        run_id = None
        if copy:
            with mlflow.start_run(experiment_id=self.experiment_id(MODELS_EXPERIMENT),
                                  run_name=f"register-{name}") as run:
                mlflow.log_artifacts(str(path), artifact_path="model")
                source = mlflow.get_artifact_uri("model")
                run_id = run.info.run_id
        else:
            source = str(path)
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        mv = self.client.create_model_version(name, source=source, run_id=run_id, description=description)
        self.record_lineage(name, str(mv.version), {"adapter": source, **(lineage or {})})
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, str(mv.version))
        return str(mv.version)

    def record_lineage(self, name: str, version: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Fill in the version's lineage tags from what is known (its own tags, the run that made
        it, `extra`); tags already set are kept. Returns the lineage."""
        mv = self.version(name, version)
        tags = dict(mv.tags or {})
        found: dict[str, str] = {"adapter": mv.source, "code_version": code_version()}
        if tags.get("base"):
            found["base"] = tags["base"]
        if tags.get("dataset_sha256"):
            found["dataset_sha256"] = tags["dataset_sha256"]
        if mv.run_id:
            try:
                params = self.client.get_run(mv.run_id).data.params
                found.update({k: params[p] for k, p in (("base", "base"), ("data", "data"), ("method", "method"))
                              if params.get(p)})
            except Exception:
                pass
        found.update(extra or {})
        for key, value in found.items():
            if value and f"lineage.{key}" not in tags:
                self.client.set_model_version_tag(name, version, f"lineage.{key}", str(value)[:5000])
                tags[f"lineage.{key}"] = str(value)
        return {k.removeprefix("lineage."): v for k, v in tags.items() if k.startswith("lineage.")}

    def add_evaluation(self, name: str, version: str, run_id: str) -> None:
        mv = self.version(name, version)
        runs = [r for r in (mv.tags or {}).get("lineage.evaluation_runs", "").split(",") if r]
        if run_id not in runs:
            runs.append(run_id)
        self.client.set_model_version_tag(name, version, "lineage.evaluation_runs", ",".join(runs))

    # -- listing -----------------------------------------------------------------------------
    def list_models(self) -> list[dict[str, Any]]:
        out = []
        for rm in self.client.search_registered_models(max_results=1000):
            versions = self.client.search_model_versions(f"name = '{rm.name}'")
            out.append({"name": rm.name, "versions": len(versions),
                        "latest": max((int(v.version) for v in versions), default=None),
                        "aliases": {a: str(v) for a, v in (rm.aliases or {}).items()}, "description": rm.description or ""})
        return sorted(out, key=lambda m: m["name"])

    def show(self, name: str) -> dict[str, Any]:
        try:
            rm = self.client.get_registered_model(name)
        except Exception:
            raise self._not_found(f"model {name}", name) from None
        aliases_by_version: dict[str, list[str]] = {}
        for alias, version in (rm.aliases or {}).items():
            aliases_by_version.setdefault(str(version), []).append(alias)
        versions = []
        for mv in sorted(self.client.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version)):
            tags = dict(mv.tags or {})
            versions.append({
                "version": str(mv.version), "aliases": sorted(aliases_by_version.get(str(mv.version), [])),
                "source": mv.source, "run_id": mv.run_id, "created": mv.creation_timestamp,
                "description": mv.description or "",
                "lineage": {k.removeprefix("lineage."): v for k, v in tags.items() if k.startswith("lineage.")},
                "evaluations": self.evaluations(name, str(mv.version)),
            })
        return {"name": name, "aliases": {a: str(v) for a, v in (rm.aliases or {}).items()}, "versions": versions}

    # -- evaluations -------------------------------------------------------------------------
    def evaluations(self, name: str, version: str, data_sha256: str | None = None) -> list[dict[str, Any]]:
        """Evaluation runs of one version, newest first: run id, data sha256, metrics."""
        found = self.client.get_experiment_by_name(EVAL_EXPERIMENT)
        if not found:
            return []
        query = f"tags.`stackwise.model_name` = '{name}' and tags.`stackwise.model_version` = '{version}'"
        if data_sha256:
            query += f" and tags.`stackwise.data_sha256` = '{data_sha256}'"
        runs = self.client.search_runs([found.experiment_id], query, order_by=["attributes.start_time DESC"],
                                       max_results=200)
        return [{"run_id": r.info.run_id, "data_sha256": r.data.tags.get("stackwise.data_sha256"),
                 "data": r.data.tags.get("stackwise.data"), "start_time": r.info.start_time,
                 "metrics": dict(r.data.metrics)} for r in runs]

    def gate_metrics(self, name: str, version: str, data_sha256: str) -> dict[str, float]:
        """The version's metrics on that data: newest value of each metric over its runs."""
        merged: dict[str, float] = {}
        for run in reversed(self.evaluations(name, version, data_sha256)):  # oldest first, newest wins
            merged.update(run["metrics"])
        return merged

    # -- promotion ---------------------------------------------------------------------------
    def promote(self, name: str, gate_path: str, version: str | None = None) -> PromotionResult:
        """Make the candidate the champion if it beats the champion on every gated metric, both
        measured on the same data; else raise GateFailed (exit 4) and move no alias."""
        from .evaluation.data import read_eval_data
        from .evaluation.gate import compare, read_gate

        gate = read_gate(gate_path)
        if version is not None:
            self.set_alias(name, CANDIDATE, version)
        candidate = self.alias_version(name, CANDIDATE)
        if candidate is None:
            raise InputError(f"model {name} has no {CANDIDATE!r} alias and no --version was given",
                             where=f"model {name}", fix=f"stackwise promote {name} --version N --gate {gate_path}")
        from .governance import check_version_licence

        if self.stack is not None:  # a job (JobContext) promotes under the policy its submitter passed
            check_version_licence(self, name, candidate, self.stack)
        champion = self.alias_version(name, CHAMPION)
        self.record_lineage(name, candidate)
        if champion is None or champion == candidate:
            note = ("no champion yet: the candidate becomes the first champion" if champion is None
                    else "the candidate is already the champion")
            self._move(name, candidate)
            return PromotionResult(model=name, candidate=candidate, champion_before=champion,
                                   champion_after=candidate, promoted=True, data_sha256=None, rows=[], note=note)
        if data := gate.data:
            sha = read_eval_data(data).sha256
        else:
            runs = self.evaluations(name, candidate)
            sha = runs[0]["data_sha256"] if runs else None
        if sha is None:
            raise GateFailed(f"candidate {name} version {candidate} has no evaluation to gate on",
                             where=f"model {name}",
                             fix=f"stackwise eval --model models:/{name}/{candidate} --baseline models:/{name}@champion "
                                 "--data EVAL.jsonl --suite ...")
        cand_metrics = self.gate_metrics(name, candidate, sha)
        champ_metrics = self.gate_metrics(name, champion, sha)
        rows = compare(gate, cand_metrics, champ_metrics)
        result = PromotionResult(model=name, candidate=candidate, champion_before=champion,
                                 champion_after=champion, promoted=False, data_sha256=sha,
                                 rows=[r.model_dump() for r in rows])
        if not all(r.passed for r in rows):
            failed = [r for r in rows if not r.passed]
            error = GateFailed(
                f"candidate {name} version {candidate} did not beat champion version {champion} on "
                f"{len(failed)} of {len(rows)} gated metrics: " + ", ".join(r.metric for r in failed),
                where=f"gate {gate_path}, data sha256 {sha[:12]}",
                fix="improve the candidate, or evaluate both on the same data: stackwise eval --model "
                    f"models:/{name}/{candidate} --baseline models:/{name}@champion --data ...",
                result=result,
            )
            raise error
        self._move(name, candidate)
        result.promoted, result.champion_after = True, candidate
        return result

    def _move(self, name: str, candidate: str) -> None:
        previous = self.alias_version(name, CHAMPION)
        self.client.set_registered_model_alias(name, CHAMPION, candidate)
        if previous and previous != candidate:
            self.client.set_registered_model_alias(name, PREVIOUS_CHAMPION, previous)
        self.client.set_model_version_tag(name, candidate, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                        time.gmtime()))
        try:
            self.client.delete_registered_model_alias(name, CANDIDATE)
        except Exception:
            pass
