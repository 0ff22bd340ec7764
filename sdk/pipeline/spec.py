"""The pipeline file (`stackwise.yaml`): named, typed steps wired by references, checked before any job.

```yaml
version: 1
name: lee
stack: local                      # default; `--stack` overrides
params: {docs: data/lee_docs.jsonl}
steps:
  curate:   {kind: curate, with: {source: "${params.docs}"}}
  index:    {kind: index, with: {source: "${steps.curate.outputs.data}", index: lee}}
  finetune: {kind: finetune, with: {base: smollm2-135m-instruct, data: data/passages.jsonl, name: lee-chat}}
  evaluate: {kind: evaluate, with: {model: "${steps.finetune.outputs.model}", baseline: champion, ...}}
  promote:  {kind: promote, with: {model: "${steps.finetune.outputs.model}", gate: gates.yaml}, deps: [steps.evaluate]}
  deploy:   {kind: deploy, with: {model: "${steps.promote.outputs.champion}"}}
```

Every input of a step kind has a type (data, file, model, index, text, ...) and every output too
(`OUTPUTS`); a reference `${steps.S.outputs.O}` is checked to exist and to fit the field it is used in,
`${params.P}` to be declared. `deps` adds data URIs (hashed into the cache key) and `steps.S` ordering
edges; `outs` names the files a `run` step writes. Every error is a SpecError (exit 2) naming the file,
the step and the key, raised before any job starts.
"""

from __future__ import annotations

import difflib
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import SpecError

KINDS = ("curate", "index", "finetune", "evaluate", "promote", "deploy", "serve-check", "run")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
REF = re.compile(r"\$\{\s*([^}]*?)\s*\}")

# The type of each output of each step kind.
OUTPUTS: dict[str, dict[str, str]] = {
    "curate": {"data": "data", "exclusions": "file", "report": "file"},
    "index": {"index": "index"},
    "finetune": {"model": "model", "adapter": "data"},
    "evaluate": {"report": "file", "metrics": "json"},
    "promote": {"champion": "model", "promoted": "bool"},
    "deploy": {"endpoint": "text"},
    "serve-check": {"answer": "text"},
    "run": {},  # its `outs`, each of type data
}

# The type of each input field a reference may fill (dotted for nested fields; [] for list items).
INPUTS: dict[str, dict[str, str]] = {
    "curate": {"source": "data", "config": "file"},
    "index": {"source": "data", "index": "index"},
    "finetune": {"base": "model", "data": "data", "name": "text"},
    "evaluate": {"model": "model", "baseline": "model", "compare[]": "model", "data": "data", "index": "index",
                 "train_data[]": "data"},
    "promote": {"model": "model", "gate": "file"},
    "deploy": {"model": "model", "endpoint": "text"},
    "serve-check": {"url": "text", "prompt": "text", "expect[]": "text"},
    "run": {"command": "text", "command[]": "text"},
}
# Which output types may fill an input of a type (params, plain strings, fit anything textual).
FITS: dict[str, set[str]] = {
    "data": {"data", "file"}, "file": {"file", "data"}, "model": {"model"}, "index": {"index"},
    "text": {"text", "data", "file", "model", "index", "bool", "json"},
}
DATA_TYPES = ("data", "file")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Step(_Model):
    kind: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    deps: list[str] = Field(default_factory=list, description="Data URIs or paths hashed into the cache key; "
                            "`steps.NAME` to order after a step whose outputs are not referenced.")
    outs: dict[str, str] = Field(default_factory=dict, description="run steps: output name -> path written.")


class PipelineFile(_Model):
    version: Literal[1] = 1
    name: str
    stack: str | None = None
    params: dict[str, str | int | float | bool | list[str]] = Field(default_factory=dict)
    steps: dict[str, Step]


@dataclass(frozen=True)
class Ref:
    """One `${...}` in a step's `with`: where it is used and what it names."""

    step: str  # the step using it
    key: str  # the field it fills (dotted; [i] for list items)
    target: str  # "params" or "steps"
    name: str  # the param, or the referenced step
    output: str | None  # the referenced step's output
    whole: bool  # the value is exactly the reference (keeps the output's type)


@dataclass
class Pipeline:
    """A validated pipeline: the file, its path, the project root, steps in dependency order."""

    file: PipelineFile
    path: Path
    order: list[str]
    upstream: dict[str, set[str]]
    refs: list[Ref] = field(default_factory=list)
    base: str | None = None  # loaded from a URI: the URI's folder, which relative data paths resolve against

    @property
    def root(self) -> Path:
        return self.path.parent

    def locate(self, value: str) -> str:
        """A local path as written in the file, made absolute: against the file's folder, or against `base`
        (`s3://.../folder/data.jsonl`) for a file loaded from an object store."""
        from .hashing import is_remote, local_path

        if is_remote(value):
            return value
        if self.base and not value.startswith("file://") and not Path(value).expanduser().is_absolute():
            scheme, _, rest = self.base.partition("://")
            return f"{scheme}://{posixpath.normpath(f'{rest}/{value}')}"
        return str(local_path(value, self.root))

    @property
    def name(self) -> str:
        return self.file.name

    def step(self, name: str) -> Step:
        return self.file.steps[name]

    def downstream(self, name: str) -> set[str]:
        out: set[str] = set()
        frontier = [name]
        while frontier:
            current = frontier.pop()
            for other, ups in self.upstream.items():
                if current in ups and other not in out:
                    out.add(other)
                    frontier.append(other)
        return out

    def ancestors(self, name: str) -> set[str]:
        out: set[str] = set()
        frontier = [name]
        while frontier:
            for up in self.upstream[frontier.pop()]:
                if up not in out:
                    out.add(up)
                    frontier.append(up)
        return out


