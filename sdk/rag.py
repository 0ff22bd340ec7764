"""RAG apps as versioned config (`stackwise.rag`): retrieve from an index, fill a Jinja2 prompt with
numbered sources, generate, and cite.

A RAG app is the `rag:` section of a YAML file (`RagApp`). `register_rag` stores it as a version of a
registered model (a folder holding `rag.yaml`, tagged `stackwise.kind=rag`), so aliases, `promote`
(with its gate) and rollback are the model registry's own. References: `rag:NAME/3`, `rag:NAME@alias`,
and `rag:NAME` (the champion, or the newest version while there is none).

Decisions a reader needs:
- Filters use the portable syntax of `stackwise.filters`: a list of `--filter` expressions or a
  `--where-json` object. A request's filter is ANDed with the app's: a request narrows, never widens.
- `mmr` reranks `fetch_k` candidates by maximal marginal relevance (Carbonell and Goldstein, 1998):
  relevance is the store's cosine score of each hit; redundancy is the cosine between the hits'
  stored vectors (read back by chunk id, not re-embedded: exact and cheaper).
- Citations: an `[n]` marker in the answer cites source n, with the marker's span in the answer; an
  answer without a marker cites every source, each spanning the whole answer. The document URI is
  the chunk's `doc_id` (`file://...`, `...jsonl#id`): a hit's `source` is the indexed folder or glob.
- Sources that do not fit the generator's window are dropped from the end (the least relevant
  first), so every source an answer reports was in its prompt.

Over ~400 lines on purpose: the app's config, its registry versions and the answer path (retrieve,
rerank, prompt, cite) are one feature whose parts check each other.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError
from .userinput import shorten
from .vectors import Hit

KIND_TAG, KIND = "stackwise.kind", "rag"
RAG_FILE = "rag.yaml"
MAX_FILE_BYTES = 256 * 1024
MAX_K = 50
# Evaluation suites a RAG app answers, and those that score likelihoods, which it has not.
RAG_SUITES = ("qa", "retrieval", "rouge", "bleu", "chrf", "instruction", "safety")
SUITES_WITHOUT_RAG = ("perplexity", "mmlu", "bias")
DEFAULT_SYSTEM = ("You answer questions using only the numbered sources you are given. Cite each source you use "
                  "as [n]. If the sources do not contain the answer, say that you don't know.")
DEFAULT_TEMPLATE = ("Sources:\n{% for s in sources %}[{{ s.n }}] {{ s.text }}\n{% endfor %}\n"
                    "Question: {{ question }}\nAnswer using only the sources above, citing them as [n].")
_NAME, _ALIAS, _VERSION = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", r"[A-Za-z][A-Za-z0-9_-]{0,62}", r"[1-9][0-9]{0,9}"
GENERATOR = re.compile(rf"models:/{_NAME}(?:@{_ALIAS}|/{_VERSION})")
REF = re.compile(rf"(?:rag:)?(?P<name>{_NAME})(?:@(?P<alias>{_ALIAS})|/(?P<version>{_VERSION}))?")
_MARKER = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")
_FIELD_FIX = {
    "name": "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit (e.g. support-rag)",
    "index": "the name of an index of the stack (see `stackwise indexes`)",
    "k": f"an integer from 1 to {MAX_K}", "fetch_k": "an integer from 1 to 1000, at least k",
    "mmr_lambda": "a number from 0 (diverse) to 1 (relevant)", "rerank": "none or mmr",
    "filter": 'a list of --filter expressions (["year>=2020"]) or a filter object ({"lang": "en"})',
    "generator": "models:/NAME@champion, models:/NAME/3, or a shipped model such as smollm2-135m-instruct",
    "template": "a Jinja2 template using question and sources (each has n, text, doc_id, source, chunk, score)",
    "max_tokens": "an integer from 1 to 4096", "temperature": "a number from 0 to 2",
}


@functools.lru_cache(maxsize=64)
def compile_template(text: str) -> Any:
    """The template compiled in Jinja2's immutable sandbox; an undefined variable is an error."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False).from_string(text)


def as_filter(value: Any, where: str) -> dict[str, Any] | None:
    """A filter given as `--filter` expressions (a list of str) or a portable object, validated."""
    from .filters import parse_filter, parse_filter_args

    if value is None or value == [] or value == {}:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return parse_filter_args(value, where=where)
    if isinstance(value, dict):
        parse_filter(value, where=where)
        return value
    raise InputError(f"a filter must be a list of expressions or an object, got {shorten(value)}", where=where,
                     fix=_FIELD_FIX["filter"])


