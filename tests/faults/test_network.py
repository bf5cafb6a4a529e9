"""Broker and database faults: Redis restarted empty, Redis stalled, the worker's
Postgres connection cut or its backend terminated. Each ends with assert_invariants().

Redis faults use our own `redis-server` (never the machine's), optionally behind a
TCP proxy; Postgres faults put a proxy between one worker and the database.
"""

import time
from collections.abc import Callable

import pytest
from django.conf import settings
from django.db import connection

from jobs import lifecycle, sweeper
from jobs.models import Job, JobEvent, Tenant
from tests.faults.conftest import (
    wait_for,
    RedisServer, database_url_via, fault_worker, use_broker, wait_all, wait_status,
)
from tests.faults.invariants import assert_invariants
from tests.faults.proxy import Proxy
from tests.faults.tasks import read_pid
from tests.workers import Worker

pytestmark = pytest.mark.slow


def runs(job_id: object) -> list[tuple[int, str]]:
    return [(e.attempt, e.status) for e in Job.objects.get(id=job_id).executions.order_by("id")]


def test_redis_restarted_empty_while_jobs_are_dispatched_loses_nothing(
    worker_factory: Callable[..., Worker], tenant: Tenant, redis_server: RedisServer
) -> None:
    env = {"REDIS_URL": redis_server.url, "DISPATCH_DEADLINE_SECONDS": "2"}
    with use_broker(redis_server.url):
        fault_worker(worker_factory, concurrency=2, beat=True, env=env)
        jobs = [lifecycle.submit(tenant, "faults.sleep", {"seconds": 1}).job.id for _ in range(8)]
        wait_for(lambda: Job.objects.filter(id__in=jobs, status="running").count() >= 1, 30, what="a job running")
        waiting = Job.objects.filter(id__in=jobs, status="dispatched").count()
        assert waiting >= 4  # their messages are in Redis only

        redis_server.restart()  # every message, reserved or not, is gone

        wait_all(jobs, "succeeded", timeout=120)
    assert JobEvent.objects.filter(job_id__in=jobs, type="redispatched").count() >= waiting - 2
    for job_id in jobs:
        assert [s for _, s in runs(job_id)].count("succeeded") == 1
    assert_invariants(accepted=jobs)


def test_redis_stalled_longer_than_the_lease_costs_no_lease_and_no_duplicate(
    worker_factory: Callable[..., Worker], tenant: Tenant, redis_server: RedisServer,
    proxies: Callable[[str, int], Proxy],
) -> None:
    proxy = proxies("127.0.0.1", redis_server.port)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    with use_broker(redis_server.url):
        fault_worker(worker_factory, concurrency=2, beat=True, env={"REDIS_URL": via_proxy})
        jobs = [lifecycle.submit(tenant, "faults.sleep", {"seconds": 7}).job.id for _ in range(4)]
        wait_for(lambda: Job.objects.filter(id__in=jobs, status="running").count() == 2, 30, what="two running")

        assert proxy.connections >= 1, "the worker talks to Redis through the proxy"
        proxy.stall()  # the broker hangs: no acks, no deliveries, no beat ticks
        time.sleep(2.5 * settings.JOB_LEASE_SECONDS)
        # Heartbeats go to Postgres: a sweep now (from here, beat is stalled) finds
        # every lease alive.
        report = sweeper.sweep()
        assert "running_lease_expired" not in report.counts(), report.counts()
        assert Job.objects.filter(id__in=jobs, status="running").count() == 2
        assert not JobEvent.objects.filter(job_id__in=jobs, type="stalled").exists()
        proxy.resume()

        wait_all(jobs, "succeeded", timeout=120)
    for job_id in jobs:
        assert runs(job_id) == [(1, "succeeded")]
    assert_invariants(accepted=jobs)


