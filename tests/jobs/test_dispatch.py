"""Fair dispatch: deficit round robin, limits that cannot leak, concurrent dispatchers."""

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from jobs import dispatch, lifecycle
from jobs.dispatch import _Tenant, plan
from jobs.models import Job, JobEvent, Tenant
from tests.workers import Worker, wait_until


def ids(n: int) -> list[uuid.UUID]:
    return sorted(uuid.uuid4() for _ in range(n))


class TestPlan:
    def test_weights_share_capacity_in_proportion(self) -> None:
        a, b = ids(2)
        tenants = [_Tenant(a, weight=1, free=10**6, deficit=0), _Tenant(b, weight=3, free=10**6, deficit=0)]
        pointer = None
        got: Counter[uuid.UUID] = Counter()
        for _ in range(400):  # one freed slot at a time, as refills see it
            alloc, pointer = plan(tenants, pointer, free=1, quantum=25, max_deficit=100)
            got.update(alloc)
        assert got[a] == 100 and got[b] == 300

    def test_a_saturated_tenant_is_skipped_and_the_rest_go_to_others(self) -> None:
        a, b = ids(2)
        tenants = [_Tenant(a, weight=1, free=2, deficit=0), _Tenant(b, weight=1, free=50, deficit=0)]
        alloc, _ = plan(tenants, None, free=30, quantum=25, max_deficit=100)
        assert alloc == {a: 2, b: 28}

    def test_deficit_is_capped(self) -> None:
        (a,) = ids(1)
        tenants = [_Tenant(a, weight=10, free=10**6, deficit=0)]
        alloc, _ = plan(tenants, None, free=10**6, quantum=25, max_deficit=100)
        assert alloc[a] >= 100  # keeps being revisited while capacity lasts
        assert tenants[0].deficit <= 100

    def test_nothing_to_do_without_capacity_or_tenants(self) -> None:
        (a,) = ids(1)
        assert plan([], None, 5, 25, 100) == ({}, None)
        assert plan([_Tenant(a, 1, 5, 0)], None, 0, 25, 100)[0] == {}


def queue_jobs(tenant: Tenant, n: int, task: str = "examples.echo", payload: Any = None) -> None:
    """Insert queued jobs directly (a backlog), without dispatching them."""
    Job.objects.bulk_create(
        [
            Job(tenant=tenant, task=task, queue="batchplatform", payload=payload, payload_hash="h",
                max_attempts=3, timeout_seconds=60)
            for _ in range(n)
        ],
        batch_size=1000,
    )


@pytest.mark.django_db(transaction=True)
def test_weights_one_and_three_are_dispatched_one_to_three(
    tenant_factory: Callable[..., Tenant], settings: Any
) -> None:
    settings.DISPATCH_MAX_ACTIVE = 4
    light = tenant_factory(weight=1, concurrency_limit=100)
    heavy = tenant_factory(weight=3, concurrency_limit=100)
    queue_jobs(light, 400)
    queue_jobs(heavy, 400)

    while Job.objects.filter(status="succeeded").count() < 400:
        with transaction.atomic():
            dispatch.run_cycle()
        # Finish what is dispatched through the normal transitions; each finish refills.
        for job_id, token in Job.objects.filter(status="dispatched").values_list("id", "dispatch_token"):
            attempt = lifecycle.start(job_id, token, "w@test")
            assert attempt is not None
            lifecycle.succeed(job_id, attempt.lease_token, None)
    order = list(
        JobEvent.objects.filter(type="dispatched").order_by("id").values_list("tenant_id", flat=True)[:400]
    )
    counts = Counter(order[:400])
    ratio = counts[heavy.id] / counts[light.id]
    assert 2.7 <= ratio <= 3.3, counts  # tolerance ±10% over 400 dispatches


@pytest.mark.django_db(transaction=True)
def test_concurrent_dispatchers_never_dispatch_twice_or_exceed_limits(
    tenant_factory: Callable[..., Tenant], settings: Any
) -> None:
    settings.DISPATCH_MAX_ACTIVE = 1000
    tenants = [tenant_factory(concurrency_limit=limit) for limit in (3, 5, 7)]
    for t in tenants:
        queue_jobs(t, 100)
    barrier = threading.Barrier(6)
    results: list[list[dispatch.Dispatched]] = []

    def run(wait: bool) -> None:
        try:
            barrier.wait()
            with transaction.atomic():
                results.append(dispatch.run_cycle(wait=wait))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dispatched = [row.id for rows in results for row in rows]
    assert len(dispatched) == len(set(dispatched)) == 15
    for t in tenants:
        assert Job.objects.filter(tenant=t, status="dispatched").count() == t.concurrency_limit