def _and(*filters: dict[str, Any] | None) -> dict[str, Any] | None:
    given = [f for f in filters if f]
    return None if not given else given[0] if len(given) == 1 else {"$and": given}


class RagApp(BaseModel):
    """The `rag:` section of a RAG app file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    index: str
    k: int = Field(4, ge=1, le=MAX_K)
    filter: list[str] | dict[str, Any] | None = None
    rerank: Literal["none", "mmr"] = "none"
    fetch_k: int = Field(20, ge=1, le=1000)
    mmr_lambda: float = Field(0.5, ge=0, le=1)
    generator: str
    system: str | None = DEFAULT_SYSTEM
    template: str = DEFAULT_TEMPLATE
    max_tokens: int = Field(128, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0, le=2)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        from .model_registry import check_model_name

        try:
            return check_model_name(value)
        except ValueError as exc:
            raise ValueError(getattr(exc, "what", str(exc))) from None

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        from .specs import INDEX_NAME

        if not INDEX_NAME.fullmatch(value):
            raise ValueError(f"invalid index name {shorten(value)}: 1-63 lowercase letters, digits, '-' or '_'")
        return value

    @field_validator("filter")
    @classmethod
    def _filter(cls, value: Any) -> Any:
        try:
            as_filter(value, "rag.filter")
        except ValueError as exc:
            raise ValueError(getattr(exc, "what", str(exc))) from None
        return value

    @field_validator("generator")
    @classmethod
    def _generator(cls, value: str) -> str:
        from .training.models import SHIPPED

        if value not in SHIPPED and not GENERATOR.fullmatch(value):
            raise ValueError(f"unknown generator {shorten(value)}")
        return value

    @field_validator("template")
    @classmethod
    def _template(cls, value: str) -> str:
        from jinja2 import TemplateSyntaxError, UndefinedError
        from jinja2.exceptions import SecurityError

        try:
            rendered = compile_template(value).render(question="QUESTION-PROBE", sources=_probe_sources())
        except TemplateSyntaxError as exc:
            raise ValueError(f"the template does not compile: {exc.message} (template line {exc.lineno})") from None
        except (UndefinedError, SecurityError, TypeError, ValueError) as exc:
            raise ValueError(f"the template fails to render: {exc}") from None
        for probe, what in (("QUESTION-PROBE", "the question ({{ question }})"), ("SOURCE-PROBE", "the sources")):
            if probe not in rendered:
                raise ValueError(f"the template never shows {what}")
        return value

    @model_validator(mode="after")
    def _fetch_covers_k(self) -> "RagApp":
        if self.rerank == "mmr" and self.fetch_k < self.k:
            raise ValueError(f"fetch_k ({self.fetch_k}) is below k ({self.k}): mmr picks k of fetch_k candidates")
        return self

    @property
    def where(self) -> dict[str, Any] | None:
        """The app's filter as a portable filter object."""
        return as_filter(self.filter, "rag.filter")


def _probe_sources() -> list[dict[str, Any]]:
    return [{"n": 1, "id": "probe", "text": "SOURCE-PROBE", "doc_id": "probe", "source": "probe", "chunk": 0,
             "score": 1.0, "metadata": {}}]


# -- files ---------------------------------------------------------------------------------------
def parse_rag(raw: Any, where: str) -> RagApp:
    """A RagApp from a parsed file (`{"rag": {...}}`); InputError naming the field and the fix."""
    if not isinstance(raw, dict) or "rag" not in raw or set(raw) != {"rag"}:
        extra = sorted(str(k) for k in raw if k != "rag") if isinstance(raw, dict) else []
        what = f"unknown top-level key {shorten(extra[0])}" if extra and "rag" in raw else "no `rag:` section"
        raise InputError(f"RAG app file: {what}", where=where,
                         fix="put every field under one top-level `rag:` key "
                             "(rag: {name: ..., index: ..., generator: ...})")
    if not isinstance(raw["rag"], dict):
        raise InputError(f"`rag:` must be a mapping of fields, got {shorten(raw['rag'])}", where=f"{where}: rag",
                         fix="e.g. rag: {name: support, index: kb, generator: smollm2-135m-instruct}")
    try:
        return RagApp.model_validate(raw["rag"])
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][:1]) or "rag"
        key = "rag." + ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            what, fix = f"unknown field {key}", "the fields are: " + ", ".join(RagApp.model_fields)
        elif first["type"] == "missing":
            what, fix = f"{key} is missing", f"add {field}: {_FIELD_FIX.get(field, '')}"
        else:
            what = f"{key}: " + first["msg"].removeprefix("Value error, ")
            fix = f"set {field} to " + _FIELD_FIX.get(field, "a valid value")
        raise InputError(what, where=f"{where}: {key}", fix=fix) from None


