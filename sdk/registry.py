"""Adapters registered by dotted path, with the extra that installs their dependencies.

Nothing heavy is imported until an adapter is used; a missing dependency becomes a
`MissingDependencyError` that names the `pip install` to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .errors import ConfigError, MissingDependencyError


@dataclass(frozen=True)
class AdapterRef:
    path: str  # "package.module:Class"
    extra: str  # the pip extra that installs what it needs

    @property
    def install_hint(self) -> str:
        return f"pip install 'stackwise[{self.extra}]'"


class _WithClouds(Mapping[str, AdapterRef]):
    """An adapter table: its own entries, then one per cloud of `stackwise.clouds.CLOUDS` (that
    cloud's `part` adapter), then `after`. The clouds are read on each lookup, so a cloud
    declared there is here with no other change."""

    def __init__(self, before: dict[str, AdapterRef], part: str, after: dict[str, AdapterRef]):
        self._before, self._part, self._after = before, part, after

    def _entries(self) -> dict[str, AdapterRef]:
        from .clouds import CLOUDS

        clouds = {name: AdapterRef(getattr(c, self._part), c.extra) for name, c in CLOUDS.items()}
        return {**self._before, **clouds, **self._after}

    def __getitem__(self, key: str) -> AdapterRef:
        return self._entries()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries())

    def __len__(self) -> int:
        return len(self._entries())


# Where jobs run (`stack.compute_kind`): the local ones, each cloud's managed service, a cluster.
COMPUTE: Mapping[str, AdapterRef] = _WithClouds({
    "local": AdapterRef("stackwise.adapters.compute.local:LocalCompute", "local"),
    "container": AdapterRef("stackwise.adapters.compute.container:ContainerCompute", "local"),
}, "compute", {
    "kubernetes": AdapterRef("stackwise.adapters.compute.kubernetes:KubernetesCompute", "kubernetes"),
})

# Inference endpoints (sdk/deploy.py): one DeployBackend per cloud.
DEPLOY: Mapping[str, AdapterRef] = _WithClouds({
    "local": AdapterRef("stackwise.serving:LocalDeploy", "serve"),
}, "deploy", {
    "kubernetes": AdapterRef("stackwise.adapters.deploy.kubernetes:KubernetesDeploy", "kubernetes"),
})

VECTOR_STORES: dict[str, AdapterRef] = {
    "embedded": AdapterRef("stackwise.adapters.vectors.embedded:EmbeddedStore", "local"),
    "pinecone": AdapterRef("stackwise.adapters.vectors.pinecone:PineconeStore", "pinecone"),
    "milvus": AdapterRef("stackwise.adapters.vectors.milvus:MilvusStore", "milvus"),
    "weaviate": AdapterRef("stackwise.adapters.vectors.weaviate:WeaviateStore", "weaviate"),
}


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional dependency, or explain which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose or 'this feature'} needs the Python package {module.split('.')[0]!r}, which is not installed",
            where=f"import {module} ({exc})",
            fix=f"pip install 'stackwise[{extra}]'",
        ) from None


def load(table: Mapping[str, AdapterRef], key: str, what: str) -> Any:
    """The adapter class registered under `key` in `table`."""
    ref = table.get(key)
    if ref is None:
        raise ConfigError(
            f"no {what} adapter for {key!r} is available in this version",
            where=f"{what} adapters: {', '.join(sorted(table))}",
            fix=f"use a stack whose {what} is one of: {', '.join(sorted(table))}",
        )
    module_name, _, attr = ref.path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {key} {what} adapter needs packages that are not installed ({exc.name or exc})",
            where=ref.path,
            fix=ref.install_hint,
        ) from None
    return getattr(module, attr)
