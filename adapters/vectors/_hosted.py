"""What the hosted vector store adapters share: secret resolution, key redaction, retries,
index names and the record <-> flat-metadata mapping.

Imports nothing heavy: each adapter module alone imports its store's SDK.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from stackwise.errors import ConfigError, StoreError
from stackwise.secrets import redact as redact_resolved
from stackwise.secrets import resolve_secret as resolve_reference
from stackwise.vectors import Hit, Record

T = TypeVar("T")

# Logical index names: what Pinecone namespaces, Weaviate collections and Milvus collections
# all accept (the strictest is Milvus: letters, digits, '_'; we map '-' and '.' for it).
_INDEX_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
# Fields a record stores beside its vector; the rest of the stored metadata is the user's.
BUILTIN_FIELDS = ("doc_id", "source", "chunk", "text")
# Metadata values a store cannot hold natively (None, nested objects, lists of numbers) are
# kept, JSON-encoded, under this key so nothing is lost; they are not filterable.
EXTRA_KEY = "stackwise_extra"


def resolve_secret(ref: str | None, *, default_env: str, what: str) -> str:
    """The value a secret reference names (any scheme `stackwise.secrets` knows), else `$default_env`.

    The value is never put into a message: errors name the reference only.
    """
    if ref is None:
        value = os.environ.get(default_env)
        if not value:
            raise ConfigError(
                f"no API key for the {what}",
                where=f"stack outputs vector_store.api_key_secret unset and ${default_env} unset",
                fix=f"export {default_env}=..., or set the stack's vectorStore apiKeySecret to a secret reference "
                    "(env://NAME, aws-sm://..., gcp-sm://..., azure-kv://...)",
            )
        return value
    return resolve_reference(ref, what=f"{what} API key")


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret, and every value `stackwise.secrets` resolved, replaced by '***'
    (for messages built from server replies)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return redact_resolved(text)


def check_index_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not _INDEX_NAME.fullmatch(name):
        raise StoreError(
            f"invalid index name {name!r}",
            where=where,
            fix="start with a letter; use letters, digits, '_', '-' or '.' (at most 63 characters)",
        )
    return name


def with_retries(
    call: Callable[[], T],
    *,
    retryable: Callable[[BaseException], bool],
    attempts: int,
    backoff: float,
    max_backoff: float = 20.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `call`, retrying what `retryable` accepts with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt >= attempts or not retryable(exc):
                raise
            sleep(random.uniform(0, min(max_backoff, backoff * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


def _native(value: Any) -> bool:
    if isinstance(value, (str, bool, int, float)):
        return True
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def flat_metadata(record: Record) -> dict[str, Any]:
    """A record's fields and metadata as one flat mapping of filterable scalars.

    User metadata may not shadow the built-in fields; values the stores cannot hold
    natively go, JSON-encoded, under `EXTRA_KEY`.
    """
    flat: dict[str, Any] = {"doc_id": record.doc_id, "source": record.source, "chunk": record.chunk,
                            "text": record.text}
    extra: dict[str, Any] = {}
    for key, value in record.metadata.items():
        if key in BUILTIN_FIELDS or key == EXTRA_KEY or not _native(value):
            extra[key] = value
        else:
            flat[key] = value
    if extra:
        flat[EXTRA_KEY] = json.dumps(extra, sort_keys=True, default=str)
    return flat


def _number(value: Any) -> Any:
    # Stores keep numbers as doubles: give integral ones back as int, as they were written.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def user_metadata(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Invert `flat_metadata`: the user's metadata only."""
    meta = {k: _number(v) for k, v in flat.items() if k not in BUILTIN_FIELDS and k != EXTRA_KEY}
    if flat.get(EXTRA_KEY):
        meta.update(json.loads(flat[EXTRA_KEY]))
    return meta


def record_from_flat(record_id: str, vector: Iterable[float], flat: Mapping[str, Any]) -> Record:
    return Record(
        id=record_id,
        vector=[float(v) for v in vector],
        text=str(flat.get("text", "")),
        doc_id=str(flat.get("doc_id", "")),
        source=str(flat.get("source", "")),
        chunk=int(flat.get("chunk", 0) or 0),
        metadata=user_metadata(flat),
    )


def hit_from_flat(record_id: str, score: float, flat: Mapping[str, Any]) -> Hit:
    return Hit(
        id=record_id,
        score=float(score),
        text=str(flat.get("text", "")),
        doc_id=str(flat.get("doc_id", "")),
        source=str(flat.get("source", "")),
        chunk=int(flat.get("chunk", 0) or 0),
        metadata=user_metadata(flat),
    )
