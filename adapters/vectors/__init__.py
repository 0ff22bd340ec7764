"""Vector store adapters behind `stackwise.vectors.VectorStore`."""
