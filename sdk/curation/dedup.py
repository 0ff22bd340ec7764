"""Exact and near-duplicate detection, with state that outlives a run.

Exact: SHA-256 of the normalized text (Unicode NFKC, lower case, runs of whitespace as one space).
Near: MinHash signatures (datasketch) of word n-gram shingles of the normalized text, looked up in a
MinHash LSH index (Broder 1997; Leskovec, Rajaraman & Ullman, "Mining of Massive Datasets" ch. 3);
an LSH candidate counts as a duplicate only when its estimated Jaccard similarity is at least the
threshold, which keeps precision up.

`DedupState` holds, per kept document id, its exact hash and its signature. Saved under a folder
(any fsspec URI) it lets a later run drop a document that duplicates one kept earlier; a document's
own earlier version (same id) never counts as its duplicate, and a new version replaces the old.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import unicodedata
from collections.abc import Callable
from typing import Any

from .config import DedupConfig

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")
SCHEME = "affine32"  # datasketch 2.0's default permutation scheme, named so saved values stay comparable


def normalize(text: str) -> str:
    """The text that exact dedup hashes: NFKC, lower case, whitespace runs as one space, trimmed."""
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()


def exact_hash(text: str) -> str:
    return hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def shingles(text: str, n: int) -> set[bytes]:
    """Word n-grams of the normalized text (punctuation ignored), as bytes; the whole text when shorter."""
    words = _WORD.findall(normalize(text))
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


class DedupState:
    """Hashes and MinHash signatures of kept documents, by id, with an LSH index over the signatures."""

    def __init__(self, config: DedupConfig):
        from ..registry import require

        require("datasketch", "curate", "near-duplicate detection")
        from datasketch import MinHashLSH

        self.config = config
        self.hashes: dict[str, str] = {}  # doc id -> exact hash
        self.by_hash: dict[str, str] = {}  # exact hash -> a doc id
        self.signatures: dict[str, Any] = {}  # doc id -> numpy uint64 hash values
        # Candidates come from a band layout tuned 0.2 below the threshold, so a pair just above it is
        # rarely missed by banding; each candidate is then checked against the threshold itself.
        self.lsh = MinHashLSH(threshold=max(0.3, config.threshold - 0.2), num_perm=config.num_perm)
        self.note: str | None = None  # why an earlier state was not used, if it was not

    def signature(self, text: str) -> Any:
        from datasketch import MinHash

        m = MinHash(num_perm=self.config.num_perm, seed=self.config.seed, scheme=SCHEME)
        m.update_batch(list(shingles(text, self.config.shingle)))
        return m.hashvalues

    def exact_match(self, doc_id: str, digest: str) -> str | None:
        """The id of another kept document with the same normalized text, if any."""
        other = self.by_hash.get(digest)
        if other is not None and other != doc_id:
            return other
        return None

    def near_match(self, doc_id: str, hashvalues: Any) -> tuple[str, float] | None:
        """(id, estimated Jaccard) of the most similar other kept document at or above the threshold."""
        from datasketch import MinHash

        if not self.config.near:
            return None
        query = MinHash(num_perm=self.config.num_perm, seed=self.config.seed, scheme=SCHEME, hashvalues=hashvalues)
        best: tuple[str, float] | None = None
        for other in self.lsh.query(query):
            if other == doc_id:
                continue
            similarity = float((self.signatures[other] == hashvalues).mean())
            if similarity >= self.config.threshold and (best is None or similarity > best[1]):
                best = (other, similarity)
        return best

    def add(self, doc_id: str, digest: str, hashvalues: Any | None) -> None:
        """Record a kept document (replacing its earlier version)."""
        from datasketch import MinHash

        self.remove(doc_id)
        self.hashes[doc_id] = digest
        self.by_hash.setdefault(digest, doc_id)
        if hashvalues is not None:
            self.signatures[doc_id] = hashvalues
            self.lsh.insert(doc_id, MinHash(num_perm=self.config.num_perm, seed=self.config.seed,
                                            scheme=SCHEME, hashvalues=hashvalues))

    def remove(self, doc_id: str) -> None:
        """Forget a document (gone from the source, or dropped in this run)."""
        digest = self.hashes.pop(doc_id, None)
        if digest is not None and self.by_hash.get(digest) == doc_id:
            del self.by_hash[digest]
            other = next((i for i, h in self.hashes.items() if h == digest), None)
            if other is not None:
                self.by_hash[digest] = other
        if self.signatures.pop(doc_id, None) is not None:
            self.lsh.remove(doc_id)

    # -- persistence ---------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"num_perm": self.config.num_perm, "shingle": self.config.shingle, "seed": self.config.seed,
                "scheme": SCHEME}

    def save(self, folder: str, name: str = "dedup-state", owns: Callable[[str], bool] = lambda _: True) -> str:
        """Write the documents `owns` selects to `<folder>/<name>.npz` (any fsspec URI); returns its URI."""
        import fsspec
        import numpy as np

        ids = sorted(i for i in self.hashes if owns(i))
        signed = [i for i in ids if i in self.signatures]
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer, meta=np.array(json.dumps(self._meta())),
            ids=np.array(ids, dtype=str), hashes=np.array([self.hashes[i] for i in ids], dtype=str),
            signed=np.array(signed, dtype=str),
            signatures=np.array([self.signatures[i] for i in signed], dtype=np.uint64).reshape(
                len(signed), self.config.num_perm))
        uri = f"{folder.rstrip('/')}/{name}.npz"
        fs, path = fsspec.core.url_to_fs(uri)
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with fs.open(path + ".tmp", "wb") as handle:
            handle.write(buffer.getvalue())
        fs.mv(path + ".tmp", path)
        return uri

    def load(self, folder: str) -> int:
        """Merge every `<folder>/dedup-state*.npz` (one per shard of an index); returns documents loaded.

        A state made with other MinHash parameters cannot be compared: it is left out and `note` says so."""
        import fsspec
        import numpy as np

        fs, path = fsspec.core.url_to_fs(folder.rstrip("/"))
        if not fs.exists(path):
            return 0
        loaded = 0
        for file in sorted(fs.glob(f"{path}/dedup-state*.npz")):
            with fs.open(file, "rb") as handle:
                data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
            meta = json.loads(str(data["meta"]))
            if meta != self._meta():
                self.note = (f"earlier state in {file} was made with {meta}, not {self._meta()}: documents kept "
                             "before were not compared (rerun over the whole source to rebuild it)")
                continue
            signatures = dict(zip(data["signed"].tolist(), data["signatures"]))
            for doc_id, digest in zip(data["ids"].tolist(), data["hashes"].tolist()):
                self.add(doc_id, digest, signatures.get(doc_id))
                loaded += 1
        return loaded
