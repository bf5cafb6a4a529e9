"""Batches and waits with real Celery worker processes, Postgres, Redis and HTTP.

Each test ends with the architecture's invariants for batches: counters equal a
recount of the children, every child made exactly one terminal transition, each
waitpoint completed once, and nothing left waiting or processing.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection
from django.db.models import Count

import tests.batches.tasks  # noqa: F401  (registers the test handlers in this process too)
from batches import intake, lifecycle
from batches.models import Batch, Waitpoint
from jobs import lifecycle as jobs_lifecycle
from jobs import sweeper
from jobs.models import ApiKey, Job, JobEvent, Tenant
from tests.batches.conftest import TASK_MODULES, Gunicorn, ndjson, post_stream
from tests.faults.invariants import assert_invariants
from tests.workers import Worker, wait_until

WORKER_ENV = {"TASK_MODULES": TASK_MODULES}


def start_workers(worker_factory: Callable[..., Worker], **kwargs: Any) -> Worker:
    env = {**WORKER_ENV, **kwargs.pop("env", {})}
    return worker_factory(env=env, **kwargs)


def wait_batch(batch_id: uuid.UUID, *statuses: str, timeout: float = 120) -> Batch:
    wait_until(
        lambda: Batch.objects.filter(id=batch_id, status__in=statuses).exists(),
        timeout, interval=0.2, what=f"batch {batch_id} to reach {statuses}",
    )
    return Batch.objects.get(id=batch_id)


def wait_job(job_id: uuid.UUID, *statuses: str, timeout: float = 120) -> Job:
    try:
        wait_until(
            lambda: Job.objects.filter(id=job_id, status__in=statuses).exists(),
            timeout, interval=0.1, what=f"job {job_id} to reach {statuses}",
        )
    except AssertionError:
        job = Job.objects.get(id=job_id)
        batches = list(Batch.objects.filter(parent_id=job_id).values())
        children = dict(
            Job.objects.filter(batch__parent_id=job_id).values_list("status").annotate(n=Count("id")).order_by()
        )
        events = list(job.events.values_list("type", "message"))
        raise AssertionError(f"job {job.status} {job.error}; events {events}; batches {batches}; children {children}")
    return Job.objects.get(id=job_id)


def recount(batch_id: uuid.UUID) -> tuple[int, int, int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled')), "
            "count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'), "
            "count(*) FILTER (WHERE status = 'cancelled') FROM jobs_job WHERE batch_id = %s",
            [batch_id],
        )
        return cursor.fetchone()


def assert_batch_invariants(batch: Batch) -> None:
    batch.refresh_from_db()
    counters = (batch.completed_count, batch.succeeded_count, batch.failed_count, batch.cancelled_count)
    assert counters == recount(batch.id), "counters must equal a recount of the children"
    assert Job.objects.filter(batch=batch).count() == batch.enqueued_count
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT j.id, count(e.id) FROM jobs_job j LEFT JOIN jobs_jobevent e ON e.job_id = j.id "
            "AND e.type IN ('succeeded', 'failed', 'cancelled', 'timed_out') "
            "WHERE j.batch_id = %s AND j.status IN ('succeeded', 'failed', 'cancelled') "
            "GROUP BY j.id HAVING count(e.id) <> 1",
            [batch.id],
        )
        assert cursor.fetchall() == [], "each finished child made exactly one terminal transition"


def assert_nothing_stuck() -> None:
    assert not Job.objects.filter(status="waiting").exists()
    assert not Batch.objects.filter(status__in=["pending", "processing"]).exists()
    assert not Waitpoint.objects.filter(status="pending", batch__isnull=False).exists()


def api_key(tenant: Tenant) -> str:
    return ApiKey.generate(tenant)[1]


# --- 1. a streamed 1,000-item batch ---------------------------------------------------


@pytest.mark.slow
def test_streamed_thousand_item_batch_completes_with_results_in_index_order(
    worker_factory: Callable[..., Worker], live_server: Any, tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=50)
    start_workers(worker_factory, concurrency=4)
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "batch")
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=1000, waitpoint=waitpoint).batch
    body = ndjson([{"payload": {"i": i}} for i in range(1000)])
    port = int(live_server.url.rsplit(":", 1)[1])

    status, answer = post_stream(
        port, f"/api/v1/batches/{batch.id}/items", api_key(tenant), [body[i:i + 8192] for i in range(0, len(body), 8192)],
        chunked=False, length=len(body),
    )

    assert status == 200 and answer["sealed"] is True and answer["enqueued_count"] == 1000
    batch = wait_batch(batch.id, "completed")
    assert (batch.completed_count, batch.succeeded_count, batch.failed_count) == (1000, 1000, 0)
    assert_batch_invariants(batch)
    waitpoint.refresh_from_db()
    assert waitpoint.status == "completed" and waitpoint.output["results"] == [{"i": i} for i in range(1000)]
    first_completion = waitpoint.completed_at
    assert not lifecycle.complete_batch(batch.id)  # a repeated callback changes nothing
    waitpoint.refresh_from_db()
    assert waitpoint.completed_at == first_completion
    # GET results, in index order, page by page.
    from django.test import Client

    client, key = Client(), api_key(tenant)
    url, seen = f"/api/v1/batches/{batch.id}/results?limit=200", []
    while url:
        page = client.get(url, headers={"Authorization": f"Bearer {key}"}).json()
        seen += page["results"]
        url = page["next"]
    assert [r["index"] for r in seen] == list(range(1000))
    assert all(r["result"] == {"i": r["index"]} and r["status"] == "succeeded" for r in seen)


# --- 2. the fast-completion race (seed 002), chunked through gunicorn ------------------


@pytest.mark.slow
def test_children_finishing_before_the_stream_ends_still_seal_and_complete(
    worker_factory: Callable[..., Worker], gunicorn: Gunicorn, tenant: Tenant
) -> None:
    start_workers(worker_factory, concurrency=2)
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=5).batch

    def slow_body() -> Iterator[bytes]:
        for i in range(4):
            yield ndjson([{"payload": i}])
        # Every child sent so far has finished while the stream is still open.
        wait_until(
            lambda: Job.objects.filter(batch_id=batch.id, status="succeeded").count() == 4,
            60, what="the first four children to finish mid-stream",
        )
        assert Batch.objects.get(id=batch.id).sealed is False
        yield ndjson([{"payload": 4}])

    status, answer = post_stream(
        gunicorn.port, f"/api/v1/batches/{batch.id}/items", api_key(tenant), slow_body(), chunked=True
    )

    assert status == 200, answer
    assert answer["sealed"] is True and answer["enqueued_count"] == 5 and "missing" not in answer
    batch = wait_batch(batch.id, "completed")
    assert_batch_invariants(batch)
    # A second phase-2 call after completion still answers sealed (no false error).
    status, again = post_stream(
        gunicorn.port, f"/api/v1/batches/{batch.id}/items", api_key(tenant), [ndjson([{"payload": 4}])],
        chunked=True,
    )
    assert status == 200 and again["sealed"] is True and again["status"] == "completed"


@pytest.mark.slow
def test_chunked_stream_cut_short_is_resumed_and_bad_lines_answer_with_their_line(
    gunicorn: Gunicorn, tenant: Tenant
) -> None:
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=300).batch
    key = api_key(tenant)
    path = f"/api/v1/batches/{batch.id}/items"
    items = [{"payload": i, "index": i} for i in range(300)]

    status, short = post_stream(gunicorn.port, path, key, [ndjson(items[:120])], chunked=True)
    assert status == 200 and short["sealed"] is False and short["missing"] == 180

    bad = ndjson(items[:150]) + b'{"payload": "other", "index": 3}\n' + ndjson(items[150:])
    status, error = post_stream(gunicorn.port, path, key, [bad], chunked=True)
    assert status == 400 and error["error"]["code"] == "invalid_item" and error["error"]["line"] == 151

    status, done = post_stream(gunicorn.port, path, key, [ndjson(items)], chunked=True)
    assert status == 200 and done["sealed"] is True and done["enqueued_count"] == 300
    assert sorted(Job.objects.filter(batch=batch).values_list("batch_index", flat=True)) == list(range(300))


# --- 3. examples.fanout ----------------------------------------------------------------


@pytest.mark.slow
def test_fanout_over_200_items_suspends_resumes_once_and_returns_every_result(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=20)
    start_workers(worker_factory, concurrency=4)
    items = [{"n": i} for i in range(200)]

    parent = jobs_lifecycle.submit(tenant, "examples.fanout", {"task": "examples.echo", "items": items}).job
    parent = wait_job(parent.id, "succeeded", "failed")

    assert parent.status == "succeeded", parent.error
    assert parent.result == {"results": items, "errors": [None] * 200, "succeeded": 200, "failed": 0}
    events = list(parent.events.values_list("type", flat=True))
    assert events.count("suspended") == 1 and events.count("resumed") == 1
    assert list(parent.executions.values_list("status", flat=True)) == ["suspended", "succeeded"]
    assert parent.attempts == 1  # the suspended run gave its attempt back
    batch = Batch.objects.get(parent=parent)
    assert batch.status == "completed" and batch.waitpoint.status == "completed"
    assert set(Job.objects.filter(batch=batch).values_list("root_id", "parent_id").distinct()) == {(parent.id, parent.id)}
    assert_batch_invariants(batch)
    assert_nothing_stuck()


@pytest.mark.slow
def test_fanout_with_permanent_failures_completes_and_reports_them(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=20)
    start_workers(worker_factory, concurrency=4, env={"JOB_MAX_ATTEMPTS_DEFAULT": "1"})
    items = [{"fail_times": -1 if i % 5 == 0 else 0, "value": i} for i in range(40)]

    parent = jobs_lifecycle.submit(tenant, "examples.fanout", {"task": "examples.fail", "items": items}).job
    parent = wait_job(parent.id, "succeeded", "failed")

    assert parent.status == "succeeded", parent.error
    out = parent.result
    assert (out["succeeded"], out["failed"]) == (32, 8)
    assert out["results"] == [None if i % 5 == 0 else i for i in range(40)]
    assert [i for i, e in enumerate(out["errors"]) if e] == list(range(0, 40, 5))
    assert out["errors"][5]["type"] == "RuntimeError"
    assert_batch_invariants(Batch.objects.get(parent=parent))
    assert_nothing_stuck()


@pytest.mark.slow
def test_fail_fast_batch_cancels_the_rest_and_the_parent_sees_the_error(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    start_workers(worker_factory, concurrency=4, beat=True)
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "batch")
    batch = lifecycle.create_batch(
        tenant, task="examples.sleep", run_count=30, waitpoint=waitpoint, on_child_failure="fail_fast",
        max_attempts=1,
        items=[{"payload": {"fail_times": -1}, "task": "examples.fail"}]
        + [{"payload": {"seconds": 30, "value": i}} for i in range(1, 30)],
    ).batch

    batch = wait_batch(batch.id, "cancelled", "completed")

    assert batch.status == "cancelled"
    waitpoint.refresh_from_db()
    assert waitpoint.output_is_error and waitpoint.output["type"] == "ChildFailed"
    wait_until(lambda: not Job.objects.filter(batch=batch, status__in=["queued", "dispatched", "running"]).exists(),
               30, what="every child finished")
    batch.refresh_from_db()
    assert batch.failed_count == 1 and batch.cancelled_count >= 20
    assert_batch_invariants(batch)
    assert_nothing_stuck()


# --- other waits ------------------------------------------------------------------------


@pytest.mark.slow
def test_wait_token_job_waits_without_a_slot_and_returns_the_output(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=1)
    start_workers(worker_factory, concurrency=2)
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "token")

    parent = jobs_lifecycle.submit(tenant, "examples.wait_token", {"waitpoint": str(waitpoint.id)}).job
    parent = wait_job(parent.id, "waiting")
    assert parent.lease_token is None and parent.waiting_for_id == waitpoint.id
    # Waiting takes no concurrency slot: with a limit of 1 another job still runs.
    other = jobs_lifecycle.submit(tenant, "examples.echo", "meanwhile").job
    assert wait_job(other.id, "succeeded").result == "meanwhile"

    lifecycle.complete_token(tenant.id, waitpoint.id, {"approved": True})
    parent = wait_job(parent.id, "succeeded")

    assert parent.result == {"approved": True}
    assert parent.events.filter(type="resumed").count() == 1


@pytest.mark.slow
def test_trigger_and_wait_then_wait_for_resume_in_order(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    start_workers(worker_factory, concurrency=2, beat=True)  # beat's sweeper completes the datetime wait

    job = jobs_lifecycle.submit(tenant, "tests.batches.child_then_sleep", {"seconds": 0.5}).job
    job = wait_job(job.id, "succeeded", "failed", timeout=60)

    assert job.status == "succeeded", job.error
    assert job.result == {"child": {"from": "child"}, "runs_done": 2}
    assert job.events.filter(type="suspended").count() == 2 and job.events.filter(type="resumed").count() == 2
    assert list(Waitpoint.objects.filter(owner_job=job).order_by("owner_seq").values_list("type", "status")) == [
        ("run", "completed"), ("datetime", "completed"),
    ]
    assert_nothing_stuck()


# --- 4. duplicate delivery and SIGKILL --------------------------------------------------


def queue_key() -> str:
    return settings.BROKER_KEY_PREFIX + settings.CELERY_DEFAULT_QUEUE


@pytest.mark.slow
def test_duplicate_deliveries_and_a_killed_worker_never_double_count(
    worker_factory: Callable[..., Worker], tenant: Tenant, broker: redis.Redis
) -> None:
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=60)
    batch = lifecycle.create_batch(
        tenant, task="tests.effect", run_count=60, items=[{"payload": {"seconds": 0.3}} for _ in range(60)]
    ).batch
    messages = broker.lrange(queue_key(), 0, -1)
    assert len(messages) == 60
    for message in messages:  # every message delivered twice
        broker.lpush(queue_key(), message)

    doomed = start_workers(worker_factory, concurrency=3)
    wait_until(lambda: Job.objects.filter(batch=batch, status="running", lease_owner=doomed.hostname).count() >= 2,
               30, what="children running on the doomed worker")
    doomed.kill()
    start_workers(worker_factory, concurrency=3, beat=True)  # its sweeper takes over the lost leases

    batch = wait_batch(batch.id, "completed", timeout=180)

    assert (batch.completed_count, batch.succeeded_count) == (60, 60)
    assert_batch_invariants(batch)
    assert JobEvent.objects.filter(job__batch=batch, type="stalled").count() >= 2
    assert JobEvent.objects.filter(job__batch=batch, type="succeeded").count() == 60
    assert_invariants()  # tests/faults/invariants.py


# --- 5. a lost chord callback ----------------------------------------------------------


@pytest.mark.slow
def test_lost_chord_callback_is_found_by_the_sweeper_and_the_parent_resumes(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    # The worker's callback task crashes before doing anything: its message is gone.
    start_workers(worker_factory, concurrency=2, env={"FAILPOINTS": "complete_batch=raise"})
    parent = jobs_lifecycle.submit(
        tenant, "examples.fanout", {"task": "examples.echo", "items": list(range(10))}
    ).job
    wait_until(lambda: Batch.objects.filter(parent_id=parent.id, completed_count=10).exists(), 60,
               what="all children counted")
    batch = Batch.objects.get(parent_id=parent.id)
    time.sleep(2 * settings.STALLED_INTERVAL_SECONDS + 0.5)
    batch.refresh_from_db()
    assert batch.status == "processing" and Job.objects.get(id=parent.id).status == "waiting"

    report = sweeper.sweep()

    assert report.counts().get("batch_callback_lost") == 1
    parent = wait_job(parent.id, "succeeded")
    assert parent.result["results"] == list(range(10))
    assert parent.events.filter(type="repaired", message="batch_callback_lost").count() == 1
    assert_batch_invariants(batch)
    assert_nothing_stuck()
    assert_invariants()  # tests/faults/invariants.py


# --- 6. cancel and seal-deadline paths ------------------------------------------------


@pytest.mark.slow
def test_cancelled_batch_resumes_its_parent_with_the_error(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    start_workers(worker_factory, concurrency=3)
    items = [{"seconds": 30, "value": i} for i in range(6)]
    parent = jobs_lifecycle.submit(tenant, "examples.fanout", {"task": "examples.sleep", "items": items}).job
    parent = wait_job(parent.id, "waiting")
    batch = Batch.objects.get(parent=parent)
    wait_until(lambda: Job.objects.filter(batch=batch, status="running").count() >= 2, 30, what="children running")
    running = list(Job.objects.filter(batch=batch, status="running").values_list("id", "lease_token"))

    assert lifecycle.cancel_batch(batch.id, "operator cancelled the batch")

    parent = wait_job(parent.id, "failed", "succeeded")
    assert parent.status == "failed" and parent.error["type"] == "WaitpointError"
    assert "operator cancelled the batch" in parent.error["message"]
    batch.refresh_from_db()
    assert batch.status == "cancelled" and batch.cancelled_count == 6
    # Running children stop at their heartbeat; their results can never flip the status back.
    for job_id, lease in running:
        assert not jobs_lifecycle.succeed(job_id, lease, "late").won
    wait_until(lambda: not Job.objects.filter(status="running").exists(), 30, what="running children stopped")
    assert set(Job.objects.filter(batch=batch).values_list("status", flat=True)) == {"cancelled"}
    assert_batch_invariants(batch)
    assert_nothing_stuck()
    assert_invariants()  # tests/faults/invariants.py


@pytest.mark.slow
def test_cancelling_the_parent_cancels_the_whole_tree(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    start_workers(worker_factory, concurrency=3)
    items = [{"seconds": 30, "value": i} for i in range(4)]
    parent = jobs_lifecycle.submit(tenant, "examples.fanout", {"task": "examples.sleep", "items": items}).job
    parent = wait_job(parent.id, "waiting")
    batch = Batch.objects.get(parent=parent)
    wait_until(lambda: Job.objects.filter(batch=batch, status="running").exists(), 30, what="a child running")

    moved = jobs_lifecycle.cancel(parent.id, "parent cancelled")

    assert len(moved) == 5
    assert set(Job.objects.filter(root_id=parent.id).values_list("status", flat=True)) == {"cancelled"}
    wait_batch(batch.id, "completed", timeout=30)  # every child counted: the chord closes
    wait_until(lambda: not Job.objects.filter(status="running").exists(), 30, what="running children stopped")
    assert Job.objects.get(id=parent.id).status == "cancelled"
    assert_batch_invariants(batch)
    assert_nothing_stuck()
    assert_invariants()  # tests/faults/invariants.py


@pytest.mark.slow
def test_unsealed_batch_is_aborted_at_its_seal_deadline_and_its_waiter_goes_on(
    worker_factory: Callable[..., Worker], tenant: Tenant, settings: Any
) -> None:
    settings.BATCH_SEAL_TIMEOUT_SECONDS = 2
    start_workers(worker_factory, concurrency=2, beat=True)
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "batch")
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=3, waitpoint=waitpoint).batch
    assert not intake.add_items(batch.id, intake.parse_objects([{"payload": "only one"}])).sealed
    waiter = jobs_lifecycle.submit(tenant, "examples.wait_token", {"waitpoint": str(waitpoint.id)}).job
    wait_job(waiter.id, "waiting")

    waiter = wait_job(waiter.id, "failed", "succeeded", timeout=60)

    assert waiter.status == "failed" and waiter.error["type"] == "WaitpointError"
    batch.refresh_from_db()
    assert batch.status == "aborted"
    waitpoint.refresh_from_db()
    assert waitpoint.output["type"] == "SealTimeout"
    assert_batch_invariants(batch)
    assert_nothing_stuck()