@pytest.mark.django_db(transaction=True)
def test_global_capacity_is_never_exceeded(tenant_factory: Callable[..., Tenant], settings: Any) -> None:
    settings.DISPATCH_MAX_ACTIVE = 9
    for _ in range(4):
        queue_jobs(tenant_factory(concurrency_limit=50), 20)
    assert dispatch.dispatch_ready() == 9
    assert dispatch.dispatch_ready() == 0
    assert Job.objects.filter(status="dispatched").count() == 9


@pytest.mark.slow
def test_a_small_tenant_starts_before_a_big_backlog_drains(
    worker_factory: Callable[..., Worker], tenant_factory: Callable[..., Tenant]
) -> None:
    big = tenant_factory(slug="big", concurrency_limit=4)
    small = tenant_factory(slug="small", concurrency_limit=4)
    queue_jobs(big, 5000)
    worker_factory(concurrency=2)
    with transaction.atomic():
        dispatch.run_cycle()
    wait_until(lambda: Job.objects.filter(tenant=big, status="succeeded").count() >= 20, timeout=60)

    small_jobs = [lifecycle.submit(small, "examples.echo", i).job for i in range(10)]
    wait_until(
        lambda: Job.objects.filter(tenant=small, status="succeeded").count() == 10, timeout=60,
        what="small tenant's jobs",
    )

    # Each small job that had a free slot when submitted (the first `limit` of them)
    # started before the big tenant finished 2 x its limit more jobs.
    first_small = Job.objects.filter(tenant=small).order_by("started_at")[: small.concurrency_limit]
    for job in first_small:
        big_finished_meanwhile = Job.objects.filter(
            tenant=big, finished_at__gt=job.created_at, finished_at__lt=job.started_at
        ).count()
        assert big_finished_meanwhile < 2 * big.concurrency_limit
    lifecycle_cancel_backlog(big)


def lifecycle_cancel_backlog(tenant: Tenant) -> None:
    with transaction.atomic():
        lifecycle.cancel_jobs(Job.objects.filter(tenant=tenant), "test over")


@pytest.mark.slow
def test_a_tenant_never_has_more_than_its_limit_active_with_several_workers(
    worker_factory: Callable[..., Worker], tenant_factory: Callable[..., Tenant]
) -> None:
    tenant = tenant_factory(concurrency_limit=3)
    worker_factory(concurrency=2)
    worker_factory(concurrency=2)
    jobs = [lifecycle.submit(tenant, "examples.sleep", {"seconds": 0.05, "value": i}).job for i in range(60)]

    peak_active = peak_running = 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE status IN ('dispatched', 'running')), "
                "count(*) FILTER (WHERE status = 'running'), "
                "count(*) FILTER (WHERE status = 'succeeded') FROM jobs_job WHERE tenant_id = %s",
                [tenant.id],
            )
            active, running, done = cursor.fetchone()
            peak_active, peak_running = max(peak_active, active), max(peak_running, running)
            if done == len(jobs):
                break
            time.sleep(0.005)
    assert peak_active <= 3 and peak_running <= 3
    assert peak_running >= 2  # the workers really ran the tenant's jobs in parallel


@pytest.mark.slow
def test_a_killed_worker_cannot_leak_a_limit_of_one(
    worker_factory: Callable[..., Worker], tenant_factory: Callable[..., Tenant]
) -> None:
    tenant = tenant_factory(concurrency_limit=1)
    doomed = worker_factory(concurrency=1)
    first = lifecycle.submit(tenant, "examples.sleep", {"seconds": 30, "value": "first"}).job
    rest = [lifecycle.submit(tenant, "examples.echo", i).job for i in range(3)]
    wait_until(lambda: Job.objects.get(id=first.id).status == "running")
    assert Job.objects.filter(id__in=[j.id for j in rest], status="queued").count() == 3

    doomed.kill()
    Job.objects.filter(id=first.id).update(payload={"seconds": 0.1, "value": "first"})  # finish fast next time
    worker_factory(concurrency=1, beat=True)

    wait_until(
        lambda: Job.objects.filter(tenant=tenant, status="succeeded").count() == 4, timeout=60,
        what="the slot to come back and all work to complete",
    )
    assert Job.objects.get(id=first.id).stalled_count == 1
