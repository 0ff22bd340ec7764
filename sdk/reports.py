"""The reports jobs return: `IndexReport`, `FineTuneReport`, `EvalReport`.

A workload builds its report and writes it as JSON (the job's outputs); `JobHandle.result()` reads
it back as the same type (`report_of`). Each is a pydantic model that keeps fields it does not
know (a newer workload's) and also reads as a read-only mapping of the JSON it came from, so
`report["documents"]`, `report.get("adapter")`, `"chunks" in report`, `dict(report)` and
`report == handle.outputs` mean what they meant when reports were dicts. A job whose report could
not be read whole (a cloud job that left only its output URIs) still gives its outputs as such a
mapping; the typed fields it lacks are absent.

Job-side code (the workloads) imports this module: it imports nothing of the control plane.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError


class Report(BaseModel):
    """A job's report: typed fields, plus a read-only mapping view of its JSON."""

    model_config = ConfigDict(extra="allow")
    _outputs: dict[str, Any] | None = PrivateAttr(None)

    @classmethod
    def of(cls, outputs: Mapping[str, Any]) -> "Report":
        """The report of a job's outputs; its mapping view is exactly `outputs`."""
        try:
            report = cls.model_validate(dict(outputs))
        except ValidationError:  # a partial result: keep what there is, typed fields missing
            report = cls.model_construct(**dict(outputs))
        report._outputs = dict(outputs)
        return report

    def _view(self) -> dict[str, Any]:
        return self._outputs if self._outputs is not None else self.model_dump(mode="json")

    def __getitem__(self, key: str) -> Any:
        return self._view()[key]

    def __iter__(self) -> Iterator[str]:  # type: ignore[override] - a mapping iterates its keys
        return iter(self._view())

    def __len__(self) -> int:
        return len(self._view())

    def __contains__(self, key: object) -> bool:
        return key in self._view()

    def keys(self) -> KeysView[str]:
        return self._view().keys()

    def values(self) -> ValuesView[Any]:
        return self._view().values()

    def items(self) -> ItemsView[str, Any]:
        return self._view().items()

    def get(self, key: str, default: Any = None) -> Any:
        return self._view().get(key, default)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Report, Mapping)):
            return self._view() == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment] - mutable, as a dict


Mapping.register(Report)


# -- index -------------------------------------------------------------------------------------
class SkippedFile(BaseModel):
    path: str
    reason: str


class IndexReport(Report):
    """What an index run did. `added` counts chunks of documents new to the index, `replaced`
    new chunks of changed documents, `removed` the stale chunks those replaced, `unchanged`
    chunks already stored, `pruned` chunks of documents gone from the source (with --prune),
    `embedded` chunks whose vectors were computed (the chunks a changed document keeps reuse
    their stored vectors), `migrated` stored documents whose ids came from another spelling of
    their file (re-keyed to the canonical id without re-embedding, or dropped where the canonical
    copy was stored too), `recovered_version` the last good version a damaged index was restored
    to before indexing."""

    index: str
    source: str
    model: str
    documents: int
    chunks: int
    added: int = 0
    replaced: int = 0
    removed: int = 0
    unchanged: int = 0
    pruned: int = 0
    embedded: int = 0
    migrated: int = 0
    recovered_version: int | None = None
    embedding_backend: str | None = Field(
        None, description="What computed the vectors (torch, onnx, onnx-int8); None when nothing was embedded.")
    skipped: list[SkippedFile] = Field(default_factory=list)
    seconds: float = 0.0
    shards: int = Field(1, description="How many workers' reports this one sums.")
    curation: dict[str, Any] | None = Field(
        None, description="The curation report (stackwise.curation.CurationReport) when the spec curates.")


# -- fine-tune ---------------------------------------------------------------------------------
class Perplexity(BaseModel):
    before: float
    after: float
    reloaded: float | None = Field(None, description="After reloading the saved adapter or model from disk.")
    eval_examples: int
    eval_tokens: int


class FineTuneReport(Report):
    """What a fine-tuning run produced."""

    base: str
    method: str
    data: str
    dataset_sha256: str
    output: str
    adapter: str | None = None
    model: str | None = None
    merged: str | None = None
    model_card: str
    steps: int
    resumed_from_step: int | None = None
    train_examples: int
    train_loss: float | None = None
    perplexity: Perplexity
    tokens_per_s: float
    peak_memory_mb: float
    processes: int
    strategy: str
    device: str
    precision: str
    seconds: float
    mlflow_run_id: str | None = None
    registered_model: str | None = None
    registered_version: str | None = None
    tracking_error: str | None = None
    curation: dict[str, Any] | None = Field(None, description="The curation report of the dataset (spec.curation), "
                                            "also written beside the model as curation-report.json/.html.")


# -- evaluation --------------------------------------------------------------------------------
class ModelResult(BaseModel):
    role: str
    ref: str
    pinned: str
    registered_model: str | None = None
    version: str | None = None
    metrics: dict[str, float]
    examples: str
    mlflow_run_id: str | None = None


class EvalReport(Report):
    """What an evaluation produced."""

    data: str
    data_sha256: str
    suites: list[str]
    candidate: ModelResult
    baseline: ModelResult | None = None
    compare: list[ModelResult] = Field(default_factory=list)
    deltas: dict[str, float] = Field(default_factory=dict)
    leakage: dict[str, Any] = Field(default_factory=dict)
    report_html: str
    report_md: str
    output: str
    seconds: float
    tracking_error: str | None = None


REPORTS: dict[str, type[Report]] = {"index": IndexReport, "finetune": FineTuneReport, "evaluate": EvalReport}


def report_of(kind: str, outputs: Mapping[str, Any]) -> Report:
    """The typed report of a job of `kind` from its outputs (a plain `Report` for another kind)."""
    return REPORTS.get(kind, Report).of(outputs)
