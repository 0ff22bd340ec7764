"""The abstract compute contract. The local adapter and every cloud adapter mix it in:

    class TestMyCompute(ComputeContract):
        @pytest.fixture
        def driver(self, ...):
            return MyDriver(...)        # a ComputeDriver for this backend

A `ComputeDriver` gives the suite a backend, specs whose jobs end a chosen way, and a way to
move a job along: the local driver lets real processes run; a cloud driver moves the job's
state in the emulator the way the cloud would. The suite checks behaviour only through
`ComputeBackend` and `JobHandle`: submit, status, wait (with its timeout), outputs, failure,
cancel (idempotent, and a no-op on an ended job), one job identity (a spec whose job runs
returns that job; after it ended the next attempt starts under the same identity; `new=True`
or another run name is a fresh identity), refused specs (nothing created) and unknown job ids.
"""

from __future__ import annotations

from typing import Any, Literal

import pytest

from stackwise.errors import JobFailedError
from stackwise.jobs import ComputeBackend, JobHandle, JobState

Outcome = Literal["succeed", "fail", "hold"]


class ComputeDriver:
    """What a backend's tests provide to the contract suite."""

    #: seconds a job may take to reach an end once it was allowed to
    timeout: float = 60.0

    def backend(self) -> ComputeBackend:
        raise NotImplementedError

    def spec(self, outcome: Outcome, n: int = 0) -> Any:
        """A spec whose job will end as `outcome` ("hold": runs until cancelled). `n` varies the spec."""
        raise NotImplementedError

    def advance(self, handle: JobHandle, outcome: Outcome) -> None:
        """Let the job make progress toward `outcome` (a cloud emulator moves its state)."""

    def bad_spec(self) -> Any:
        """Something submit must refuse with a ValueError before creating a job."""
        return object()


def _ids(backend: ComputeBackend) -> set[str]:
    return {info.id for info in backend.list(limit=500)}


class ComputeContract:
    """Mix into a test class that provides the `driver` fixture."""

    @pytest.fixture
    def backend(self, driver: ComputeDriver) -> ComputeBackend:
        return driver.backend()

    def test_submit_returns_a_handle_that_is_listed(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        spec = driver.spec("succeed")
        handle = backend.submit(spec)
        assert isinstance(handle, JobHandle)
        # A new job waits or runs; one that succeeds on its own (a fast local job) may have ended,
        # but never as failed or cancelled.
        assert handle.status() in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED)
        assert handle.id in _ids(backend)
        info = handle.info()
        assert info.kind == spec.kind
        assert info.spec.get("kind") == spec.kind
        driver.advance(handle, "succeed")
        assert handle.wait(timeout=driver.timeout).state is JobState.SUCCEEDED
        assert handle.status() is JobState.SUCCEEDED

    def test_wait_returns_success_with_outputs(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        handle = backend.submit(driver.spec("succeed", 1))
        driver.advance(handle, "succeed")
        info = handle.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)
        assert info.state is JobState.SUCCEEDED, info.error
        assert info.ended_at is not None
        assert handle.outputs, "a succeeded job names its outputs"
        assert handle.result(timeout=driver.timeout) == handle.outputs

    def test_failure_is_reported_with_a_reason(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        handle = backend.submit(driver.spec("fail", 2))
        driver.advance(handle, "fail")
        info = handle.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)
        assert info.state is JobState.FAILED
        assert info.error
        assert info.outputs == {}
        with pytest.raises(JobFailedError):
            handle.result(timeout=driver.timeout)

    def test_wait_times_out_while_the_job_runs(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        handle = backend.submit(driver.spec("hold", 3))
        driver.advance(handle, "hold")
        try:
            with pytest.raises(TimeoutError):
                handle.wait(timeout=0.3, poll=0.05)
            assert handle.status() in (JobState.PENDING, JobState.RUNNING)
        finally:
            handle.cancel()

    def test_cancel_stops_a_job_and_is_idempotent(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        handle = backend.submit(driver.spec("hold", 4))
        driver.advance(handle, "hold")
        handle.cancel()
        info = handle.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)
        assert info.state is JobState.CANCELLED
        assert handle.cancel().state is JobState.CANCELLED
        assert info.outputs == {}

    def test_cancel_leaves_an_ended_job_as_it_is(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        handle = backend.submit(driver.spec("succeed", 5))
        driver.advance(handle, "succeed")
        assert handle.wait(timeout=driver.timeout, poll=0.05).state is JobState.SUCCEEDED
        assert handle.cancel().state is JobState.SUCCEEDED

    def test_submitting_a_running_spec_returns_its_job(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        spec = driver.spec("hold", 6)
        before = _ids(backend)
        first = backend.submit(spec)
        driver.advance(first, "hold")
        try:
            again = backend.submit(spec)
            assert again.id == first.id, "a second submit of a running spec must not start another job"
            assert _ids(backend) - before == {first.id}
            assert first.info().identity == spec.identity
        finally:
            first.cancel()
        first.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)

    def test_an_ended_job_is_followed_by_the_next_attempt(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        spec = driver.spec("fail", 7)
        first = backend.submit(spec)
        driver.advance(first, "fail")
        assert first.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5).state is JobState.FAILED
        second = backend.submit(spec)
        assert second.id != first.id
        info, before = second.info(), first.info()
        assert info.identity == before.identity == spec.identity
        assert info.attempt == before.attempt + 1
        assert backend.submit(spec).id == second.id or second.status().terminal
        driver.advance(second, "fail")
        second.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)

    def test_new_and_run_names_are_other_identities(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        spec = driver.spec("hold", 8)
        before = _ids(backend)
        first = backend.submit(spec)
        fresh = backend.submit(spec, new=True)
        named = backend.submit(spec, run_name="exp-2")
        named_again = backend.submit(spec, run_name="exp-2")
        try:
            assert len({first.id, fresh.id, named.id}) == 3
            assert named_again.id == named.id
            assert _ids(backend) - before == {first.id, fresh.id, named.id}
            identities = {h.info().identity for h in (first, fresh, named)}
            assert len(identities) == 3 and spec.identity in identities
        finally:
            for handle in (first, fresh, named):
                driver.advance(handle, "hold")
                handle.cancel()
        for handle in (first, fresh, named):
            handle.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)

    def test_a_bad_run_name_is_refused_before_any_job_exists(self, driver: ComputeDriver,
                                                             backend: ComputeBackend) -> None:
        before = _ids(backend)
        with pytest.raises(ValueError):
            backend.submit(driver.spec("succeed", 9), run_name="Not Valid!")
        assert _ids(backend) == before

    def test_a_bad_spec_is_refused_before_any_job_exists(self, driver: ComputeDriver, backend: ComputeBackend) -> None:
        before = _ids(backend)
        with pytest.raises(ValueError):
            backend.submit(driver.bad_spec())
        assert _ids(backend) == before

    def test_unknown_job_id_is_a_lookup_error(self, backend: ComputeBackend) -> None:
        with pytest.raises(LookupError):
            backend.info("sw-index-0000000000000000-nosuchjob")
