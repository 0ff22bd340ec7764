"""Model licences: the known-licence table and the stack's licence policy.

A stack config may restrict which base models fine-tune, promote and deploy accept:

    config:
      stackwise:allowedLicenses: [apache-2.0, mit]   # absent: every licence is allowed
      stackwise:allowGated: false                    # default true

`check_allowed(model_ref, stack_config)` refuses (InputError, exit 2) a model whose licence is not
in `allowedLicenses`, or a gated model where `allowGated` is false. A base that is not in the model
catalog (a local folder, a URI, a registry version) has an unknown licence: it is refused only
when `allowedLicenses` is set, unless its licence is declared with the `licence:` key of the
fine-tune spec (proposed; passed here as `declared=`).

`licence_record(base)` is what the model card and the registry version tags record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import InputError

Commercial = Literal["yes", "no", "conditional"]


class Licence(BaseModel):
    """One licence: its id (an SPDX id in lower case, or a named custom licence), terms in short, a URL."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    commercial: Commercial
    terms: str
    url: str


_L = Licence
KNOWN: dict[str, Licence] = {lic.id: lic for lic in (
    _L(id="apache-2.0", name="Apache License 2.0", commercial="yes",
       terms="permissive; keep the licence and NOTICE file; state changes",
       url="https://www.apache.org/licenses/LICENSE-2.0"),
    _L(id="mit", name="MIT License", commercial="yes", terms="permissive; keep the copyright and licence notice",
       url="https://opensource.org/license/mit"),
    _L(id="cc-by-4.0", name="Creative Commons Attribution 4.0", commercial="yes", terms="attribution required",
       url="https://creativecommons.org/licenses/by/4.0/"),
    _L(id="cc-by-nc-4.0", name="Creative Commons Attribution-NonCommercial 4.0", commercial="no",
       terms="attribution; no commercial use", url="https://creativecommons.org/licenses/by-nc/4.0/"),
    _L(id="llama3.1", name="Llama 3.1 Community License", commercial="conditional",
       terms="commercial use allowed below 700M monthly active users (above: a licence from Meta); show 'Built with "
       "Llama'; derived model names begin with 'Llama'; Acceptable Use Policy applies",
       url="https://github.com/meta-llama/llama-models/blob/main/models/llama3_1/LICENSE"),
    _L(id="llama3.2", name="Llama 3.2 Community License", commercial="conditional",
       terms="as Llama 3.1 (700M MAU limit, 'Built with Llama', Acceptable Use Policy); the multimodal models' "
       "rights are not granted to EU-domiciled entities",
       url="https://github.com/meta-llama/llama-models/blob/main/models/llama3_2/LICENSE"),
    _L(id="llama3.3", name="Llama 3.3 Community License", commercial="conditional",
       terms="as Llama 3.1 (700M MAU limit, 'Built with Llama', Acceptable Use Policy)",
       url="https://github.com/meta-llama/llama-models/blob/main/models/llama3_3/LICENSE"),
    _L(id="gemma", name="Gemma Terms of Use", commercial="conditional",
       terms="commercial use allowed; the Prohibited Use Policy applies and must be passed on to users of "
       "derivatives; keep the notice", url="https://ai.google.dev/gemma/terms"),
    _L(id="qwen", name="Qwen License Agreement", commercial="conditional",
       terms="commercial use allowed below 100M monthly active users (above: a licence from Alibaba Cloud); "
       "show 'Built with Qwen'", url="https://huggingface.co/Qwen/Qwen2.5-72B-Instruct/blob/main/LICENSE"),
    _L(id="qwen-research", name="Qwen Research License Agreement", commercial="no",
       terms="research and non-commercial use only", url="https://huggingface.co/Qwen/Qwen2.5-3B-Instruct/blob/main/LICENSE"),
    _L(id="proprietary", name="Proprietary API terms", commercial="conditional",
       terms="served only through the provider's API under its terms of service; weights not available",
       url="(the provider's terms of service)"),
)}

UNKNOWN = "unknown"