def _where(path: Path, *keys: str) -> str:
    return f"{path}: " + ".".join(keys)


def map_strings(value: Any, key: str, fn: Callable[[str, str], Any]) -> Any:
    """`value` with every string inside replaced by `fn(key path, string)`: dict keys dotted, list items
    as key[i]. The one walk over a step's `with` (references, paths, data inputs)."""
    if isinstance(value, str):
        return fn(key, value)
    if isinstance(value, dict):
        return {k: map_strings(v, f"{key}.{k}" if key else str(k), fn) for k, v in value.items()}
    if isinstance(value, list):
        return [map_strings(v, f"{key}[{i}]", fn) for i, v in enumerate(value)]
    return value


def _strings(value: Any) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    map_strings(value, "", lambda key, text: found.append((key, text)))
    return found


def _field_type(kind: str, key: str) -> str | None:
    """The declared input type of `key` ("data[2]" looks up "data[]"), or None when the field takes text."""
    table = INPUTS.get(kind, {})
    if key in table:
        return table[key]
    return table.get(re.sub(r"\[\d+\]$", "[]", key))


def _parse_refs(path: Path, name: str, step: Step, pipe: PipelineFile) -> list[Ref]:
    refs = []
    for key, text in _strings(step.with_):
        for match in REF.finditer(text):
            parts = match.group(1).split(".")
            where = _where(path, "steps", name, "with", key)
            whole = match.group(0) == text.strip()
            if parts[0] == "params" and len(parts) == 2:
                if parts[1] not in pipe.params:
                    close = difflib.get_close_matches(parts[1], list(pipe.params), n=1)
                    raise SpecError(f"step {name!r} refers to an unknown param {parts[1]!r}", where=where,
                                    fix=(f"did you mean {close[0]}? " if close else "")
                                    + "declare it under `params:` or correct the reference")
                refs.append(Ref(name, key, "params", parts[1], None, whole))
            elif parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
                refs.append(Ref(name, key, "steps", parts[1], parts[3], whole))
            else:
                raise SpecError(f"step {name!r} has a malformed reference {match.group(0)!r}", where=where,
                                fix="write ${params.NAME} or ${steps.STEP.outputs.OUTPUT}")
    return refs


def _check_ref(path: Path, ref: Ref, pipe: PipelineFile) -> None:
    where = _where(path, "steps", ref.step, "with", ref.key)
    if ref.target != "steps":
        return
    if ref.name not in pipe.steps:
        close = difflib.get_close_matches(ref.name, list(pipe.steps), n=1)
        raise SpecError(f"step {ref.step!r} refers to a step {ref.name!r} that the pipeline does not have",
                        where=where, fix=(f"did you mean {close[0]}? " if close else "")
                        + f"steps: {', '.join(pipe.steps)}")
    target = pipe.steps[ref.name]
    outputs = outputs_of(target)
    if ref.output not in outputs:
        raise SpecError(f"step {ref.step!r} refers to output {ref.output!r} of step {ref.name!r} "
                        f"({target.kind}), which has no such output", where=where,
                        fix=f"{target.kind} steps output: {', '.join(outputs) or 'nothing (declare `outs:`)'}")
    expected = _field_type(pipe.steps[ref.step].kind, ref.key)
    got = outputs[ref.output] if ref.whole else "text"
    if expected is not None and got not in FITS[expected]:
        raise SpecError(f"type mismatch: {ref.step}.with.{ref.key} takes {expected}, but "
                        f"steps.{ref.name}.outputs.{ref.output} is {got}", where=where,
                        fix=f"refer to an output of type {expected} "
                        f"({', '.join(f'{s}.{o}' for s, st in pipe.steps.items() for o, t in outputs_of(st).items() if t in FITS[expected] and s != ref.step) or 'none in this pipeline'})")


def outputs_of(step: Step) -> dict[str, str]:
    return {name: "data" for name in step.outs} if step.kind == "run" else dict(OUTPUTS.get(step.kind, {}))


def _deps_steps(path: Path, name: str, step: Step, pipe: PipelineFile) -> set[str]:
    out = set()
    for i, dep in enumerate(step.deps):
        if dep.startswith("steps."):
            other = dep.removeprefix("steps.")
            if other not in pipe.steps:
                raise SpecError(f"step {name!r} depends on an unknown step {other!r}",
                                where=_where(path, "steps", name, f"deps[{i}]"),
                                fix=f"steps: {', '.join(pipe.steps)}")
            out.add(other)
    return out