def test_postgres_cut_during_heartbeats_loses_the_lease_and_the_stale_result_is_refused(
    worker_factory: Callable[..., Worker], tenant: Tenant,
    proxies: Callable[[str, int], Proxy],
) -> None:
    s = connection.settings_dict
    proxy = proxies(s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))
    # The worker behind the proxy runs attempt 1 and ignores cancellation (only fencing stops its write).
    cut_off = fault_worker(worker_factory, concurrency=1, env={"DATABASE_URL": database_url_via(proxy.port)})
    job = lifecycle.submit(
        tenant, "faults.sleep", {"first_seconds": 6, "seconds": 0.5, "stubborn": True}, max_attempts=3
    ).job
    wait_for(lambda: read_pid(job.id, 1), 30, what="attempt 1 running")
    healthy = fault_worker(worker_factory, concurrency=1, beat=True)  # its sweeper takes the lease over

    proxy.cut()  # every heartbeat now fails
    wait_for(lambda: read_pid(job.id, 2), 60, what="attempt 2 started elsewhere")
    proxy.resume()

    job = wait_status(job.id, "succeeded")
    wait_for(
        lambda: job.events.filter(type="stale_result_refused", attempt=1).exists(), 60,
        what="attempt 1's late result refused",
    )
    job.refresh_from_db()
    assert job.result == {"attempt": 2}
    assert runs(job.id) == [(1, "lost"), (2, "succeeded")]
    assert job.executions.order_by("id").last().worker == healthy.hostname
    assert job.events.filter(type="lock_extension_failed", attempt=1).exists()
    assert job.events.filter(type="succeeded").count() == 1
    assert cut_off.proc.poll() is None
    assert_invariants(accepted=[job.id])


def test_postgres_backend_terminated_before_the_finish_write_is_retried_once(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    # The pool process pauses just before writing its result: its backend is killed then.
    worker = fault_worker(worker_factory, concurrency=1, env={"FAILPOINTS": "before_finish=sleep:1.5"})
    job = lifecycle.submit(tenant, "examples.echo", {"v": 1}).job
    wait_status(job.id, "running")

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s",
            [worker.app_name],
        )
        terminated = cursor.fetchone()[0]
    assert terminated >= 1

    job = wait_status(job.id, "succeeded")
    assert job.result == {"v": 1}
    assert runs(job.id) == [(1, "succeeded")]
    assert job.events.filter(type="succeeded").count() == 1
    assert worker.proc.poll() is None
    assert_invariants(accepted=[job.id])


def test_broker_connections_reset_mid_run_lose_nothing(
    worker_factory: Callable[..., Worker], tenant: Tenant, redis_server: RedisServer,
    proxies: Callable[[str, int], Proxy],
) -> None:
    proxy = proxies("127.0.0.1", redis_server.port)
    via_proxy = f"redis://127.0.0.1:{proxy.port}/0"
    with use_broker(redis_server.url):
        fault_worker(worker_factory, concurrency=2, beat=True, env={"REDIS_URL": via_proxy})
        jobs = [lifecycle.submit(tenant, "faults.sleep", {"seconds": 1}).job.id for _ in range(8)]
        for _ in range(2):
            wait_for(lambda: Job.objects.filter(id__in=jobs, status="running").exists(), 60, what="a job running")
            assert proxy.connections >= 1
            proxy.reset()  # RST on every broker connection of the worker (and its beat)
            time.sleep(1.5)

        # Reserved messages die with their connection (unacked until the visibility
        # timeout); the dispatch deadline brings those jobs back.
        wait_all(jobs, "succeeded", timeout=120)
    for job_id in jobs:
        assert [s for _, s in runs(job_id)].count("succeeded") == 1
    assert_invariants(accepted=jobs)


def test_worker_postgres_connections_reset_again_and_again_each_job_finishes_once(
    worker_factory: Callable[..., Worker], tenant: Tenant, proxies: Callable[[str, int], Proxy],
) -> None:
    s = connection.settings_dict
    proxy = proxies(s["HOST"] or "127.0.0.1", int(s["PORT"] or 5432))
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=4)
    # Starts, heartbeats, finishes and refills of this worker all cross the proxy.
    fault_worker(worker_factory, concurrency=2, env={"DATABASE_URL": database_url_via(proxy.port)})
    fault_worker(worker_factory, concurrency=1, beat=True)  # a healthy sweeper
    jobs = [lifecycle.submit(tenant, "faults.sleep", {"seconds": 0.2 * (i % 4)}).job.id for i in range(40)]

    for _ in range(6):  # RST on every connection, wherever its statements happen to be
        wait_for(lambda: proxy.connections >= 1, 30, what="the worker connected through the proxy")
        time.sleep(0.7)
        proxy.reset()

    wait_all(jobs, "succeeded", timeout=180)
    assert proxy.accepted > 3, "the worker reconnected after the resets"
    assert JobEvent.objects.filter(job_id__in=jobs, type="succeeded").count() == len(jobs)
    assert_invariants(accepted=jobs)
