"""The VectorStore contract for the embedded (LanceDB) store, on local disk."""

import pytest

from stackwise.adapters.vectors.embedded import EmbeddedStore
from stackwise.testing.vector_store import VectorStoreContract


class TestEmbeddedStore(VectorStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return EmbeddedStore(str(tmp_path / "vectors"))

    @pytest.fixture
    def reopen(self, tmp_path):
        return lambda: EmbeddedStore(str(tmp_path / "vectors"))
