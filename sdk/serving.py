"""The local stack's endpoint: `stackwise deploy` records what it serves, `stackwise serve` serves it.

Deploy state lives in `<state dir>/endpoints/<endpoint>.json` (written atomically): the versions
on the endpoint, each with its artifact folder, base model and traffic percent. `stackwise serve`
is a foreground process (FastAPI + uvicorn, the `serve` extra) that rereads that file whenever it
changes, so a new deploy or a traffic change takes effect on the next request with no restart.
A foreground server, rather than a process that `deploy` starts in the background, leaves no
orphan process to find and stop, and is what a container or a process supervisor runs.

Routes: `GET /health`, `GET /v1/models` (the versions and their traffic), `POST /v1/completions`
(OpenAI-style: `prompt`, `max_tokens`, optional `user` and `model`). Each request is routed to
one version by the traffic weights: with a `user`, by a hash of it (a user always meets the same
version while the split stands); without, by smooth weighted round robin, which is deterministic
and exact (a 90/10 split answers exactly 9 of every 10 requests from the first version). `model`
pins a version (`chat:2`). The answer names the version in `model` and in the
`X-Stackwise-Version` header. Versions load on first use (a LoRA adapter onto its base model,
merged) and stay loaded.
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

from pydantic import BaseModel, Field

from .contract import EndpointOutput
from .deploy import DeployBackend, Deployment, DeployTarget, Variant, variant_name
from .errors import InputError, SpecError
from .paths import state_dir

DEFAULT_ENDPOINT = "local"
DEFAULT_PORT = 8080


def state_path(endpoint: str) -> Path:
    return state_dir() / "endpoints" / f"{endpoint}.json"


def local_folder(uri: str) -> Path | None:
    """A file:// URI or a path -> the folder on this machine, else None."""
    if "://" in uri and not uri.startswith("file://"):
        return None
    return Path(uri.removeprefix("file://")).expanduser()


def read_state(endpoint: str) -> Deployment:
    path = state_path(endpoint)
    if not path.is_file():
        return Deployment(endpoint=endpoint, cloud="local", state="absent", url=None)
    data = json.loads(path.read_text(encoding="utf-8"))
    return Deployment(endpoint=data["endpoint"], cloud="local", state=data["state"], url=data.get("url"),
                      variants=[Variant(**v) for v in data["variants"]])


