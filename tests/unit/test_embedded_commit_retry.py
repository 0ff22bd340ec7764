"""The shards of an index job optimize one embedded table at once; Lance refuses the commit that
loses ("Retryable commit conflict ... Please retry", a RuntimeError with no type of its own, seen
when two shards created the same scalar index on S3). `EmbeddedStore.optimize` then runs the step
again on the new version, a bounded number of times; any other error goes through at once."""

from __future__ import annotations

import pytest

pytest.importorskip("lancedb", reason="install stackwise[local]")

from stackwise.adapters.vectors import embedded  # noqa: E402

CONFLICT = ("lance error: Retryable commit conflict for version 5: This CreateIndex transaction was preempted by "
            "concurrent transaction CreateIndex at version 5. Please retry.")


class _Store:
    def __init__(self, failures: list[Exception]):
        self.failures, self.calls = failures, 0

    def _optimize_once(self, name):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)


def test_a_lost_commit_is_optimized_again(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    store = _Store([RuntimeError(CONFLICT), RuntimeError(CONFLICT)])
    embedded.EmbeddedStore.optimize(store, "kb")
    assert store.calls == 3


def test_retries_are_bounded_and_other_errors_pass_at_once(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    store = _Store([RuntimeError(CONFLICT)] * embedded.COMMIT_RETRIES)
    with pytest.raises(RuntimeError, match="Retryable commit conflict"):
        embedded.EmbeddedStore.optimize(store, "kb")
    assert store.calls == embedded.COMMIT_RETRIES
    other = _Store([RuntimeError("lance error: disk full")])
    with pytest.raises(RuntimeError, match="disk full"):
        embedded.EmbeddedStore.optimize(other, "kb")
    assert other.calls == 1
