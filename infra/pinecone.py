"""A Pinecone serverless index (pinecone-pulumi), on whichever cloud the stack lives."""

from __future__ import annotations

from dataclasses import dataclass

import pinecone_pulumi as pinecone
import pulumi

from .config import VectorStoreConfig


@dataclass
class VectorIndexArgs:
    store: VectorStoreConfig
    """Index name, dimension, metric."""
    cloud: str
    """Pinecone serverless cloud (aws, gcp or azure)."""
    region: str
    """Pinecone serverless region."""
    api_key: pulumi.Input[str]
    """The Pinecone API key, a Pulumi secret (`pulumi config set --secret pinecone:apiKey`)."""
    tags: dict[str, str]


class VectorIndex(pulumi.ComponentResource):
    """The stack's Pinecone index; deletion-protected, since re-embedding a corpus is expensive."""

    def __init__(self, name: str, args: VectorIndexArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("stackwise:pinecone:VectorIndex", name, None, opts)
        provider = pinecone.Provider(f"{name}-provider", api_key=args.api_key, opts=pulumi.ResourceOptions(parent=self))
        self.index = pinecone.Index(
            f"{name}-index", name=args.store.index, dimension=args.store.dimension, metric=args.store.metric,
            spec={"serverless": {"cloud": args.cloud, "region": args.region}}, deletion_protection="enabled",
            tags=args.tags, opts=pulumi.ResourceOptions(parent=self, provider=provider))
        self.host = self.index.host.apply(lambda h: h if h.startswith("http") else f"https://{h}")
        self.register_outputs({"host": self.host})