def known(licence_id: str) -> Licence:
    """The table entry for `licence_id` (case-insensitive); InputError naming the known ids otherwise."""
    found = KNOWN.get(str(licence_id).strip().lower())
    if found is None:
        import difflib

        close = difflib.get_close_matches(str(licence_id).lower(), list(KNOWN), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise InputError(f"unknown licence {licence_id!r}", where="licence id",
                         fix=f"{hint}use one of: {', '.join(KNOWN)}")
    return found


def _config_of(stack_config: Any) -> tuple[Mapping[str, Any], str]:
    """(config mapping, where) from a Stack (its .config and .source) or a plain mapping."""
    if isinstance(stack_config, Mapping):
        return stack_config, "stack config"
    return getattr(stack_config, "config", {}) or {}, f"{getattr(stack_config, 'source', 'stack config')}: config"


def _policy(stack_config: Any) -> tuple[list[str] | None, bool, str]:
    config, where = _config_of(stack_config)
    raw = config.get("allowedLicenses")
    allowed = None
    if raw is not None:
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list):
            raise InputError("stackwise:allowedLicenses must be a list of licence ids",
                             where=f"{where}.stackwise:allowedLicenses", fix="e.g. [apache-2.0, mit]")
        allowed = [known(x).id for x in raw]  # an unknown id in the config is refused, too
    gated = config.get("allowGated", True)
    if not isinstance(gated, bool):
        raise InputError("stackwise:allowGated must be true or false", where=f"{where}.stackwise:allowGated",
                         fix="set stackwise:allowGated: true (or false)")
    return allowed, gated, where


def licence_record(base: str, declared: str | None = None) -> dict[str, str]:
    """What a model card and a registry version record about the base's licence (string values, for tags).

    Keys: base, base_hf_id, licence, licence_name, licence_url, commercial_use, gated, attribution, licence_source
    ("catalog", "declared" or "unknown")."""
    from . import model_catalog

    entry = model_catalog.find(base)
    if entry is not None and entry.licence is not None:
        lic = known(entry.licence.id)
        return {"base": base, "base_hf_id": entry.hf_id or "", "licence": lic.id, "licence_name": lic.name,
                "licence_url": entry.licence.source or lic.url, "commercial_use": lic.commercial,
                "gated": str(entry.licence.gated).lower(), "attribution": entry.licence.attribution or "",
                "licence_source": "catalog"}
    if declared:
        lic = known(declared)
        return {"base": base, "base_hf_id": "", "licence": lic.id, "licence_name": lic.name, "licence_url": lic.url,
                "commercial_use": lic.commercial, "gated": "unknown", "attribution": "", "licence_source": "declared"}
    return {"base": base, "base_hf_id": "", "licence": UNKNOWN, "licence_name": "", "licence_url": "",
            "commercial_use": "unknown", "gated": "unknown", "attribution": "", "licence_source": "unknown"}


def check_allowed(model_ref: str, stack_config: Any, declared: str | None = None) -> None:
    """Refuse (InputError, exit 2) a base model the stack's licence policy does not allow.

    `stack_config`: a Stack (its `.config`) or the config mapping (keys without the `stackwise:` prefix).
    `declared`: the licence the user declared for a base that is not in the catalog (a path, URI, registry)."""
    allowed, allow_gated, where = _policy(stack_config)
    record = licence_record(model_ref, declared)
    lic = record["licence"]
    if allowed is not None and lic == UNKNOWN:
        raise InputError(
            f"the licence of base model {model_ref!r} is unknown (it is not in the model catalog), and this stack "
            f"allows only: {', '.join(allowed)}",
            where=f"{where}.stackwise:allowedLicenses",
            fix="declare the base's licence with `licence: <id>` in the fine-tune spec (one of: "
            f"{', '.join(KNOWN)}), or use a catalog model (stackwise models catalog)")
    if allowed is not None and lic not in allowed:
        raise InputError(
            f"base model {model_ref!r} has licence {lic} ({record['licence_name']}), which this stack does not allow "
            f"(allowed: {', '.join(allowed)})",
            where=f"{where}.stackwise:allowedLicenses",
            fix=f"choose a model with an allowed licence (stackwise models catalog --license {allowed[0]}), or add "
            f"{lic} to stackwise:allowedLicenses if its terms ({record['licence_url']}) are acceptable")
    if not allow_gated and record["gated"] == "true":
        raise InputError(
            f"base model {model_ref!r} is gated on Hugging Face (licence {lic}: accept its terms to download), and "
            "this stack does not allow gated models",
            where=f"{where}.stackwise:allowGated",
            fix="choose a model that is not gated, or set stackwise:allowGated: true")
