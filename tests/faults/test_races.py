"""Races between actors: two beats and two sweepers at once, two requeues at once,
a chord callback delivered several times. Each ends with assert_invariants().

Covered elsewhere (same fault): a lost chord callback found by the sweeper and
cancelling a parent while its children run (tests/batches/test_workers.py), two
sweep() calls racing in-process (tests/monitoring/test_concurrent_sweeps.py).
"""

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.utils import timezone

from batches import intake
from batches import lifecycle as batches_lifecycle
from batches.models import Batch, Waitpoint
from batchplatform.celery import app
from jobs import lifecycle, sweeper
from jobs.models import Job, JobEvent, Tenant
from tests.faults.conftest import wait_for, fault_worker, wait_all, wait_status
from tests.faults.invariants import assert_invariants
from tests.workers import Worker

pytestmark = pytest.mark.slow


def run_together(*fns: Callable[[], Any]) -> list[Any]:
    """Run each callable in its own thread (own DB connection), released at once."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)

    def body(i: int, fn: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = fn()
        except Exception as exc:  # the loser's exception is the result we check
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=body, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_two_beats_and_two_sweepers_at_once_move_every_job_once(
    worker_factory: Callable[..., Worker], tenant_factory: Callable[..., Tenant]
) -> None:
    tenants = [tenant_factory(concurrency_limit=3) for _ in range(2)]
    first = fault_worker(worker_factory, concurrency=2, beat=True)
    fault_worker(worker_factory, concurrency=2, beat=True)
    jobs = [
        lifecycle.submit(tenants[i % 2], "faults.sleep", {"seconds": 0.3 if i % 3 else 2}, max_attempts=3).job.id
        for i in range(24)
    ]
    # Stuck work for both sweepers: one worker dies holding leases.
    wait_for(lambda: Job.objects.filter(status="running", lease_owner=first.hostname).exists(), 30,
               what="a job running on the first worker")
    first.kill()
    fault_worker(worker_factory, concurrency=2, beat=True)  # two beats again

    wait_all(jobs, "succeeded", timeout=180)
    stalled = Job.objects.filter(id__in=jobs, stalled_count__gt=0)
    assert stalled.exists()
    for job in stalled:
        assert job.events.filter(type="repaired", message="lease_expired").count() == job.stalled_count
    assert JobEvent.objects.filter(job_id__in=jobs, type="succeeded").count() == len(jobs)
    assert_invariants(accepted=jobs)


def _failed_job(tenant: Tenant) -> Job:
    """A job failed through the real transitions, in this process (no worker)."""
    job = lifecycle.submit(tenant, "examples.echo", {"v": 2}, max_attempts=1).job
    job.refresh_from_db()
    assert job.status == "dispatched"  # its message waits in Redis; a worker will find it stale
    attempt = lifecycle.start(job.id, job.dispatch_token, "test")
    assert attempt is not None
    outcome = lifecycle.fail(job.id, attempt.lease_token, attempt=1, max_attempts=1,
                             error={"type": "Boom", "message": "boom"})
    assert outcome.won and outcome.status == "failed"
    return job


def test_two_requeues_racing_requeue_once_and_the_job_then_runs_once(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    job = _failed_job(tenant)

    results = run_together(lambda: lifecycle.requeue(job.id, "a"), lambda: lifecycle.requeue(job.id, "b"))

    winners = [r for r in results if isinstance(r, Job)]
    losers = [r for r in results if isinstance(r, lifecycle.InvalidState)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert job.events.filter(type="requeued").count() == 1
    close_old_connections()
    fault_worker(worker_factory, concurrency=2)
    job = wait_status(job.id, "succeeded")
    assert job.result == {"v": 2}
    assert [(e.attempt, e.status) for e in job.executions.order_by("id")] == [(1, "failed"), (1, "succeeded")]
    assert_invariants(accepted=[job.id])


def test_chord_callback_delivered_three_times_completes_the_batch_and_resumes_the_parent_once(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    # Each callback pauses before its work, so the duplicates run at the same time.
    fault_worker(worker_factory, concurrency=4, beat=True, env={"FAILPOINTS": "complete_batch=sleep:1"})
    parent = lifecycle.submit(tenant, "examples.fanout", {"task": "examples.echo", "items": list(range(12))}).job
    wait_for(lambda: Batch.objects.filter(parent_id=parent.id, completed_count=12).exists(), 60,
               what="every child counted")
    batch = Batch.objects.get(parent_id=parent.id)
    for _ in range(2):  # the callback duplicated on top of the one the last child queued
        app.send_task("batches.complete_batch", args=[str(batch.id)])

    parent = wait_status(parent.id, "succeeded")
    # Late duplicates (and one more, in this process, after the fact) find nothing to do.
    assert batches_lifecycle.complete_batch(batch.id) is False
    batch.refresh_from_db()
    assert batch.status == "completed"
    assert parent.result["results"] == list(range(12))
    assert parent.events.filter(type="resumed").count() == 1
    assert parent.events.filter(type="suspended").count() == 1
    assert Waitpoint.objects.get(id=batch.waitpoint_id).status == "completed"
    assert_invariants(accepted=[parent.id])


def test_chord_callback_lost_and_then_duplicated_by_a_repair_race_completes_once(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    # The worker's callback crashes (lost); two sweepers and an operator then race to repair it.
    fault_worker(worker_factory, concurrency=2, env={"FAILPOINTS": "complete_batch=raise"})
    parent = lifecycle.submit(tenant, "examples.fanout", {"task": "examples.echo", "items": list(range(5))}).job
    wait_for(lambda: Batch.objects.filter(parent_id=parent.id, completed_count=5).exists(), 60,
               what="every child counted")
    batch = Batch.objects.get(parent_id=parent.id)
    Batch.objects.filter(id=batch.id).update(updated_at=timezone.now() - timedelta(seconds=60))

    results = run_together(sweeper.sweep, sweeper.sweep, lambda: batches_lifecycle.complete_batch(batch.id))

    assert not [r for r in results if isinstance(r, Exception)], results
    moved = sum(r.counts().get("batch_callback_lost", 0) for r in results[:2]) + (1 if results[2] else 0)
    assert moved == 1
    batch.refresh_from_db()
    assert batch.status == "completed"
    parent = wait_status(parent.id, "succeeded")
    assert parent.events.filter(type="resumed").count() == 1
    assert_invariants(accepted=[parent.id])


def _ndjson_lines(indexes: range) -> Any:
    body = b"".join(json.dumps({"index": i, "payload": {"i": i}}).encode() + b"\n" for i in indexes)
    return intake.read_lines(intake.LineSplitter([body]))


def _wait_until_row_locked(batch_id: object) -> None:
    """Until another transaction holds the batch row (the intake chunk is inside its flush)."""
    from django.db.utils import OperationalError

    def locked() -> bool:
        try:
            with transaction.atomic(durable=True), connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM batches_batch WHERE id = %s FOR UPDATE NOWAIT", [batch_id])
            return False
        except OperationalError:
            return True

    wait_for(locked, 30, what="the intake chunk to hold the batch row")


def test_streamed_chunk_while_a_child_of_the_same_batch_finishes_does_not_deadlock(
    worker_factory: Callable[..., Worker], tenant_factory: Callable[..., Tenant], settings: Any
) -> None:
    """Found by the soak: a chunk held the batch row and waited for the dispatch lock,
    while a finishing child held the dispatch lock (taken in its finish statement to
    refill) and waited for the batch row to count itself in. Postgres aborted one."""
    tenant = tenant_factory(concurrency_limit=100)
    busy = tenant_factory(concurrency_limit=1)
    waiting = [lifecycle.submit(busy, "examples.echo", i).job.id for i in range(2)]  # one stays queued:
    # so the finish below decides to refill and takes the dispatch lock.
    batch = batches_lifecycle.create_batch(tenant, task="examples.echo", run_count=10).batch
    intake.add_items(batch.id, _ndjson_lines(range(0, 5)))
    child = Job.objects.get(batch=batch, batch_index=0)
    attempt = lifecycle.start(child.id, child.dispatch_token, "test")
    assert attempt is not None
    settings.FAILPOINTS = "intake_before_dispatch=sleep:2"  # the chunk pauses holding the batch row

    def finish_child() -> Any:
        _wait_until_row_locked(batch.id)
        return lifecycle.succeed(child.id, attempt.lease_token, "done")

    results = run_together(lambda: intake.add_items(batch.id, _ndjson_lines(range(5, 10))), finish_child)

    settings.FAILPOINTS = ""
    assert not [r for r in results if isinstance(r, Exception)], results
    assert results[0].sealed and results[1].won
    fault_worker(worker_factory, concurrency=2, beat=True)
    wait_all([*waiting, *Job.objects.filter(batch=batch).values_list("id", flat=True)], "succeeded")
    batch.refresh_from_db()
    assert batch.status == "completed" and batch.completed_count == 10
    assert_invariants(accepted=waiting)
