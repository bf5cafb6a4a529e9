"""The engine with real Celery worker processes, Postgres and Redis."""

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.utils import timezone

from jobs import lifecycle, sweeper
from jobs.models import Job, Tenant
from tests.faults.invariants import assert_invariants
from tests.tasks import effect_key
from tests.workers import Worker, wait_until


def wait_for_status(job: Job, *statuses: str, timeout: float = 30) -> Job:
    def done() -> bool:
        job.refresh_from_db()
        return job.status in statuses

    wait_until(done, timeout, what=f"job {job.id} to reach {statuses}")
    return job


def test_echo_job_succeeds_with_its_result_and_one_execution(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker_factory()
    job = lifecycle.submit(tenant, "examples.echo", {"hello": "world"}).job

    wait_for_status(job, "succeeded")

    assert job.result == {"hello": "world"}
    assert job.attempts == 1
    executions = list(job.executions.all())
    assert [(e.attempt, e.status) for e in executions] == [(1, "succeeded")]
    assert list(job.events.values_list("type", flat=True)) == ["created", "dispatched", "started", "succeeded"]


def effects(broker: redis.Redis, job: Job) -> dict[int, int]:
    """How many times the handler's side effect ran, per attempt."""
    out = {}
    for attempt in range(1, job.max_attempts + 1):
        value = broker.get(effect_key(job.id, attempt))
        if value is not None:
            out[attempt] = int(value)
    return out


def queue_key() -> str:
    return settings.BROKER_KEY_PREFIX + settings.CELERY_DEFAULT_QUEUE


def test_failing_job_succeeds_on_attempt_three_with_growing_backoff(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker_factory(beat=True)  # beat dispatches the retry once its backoff has passed
    job = lifecycle.submit(tenant, "examples.fail", {"fail_times": 2, "value": "done"}, max_attempts=5).job

    wait_for_status(job, "succeeded", "failed")

    assert job.status == "succeeded" and job.result == "done" and job.attempts == 3
    runs = list(job.executions.order_by("attempt"))
    assert [(e.attempt, e.status) for e in runs] == [(1, "failed"), (2, "failed"), (3, "succeeded")]
    delays = [e.data["delay_seconds"] for e in job.events.filter(type="retry_scheduled").order_by("id")]
    base = settings.JOB_RETRY_BASE_SECONDS
    # Immediate after the first failure, then base (±10% jitter): as specified.
    assert delays[0] == 0
    assert 0.9 * base <= delays[1] <= 1.1 * base
    # The rows show the gaps really happened, and grew.
    gap1 = (runs[1].started_at - runs[0].finished_at).total_seconds()
    gap2 = (runs[2].started_at - runs[1].finished_at).total_seconds()
    assert gap2 >= delays[1] > gap1


@pytest.mark.slow
def test_sigkilled_worker_job_is_stalled_requeued_and_completed_by_another_worker(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    doomed = worker_factory(concurrency=1)
    job = lifecycle.submit(tenant, "tests.effect", {"seconds": 3}).job
    wait_for_status(job, "running")
    wait_until(lambda: effects(broker, job).get(1) == 1, what="handler started")

    doomed.kill()
    worker_factory(concurrency=1, beat=True)  # its beat runs the sweeper

    wait_for_status(job, "succeeded", timeout=60)
    assert job.result == {"attempt": 2}
    assert job.stalled_count == 1 and job.attempts == 2
    runs = list(job.executions.order_by("attempt"))
    assert [(e.attempt, e.status) for e in runs] == [(1, "lost"), (2, "succeeded")]
    assert runs[0].worker == doomed.hostname and runs[1].worker != doomed.hostname
    assert effects(broker, job) == {1: 1, 2: 1}  # once per attempt
    assert job.events.filter(type="succeeded").count() == 1  # result written once
    assert job.events.filter(type="stalled").count() == 1
    assert job.events.filter(type="repaired", message="lease_expired").count() == 1
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py


def test_the_same_message_delivered_twice_runs_the_handler_once(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    job = lifecycle.submit(tenant, "tests.effect", {}).job  # no worker yet: the message waits
    job.refresh_from_db()
    assert job.status == "dispatched"
    message = broker.lindex(queue_key(), 0)
    assert message is not None and str(job.id).encode() in message
    broker.lpush(queue_key(), message)  # the very same message, twice
    assert broker.llen(queue_key()) == 2

    worker_factory()
    wait_for_status(job, "succeeded")
    wait_until(lambda: broker.llen(queue_key()) == 0, what="both deliveries consumed")

    assert effects(broker, job) == {1: 1}
    assert job.executions.count() == 1
    assert job.events.filter(type="started").count() == 1
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py


@pytest.mark.slow
def test_worker_whose_lease_was_taken_over_cannot_overwrite_the_new_result(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    worker_factory(concurrency=2)
    # The handler ignores cancellation and keeps running after losing its lease.
    job = lifecycle.submit(tenant, "tests.effect", {"seconds": 4, "ignore_cancel": True}, max_attempts=3).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="attempt 1 running")
    first_lease = Job.objects.get(id=job.id).lease_token

    # Expire the lease under the live handler and let the sweeper take it over.
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    report = sweeper.sweep()
    assert report.counts().get("running_lease_expired") == 1

    # Attempt 2 runs on the other pool process and finishes after attempt 1's write attempt.
    wait_for_status(job, "succeeded", timeout=60)
    wait_until(
        lambda: job.events.filter(type="stale_result_refused", attempt=1).exists(),
        timeout=30, what="attempt 1's late result refused",
    )
    job.refresh_from_db()
    assert job.result == {"attempt": 2}
    assert job.lease_token != first_lease
    assert job.events.filter(type="succeeded").count() == 1
    assert [(e.attempt, e.status) for e in job.executions.order_by("attempt")] == [(1, "lost"), (2, "succeeded")]
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py


def test_job_over_its_timeout_fails_with_a_timeout_error(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker_factory()
    job = lifecycle.submit(
        tenant, "examples.sleep", {"seconds": 30}, timeout_seconds=1, max_attempts=1
    ).job

    wait_for_status(job, "failed", timeout=60)

    assert job.error["type"] == "TimeoutError"
    assert [(e.attempt, e.status) for e in job.executions.all()] == [(1, "timed_out")]
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py


@pytest.mark.slow
def test_dispatched_job_whose_message_was_deleted_is_redispatched_and_completes(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    job = lifecycle.submit(tenant, "examples.echo", {"n": 7}).job
    assert broker.delete(queue_key()) == 1  # the only message is gone
    first_token = Job.objects.get(id=job.id).dispatch_token

    worker_factory(beat=True)
    wait_for_status(job, "succeeded", timeout=60)

    assert job.result == {"n": 7}
    assert job.executions.count() == 1
    assert job.events.filter(type="redispatched").count() == 1
    assert job.events.filter(type="repaired", message="dispatch_lost").count() == 1
    assert job.dispatch_token != first_token or job.dispatch_token is None
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py


@pytest.mark.slow
def test_worker_reuses_its_database_connections_across_jobs(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker = worker_factory(concurrency=2)
    warmup = [lifecycle.submit(tenant, "examples.echo", i).job for i in range(20)]
    wait_until(lambda: Job.objects.filter(id__in=[j.id for j in warmup], status="succeeded").count() == 20)

    def backends() -> set[tuple[int, object]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE application_name = %s",
                [worker.app_name],
            )
            return set(cursor.fetchall())

    before = backends()
    jobs = [lifecycle.submit(tenant, "examples.echo", i).job for i in range(200)]
    wait_until(lambda: Job.objects.filter(id__in=[j.id for j in jobs], status="succeeded").count() == 200, timeout=120)

    assert before and backends() == before


@pytest.mark.slow
def test_sigterm_lets_the_running_job_finish_and_leaves_nothing_running(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    worker = worker_factory(concurrency=1)
    job = lifecycle.submit(tenant, "tests.effect", {"seconds": 2}).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="handler started")

    assert worker.terminate(timeout=60) == 0  # Celery's warm shutdown waits for the job

    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"attempt": 1}
    assert not Job.objects.filter(status="running").exists()
    assert list(job.executions.values_list("status", flat=True)) == ["succeeded"]
    assert_invariants(accepted=[job.id])  # tests/faults/invariants.py
