"""Typed job specs. A spec is the whole description of a job: it is hashed, stored with the
job record, written to `spec.json`, and read back by the workload inside the job."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Chunking(_Spec):
    """How documents are cut into chunks (sizes in characters)."""

    size: Annotated[int, Field(ge=50, le=20_000)] = 1000
    overlap: Annotated[int, Field(ge=0)] = 150

    @model_validator(mode="after")
    def _overlap_below_size(self) -> "Chunking":
        if self.overlap >= self.size:
            raise ValueError(f"chunking.overlap ({self.overlap}) must be smaller than chunking.size ({self.size})")
        return self


class Embedding(_Spec):
    """The embedding model: a short name of a model a package ships, a Hugging Face id, or a path."""

    model: str = "all-MiniLM-L6-v2"
    batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    device: str = "cpu"


class Compute(_Spec):
    """Portable compute: a catalog GPU name (or none for CPU), count, nodes, spot."""

    gpu: str | None = None
    count: Annotated[int, Field(ge=1)] = 1
    nodes: Annotated[int, Field(ge=1)] = 1
    spot: bool = False
    max_runtime_s: Annotated[int, Field(ge=60)] = 24 * 3600


class IndexSpec(_Spec):
    """Index documents into a named index of the stack's vector store."""

    kind: Literal["index"] = "index"
    source: str = Field(description="A file, folder or glob; a local path or any fsspec URI.")
    index: str = Field(description="Index name: lowercase letters, digits, '-' and '_'.")
    chunking: Chunking = Chunking()
    embedding: Embedding = Embedding()
    prune: bool = Field(False, description="Remove chunks of documents under `source` that are gone.")
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _valid_index_name(self) -> "IndexSpec":
        if not INDEX_NAME.fullmatch(self.index):
            raise ValueError(
                f"index name {self.index!r} is invalid: use 1-63 lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return self

    def digest(self) -> str:
        """A stable hash of the spec, used to name jobs and detect retried submissions."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


JobSpec = IndexSpec
