"""What each step kind takes and does: its `with` checked against the real spec models before any job,
and run through the active stack's Platform (the same calls the CLI makes).

| kind | `with` | runs | outputs |
|---|---|---|---|
| curate | source, config (file or mapping), state | stackwise.curation in this process | data, exclusions, report |
| index | IndexSpec's fields | an index job | index |
| finetune | FineTuneSpec's fields | a fine-tune job (placement and cost first) | model (models:/NAME/VERSION), adapter |
| evaluate | EvaluateSpec's fields; `baseline: champion` = the candidate's champion when the step runs | an evaluation job | report, metrics |
| promote | model, gate | Registry.promote (exit 4 when the gate refuses) | champion, promoted |
| deploy | model, traffic, endpoint | Platform.deploy | endpoint |
| serve-check | prompt, expect, url, api_key_env, max_tokens, timeout_s | a chat request to the endpoint | answer |
| run | command, env | the command on this machine, in the pipeline's folder | its `outs` |
"""

from __future__ import annotations

import copy
import re
from typing import TYPE_CHECKING, Any, Callable

from pydantic import ValidationError

from ..errors import SpecError
from .hashing import is_remote, local_path
from .spec import REF, _field_type, map_strings

if TYPE_CHECKING:
    from .spec import Pipeline

PLACEHOLDER = {"data": "placeholder.jsonl", "file": "placeholder.yaml", "model": "models:/placeholder/1",
               "index": "placeholder", "text": "placeholder", "bool": True, "json": {}}
CHAMPION_WORDS = ("champion", "@champion")
SERVE_CHECK_KEYS = {"prompt", "expect", "url", "api_key_env", "max_tokens", "timeout_s", "model"}


def resolve(pipeline: "Pipeline", name: str, lookup: Callable[[str, str | None, str], Any]) -> dict[str, Any]:
    """The step's `with`, references replaced (`lookup(target, name, output)`) and relative local paths of
    data and file fields made absolute against the pipeline file's folder."""
    step = pipeline.step(name)

    def substitute(key: str, text: str) -> Any:
        matches = list(REF.finditer(text))
        if not matches:
            value: Any = text
        elif len(matches) == 1 and matches[0].group(0) == text.strip():
            parts = matches[0].group(1).split(".")
            value = lookup(parts[0], parts[1], parts[3] if parts[0] == "steps" else None)
        else:
            def one(m: re.Match[str]) -> str:
                parts = m.group(1).split(".")
                return str(lookup(parts[0], parts[1], parts[3] if parts[0] == "steps" else None))

            value = REF.sub(one, text)
        if isinstance(value, str) and _field_type(step.kind, key) in ("data", "file") and not is_remote(value) \
                and not value.startswith("models:/") and step.kind != "run":
            value = pipeline.locate(value)
        return value

    return map_strings(copy.deepcopy(step.with_), "", substitute)


def placeholder_lookup(pipeline: "Pipeline") -> Callable[[str, str | None, str], Any]:
    from .spec import outputs_of

    def lookup(target: str, name: str, output: str | None) -> Any:
        if target == "params":
            value = pipeline.file.params[name]
            return value
        return PLACEHOLDER[outputs_of(pipeline.step(name))[output or ""]]

    return lookup


def _fail(pipeline: "Pipeline", name: str, exc: ValidationError) -> SpecError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(with)"
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return SpecError(f"step {name!r} ({pipeline.step(name).kind}): with.{loc}: {message}",
                     where=f"{pipeline.path}: steps.{name}.with.{loc}",
                     fix="correct or remove that key (the fields of each kind: docs/pipelines.md)")


def _require(pipeline: "Pipeline", name: str, w: dict[str, Any], *keys: str) -> None:
    for key in keys:
        if w.get(key) in (None, ""):
            raise SpecError(f"step {name!r} ({pipeline.step(name).kind}) needs with.{key}",
                            where=f"{pipeline.path}: steps.{name}.with", fix=f"add `{key}:` to the step's `with`")


def _only(pipeline: "Pipeline", name: str, w: dict[str, Any], allowed: set[str]) -> None:
    for key in w:
        if key not in allowed:
            raise SpecError(f"step {name!r} ({pipeline.step(name).kind}): with.{key}: unknown key",
                            where=f"{pipeline.path}: steps.{name}.with.{key}",
                            fix=f"{pipeline.step(name).kind} steps take: {', '.join(sorted(allowed))}")


