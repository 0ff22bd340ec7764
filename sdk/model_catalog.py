"""The model catalog: open models with their licence, size, architecture and chat template, and
proprietary API models as evaluation baselines. Data: `stackwise/data/model_catalog.yaml` (dated, each
entry marked checked or unverified). Validated at load: an unknown licence id is refused.

    get("Llama-3.1-8B-Instruct")          # short id or Hugging Face id, case-insensitive
    models(license="apache-2.0", fits=("A10G", 1), method="qlora", seq_len=2048, batch=1)
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError, InputError
from .licences import known
from .sizing import Architecture, MemoryEstimate, estimate, fits_on

_WHERE = "model catalog (stackwise/data/model_catalog.yaml)"


class LicenceInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    gated: bool
    attribution: str = ""
    source: str = ""

    @field_validator("id")
    @classmethod
    def _known(cls, value: str) -> str:
        return known(value).id


def _marks(entry: Any, fields: tuple[str, ...]) -> Any:
    checked, unverified = entry.checked, entry.unverified
    for f in fields:
        if (f in checked) == (f in unverified):
            raise ValueError(f"{entry.id}: {f!r} must be in exactly one of checked / unverified")
    extra = (set(checked) | set(unverified)) - set(fields)
    if extra:
        raise ValueError(f"{entry.id}: unknown check keys {sorted(extra)}")
    return entry


class ModelEntry(BaseModel):
    """One open model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    hf_id: str
    params_b: float = Field(gt=0)
    active_params_b: float | None = None
    context: int = Field(gt=0)
    chat_template: str
    architecture: Architecture
    licence: LicenceInfo
    checked: dict[str, str] = {}
    unverified: dict[str, str] = {}

    @model_validator(mode="after")
    def _checked(self) -> "ModelEntry":
        return _marks(self, ("config", "licence"))

    @property
    def commercial(self) -> str:
        return known(self.licence.id).commercial

    def size(self, method: str = "inference", *, seq_len: int = 2048, batch: int = 1, **kwargs: Any) -> MemoryEstimate:
        """Memory for `method` (see stackwise.sizing.estimate), with the published parameter count."""
        return estimate(self.architecture, method, seq_len=seq_len, batch=batch, params=round(self.params_b * 1e9),
                        model=self.id, **kwargs)


class ApiModel(BaseModel):
    """A proprietary model reached through its provider's API (no weights, no sizing)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    provider: str
    context: int = Field(gt=0)
    checked: dict[str, str] = {}
    unverified: dict[str, str] = {}
    licence: None = None  # for licence_record: no catalog licence for fine-tuning

    @model_validator(mode="after")
    def _checked(self) -> "ApiModel":
        return _marks(self, ("context",))


class ModelCatalog(BaseModel):
    as_of: str
    models: list[ModelEntry]
    api_models: list[ApiModel] = []


def parse(data: Any, where: str = _WHERE) -> ModelCatalog:
    """Validate catalog data (a parsed YAML mapping); ConfigError naming the entry and field otherwise."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k != "reasons"}
    try:
        cat = ModelCatalog.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"invalid model catalog entry at {loc}: {first['msg']}", where=where,
                          fix="fix the entry (licence ids: stackwise.licences.KNOWN)") from None
    ids = [m.id.lower() for m in cat.models] + [m.id.lower() for m in cat.api_models]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"duplicate model ids: {', '.join(dupes)}", where=where, fix="give each entry its own id")
    return cat


@lru_cache(maxsize=1)
def catalog() -> ModelCatalog:
    """The catalog shipped with the package (parsed and validated once)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    text = resources.files("stackwise").joinpath("data/model_catalog.yaml").read_text("utf-8")
    return parse(yaml.load(text, Loader=loader))  # noqa: S506 - a safe loader


def _index() -> dict[str, ModelEntry | ApiModel]:
    out: dict[str, ModelEntry | ApiModel] = {}
    for m in catalog().models:
        out[m.id.lower()] = m
        out[m.hf_id.lower()] = m
    for a in catalog().api_models:
        out[a.id.lower()] = a
    return out


def find(model_id: str) -> ModelEntry | ApiModel | None:
    """The entry for a short id or Hugging Face id (case-insensitive), or None."""
    return _index().get(str(model_id).strip().lower())


def get(model_id: str) -> ModelEntry | ApiModel:
    """The entry for `model_id`; InputError (exit 2) suggesting the closest id on a typo."""
    found = find(model_id)
    if found is not None:
        return found
    close = difflib.get_close_matches(str(model_id).strip().lower(), list(_index()), n=1, cutoff=0.5)
    fix = f"did you mean {close[0]}? " if close else ""
    raise InputError(f"model {model_id!r} is not in the model catalog", where=_WHERE,
                     fix=fix + "list the models with: stackwise models catalog")


def models(license: str | None = None, fits: tuple[str, int] | None = None, method: str = "inference",
           seq_len: int = 2048, batch: int = 1, headroom: float = 0.9, **size_kwargs: Any) -> list[ModelEntry]:
    """Open models, optionally only those under licence `license` and those whose `method` estimate fits
    `fits` = (GPU name, count) with `headroom`."""
    chosen = list(catalog().models)
    if license is not None:
        lic = known(license).id
        chosen = [m for m in chosen if m.licence.id == lic]
    if fits is not None:
        gpu, count = fits
        chosen = [m for m in chosen
                  if fits_on(m.size(method, seq_len=seq_len, batch=batch, **size_kwargs), gpu, count, headroom)]
    return chosen
