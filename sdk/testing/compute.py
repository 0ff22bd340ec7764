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

Results are checked on real jobs (`ComputeDriver.real_job` and `run`): the workload itself runs
(a cloud driver starts the training image's command, the bootstrap, on each node with the
environment the cloud gives it, and the nodes write their reports to the emulated object store),
and `result()` must return that report, field by field as worked out by hand from the job's
input, never a report left in the job's folder before it ran, and for a sharded index job the
sum of its shards' reports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from stackwise.errors import JobFailedError
from stackwise.jobs import ComputeBackend, JobHandle, JobState

Outcome = Literal["succeed", "fail", "hold"]


@dataclass(frozen=True)
class RealJob:
    """A spec whose job runs its real workload to success, and fields of the report that workload
    must write, with values worked out by hand from the job's input (not by running anything)."""

    spec: Any
    report: Mapping[str, Any]


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

    def real_job(self, workers: int = 1) -> RealJob:
        """A job whose workload really runs (its inputs in place where the job reads them).

        `workers` > 1: an index job of that many shards, every shard owning some of the documents,
        whose `report` is what the shards' reports sum to. Every driver should give one; one that
        does not skips the result checks, saying so."""
        pytest.skip(f"{type(self).__name__} gives no real job (ComputeDriver.real_job): results are not checked")

    def leave_stale_result(self, handle: JobHandle, report: Mapping[str, Any]) -> None:
        """Write `report` where the backend finds this job's result (and each shard's), as an earlier
        run under the same job name would have left it in an object store that keeps files. A
        backend whose job folders are always new does nothing."""

    def run(self, handle: JobHandle) -> None:
        """Run the real job's workload as its platform does, until it has ended: a cloud driver starts
        the image's command on each node with the cloud's environment and moves the job's state as the
        cloud does; a local backend runs its jobs itself."""


def _ids(backend: ComputeBackend) -> set[str]:
    return {info.id for info in backend.list(limit=500)}


def _status(handle: JobHandle) -> JobState:
    """`handle.status()`, which must be a JobState member (JobState is a str enum: a bare string such
    as "RUNNING" would pass `in (JobState.RUNNING, ...)`), and agree with `info().state`."""
    state = handle.status()
    assert type(state) is JobState, f"status() returned {state!r}, not a JobState"
    assert state is handle.info().state or state.terminal is False, "status() and info().state disagree"
    return state


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
        assert _status(handle) in (JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED)
        assert handle.id in _ids(backend)
        info = handle.info()
        assert info.kind == spec.kind
        assert info.spec.get("kind") == spec.kind
        driver.advance(handle, "succeed")
        assert handle.wait(timeout=driver.timeout).state is JobState.SUCCEEDED
        assert _status(handle) is JobState.SUCCEEDED

    def _run_real(self, driver: ComputeDriver, backend: ComputeBackend, job: RealJob) -> dict[str, Any]:
        """Submit and run `job`; its result once it SUCCEEDED, checked against the hand values."""
        handle = backend.submit(job.spec)
        # What an earlier run under this job name left: the result must be this run's own report.
        driver.leave_stale_result(handle, {**job.report, "documents": 999, "chunks": 999, "shards": 1})
        state = _status(handle)
        if state is not JobState.SUCCEEDED:  # a fast local job may be done already
            assert state in (JobState.PENDING, JobState.RUNNING)
            assert handle.outputs == {}, "a job that has not succeeded has no result yet"
        driver.run(handle)
        info = handle.wait(timeout=driver.timeout, poll=0.05, max_poll=0.5)
        assert info.state is JobState.SUCCEEDED, info.error
        assert info.ended_at is not None and info.error is None
        assert _status(handle) is JobState.SUCCEEDED
        report = handle.result(timeout=driver.timeout)
        assert {key: report.get(key) for key in job.report} == dict(job.report), \
            f"the job's result is not its workload's report: {report}"
        assert handle.outputs == report == info.outputs
        return report

    def test_wait_returns_success_with_the_workloads_own_report(self, driver: ComputeDriver,
                                                                  backend: ComputeBackend) -> None:
        job = driver.real_job()
        report = self._run_real(driver, backend, job)
        assert report.get("shards", 1) == 1

    def test_a_sharded_jobs_result_sums_its_shards_reports(self, driver: ComputeDriver,
                                                           backend: ComputeBackend) -> None:
        job = driver.real_job(workers=2)
        assert job.spec.workers == 2 and job.report["shards"] == 2
        self._run_real(driver, backend, job)

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
            assert _status(handle) in (JobState.PENDING, JobState.RUNNING)
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
