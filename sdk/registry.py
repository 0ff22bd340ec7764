"""Adapters registered by dotted path, with the extra that installs their dependencies.

Nothing heavy is imported until an adapter is used; a missing dependency becomes a
`MissingDependencyError` that names the `pip install` to run.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

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
    "local": AdapterRef("stackwise.adapters.deploy.local:LocalDeploy", "serve"),
}, "deploy", {
    "kubernetes": AdapterRef("stackwise.adapters.deploy.kubernetes:KubernetesDeploy", "kubernetes"),
})

Placement = Literal["embedded", "external", "provisioned"]


@dataclass(frozen=True)
class StoreRef(AdapterRef):
    """A vector store kind: its adapter, its extra, and where the store lives (`placement`).

    - "embedded": files under a folder or object-store URI (`path` in a local stack's
      `stackwise:vectorStore`, under the artifact store on a cloud stack; `uri` in the outputs).
      The adapter is built from that URI.
    - "external": a cluster run elsewhere, named by `host` and an optional `apiKeySecret` (a
      secret reference); a cloud stack exports it and creates nothing.
    - "provisioned": a hosted service the cloud stack's Pulumi program creates (its component
      in infra/); a local stack reaches it, as an external one, by `host` and `apiKeySecret`.

    Adapters of every placement but "embedded" are built from the stack's `VectorStoreOutput`.
    """

    placement: Placement = "external"

    @property
    def hosted(self) -> bool:
        """Reached over the network at `host` (with an optional `apiKeySecret`)."""
        return self.placement != "embedded"


# The one list of vector store kinds: the contract's and the infra config's `kind`, a local
# stack's hosted stores and `open_store` all derive from it (`vector_store_kinds`). Adding a
# store is an entry here plus its adapter module (and, for a new client library, its extra in
# pyproject.toml; a "provisioned" store also needs the component that creates it in infra/).
VECTOR_STORES: dict[str, StoreRef] = {
    "embedded": StoreRef("stackwise.adapters.vectors.embedded:EmbeddedStore", "local", "embedded"),
    "pinecone": StoreRef("stackwise.adapters.vectors.pinecone:PineconeStore", "pinecone", "provisioned"),
    "weaviate": StoreRef("stackwise.adapters.vectors.weaviate:WeaviateStore", "weaviate", "external"),
    "milvus": StoreRef("stackwise.adapters.vectors.milvus:MilvusStore", "milvus", "external"),
}


def vector_store_kinds(*placements: Placement) -> tuple[str, ...]:
    """The registered vector store kinds, in registry order: all, or those of these placements."""
    return tuple(kind for kind, ref in VECTOR_STORES.items() if not placements or ref.placement in placements)


def hosted_vector_store_kinds() -> tuple[str, ...]:
    """The kinds reached at a `host` (every placement but "embedded")."""
    return tuple(kind for kind, ref in VECTOR_STORES.items() if ref.hosted)


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