def load_rag_file(path: str | Path) -> RagApp:
    """Read a RAG app file (YAML, at most 256 KiB, the project's bounded safe loader)."""
    from .userinput import load_yaml, read_text

    try:
        size = Path(path).stat().st_size
    except OSError as exc:
        raise InputError(f"cannot read RAG app file: {exc.strerror or exc}", where=str(path),
                         fix="check the path") from None
    if size > MAX_FILE_BYTES:
        raise InputError(f"RAG app file is {size:,} bytes, over the {MAX_FILE_BYTES:,} allowed", where=str(path),
                         fix="a RAG app is a few fields and a template: keep documents out of it")
    raw = load_yaml(read_text(path, error=InputError, what="RAG app file"), str(path), InputError, "RAG app file")
    return parse_rag(raw, str(path))


def dump_rag(app: RagApp) -> str:
    """The file a registered version holds: every field written out, defaults included."""
    import yaml

    return yaml.safe_dump({"rag": app.model_dump(mode="json")}, sort_keys=False, allow_unicode=True)


# -- the registry -------------------------------------------------------------------------------
def _kind(registry: Any, name: str) -> str | None:
    """'rag', 'model', or None when nothing is registered under `name`."""
    try:
        rm = registry.client.get_registered_model(name)
    except Exception:  # MLflow: RESOURCE_DOES_NOT_EXIST
        return None
    if (rm.tags or {}).get(KIND_TAG) == KIND:
        return KIND
    return "model" if registry.client.search_model_versions(f"name = '{name}'") else None


def register_rag(app: RagApp, registry: Any, alias: str | None = None) -> str:
    """Register `app` as a version of `app.name`; returns the version. A config identical to a
    registered version returns that version (nothing new is written). A name that holds models
    (not RAG apps) is refused: one name is one kind."""
    import hashlib
    import tempfile

    import mlflow

    from .model_registry import MODELS_EXPERIMENT, check_alias

    if alias is not None:
        check_alias(alias)
    text = dump_rag(app)
    digest = hashlib.sha256(text.encode()).hexdigest()
    kind = _kind(registry, app.name)
    if kind == "model":
        raise InputError(f"{app.name} is a registered model, not a RAG app", where=f"rag.name {app.name}",
                         fix="give the RAG app its own name (e.g. " + f"{app.name}-rag)"[:80])
    existing = [mv for mv in (registry.client.search_model_versions(f"name = '{app.name}'") if kind else [])
                if (mv.tags or {}).get("lineage.rag_sha256") == digest]
    if existing:
        version = str(min(int(mv.version) for mv in existing))
    else:
        with tempfile.TemporaryDirectory() as folder, mlflow.start_run(
                experiment_id=registry.experiment_id(MODELS_EXPERIMENT), run_name=f"register-rag-{app.name}") as run:
            Path(folder, RAG_FILE).write_text(text, encoding="utf-8")
            mlflow.log_artifacts(folder, artifact_path="rag")
            mlflow.set_tag(KIND_TAG, KIND)
            source = mlflow.get_artifact_uri("rag")
        if kind is None:
            try:
                registry.client.create_registered_model(app.name, tags={KIND_TAG: KIND})
            except Exception:  # registered meanwhile, or an empty model left by a failed attempt
                registry.client.set_registered_model_tag(app.name, KIND_TAG, KIND)
        mv = registry.client.create_model_version(app.name, source=source, run_id=run.info.run_id,
                                                  tags={KIND_TAG: KIND}, description=f"RAG app over index {app.index}")
        version = str(mv.version)
        registry.record_lineage(app.name, version, {"kind": KIND, "index": app.index, "generator": app.generator,
                                                    "rag_sha256": digest})
    if alias is not None:
        registry.client.set_registered_model_alias(app.name, alias, version)
    return version


