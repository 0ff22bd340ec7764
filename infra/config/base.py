"""What every part of the stack config shares: its model base (camelCase keys, unknown keys
refused, frozen) and catalog checks that fail as validation errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from stackwise.errors import ConfigError


def from_catalog(fn, *args):
    """Call the catalog inside a validator: its ConfigError becomes a plain message for pydantic."""
    try:
        return fn(*args)
    except ConfigError as exc:
        raise ValueError(f"{exc.what}; {exc.fix}") from None


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=camel, populate_by_name=True)


