"""Every job-level row of the stuck table, produced for real: seen by `monitor_jobs`
(exit 1) and `/health/jobs` (503), moved on by the sweeper with a `repaired` event,
then completed with nothing done twice."""

import os
import signal
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.db import connection

from jobs import lifecycle, sweeper
from jobs.models import Job, Tenant
from tests.monitoring.conftest import (
    db_past, effects, health, monitor, monitor_json, place_count, queue_key, repairs,
)
from tests.workers import Worker, wait_until

pytestmark = pytest.mark.slow


def wait_for_status(job: Job, *statuses: str, timeout: float = 60) -> Job:
    def reached() -> bool:
        job.refresh_from_db()
        return job.status in statuses

    wait_until(reached, timeout, what=f"job {job.id} to reach {statuses}")
    return job


def assert_stuck_in(place: str, job: Job) -> None:
    code, report = monitor_json()
    assert code == 1
    assert place_count(report, place) == (1, str(job.id))
    assert report["stuck_jobs"] == 1, report["places"]
    status, body = health()
    assert status == 503
    assert body == {"healthy": False, "stuck_jobs": 1, "stuck": {**{p: 0 for p in body["stuck"]}, place: 1}}
    assert set(body["stuck"]) == {p.name for p in sweeper.PLACES}


def assert_nothing_stuck() -> None:
    assert monitor()[0] == 0
    assert health()[0] == 200


def test_worker_killed_mid_job_is_seen_requeued_and_completed_once(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis, settings: Any
) -> None:
    # The re-dispatch below must outlive the next worker's boot on a loaded machine, or
    # that worker's startup sweep (rightly) re-dispatches it again: a second repair.
    settings.DISPATCH_DEADLINE_SECONDS = 120
    worker = monitored_worker()
    job = lifecycle.submit(tenant, "monitoring.nap", {"seconds": 60, "slow_attempts": 1}, max_attempts=3).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="attempt 1 running")
    worker.kill()
    wait_until(lambda: db_past(job, "lease_expires_at"), what="the dead worker's lease to expire")

    assert_stuck_in("running_lease_expired", job)
    report = sweeper.sweep()
    assert report.moved["running_lease_expired"] == [str(job.id)]
    assert repairs(job, "lease_expired") == 1
    assert_nothing_stuck()

    monitored_worker()
    wait_for_status(job, "succeeded")
    assert job.result == {"attempt": 2}
    assert effects(broker, job) == {1: 1, 2: 1}
    assert [(e.attempt, e.status) for e in job.executions.order_by("id")] == [(1, "lost"), (2, "succeeded")]
    assert job.events.filter(type="succeeded").count() == 1
    assert repairs(job) == 1


def test_lost_message_is_seen_redispatched_and_run_once(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis, settings: Any
) -> None:
    settings.DISPATCH_DEADLINE_SECONDS = 0.5
    job = lifecycle.submit(tenant, "monitoring.nap", {}).job  # no worker yet: the message waits
    job.refresh_from_db()
    assert job.status == "dispatched" and broker.llen(queue_key()) == 1
    broker.delete(queue_key())  # the message is lost
    wait_until(lambda: db_past(job, "dispatch_deadline"), what="the dispatch deadline to pass")

    assert_stuck_in("dispatched_message_lost", job)
    settings.DISPATCH_DEADLINE_SECONDS = 60
    old_token = job.dispatch_token
    report = sweeper.sweep()
    assert report.moved["dispatched_message_lost"] == [str(job.id)]
    job.refresh_from_db()
    assert job.status == "dispatched" and job.dispatch_token != old_token
    assert broker.llen(queue_key()) == 1
    assert repairs(job, "dispatch_lost") == 1
    assert_nothing_stuck()

    monitored_worker()
    wait_for_status(job, "succeeded")
    assert effects(broker, job) == {1: 1}
    assert job.executions.count() == 1 and job.events.filter(type="started").count() == 1
    assert repairs(job) == 1


def test_job_past_its_timeout_on_a_frozen_worker_is_timed_out_and_retried_once(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    frozen = monitored_worker()
    job = lifecycle.submit(
        tenant, "monitoring.nap", {"seconds": 60, "slow_attempts": 1}, timeout_seconds=1, max_attempts=2
    ).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="attempt 1 running")
    os.killpg(frozen.pid, signal.SIGSTOP)  # the worker and its pool freeze: no time limit, no heartbeat
    try:
        grace = max(5.0, min(60.0, 2.0))
        wait_until(lambda: db_past(job, "timeout_at", grace), timeout=60, what="timeout plus the hard-limit grace")

        assert_stuck_in("running_too_long", job)  # not also counted as an expired lease
        report = sweeper.sweep()
        assert report.moved["running_too_long"] == [str(job.id)]
        job.refresh_from_db()
        assert job.status in ("queued", "dispatched") and job.attempts == 1
        assert repairs(job, "running_too_long") == 1
        assert_nothing_stuck()
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)  # it wakes up; its late writes are fenced off

    monitored_worker(beat=True)  # beat dispatches the retry after its backoff
    wait_for_status(job, "succeeded")
    assert job.result == {"attempt": 2}
    assert effects(broker, job) == {1: 1, 2: 1}
    assert [(e.attempt, e.status) for e in job.executions.order_by("id")] == [(1, "timed_out"), (2, "succeeded")]
    assert job.events.filter(type="succeeded").count() == 1
    assert repairs(job) == 1