def parse_rag_ref(ref: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) of `rag:NAME`, `rag:NAME@alias` or `rag:NAME/3` (the prefix optional)."""
    match = REF.fullmatch(str(ref).strip())
    if not match:
        raise InputError(f"{shorten(ref)} is not a RAG app reference", where="RAG app reference",
                         fix="write rag:NAME, rag:NAME@champion or rag:NAME/3")
    return match["name"], match["alias"], match["version"]


def rag_version(ref: str, registry: Any) -> tuple[str, Any]:
    """(name, MLflow model version) that `ref` names now; InputError unless it is a RAG app."""
    from .model_registry import CHAMPION

    name, alias, version = parse_rag_ref(ref)
    if version or alias:
        mv = registry.version(name, version) if version else registry.version_by_alias(name, alias)
    else:
        versions = registry.client.search_model_versions(f"name = '{name}'") if _kind(registry, name) else []
        champion = registry.alias_version(name, CHAMPION)
        mv = registry.version(name, champion) if champion else max(versions, key=lambda v: int(v.version), default=None)
        if mv is None:
            raise InputError(f"RAG app {name} is not in the registry", where=f"rag:{name}",
                             fix="register it: stackwise rag register APP.yaml (see `stackwise rag list`)")
    if (mv.tags or {}).get(KIND_TAG) != KIND:
        raise InputError(f"{name} version {mv.version} is a model, not a RAG app", where=f"rag:{name}",
                         fix=f"evaluate or serve it as models:/{name}/{mv.version}, or name a RAG app "
                             "(stackwise rag list)")
    return name, mv


def resolve_rag(ref: str, registry: Any) -> tuple[RagApp, str]:
    """(app, version) of a RAG app reference, read from the registered version's rag.yaml."""
    import tempfile

    import mlflow

    name, mv = rag_version(ref, registry)
    where = f"rag:{name}/{mv.version}"
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(artifact_uri=f"{mv.source}/{RAG_FILE}", dst_path=folder,
                                                       tracking_uri=registry.tracking_uri)
        except Exception as exc:  # mlflow raises its own types
            raise InputError(f"cannot read {where}'s {RAG_FILE}: {shorten(str(exc), 200)}", where=mv.source,
                             fix="check the artifact store; register the app again if its files are gone") from None
        return load_rag_file(path), str(mv.version)


def list_rags(registry: Any) -> list[dict[str, Any]]:
    """The registered RAG apps (name, versions, latest, aliases)."""
    return [m for m in registry.list_models() if _kind(registry, m["name"]) == KIND]


# -- retrieval -----------------------------------------------------------------------------------
Search = Callable[..., list[Hit]]  # search(index, query, k=..., filter=...) like Platform.search
Vectors = Callable[[str, Sequence[str]], dict[str, Sequence[float]]]  # (index, chunk ids) -> vectors


def mmr(relevance: Sequence[float], vectors: Sequence[Sequence[float]], k: int, lam: float) -> list[int]:
    """Indices of `k` items chosen by maximal marginal relevance: each step takes the item that
    maximises lam * relevance - (1 - lam) * (max cosine to the items already taken); ties go to
    the earlier (better-ranked) item."""
    import numpy as np

    if not len(relevance):
        return []
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    sim = v @ v.T
    chosen: list[int] = []
    while len(chosen) < min(k, len(relevance)):
        rest = [i for i in range(len(relevance)) if i not in chosen]
        score = [lam * relevance[i] - (1 - lam) * (max(sim[i, j] for j in chosen) if chosen else 0.0) for i in rest]
        chosen.append(rest[int(np.argmax(score))])
    return chosen


def search_hits(search: Search, app: RagApp, query: str, k: int, filter: dict[str, Any] | None = None,
                vectors: Vectors | None = None) -> list[Hit]:
    """The app's retrieval with `k` unbounded (evaluation); `filter` (portable) is ANDed with the app's."""
    where = _and(app.where, filter)
    if app.rerank == "none":
        return search(app.index, query, k=k, filter=where)
    if vectors is None:
        raise InputError("rerank mmr needs the hits' stored vectors", where=f"rag:{app.name}",
                         fix="pass vectors= (stackwise.rag.stored_vectors(store))")
    hits = search(app.index, query, k=max(app.fetch_k, k), filter=where)
    found = vectors(app.index, [h.id for h in hits])
    hits = [h for h in hits if h.id in found]
    return [hits[i] for i in mmr([h.score for h in hits], [found[h.id] for h in hits], k, app.mmr_lambda)]


