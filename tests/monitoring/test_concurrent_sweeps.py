"""Two sweepers at once, on the same stuck rows: each item moves exactly once."""

import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import redis
from django.db import connection

from jobs import lifecycle, sweeper
from jobs.models import Job, JobEvent, Tenant
from tests.conftest import purge_queues
from tests.monitoring.conftest import db_past, queue_key
from tests.workers import wait_until

N = 15
BIG = {"concurrency_limit": 1000}


def two_sweepers_at_once() -> list[sweeper.SweepReport]:
    barrier = threading.Barrier(2)
    reports: list[sweeper.SweepReport] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            reports.append(sweeper.sweep())
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(reports) == 2 and all(not r.errors for r in reports), [r.errors for r in reports]
    print("moved by each sweeper:", [r.counts() for r in reports])
    return reports


def assert_each_moved_once(place: str, jobs: list[Job], reports: list[sweeper.SweepReport]) -> None:
    moved = [r.moved.get(place, []) for r in reports]
    if place != "execution_left_running":  # that place reports execution ids
        assert sorted(moved[0] + moved[1]) == sorted(str(j.id) for j in jobs), place
    else:
        assert len(moved[0]) + len(moved[1]) == len(jobs)
    per_job = Counter(
        JobEvent.objects.filter(job_id__in=[j.id for j in jobs], type="repaired").values_list("job_id", flat=True)
    )
    assert sorted(per_job.values()) == [1] * len(jobs), f"{place}: repaired events per job {per_job}"


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_at_once_move_each_stuck_running_dispatched_and_execution_item_once(
    tenant_factory: Callable[..., Tenant], settings: Any, broker: redis.Redis
) -> None:
    """N items in three places, each produced by the real transitions, with nobody
    left to finish them (the test process plays the worker that died)."""
    purge_queues(broker)
    stuck: dict[str, list[Job]] = {}

    settings.JOB_LEASE_SECONDS = 0.05  # started here with a tiny lease, never renewed
    t = tenant_factory(**BIG)
    jobs = [lifecycle.submit(t, "examples.echo", i, max_attempts=3).job for i in range(N)]
    for job in jobs:
        job.refresh_from_db()
        assert lifecycle.start(job.id, job.dispatch_token, "dead-worker") is not None
    stuck["running_lease_expired"] = jobs

    settings.JOB_LEASE_SECONDS = 600  # finished, then the execution's closing write "lost"
    t = tenant_factory(**BIG)
    jobs = [lifecycle.submit(t, "examples.echo", i).job for i in range(N)]
    for job in jobs:
        job.refresh_from_db()
        attempt = lifecycle.start(job.id, job.dispatch_token, "w")
        assert attempt is not None and lifecycle.succeed(job.id, attempt.lease_token, 1).won
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_execution SET status = 'running', finished_at = NULL WHERE job_id = ANY(%s)",
            [[j.id for j in jobs]],
        )
    stuck["execution_left_running"] = jobs

    settings.DISPATCH_DEADLINE_SECONDS = 0.05  # dispatched, and the messages deleted
    t = tenant_factory(**BIG)
    stuck["dispatched_message_lost"] = [lifecycle.submit(t, "examples.echo", i).job for i in range(N)]
    broker.delete(queue_key())
    settings.DISPATCH_DEADLINE_SECONDS = 600  # re-dispatched jobs must not count as lost again

    wait_until(lambda: db_past(stuck["dispatched_message_lost"][-1], "dispatch_deadline"), what="deadlines")
    wait_until(lambda: db_past(stuck["running_lease_expired"][-1], "lease_expires_at"), what="leases to expire")
    counts = {p.name: p.measure()[0] for p in sweeper.PLACES}
    assert {p: counts[p] for p in stuck} == {p: N for p in stuck}

    reports = two_sweepers_at_once()

    for place, jobs in stuck.items():
        assert_each_moved_once(place, jobs, reports)
    for event_type in ("stalled", "redispatched"):
        per_job = Counter(JobEvent.objects.filter(type=event_type).values_list("job_id", flat=True))
        assert sorted(per_job.values()) == [1] * N, event_type
    assert {p.name: p.measure()[0] for p in sweeper.PLACES if p.name in stuck} == {p: 0 for p in stuck}
    purge_queues(broker)


@pytest.mark.django_db(transaction=True)
def test_two_sweepers_at_once_dispatch_each_forgotten_queued_job_once(
    tenant_factory: Callable[..., Tenant], settings: Any, broker: redis.Redis
) -> None:
    purge_queues(broker)
    settings.STUCK_QUEUED_SECONDS = 0.05
    t = tenant_factory(**BIG)
    # The delay outlasts the loop, so no later submit's dispatch cycle picks them up.
    jobs = [lifecycle.submit(t, "examples.echo", i, delay_seconds=2).job for i in range(N)]
    wait_until(lambda: db_past(jobs[-1], "run_at", 0.1), what="every job to count as stuck")
    place = next(p for p in sweeper.PLACES if p.name == "queued_not_dispatched")
    assert place.measure()[0] == N

    reports = two_sweepers_at_once()

    assert_each_moved_once("queued_not_dispatched", jobs, reports)
    assert Job.objects.filter(id__in=[j.id for j in jobs], status="dispatched").count() == N
    per_job = Counter(JobEvent.objects.filter(type="dispatched").values_list("job_id", flat=True))
    assert sorted(per_job.values()) == [1] * N
    assert broker.llen(queue_key()) == N
    purge_queues(broker)