def test_execution_left_open_by_a_crashed_write_is_closed_as_lost(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    monitored_worker()
    job = lifecycle.submit(tenant, "monitoring.nap", {}).job
    wait_for_status(job, "succeeded")
    with connection.cursor() as cursor:  # the execution's closing write never happened
        cursor.execute(
            "UPDATE jobs_execution SET status = 'running', finished_at = NULL WHERE job_id = %s", [job.id]
        )

    assert_stuck_in("execution_left_running", job)
    report = sweeper.sweep()
    assert report.moved["execution_left_running"]
    assert repairs(job, "execution_left_running") == 1
    assert_nothing_stuck()

    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"attempt": 1}
    assert list(job.executions.values_list("status", flat=True)) == ["lost"]
    assert effects(broker, job) == {1: 1}
    assert sweeper.sweep().counts() == {}


def test_queued_job_nobody_dispatched_is_seen_and_dispatched_once(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis, settings: Any
) -> None:
    monitored_worker()  # a worker, but no beat: nothing dispatches a job whose delay ends
    settings.STUCK_QUEUED_SECONDS = 0.5
    job = lifecycle.submit(tenant, "monitoring.nap", {}, delay_seconds=0.2).job
    wait_until(lambda: db_past(job, "run_at", 0.5), what="the queued job to count as stuck")
    job.refresh_from_db()
    assert job.status == "queued"

    assert_stuck_in("queued_not_dispatched", job)
    report = sweeper.sweep()
    assert report.moved["queued_not_dispatched"] == [str(job.id)]
    assert repairs(job, "queued_not_dispatched") == 1

    wait_for_status(job, "succeeded")
    assert_nothing_stuck()
    assert effects(broker, job) == {1: 1}
    assert job.events.filter(type="dispatched").count() == 1
    assert repairs(job) == 1


def test_worker_restarted_under_its_name_recovers_its_job_before_the_lease_expires(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    long_lease = {"JOB_LEASE_SECONDS": "600"}
    first = monitored_worker(name="phoenix", env=long_lease)
    job = lifecycle.submit(tenant, "monitoring.nap", {"seconds": 60, "slow_attempts": 1}, max_attempts=3).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="attempt 1 running")
    job.refresh_from_db()
    lease_expires_at, first_lease = job.lease_expires_at, job.lease_token
    assert job.lease_owner == first.hostname
    first.kill()

    monitored_worker(name="phoenix", env=long_lease)
    wait_for_status(job, "succeeded")

    events = list(job.events.order_by("id"))
    types = [e.type for e in events]
    # Attempt 1, then (in one transaction) stalled + repaired + dispatched anew, then attempt 2.
    assert types[:3] == ["created", "dispatched", "started"]
    assert sorted(types[3:6]) == ["dispatched", "repaired", "stalled"]
    assert types[6:] == ["started", "succeeded"]
    repaired = events[types.index("repaired")]
    assert repaired.message == "worker_restarted"
    # Recovered by the restart, not by the lease sweeper: all of it happened (in
    # database time) before the first attempt's lease would have expired.
    assert events[-1].created_at < lease_expires_at
    first_execution = job.executions.get(lease_token=first_lease)
    assert first_execution.status == "lost" and first_execution.finished_at < lease_expires_at
    assert effects(broker, job) == {1: 1, 2: 1}
    assert job.result == {"attempt": 2}


def test_beat_sweeper_heals_a_killed_worker_with_nobody_watching(
    monitored_worker: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    doomed = monitored_worker()
    job = lifecycle.submit(tenant, "monitoring.nap", {"seconds": 60, "slow_attempts": 1}, max_attempts=3).job
    wait_until(lambda: effects(broker, job).get(1) == 1, what="attempt 1 running")
    job.refresh_from_db()
    assert job.lease_owner == doomed.hostname
    monitored_worker(beat=True)  # the platform as deployed: a worker and beat's periodic sweep
    doomed.kill()

    wait_for_status(job, "succeeded")
    assert repairs(job, "lease_expired") == 1 and repairs(job) == 1
    assert effects(broker, job) == {1: 1, 2: 1}
    assert job.events.filter(type="succeeded").count() == 1
    wait_until(lambda: monitor()[0] == 0 and health()[0] == 200, what="monitoring to see a healthy system")
