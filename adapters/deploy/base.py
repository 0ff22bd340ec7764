"""What the deploy adapters share, beside `stackwise.deploy.DeployBackend`: the GPU an endpoint
runs on, its serving image, the short digest that names what a version runs, and the check that
the cloud can read a version's artifact."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from stackwise.errors import ConfigError, SpecError


def digest(*parts: Any) -> str:
    """8 hex digits of `parts` (JSON, keys sorted): the same parts, the same name on every run."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def check_artifact(stack: Any, target: Any, scheme: str, reader: str) -> None:
    """Refuse, before any call, a version whose artifact is not under `scheme://`, where `reader`
    (the cloud's endpoint service) cannot read it."""
    if not target.artifact_uri.startswith(f"{scheme}://"):
        raise SpecError(f"{target.key} lives at {target.artifact_uri}, which {reader} cannot read",
                        where=f"model registry, {target.key} source",
                        fix=f"register the version in the stack's artifact store ({stack.outputs.artifact_store})")


def endpoint_gpu(stack: Any, endpoint_output: Any) -> str | None:
    """The catalog GPU an endpoint runs on: its own, else the stack's default; None for CPU."""
    return endpoint_output.gpu or stack.outputs.default_gpu


def serving_image(stack: Any, endpoint_output: Any, beside: Callable[[str], str | None], fix: str) -> str:
    """The endpoint's serving image, else `beside(training_image)`: the cloud's guess of the `serve`
    image next to the stack's training image in its registry (None: no guess). Neither: a
    ConfigError whose fix is `fix`."""
    if endpoint_output.serving_image:
        return endpoint_output.serving_image
    guess = beside(stack.outputs.training_image or "")
    if guess:
        return guess
    raise ConfigError(f"stack {stack.name!r} exports no serving image for endpoint {endpoint_output.name!r}",
                      where="stack outputs: endpoints[].serving_image", fix=fix)