def retrieve(search: Search, app: RagApp, query: str, k: int | None = None, filter: Any = None,
             vectors: Vectors | None = None) -> list[Hit]:
    """The sources for `query`. `k` and `filter` are a request's overrides (extra_body): k in
    1..50, the filter as --filter expressions or an object, ANDed with the app's filter."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K):
        raise InputError(f"k must be an integer from 1 to {MAX_K}, got {shorten(k)}", where="k", fix="e.g. k: 4")
    return search_hits(search, app, query, k or app.k, as_filter(filter, "filter"), vectors)


def stored_vectors(store: Any) -> Vectors:
    """`Vectors` reading the hits' stored vectors from a vector store (what mmr compares)."""
    return lambda index, ids: {r.id: r.vector for r in store.fetch(index, list(ids))}


class StoreSearch:
    """`Platform.search` on a vector store alone (a job has a store config, not a Platform)."""

    def __init__(self, store: Any):
        self.store, self._embedders = store, {}

    def __call__(self, index: str, query: str, k: int = 10, filter: dict[str, Any] | None = None) -> list[Hit]:
        from .embeddings import load_embedder
        from .vectors import check_filter

        check_filter(filter)
        model = self.store.model_of(index)
        if model not in self._embedders:
            self._embedders[model] = load_embedder(model)
        return self.store.query(index, self._embedders[model].encode([query])[0], k=k, filter=filter)