def build_spec(kind: str, w: dict[str, Any], embedding_model: str | None = None) -> Any:
    from ..specs import EvaluateSpec, FineTuneSpec, IndexSpec

    if kind == "index":
        w = dict(w)
        if embedding_model and "embedding" not in w:
            w["embedding"] = {"model": embedding_model}
        return IndexSpec(**w)
    if kind == "finetune":
        return FineTuneSpec(**w)
    return EvaluateSpec(**w)


def check_with(pipeline: "Pipeline", name: str) -> None:
    """Validate a step's `with` (references replaced by values of their types) before anything runs."""
    step = pipeline.step(name)
    w = resolve(pipeline, name, placeholder_lookup(pipeline))
    kind = step.kind
    try:
        if kind in ("index", "finetune"):
            build_spec(kind, w)
        elif kind == "evaluate":
            if str(w.get("baseline", "")).lower() in CHAMPION_WORDS:
                w["baseline"] = PLACEHOLDER["model"]
            build_spec(kind, w)
        elif kind == "curate":
            _only(pipeline, name, w, {"source", "config"})
            _require(pipeline, name, w, "source")
            if isinstance(w.get("config"), dict):
                from ..curation.config import parse_config

                parse_config(w["config"], f"{pipeline.path}: steps.{name}.with.config")
        elif kind == "promote":
            _only(pipeline, name, w, {"model", "gate"})
            _require(pipeline, name, w, "model", "gate")
            if not any(r.step == name and r.key == "gate" for r in pipeline.refs):
                from ..evaluation.gate import read_gate

                read_gate(w["gate"])
        elif kind == "deploy":
            _only(pipeline, name, w, {"model", "traffic", "endpoint"})
            _require(pipeline, name, w, "model")
        elif kind == "serve-check":
            _only(pipeline, name, w, SERVE_CHECK_KEYS)
            if not isinstance(w.get("expect", []), list):
                raise SpecError(f"step {name!r}: with.expect must be a list of strings",
                                where=f"{pipeline.path}: steps.{name}.with.expect", fix="expect: [word, ...]")
        elif kind == "run":
            _only(pipeline, name, w, {"command", "env"})
            _require(pipeline, name, w, "command")
            if not isinstance(w.get("env", {}), dict):
                raise SpecError(f"step {name!r}: with.env must be a mapping", where=f"{pipeline.path}: steps.{name}.with.env",
                                fix="env: {NAME: value}")
    except ValidationError as exc:
        raise _fail(pipeline, name, exc) from None
    for i, dep in enumerate(step.deps):
        if not dep.startswith("steps.") and not is_remote(pipeline.locate(dep)) and not any(c in dep for c in "*?[") \
                and not local_path(dep, pipeline.root).exists():
            raise SpecError(f"step {name!r} depends on {dep}, which does not exist",
                            where=f"{pipeline.path}: steps.{name}.deps[{i}]",
                            fix="check the path (relative to the pipeline file), or create the data first")


def data_inputs(pipeline: "Pipeline", name: str) -> list[tuple[str, str]]:
    """(key, literal value) of the data and file fields of a step that no step output fills (hashed
    into its cache key), then its `deps` data URIs."""
    step = pipeline.step(name)
    from_steps = {r.key for r in pipeline.refs if r.step == name and r.target == "steps"}
    out: list[tuple[str, str]] = []

    def visit(key: str, text: str) -> str:
        if _field_type(step.kind, key) in ("data", "file") and key not in from_steps and not text.startswith("models:/"):
            out.append((key, text))
        return text

    map_strings(resolve(pipeline, name, placeholder_lookup(pipeline)), "", visit)
    out += [(f"deps[{i}]", pipeline.locate(d) if not is_remote(d) else d)
            for i, d in enumerate(step.deps) if not d.startswith("steps.")]
    return out


def model_ref(value: str, where: str) -> tuple[str, str]:
    """models:/NAME/VERSION -> (NAME, VERSION)."""
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", str(value))
    if not match:
        raise SpecError(f"{value!r} is not a registered model version", where=where,
                        fix="refer to a finetune step's outputs.model, or write models:/NAME/VERSION")
    return match.group(1), match.group(2)
