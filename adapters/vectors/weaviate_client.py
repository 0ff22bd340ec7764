"""The Weaviate store's connection: settings from the stack's host URL, the API key, one
weaviate-client connected on first use, and for every call retries and a clear StoreError
(used by adapters/vectors/weaviate.py, which documents the host URL; imports weaviate only
when connecting).

Every call is retried with backoff on 408/429/5xx, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED /
DEADLINE_EXCEEDED and connection errors. The API key is sent only as the bearer token and
redacted from every message.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from stackwise.errors import ConfigError, StoreError

from ._hosted import redact, resolve_secret, with_retries

_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_RETRY_GRPC = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def _grpc_code(exc: BaseException) -> str | None:
    """The gRPC status name behind a client exception (the client wraps RpcError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "code", None)
        if callable(code):
            try:
                value = code()
                return getattr(value, "name", None)
            except Exception:
                pass
        current = current.__cause__ or current.__context__
    return None


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retryable(exc: BaseException) -> bool:
    from weaviate.exceptions import (
        WeaviateConnectionError,
        WeaviateRetryError,
        WeaviateStartUpError,
        WeaviateTimeoutError,
    )

    if isinstance(exc, (WeaviateConnectionError, WeaviateTimeoutError, WeaviateRetryError)):
        return True
    if isinstance(exc, WeaviateStartUpError):  # /v1/meta unreachable (not: a version too old)
        return exc.__cause__ is not None
    status = _status(exc)
    if status is not None and not _grpc_code(exc):
        return status in _RETRY_STATUS
    return _grpc_code(exc) in _RETRY_GRPC


def parse_host(host: str) -> dict[str, Any]:
    """Connection settings from `vector_store.host` (see adapters/vectors/weaviate.py); ConfigError if bad."""
    where = f"stack outputs vector_store.host = {host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("the Weaviate host must be an http:// or https:// URL", where=where,
                          fix="set vectorStore.host to e.g. http://weaviate.internal:8080")
    secure = parts.scheme == "https"
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"grpc_host", "grpc_port", "grpc_secure", "tenant"}
    if unknown:
        raise ConfigError(f"unknown Weaviate host parameter(s): {', '.join(sorted(unknown))}", where=where,
                          fix="use grpc_host, grpc_port, grpc_secure or tenant")
    cloud = parts.hostname.endswith((".weaviate.cloud", ".weaviate.network"))
    try:
        grpc_port = int(query.get("grpc_port") or (443 if secure else 50051))
    except ValueError:
        raise ConfigError(f"grpc_port {query['grpc_port']!r} is not a port number", where=where) from None
    grpc_secure = query.get("grpc_secure", "true" if secure else "false").lower()
    if grpc_secure not in ("true", "false"):
        raise ConfigError(f"grpc_secure must be true or false, not {grpc_secure!r}", where=where)
    tenant = query.get("tenant") or None
    if tenant is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tenant):
        raise ConfigError(f"invalid Weaviate tenant name {tenant!r}", where=where,
                          fix="tenant names use letters, digits, '_' and '-' (at most 64)")
    return {
        "http_host": parts.hostname,
        "http_port": parts.port or (443 if secure else 80),
        "http_secure": secure,
        "grpc_host": query.get("grpc_host") or (f"grpc-{parts.hostname}" if cloud else parts.hostname),
        "grpc_port": grpc_port,
        "grpc_secure": grpc_secure == "true",
        "tenant": tenant,
    }


class Connection:
    """The weaviate-client of one store, connected on first use (also closed when this is
    garbage-collected), and how each request is made and its failure reported."""

    def __init__(self, host: str, settings: dict[str, Any], secret_ref: str | None, *, attempts: int,
                 backoff: float, timeout: float):
        self.host = host
        if secret_ref:
            self.secret_ref = secret_ref
            self.key: str | None = resolve_secret(secret_ref, default_env="WEAVIATE_API_KEY", what="Weaviate store")
        else:
            self.secret_ref = "$WEAVIATE_API_KEY"
            self.key = os.environ.get("WEAVIATE_API_KEY") or None
        self._settings = settings
        self._attempts = attempts
        self._backoff = backoff
        self._timeout = timeout
        self._client = None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def client(self):
        """The client, connected on first use (`GET /v1/meta`); StoreError if that fails."""
        with self._lock:
            if self._client is None:
                import weaviate
                from weaviate.classes.init import AdditionalConfig, Auth, Timeout

                def connect():
                    return weaviate.connect_to_custom(
                        **self._settings,
                        auth_credentials=Auth.api_key(self.key) if self.key else None,
                        additional_config=AdditionalConfig(
                            timeout=Timeout(init=10, query=self._timeout, insert=self._timeout)),
                        skip_init_checks=True,  # no gRPC health probe, no PyPI version lookup
                    )

                try:
                    client = with_retries(connect, retryable=_retryable, attempts=self._attempts,
                                          backoff=self._backoff)
                except Exception as exc:
                    raise self.error("connect", exc) from None
                weakref.finalize(self, client.close)
                self._client = client
            return self._client

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """One request, retried on throttling, server and connection errors; errors made clear."""
        def attempt():
            self.client()
            return fn()

        try:
            return with_retries(attempt, retryable=_retryable, attempts=self._attempts, backoff=self._backoff)
        except StoreError:
            raise
        except Exception as exc:
            raise self.error(what, exc) from None

    def error(self, what: str, exc: BaseException) -> StoreError:
        status, code = _status(exc), _grpc_code(exc)
        detail = redact(str(getattr(exc, "message", None) or exc), self.key)[:500]
        where = f"Weaviate at {self.host}"
        if status in (401, 403) or code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return StoreError(f"Weaviate rejected the API key ({status or code}) during {what}", where=where,
                              fix=f"check the key in {self.secret_ref} is valid for this Weaviate cluster")
        if _retryable(exc):
            return StoreError(
                f"Weaviate kept failing ({status or code or type(exc).__name__}) during {what} "
                f"after {self._attempts} attempts: {detail}",
                where=where,
                fix="Weaviate is throttling or unavailable: retry later (writes are idempotent, "
                "so rerunning the same command completes the work)",
            )
        return StoreError(f"Weaviate {what} failed ({status or code or type(exc).__name__}): {detail}", where=where,
                          fix="check that the host and gRPC port are reachable and the cluster is healthy")