# -- prompt and citations ------------------------------------------------------------------------
def source_dicts(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """What the template sees: one dict per hit, numbered from 1."""
    return [{"n": n, "id": h.id, "text": h.text, "doc_id": h.doc_id, "source": h.source, "chunk": h.chunk,
             "score": round(float(h.score), 6), "metadata": dict(h.metadata)} for n, h in enumerate(hits, 1)]


def prompt_messages(app: RagApp, question: str, hits: Sequence[Hit],
                    history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    """Chat messages for the generator: the system message, earlier turns, the rendered user turn."""
    turns = []
    for i, m in enumerate(history or []):
        if not (isinstance(m, dict) and m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str)):
            raise InputError(f"history message {i} must be {{role: user|assistant, content: text}}",
                             where=f"messages[{i}]", fix="pass earlier user and assistant turns only")
        turns.append({"role": m["role"], "content": m["content"]})
    user = compile_template(app.template).render(question=question, sources=source_dicts(hits))
    return ([{"role": "system", "content": app.system}] if app.system else []) + turns + [
        {"role": "user", "content": user}]


def annotate(answer: str, hits: Sequence[Hit]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(OpenAI `message.annotations`, the `stackwise.sources` extension) of an answer to `hits`.

    Each number in an `[n]` or `[n, m]` marker that names a source gives one `url_citation`
    spanning the marker (start inclusive, end exclusive); numbers naming no source are ignored.
    An answer without a valid marker cites every source, each spanning the whole answer."""

    def citation(hit: Hit, start: int, end: int) -> dict[str, Any]:
        title = str(hit.metadata.get("title") or hit.doc_id.rstrip("/").rsplit("/", 1)[-1])
        return {"type": "url_citation", "url_citation": {"url": hit.doc_id or hit.source, "title": title,
                                                         "start_index": start, "end_index": end}}

    annotations = [citation(hits[n - 1], m.start(), m.end()) for m in _MARKER.finditer(answer)
                   for n in (int(x) for x in m.group(1).split(",")) if 1 <= n <= len(hits)]
    if not annotations:
        annotations = [citation(h, 0, len(answer)) for h in hits]
    sources = [{"n": s["n"], "id": s["id"], "doc_id": s["doc_id"], "source": s["source"], "chunk": s["chunk"],
                "score": s["score"]} for s in source_dicts(hits)]
    return annotations, sources


# -- answering -----------------------------------------------------------------------------------
class RagAnswer(BaseModel):
    """One answer: its text, the sources in its prompt, citations, and token counts."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    text: str
    hits: list[Hit]
    messages: list[dict[str, str]]
    annotations: list[dict[str, Any]]
    sources: list[dict[str, Any]]
    prompt_tokens: int
    completion_tokens: int


class RagLM:
    """A RAG app where evaluation expects a model: `generate(prompt, max_new_tokens)` retrieves for
    the prompt, fills the template and generates greedily with the generator (an `evaluation.lm.LM`)."""

    is_rag = True

    def __init__(self, app: RagApp, version: str, generator: Any, search: Search, vectors: Vectors | None = None):
        self.app, self.version, self.generator = app, version, generator
        self.search, self.vectors = search, vectors
        self.last_sources: list[Hit] = []  # the sources in the last answer's prompt
        self.last_messages: list[dict[str, str]] = []  # that prompt, as chat messages
        self._used: dict[str, list[Hit]] = {}  # question -> the sources its prompt held

    @property
    def ref(self) -> str:
        return f"rag:{self.app.name}/{self.version}"

    def fit(self, question: str, hits: list[Hit], max_new_tokens: int,
            history: list[dict[str, str]] | None = None) -> tuple[list[dict[str, str]], list[int], list[Hit]]:
        """(messages, token ids, sources kept) within the generator's window: the last sources are
        dropped first; a single source still too long is cut; a question too long keeps its end."""
        budget, used = max(1, self.generator.max_len - max_new_tokens), list(hits)
        for _ in range(len(hits) + 8):
            messages = prompt_messages(self.app, question, used, history)
            ids = self.generator.encode_messages(messages)
            if len(ids) <= budget or not used:
                break
            if len(used) > 1:
                used.pop()
            else:
                keep = int(len(used[0].text) * budget / len(ids) * 0.9)
                used = [dataclasses.replace(used[0], text=used[0].text[:keep])] if keep > 0 else []
        return messages, ids[-budget:], used

    def answer(self, question: str, k: int | None = None, filter: Any = None, history: list[dict] | None = None,
               max_tokens: int | None = None, temperature: float | None = None, seed: int | None = None) -> RagAnswer:
        hits = retrieve(self.search, self.app, question, k, filter, self.vectors)
        max_tokens = max_tokens or self.app.max_tokens
        messages, ids, used = self.fit(question, hits, max_tokens, history)
        temp = self.app.temperature if temperature is None else temperature
        text = self.generator.generate_ids(ids, max_tokens, temperature=temp, seed=seed)
        self.last_sources = self._used[question] = used
        self.last_messages = messages
        annotations, sources = annotate(text, used)
        return RagAnswer(text=text, hits=used, messages=messages, annotations=annotations, sources=sources,
                         prompt_tokens=len(ids), completion_tokens=len(self.generator.tokenizer(text)["input_ids"]))

    def generate(self, prompt: str, max_new_tokens: int) -> str:
        """Evaluation's call: `prompt` is the question; greedy, like every evaluated model."""
        return self.answer(prompt, max_tokens=max_new_tokens, temperature=0.0).text

    def context(self, question: str) -> str:
        """The text of the sources the answer to `question` had in its prompt (what `qa.supported`
        checks the answer against); retrieved now if it was not answered here."""
        if question not in self._used:
            hits = retrieve(self.search, self.app, question, None, None, self.vectors)
            self._used[question] = self.fit(question, hits, self.app.max_tokens)[2]
        return "\n\n".join(h.text for h in self._used[question])

    def sources_of(self, question: str) -> list[str]:
        return [h.id for h in self._used.get(question, [])]

    def search_pairs(self, query: str, k: int) -> list[tuple[str, str]]:
        """The app's retrieval as the evaluation runner's search: [(doc_id, text)], best first."""
        return [(h.doc_id, h.text) for h in search_hits(self.search, self.app, query, k, None, self.vectors)]

    def nll(self, text: str) -> Any:
        raise _not_a_likelihood(self.ref)

    loglik = choice_logliks = nll


def _not_a_likelihood(ref: str) -> InputError:
    return InputError(f"{ref} is a RAG app: it answers questions but has no likelihoods to score",
                      where="--suite", fix="evaluate RAG apps with " + ", ".join(RAG_SUITES))


def load_rag(ref: str, context: Any = None, max_len: int = 512, chat_template: bool = True) -> RagLM:
    """A RAG app ready to answer: its generator loaded, its index opened on the stack of `context`
    (a JobContext, a Stack, or None for the active stack)."""
    from .evaluation.lm import is_rag_ref, load, pin
    from .model_registry import Registry
    from .vectors import open_store

    registry = Registry(context)
    app, version = resolve_rag(ref.replace("models:/", "rag:", 1), registry)
    if is_rag_ref(pin(app.generator, context), context):
        raise InputError(f"the generator {app.generator} of rag:{app.name}/{version} is itself a RAG app",
                         where=f"rag:{app.name}/{version}: rag.generator", fix="name a model as the generator")
    store = open_store(registry.stack.outputs.vector_store if registry.stack is not None else context.vector_store)
    if app.index not in store.list_indexes():
        raise InputError(f"rag:{app.name}/{version} retrieves from index {app.index}, which this stack does not have",
                         where=f"rag:{app.name}/{version}: rag.index",
                         fix=f"index documents into it: stackwise index SOURCE --index {app.index}")
    generator = load(app.generator, max_len, chat_template, context)
    return RagLM(app, version, generator, StoreSearch(store), stored_vectors(store))
