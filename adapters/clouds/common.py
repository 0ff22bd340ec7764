"""What every cloud module and adapter shares: retrying throttled calls (writes never twice), and
requiring a stack output."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from stackwise.errors import CloudError, ConfigError, TransientError

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """Exponential backoff with full jitter for throttling and 5xx answers."""

    attempts: int = 5
    base_s: float = 0.5
    max_s: float = 20.0

    def delays(self) -> Iterator[float]:
        import random

        for n in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_s, self.base_s * 2**n))


def with_retries(call: Callable[[], T], retry: Retry, what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `call`, retrying while it raises `TransientError`; the last one becomes a CloudError."""
    last: Exception | None = None
    for delay in [*retry.delays(), None]:
        try:
            return call()
        except TransientError as exc:
            last = exc
            if delay is None:
                break
            sleep(delay)
    raise CloudError(
        f"{what} kept failing after {retry.attempts} attempts: {last}",
        where=what,
        fix="the cloud is throttling or failing; retry later (a retried submit reuses the job if it was created)",
    )


def unless_landed(send: Callable[[], T], landed: Callable[[], T | None]) -> Callable[[], T]:
    """`send`, a write whose answer may be lost after the cloud acted, made safe for `with_retries`:
    after a TransientError, `landed()` (a read) returns what the write made when it landed all the
    same, and only when it returns None is the error raised (and the write sent again). So a
    retried write never creates twice."""
    def attempt() -> T:
        try:
            return send()
        except TransientError:
            found = landed()
            if found is not None:
                return found
            raise

    return attempt


def require_output(value: str | None, field: str, stack: Any, fix: str) -> str:
    """`value`, or a ConfigError saying that the stack's outputs lack `field`."""
    if not value:
        raise ConfigError(
            f"stack {stack.name!r} outputs have no {field}, which {stack.cloud} jobs need",
            where=f"stack outputs: {field}",
            fix=fix,
        )
    return value


_ARTICLE = {"s3": "an", "az": "an", "gs": "a"}  # as the letters are read aloud


def require_store(stack: Any, scheme: str, cloud: str) -> str:
    """The stack's artifact store, or a ConfigError when it is not a `scheme`:// URI (`cloud` names
    the cloud in the message: "AWS", "GCP", "Azure")."""
    store = stack.outputs.artifact_store
    if not store.startswith(f"{scheme}://"):
        raise ConfigError(f"stack {stack.name!r} is on {cloud} but its artifact store is {store!r}",
                          where="stack outputs: artifact_store",
                          fix=f"export {_ARTICLE.get(scheme, 'a')} {scheme}:// artifact store "
                          "(the Pulumi program does)")
    return store