def write_state(dep: Deployment) -> None:
    path = state_path(dep.endpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    data = {"endpoint": dep.endpoint, "state": dep.state, "url": dep.url, "updated": time.time(),
            "variants": [asdict(v) for v in dep.variants]}
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    os.replace(tmp, path)  # a server reading it sees the old or the new state, never half


class LocalDeploy(DeployBackend):
    """The local endpoint: deploy state under the state folder, served by `stackwise serve`."""

    cloud = "local"

    def endpoint_output(self, endpoint: str | None = None) -> Any:
        if self.stack.outputs.endpoints:
            return super().endpoint_output(endpoint)
        # The local stack always has one endpoint; its URL is where `stackwise serve` listens by default.
        if endpoint not in (None, DEFAULT_ENDPOINT):
            from .errors import ConfigError

            raise ConfigError(f"stack {self.stack.name!r} has no endpoint named {endpoint!r}",
                              where=f"stack {self.stack.name}", fix=f"the local stack's endpoint is {DEFAULT_ENDPOINT!r}")
        return EndpointOutput(name=DEFAULT_ENDPOINT, url=f"http://127.0.0.1:{DEFAULT_PORT}/v1")

    def describe(self, endpoint: str | None = None) -> Deployment:
        out = self.endpoint_output(endpoint)
        dep = read_state(out.name)
        dep.url = dep.url or out.url
        return dep

    @staticmethod
    def _check_artifact(target: DeployTarget) -> None:
        folder = local_folder(target.artifact_uri)
        if folder is None or not folder.is_dir():
            raise SpecError(f"{target.key} lives at {target.artifact_uri}, which is not a folder on this machine",
                            where=f"model registry, {target.key} source",
                            fix="deploy versions of the local stack's registry (`stackwise models show NAME`)")
        if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
            raise SpecError(f"{target.key} at {folder} is not a saved model or adapter (no config.json)",
                            where=str(folder), fix="register a folder written by save_pretrained")

    def deploy(self, targets: list[DeployTarget], traffic: dict[str, int], endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        new, split = self.plan(current, targets, traffic)
        for target in new:
            self._check_artifact(target)
        variants = [Variant(model=v.model, version=v.version, traffic=split[v.key], state="ready", name=v.name,
                            artifact_uri=v.artifact_uri, base_model=v.base_model) for v in current.variants]
        variants += [Variant(model=t.model, version=t.version, traffic=split[t.key], state="ready",
                             name=variant_name(t.model, t.version), artifact_uri=t.artifact_uri,
                             base_model=t.base_model) for t in new]
        dep = Deployment(endpoint=current.endpoint, cloud="local", state="ready", url=current.url, variants=variants)
        if new or dep.traffic != current.traffic or current.state == "absent":
            write_state(dep)
        return dep

    def undeploy(self, key: str, endpoint: str | None = None) -> Deployment:
        current = self.describe(endpoint)
        if self.check_removable(current, key) is None:
            return current
        current.variants = [v for v in current.variants if v.key != key]
        write_state(current)
        return current


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


# -- the server ----------------------------------------------------------------------------------
class Server:
    """What `stackwise serve` runs: the endpoint's state, reloaded when it changes, and models."""

    def __init__(self, endpoint: str, max_tokens_limit: int = 256):
        self.endpoint = endpoint
        self.max_tokens_limit = max_tokens_limit
        self._mtime: float | None = None
        self.deployment = Deployment(endpoint=endpoint, cloud="local", state="absent")
        self.router = Router({})
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._generate_lock = threading.Lock()

    def refresh(self) -> Deployment:
        path = state_path(self.endpoint)
        mtime = path.stat().st_mtime_ns if path.is_file() else None
        with self._lock:
            if mtime != self._mtime:
                self.deployment = read_state(self.endpoint)
                self.router = Router(self.deployment.traffic)
                self._mtime = mtime
            return self.deployment

    def model(self, variant: Variant) -> Any:
        cache_key = f"{variant.key}|{variant.artifact_uri}"
        with self._generate_lock:
            if cache_key not in self._models:
                from .evaluation.lm import load

                folder = local_folder(variant.artifact_uri or "")
                if folder is None or not folder.is_dir():
                    raise InputError(f"{variant.key}'s artifact {variant.artifact_uri} is gone", where=str(folder),
                                     fix=f"deploy another version: stackwise deploy {variant.model}:VERSION")
                self._models[cache_key] = load(str(folder), chat_template=False)
            return self._models[cache_key]

    def complete(self, prompt: str, max_tokens: int = 16, user: str | None = None,
                 model: str | None = None) -> dict[str, Any]:
        dep = self.refresh()
        if model:
            from .deploy import ModelRef

            ref = ModelRef.parse(model)
            key = str(ref) if ref.version else None
            if key is None or dep.variant(key) is None:
                raise SpecError(f"{model} is not on endpoint {self.endpoint}", where="request field 'model'",
                                fix="pin a version listed by GET /v1/models, e.g. " +
                                    (", ".join(dep.traffic) or "none deployed"))
        else:
            key = self.router.pick(user)
        variant = dep.variant(key)
        assert variant is not None
        lm = self.model(variant)
        n = max(1, min(int(max_tokens), self.max_tokens_limit))
        started = time.perf_counter()
        with self._generate_lock:
            text = lm.generate(prompt, n)
        return {"id": f"cmpl-{hashlib.sha256(f'{time.time_ns()}{prompt}'.encode()).hexdigest()[:24]}",
                "object": "text_completion", "created": int(time.time()), "model": key,
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "stackwise": {"endpoint": self.endpoint, "version": variant.version,
                              "latency_ms": round(1000 * (time.perf_counter() - started), 1)}}


class CompletionRequest(BaseModel):
    """POST /v1/completions (the OpenAI fields stackwise uses, plus `user` and `model`)."""

    prompt: str
    max_tokens: int = Field(16, ge=1)
    user: str | None = None  # sticky routing: one user meets one version while the split stands
    model: str | None = None  # pin a version on the endpoint: NAME:VERSION


def create_app(endpoint: str = DEFAULT_ENDPOINT) -> Any:
    """The FastAPI app serving `endpoint`'s deployed versions."""
    from .registry import require

    require("fastapi", "serve", "stackwise serve")
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    server = Server(endpoint)
    app = FastAPI(title=f"stackwise endpoint {endpoint}")
    app.state.server = server

    def error(exc: Exception, status: int) -> Any:
        return JSONResponse({"error": {"message": str(exc), "type": type(exc).__name__}}, status_code=status)

    @app.get("/health")
    def health() -> Any:
        dep = server.refresh()
        ready = any(v.traffic for v in dep.variants)
        return JSONResponse({"status": "ok" if ready else "empty", "endpoint": endpoint, "traffic": dep.traffic},
                            status_code=200 if ready else 503)

    @app.get("/v1/models")
    def models() -> Any:
        dep = server.refresh()
        return {"object": "list", "data": [{"id": v.key, "object": "model", "owned_by": "stackwise",
                                             "traffic": v.traffic, "base_model": v.base_model} for v in dep.variants]}

    @app.post("/v1/completions")
    def completions(request: CompletionRequest) -> Any:
        try:
            result = server.complete(request.prompt, request.max_tokens, request.user, request.model)
        except (SpecError, InputError) as exc:
            return error(exc, 400 if isinstance(exc, SpecError) and request.model else 503)
        return JSONResponse(result, headers={"X-Stackwise-Version": result["model"]})

    return app


def serve(stack: Any, host: str = "127.0.0.1", port: int = DEFAULT_PORT, endpoint: str | None = None) -> None:
    """Run the local endpoint in the foreground until interrupted."""
    from .errors import ConfigError
    from .registry import require

    if stack.cloud != "local":
        raise ConfigError(f"`stackwise serve` serves the local stack; {stack.name!r} is on {stack.cloud}",
                          where=f"stack {stack.name}", fix="use `stackwise endpoints --stack NAME` to see a cloud endpoint")
    name = LocalDeploy(stack).endpoint_name(endpoint)
    require("uvicorn", "serve", "stackwise serve")
    import uvicorn

    uvicorn.run(create_app(name), host=host, port=port, log_level="warning")