def _order(path: Path, upstream: dict[str, set[str]]) -> list[str]:
    from graphlib import CycleError, TopologicalSorter

    try:
        return list(TopologicalSorter(upstream).static_order())
    except CycleError as exc:
        cycle = exc.args[1]
        raise SpecError(f"the steps form a cycle: {' -> '.join(cycle)}", where=_where(path, "steps", cycle[0]),
                        fix="remove one of the references (or deps) that close the cycle") from None


def parse(raw: Any, path: Path, base: str | None = None) -> Pipeline:
    """Validate a loaded pipeline document; every error names `path`, the step and the key (`base`: see
    `Pipeline.base`)."""
    if not isinstance(raw, dict):
        raise SpecError("a pipeline file must be a mapping with `name` and `steps`", where=str(path),
                        fix="see docs/pipelines.md for the format")
    try:
        pipe = PipelineFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(file)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise SpecError(f"pipeline {loc}: {message}", where=_where(path, loc),
                        fix="correct or remove that key (the format: docs/pipelines.md)") from None
    if not NAME.match(pipe.name):
        raise SpecError(f"pipeline name {pipe.name!r} is invalid", where=_where(path, "name"),
                        fix="use lowercase letters, digits, '-' or '_' (at most 63)")
    if not pipe.steps:
        raise SpecError("the pipeline has no steps", where=_where(path, "steps"), fix="add at least one step")
    refs: list[Ref] = []
    upstream: dict[str, set[str]] = {}
    for name, step in pipe.steps.items():
        if not NAME.match(name):
            raise SpecError(f"step name {name!r} is invalid", where=_where(path, "steps", name),
                            fix="use lowercase letters, digits, '-' or '_'")
        if step.kind not in KINDS:
            close = difflib.get_close_matches(step.kind, KINDS, n=1)
            raise SpecError(f"step {name!r} has an unknown kind {step.kind!r}", where=_where(path, "steps", name, "kind"),
                            fix=(f"did you mean {close[0]}? " if close else "") + f"kinds: {', '.join(KINDS)}")
        if step.outs and step.kind != "run":
            raise SpecError(f"step {name!r}: only run steps declare `outs` ({step.kind} outputs: "
                            f"{', '.join(OUTPUTS[step.kind])})", where=_where(path, "steps", name, "outs"),
                            fix="remove `outs`")
        step_refs = _parse_refs(path, name, step, pipe)
        refs += step_refs
        upstream[name] = {r.name for r in step_refs if r.target == "steps"} | _deps_steps(path, name, step, pipe)
    for ref in refs:  # unknown steps first: a cycle is reported before the outputs and types of its edges
        if ref.target == "steps" and ref.name not in pipe.steps:
            _check_ref(path, ref, pipe)
    order = _order(path, upstream)
    for ref in refs:
        _check_ref(path, ref, pipe)
    pipeline = Pipeline(pipe, path, order, upstream, refs, base)
    from .kinds import check_with

    for name in order:
        check_with(pipeline, name)
    return pipeline


def load(path: str | Path = "stackwise.yaml") -> Pipeline:
    """Read and validate a pipeline file (SpecError, exit 2, on any problem).

    `path` may be an fsspec URI (`s3://bucket/folder/stackwise.yaml`, as `stackwise pipeline compile` uploads
    it): the file is copied to a temporary folder, and relative data paths in it resolve against the URI's
    folder (`s3://bucket/folder/data/docs.jsonl`); a `file://` URI is the local path."""
    from ..userinput import load_yaml, read_text

    if "://" in str(path) and not str(path).startswith("file://"):
        return _load_uri(str(path))
    path = str(path).removeprefix("file://")
    path = Path(path).expanduser().resolve()
    text = read_text(path, error=SpecError, what="pipeline file",
                     fix="give --file, or create stackwise.yaml (stackwise pipeline example writes one)")
    return parse(load_yaml(text, str(path), SpecError, what="pipeline file"), path)


def _load_uri(uri: str) -> Pipeline:
    import tempfile

    from ..userinput import load_yaml, read_remote_bytes

    data = read_remote_bytes(uri, error=SpecError, what="pipeline file",
                             fix="check the URI (and this machine's credentials for that store)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"pipeline file is not UTF-8 text (byte {exc.start} cannot be decoded)", where=uri,
                        fix="save it as UTF-8") from None
    local = Path(tempfile.mkdtemp(prefix="stackwise-pipeline-")) / (uri.rstrip("/").rsplit("/", 1)[-1] or "stackwise.yaml")
    local.write_bytes(data)
    try:
        return parse(load_yaml(text, uri, SpecError, what="pipeline file"), local, base=uri.rsplit("/", 1)[0])
    except SpecError as exc:  # name the URI, not the temporary copy
        raise SpecError(exc.what, where=(exc.where or "").replace(str(local), uri) or uri, fix=exc.fix) from None
