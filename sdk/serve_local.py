"""The local stack's endpoint in `stackwise serve` (deploy state mode): the deploy state file
`stackwise deploy` writes (`write_state`, `read_state`), the traffic router (`Router`), and the
backend that answers from the endpoint's versions (`Server`). `stackwise.serving` describes the
routing rules and re-exports these names.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .deploy import Deployment, Variant
from .errors import InputError, SpecError
from .paths import state_dir
from .serve_protocol import (
    DEFAULT_MAX_TOKENS,
    MAX_TOKENS_LIMIT,
    Generation,
    PredictRequest,
    generate_on,
    public_text,
    render,
)
from .serve_source import local_folder

DEFAULT_ENDPOINT = "local"


def state_path(endpoint: str) -> Path:
    return state_dir() / "endpoints" / f"{endpoint}.json"


def read_state(endpoint: str) -> Deployment:
    path = state_path(endpoint)
    if not path.is_file():
        return Deployment(endpoint=endpoint, cloud="local", state="absent", url=None)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        dep = Deployment(endpoint=data["endpoint"], cloud="local", state=data["state"], url=data.get("url"),
                         variants=[Variant(**v) for v in data["variants"]])
        if not all(isinstance(v.traffic, int) and isinstance(v.model, str) and isinstance(v.version, str)
                   for v in dep.variants):
            raise TypeError("a variant's model, version or traffic has the wrong type")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        from .errors import ConfigError

        # Left as it is: it is the only record of what the endpoint serves.
        raise ConfigError(f"the endpoint's deploy state is unreadable or corrupt ({type(exc).__name__}: {exc})",
                          where=str(path),
                          fix=f"move it aside (`mv {path} {path}.corrupt`) and deploy the versions again "
                              "(`stackwise deploy NAME:VERSION`), or restore it from a backup") from None
    return dep


def write_state(dep: Deployment) -> None:
    path = state_path(dep.endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    data = {"endpoint": dep.endpoint, "state": dep.state, "url": dep.url, "updated": time.time(),
            "variants": [asdict(v) for v in dep.variants]}
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # a server reading it sees the old or the new state, never half


# -- routing -------------------------------------------------------------------------------------
class Router:
    """Picks a version per request by traffic weight; deterministic (see the module docstring)."""

    def __init__(self, traffic: dict[str, int]):
        self.weights = {k: w for k, w in traffic.items() if w > 0}
        self._current = {k: 0 for k in self.weights}
        self._lock = threading.Lock()

    def pick(self, user: str | None = None) -> str:
        if not self.weights:
            raise SpecError("no version on the endpoint carries traffic", where="the local endpoint",
                            fix="stackwise deploy NAME:VERSION")
        if user is not None:
            point = int.from_bytes(hashlib.sha256(user.encode()).digest()[:8], "big") % sum(self.weights.values())
            for key, weight in self.weights.items():
                if point < weight:
                    return key
                point -= weight
        with self._lock:  # smooth weighted round robin (as nginx): exact shares, evenly interleaved
            total = sum(self.weights.values())
            for key, weight in self.weights.items():
                self._current[key] += weight
            best = max(self._current, key=lambda k: self._current[k])
            self._current[best] -= total
            return best


# -- deploy state: the local stack's endpoint ----------------------------------------------------
class Server:
    """What `stackwise serve` runs on the local stack: the endpoint's state, reloaded when it
    changes, and its versions on shared engines (`stackwise.serve_targets`)."""

    def __init__(self, endpoint: str, max_tokens_limit: int = MAX_TOKENS_LIMIT, stack: Any = None):
        from .serve_targets import Engines

        self.endpoint = endpoint
        self.stack = stack
        self.max_tokens_limit = max_tokens_limit
        self._mtime: float | None = None
        self.deployment = Deployment(endpoint=endpoint, cloud="local", state="absent")
        self.router = Router({})
        self.engines = Engines()
        self._targets: dict[str, Any] = {}
        self._routers: dict[str, Router] = {}  # per model name, for requests naming a model without a version
        self._platform: Any = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()  # loads only: a loaded target is read without it

    def refresh(self) -> Deployment:
        path = state_path(self.endpoint)
        mtime = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            if mtime != self._mtime:
                self.deployment = read_state(self.endpoint)
                self.router = Router(self.deployment.traffic)
                self._mtime = mtime
            return self.deployment

    def platform(self) -> Any:
        """The stack's platform (vector store, embedders): what RAG apps retrieve with."""
        if self._platform is None:
            from .platform import Platform
            from .stack import load_stack

            self._platform = Platform(self.stack if self.stack is not None else load_stack("local"))
        return self._platform

    def _search(self, index: str, query: str, k: int = 10, filter: Any = None) -> list[Any]:
        return self.platform().search(index, query, k=k, filter=filter)

    def variant_target(self, variant: Variant) -> Any:
        """The version's target (engine, adapter, RAG app), built on first use."""
        from .serve_targets import is_rag_folder, model_target, rag_target

        cache_key = f"{variant.key}|{variant.artifact_uri}"
        target = self._targets.get(cache_key)
        if target is not None:
            return target
        with self._load_lock:
            if cache_key not in self._targets:
                folder = local_folder(variant.artifact_uri or "")
                if folder is None or not folder.is_dir():
                    raise InputError(f"{variant.key}'s artifact {variant.artifact_uri} is gone", where=str(folder),
                                     fix=f"deploy another version: stackwise deploy {variant.model}:VERSION")
                if is_rag_folder(folder):
                    from .rag import stored_vectors

                    target = rag_target(folder, variant.key, variant.version, self.engines, self._search,
                                        self.stack, vectors=stored_vectors(self.platform().vector_store))
                else:
                    target = model_target(folder, variant.key, variant.version, self.engines)
                self._targets[cache_key] = target
            return self._targets[cache_key]

    def target(self, model: str | None = None, user: str | None = None) -> Any:
        """Route by the traffic split to one version; `model` NAME:VERSION pins a version, NAME routes
        among that model's (or RAG app's) versions by their weights. SpecError when it names nothing here."""
        dep = self.refresh()
        key = None
        if model:
            from .deploy import ModelRef

            try:
                ref = ModelRef.parse(model)
            except (InputError, SpecError):
                ref = None
            name = model.strip() if ref is None else None  # a bare NAME is no version reference
            if ref is not None and ref.version and dep.variant(str(ref)) is not None:
                key = str(ref)
            elif name:
                weights = {k: w for k, w in dep.traffic.items() if k.rsplit(":", 1)[0] == name and w > 0}
                if weights:
                    with self._lock:
                        router = self._routers.get(name)
                        if router is None or router.weights != weights:
                            router = self._routers[name] = Router(weights)
                    key = router.pick(user)
            if key is None:
                raise SpecError(f"{model} is not on endpoint {self.endpoint}", where="request field 'model'",
                                fix="name a model or pin a version listed by GET /v1/models, e.g. " +
                                    (", ".join(dep.traffic) or "none deployed"))
        else:
            key = self.router.pick(user)
        variant = dep.variant(key)
        assert variant is not None
        return self.variant_target(variant)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """200 once a version carries traffic, else 503."""
        dep = self.refresh()
        ready = any(v.traffic for v in dep.variants)
        return (200 if ready else 503), {"status": "ok" if ready else "empty", "endpoint": self.endpoint,
                                         "traffic": dep.traffic}

    def models(self) -> dict[str, Any]:
        from .serve_targets import is_rag_folder

        dep = self.refresh()
        data = []
        for v in dep.variants:
            folder = local_folder(v.artifact_uri or "")
            kind = "rag" if folder is not None and is_rag_folder(folder) else "model"
            data.append({"id": v.key, "object": "model", "owned_by": "stackwise", "traffic": v.traffic, "kind": kind,
                         "base_model": v.base_model and public_text(v.base_model)})
        return {"object": "list", "data": data}

    def embed(self, model: str | None, texts: list[str]) -> tuple[str, list[list[float]], int]:
        """/v1/embeddings: `model` names an index (its embedding model embeds) or a RAG app version on the
        endpoint (its index's); (model name, vectors, tokens)."""
        index = model
        if model and ":" in model:
            target = self.target(model)
            index = target.app.index if target.app is not None else None
        if not index:
            raise SpecError("name the index whose embedding model should embed (or a RAG app on the endpoint)",
                            where="request field 'model'", fix="e.g. \"model\": \"kb\" (see `stackwise indexes`)")
        platform = self.platform()
        try:
            name = platform.vector_store.model_of(index)
        except (InputError, SpecError, LookupError):
            raise SpecError(f"no index named {index!r} on this stack", where="request field 'model'",
                            fix="name an index listed by `stackwise indexes`") from None
        vectors = platform.embedder(name).encode(texts)
        return name, [list(map(float, v)) for v in vectors], sum(len(t.split()) for t in texts)

    def queue(self) -> list[tuple[dict[str, str], int, int]]:
        """(labels, running, waiting) per engine, read at scrape time by the metrics."""
        from .serve_metrics import QueueLabels

        return [(QueueLabels(model_name=e.name, version="", app=""), e.running, e.waiting) for e in self.engines.all()]

    def generate(self, prompts: list[str], max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> Generation:
        """Route (or pin, with `model`) to one version and generate each prompt with it (the predict routes)."""
        target = self.target(model, user)
        return generate_on(target, prompts, max_tokens, self.max_tokens_limit, self.endpoint)

    def complete(self, prompt: str, max_tokens: int = DEFAULT_MAX_TOKENS, user: str | None = None,
                 model: str | None = None) -> dict[str, Any]:
        """One OpenAI-style completion, as POST /v1/completions answers it."""
        return render(PredictRequest("openai", [prompt], max_tokens, user, model),
                      self.generate([prompt], max_tokens, user, model))
