"""Process faults at exact points: pool children killed, crashes between two steps,
time limits, warm shutdown cut short. Each test ends with assert_invariants().

Covered elsewhere (same fault, not repeated here): a whole worker SIGKILLed
mid-task (tests/jobs/test_runner.py), a plain warm shutdown that lets the job
finish (same file), duplicate delivery of plain jobs and batch children
(tests/jobs/test_runner.py, tests/batches/test_workers.py).
"""

import os
import signal
from collections.abc import Callable

import pytest

from jobs import lifecycle
from jobs.models import Job, Tenant
from tests.faults.conftest import wait_for, fault_worker, wait_all, wait_status
from tests.faults.invariants import assert_invariants
from tests.faults.tasks import read_pid
from tests.workers import Worker

pytestmark = pytest.mark.slow


def runs(job: Job) -> list[tuple[int, str]]:
    return [(e.attempt, e.status) for e in job.executions.order_by("id")]


def pid_of(job_id: object, attempt: int) -> int:
    value = wait_for(lambda: read_pid(job_id, attempt), 30, what=f"attempt {attempt} to start")
    return int(value)  # type: ignore[arg-type]


def test_killed_pool_child_is_requeued_by_celery_refused_at_start_and_recovered_by_the_lease_sweep(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker = fault_worker(worker_factory, concurrency=2, beat=True)
    job = lifecycle.submit(tenant, "faults.sleep", {"first_seconds": 30, "seconds": 0.2}, max_attempts=3).job
    child = pid_of(job.id, 1)
    assert child in worker.child_pids() and child != worker.pid

    os.kill(child, signal.SIGKILL)  # one pool process, not the worker

    job = wait_status(job.id, "succeeded")
    assert worker.proc.poll() is None, "the worker itself survives"
    assert runs(job) == [(1, "lost"), (2, "succeeded")]
    assert job.result == {"attempt": 2} and job.stalled_count == 1
    assert job.events.filter(type="repaired", message="lease_expired").count() == 1
    wait_for(lambda: "WorkerLostError" in worker.log(), 30, what="Celery to report the lost pool process")
    # task_reject_on_worker_lost put the message back; its redelivery lost the start CAS.
    wait_for(lambda: "'stale'" in worker.log(), 30, what="the redelivered message refused at start")
    assert_invariants(accepted=[job.id])


def test_crash_right_after_the_finish_commit_counts_the_job_once_and_the_redelivery_does_nothing(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=1)
    # Every pool process dies right after committing a result: the message is never acked.
    crashing = fault_worker(worker_factory, concurrency=1, env={"FAILPOINTS": "after_finish_commit=kill"})
    jobs = [lifecycle.submit(tenant, "examples.echo", {"n": i}).job.id for i in range(3)]

    wait_for(lambda: Job.objects.filter(id=jobs[0], status="succeeded").exists(), 60, what="first job")
    wait_for(lambda: "WorkerLostError" in crashing.log(), 30, what="the pool process to die after its commit")
    fault_worker(worker_factory, concurrency=1, beat=True)  # a healthy worker finishes the rest

    wait_all(jobs, "succeeded")
    for job in Job.objects.filter(id__in=jobs):
        assert runs(job) == [(1, "succeeded")], "the redelivered message must not run the job again"
        assert job.result == {"n": jobs.index(job.id)}
    assert_invariants(accepted=jobs)


def test_crash_after_dispatch_commit_before_the_message_is_published_is_redispatched(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=1)
    # The pool process dies in the refill after a finish: the next job is claimed
    # (dispatched, committed) but its message is never sent.
    fault_worker(worker_factory, concurrency=1, env={"FAILPOINTS": "before_publish=kill"})
    jobs = [lifecycle.submit(tenant, "examples.echo", {"n": i}).job.id for i in range(3)]
    wait_for(lambda: Job.objects.filter(id=jobs[0], status="succeeded").exists(), 60, what="first job")
    wait_status(jobs[1], "dispatched")
    fault_worker(worker_factory, concurrency=1, beat=True)  # its sweeper finds the silent dispatch

    wait_all(jobs, "succeeded")
    assert Job.objects.get(id=jobs[1]).events.filter(type="redispatched").exists()
    for job in Job.objects.filter(id__in=jobs):
        assert runs(job) == [(1, "succeeded")]
    assert_invariants(accepted=jobs)


def test_crash_after_delivery_before_start_is_redispatched_with_a_new_token(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    doomed = fault_worker(worker_factory, concurrency=1, env={"FAILPOINTS": "before_start=kill"})
    job = lifecycle.submit(tenant, "examples.echo", {"x": 1}).job
    wait_for(lambda: "WorkerLostError" in doomed.log(), 30, what="the pool process to die before start")
    first_token = Job.objects.get(id=job.id).dispatch_token
    doomed.kill()  # its reserved message stays unacked in Redis (visibility timeout: an hour)

    fault_worker(worker_factory, concurrency=1, beat=True)

    job = wait_status(job.id, "succeeded")
    assert runs(job) == [(1, "succeeded")]
    assert job.events.filter(type="redispatched").count() >= 1
    assert job.events.filter(type="repaired", message="dispatch_lost").count() >= 1
    assert first_token is not None
    assert_invariants(accepted=[job.id])


def test_handler_ignoring_the_soft_limit_is_stopped_by_the_hard_limit_and_timed_out_once(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker = fault_worker(worker_factory, concurrency=1, beat=True)
    job = lifecycle.submit(
        tenant, "faults.ignore_soft_limit", {"seconds": 120}, timeout_seconds=1, max_attempts=1
    ).job
    child = pid_of(job.id, 1)

    job = wait_status(job.id, "failed", timeout=90)

    assert "Hard time limit" in worker.log() or "TimeLimitExceeded" in worker.log()
    assert child not in worker.child_pids(), "the hard limit replaced the pool process"
    assert job.error["type"] == "TimeoutError"
    assert runs(job) == [(1, "timed_out")]
    assert job.events.filter(type="timed_out").count() == 1
    assert_invariants(accepted=[job.id])


def test_a_job_that_always_fails_ends_failed_after_exactly_max_attempts_executions(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    fault_worker(worker_factory, concurrency=2, beat=True)  # beat dispatches each retry after its backoff
    job = lifecycle.submit(tenant, "examples.fail", {"fail_times": -1}, max_attempts=3).job

    job = wait_status(job.id, "failed", timeout=90)

    assert job.attempts == 3
    assert runs(job) == [(1, "failed"), (2, "failed"), (3, "failed")]
    assert job.events.filter(type="retry_scheduled").count() == 2
    assert job.events.filter(type="failed").count() == 1
    assert job.error["type"] == "RuntimeError"
    assert_invariants(accepted=[job.id])


def test_sigterm_then_sigkill_during_a_long_task_is_recovered_never_left_running(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    doomed = fault_worker(worker_factory, concurrency=1)
    job = lifecycle.submit(tenant, "faults.sleep", {"first_seconds": 60, "seconds": 0.2}, max_attempts=3).job
    pid_of(job.id, 1)

    os.kill(doomed.pid, signal.SIGTERM)  # warm shutdown: waits for the running task...
    wait_for(lambda: "warm shutdown" in doomed.log().lower(), 30, what="warm shutdown to begin")
    assert Job.objects.get(id=job.id).status == "running"
    doomed.kill()  # ...but the deploy gives up and kills it
    fault_worker(worker_factory, concurrency=1, beat=True)

    job = wait_status(job.id, "succeeded")
    assert runs(job) == [(1, "lost"), (2, "succeeded")]
    assert not Job.objects.filter(status="running").exists()
    assert_invariants(accepted=[job.id])
