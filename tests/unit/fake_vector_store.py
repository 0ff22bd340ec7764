"""Two test-only vector store kinds, each one adapter class: what a new store adds besides its
entry in `stackwise.registry.VECTOR_STORES` (tests/unit/test_vector_store_registry.py).

Both reuse the embedded engine (LanceDB) so that they store and query for real:
- `DiskStore`, placement "embedded": built from the folder or URI the stack names;
- `ClusterStore`, placement "external": built from the stack's `VectorStoreOutput`, as every
  hosted adapter is; its "cluster" is the folder in the host URL's `root` query parameter, and
  it keeps the output it was given, so a test can see the host and key reference it received.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from stackwise.adapters.vectors.embedded import EmbeddedStore

if TYPE_CHECKING:
    from stackwise.contract import VectorStoreOutput


class DiskStore(EmbeddedStore):
    """A store kept in a folder, under a kind name of its own."""


class ClusterStore(EmbeddedStore):
    """A store reached at a host URL (`http://cluster.test/?root=/folder`)."""

    def __init__(self, config: "VectorStoreOutput") -> None:
        self.config = config
        super().__init__(parse_qs(urlsplit(config.host or "").query)["root"][0])
