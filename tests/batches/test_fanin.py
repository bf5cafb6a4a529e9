"""Fan-in, the chord callback, cancel, fail fast and the batch stuck places, driven
through the engine's own transitions (no workers: each child is started and
finished by calling the lifecycle exactly as a worker does)."""

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from batches import lifecycle, repair
from batches.models import Batch, Waitpoint
from jobs import lifecycle as jobs_lifecycle
from jobs import sweeper
from jobs.lifecycle import error_dict
from jobs.models import Job, Tenant
from tests.batches.conftest import ndjson, stream


@pytest.fixture
def callbacks(monkeypatch: pytest.MonkeyPatch) -> list[uuid.UUID]:
    """Batches whose chord callback was queued (instead of sending the message)."""
    queued: list[uuid.UUID] = []
    monkeypatch.setattr(lifecycle, "queue_callback_on_commit", queued.append)
    return queued


def start(job_id: uuid.UUID) -> jobs_lifecycle.Attempt:
    token = uuid.uuid4()
    Job.objects.filter(id=job_id).update(status="dispatched", dispatch_token=token)
    attempt = jobs_lifecycle.start(job_id, token, "test-worker")
    assert attempt is not None
    return attempt


def finish(job_id: uuid.UUID, ok: bool = True, result: Any = "done") -> None:
    attempt = start(job_id)
    if ok:
        assert jobs_lifecycle.succeed(job_id, attempt.lease_token, result).won
    else:
        outcome = jobs_lifecycle.fail(
            job_id, attempt.lease_token, attempt=attempt.attempt, max_attempts=attempt.max_attempts,
            error=error_dict("RuntimeError", "boom"), retryable=False,
        )
        assert outcome.won and outcome.status == "failed"


def child_ids(batch: Batch) -> list[uuid.UUID]:
    return list(Job.objects.filter(batch=batch).order_by("batch_index").values_list("id", flat=True))


def counters(batch: Batch) -> tuple[int, int, int, int]:
    batch.refresh_from_db()
    return batch.completed_count, batch.succeeded_count, batch.failed_count, batch.cancelled_count


def waiting_batch(tenant: Tenant, n: int, **options: Any) -> tuple[Batch, Waitpoint]:
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "batch")
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=n, waitpoint=waitpoint, **options).batch
    return batch, waitpoint


def test_the_last_child_after_the_seal_queues_the_callback_once(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch, waitpoint = waiting_batch(tenant, 3)
    stream(batch, ndjson([{"payload": i} for i in range(3)]))
    ids = child_ids(batch)

    finish(ids[0])
    finish(ids[2], result="two")
    assert callbacks == []
    finish(ids[1], ok=False)

    assert callbacks == [batch.id]
    assert counters(batch) == (3, 2, 1, 0)
    assert lifecycle.complete_batch(batch.id)
    assert not lifecycle.complete_batch(batch.id)  # idempotent: nothing moves again
    batch.refresh_from_db()
    waitpoint.refresh_from_db()
    assert batch.status == "completed" and batch.completed_at is not None
    assert waitpoint.status == "completed" and not waitpoint.output_is_error
    assert waitpoint.output["results"] == ["done", None, "two"]
    assert waitpoint.output["errors"][1]["message"] == "boom"
    assert (waitpoint.output["succeeded"], waitpoint.output["failed"]) == (2, 1)


def test_children_finishing_before_the_seal_leave_the_callback_to_the_last_child(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch = batch_factory(run_count=3)
    stream(batch, ndjson([{"payload": i, "index": i} for i in range(2)]))
    for job_id in child_ids(batch):
        finish(job_id)
    assert callbacks == []  # all counted so far, but not sealed

    result = stream(batch, ndjson([{"payload": 2, "index": 2}]))
    assert result.sealed and callbacks == []
    finish(child_ids(batch)[2])
    assert callbacks == [batch.id]  # the last child came second here


def test_a_completed_batch_still_answers_sealed_to_a_later_stream(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch = batch_factory(run_count=2)
    stream(batch, ndjson([{"payload": 0, "index": 0}]))
    finish(child_ids(batch)[0])
    stream(batch, ndjson([{"payload": 1, "index": 1}]))
    finish(child_ids(batch)[1])
    assert callbacks == [batch.id]
    assert lifecycle.complete_batch(batch.id)
    batch.refresh_from_db()
    assert (batch.status, batch.sealed) == ("completed", True)
    # seed 002: a phase-2 call after completion answers sealed
    assert stream(batch, ndjson([{"payload": 1, "index": 1}])).sealed


def test_cancelling_many_children_counts_them_in_one_update(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch, waitpoint = waiting_batch(tenant, 5)
    stream(batch, ndjson([{"payload": i} for i in range(5)]))
    finish(child_ids(batch)[0])
    running = start(child_ids(batch)[1])

    assert lifecycle.cancel_batch(batch.id, "no longer needed")

    assert counters(batch) == (5, 1, 0, 4)
    batch.refresh_from_db()
    waitpoint.refresh_from_db()
    assert batch.status == "cancelled"
    assert waitpoint.status == "completed" and waitpoint.output_is_error
    assert waitpoint.output["type"] == "BatchCancelled"
    # A child finishing after the cancel cannot flip its status or the counters.
    assert not jobs_lifecycle.succeed(running.job_id, running.lease_token, "late").won
    assert Job.objects.get(id=running.job_id).status == "cancelled"
    assert counters(batch) == (5, 1, 0, 4)
    assert not lifecycle.cancel_batch(batch.id)  # again: nothing moves
    assert not lifecycle.complete_batch(batch.id)


def test_requeued_child_keeps_the_counters_equal_to_a_recount(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch = batch_factory(run_count=2)
    stream(batch, ndjson([{"payload": i} for i in range(2)]))
    a, b = child_ids(batch)
    finish(a, ok=False)
    assert counters(batch) == (1, 0, 1, 0)

    jobs_lifecycle.requeue(a)
    assert counters(batch) == (0, 0, 0, 0)
    finish(a)
    finish(b)
    assert counters(batch) == (2, 2, 0, 0)
    assert callbacks == [batch.id]


def test_fail_fast_cancels_the_rest_and_completes_the_waitpoint_with_an_error(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[uuid.UUID] = []
    monkeypatch.setattr(lifecycle, "queue_fail_fast_on_commit", queued.append)
    batch, waitpoint = waiting_batch(tenant, 4, on_child_failure="fail_fast")
    stream(batch, ndjson([{"payload": i} for i in range(4)]))
    ids = child_ids(batch)
    finish(ids[0])
    finish(ids[1], ok=False)
    assert queued == [batch.id]
    finish(ids[2], ok=False)
    assert queued == [batch.id]  # only the first permanent failure

    assert lifecycle.fail_fast(batch.id)

    batch.refresh_from_db()
    waitpoint.refresh_from_db()
    assert batch.status == "cancelled" and counters(batch) == (4, 1, 2, 1)
    assert waitpoint.output_is_error and waitpoint.output["type"] == "ChildFailed"
    assert "child 1 failed permanently" in waitpoint.output["message"]


def test_token_waitpoint_completes_once_and_keeps_its_output(tenant: Tenant, tenant_factory: Callable[..., Tenant]) -> None:
    waitpoint, created = lifecycle.create_waitpoint(tenant.id, "token", idempotency_key="t1")
    again, created_again = lifecycle.create_waitpoint(tenant.id, "token", idempotency_key="t1")
    assert created and not created_again and again.id == waitpoint.id

    with pytest.raises(Waitpoint.DoesNotExist):
        lifecycle.complete_token(tenant_factory().id, waitpoint.id, {"x": 1})
    done = lifecycle.complete_token(tenant.id, waitpoint.id, {"x": 1})
    assert done.status == "completed" and done.output == {"x": 1}
    with pytest.raises(lifecycle.InvalidState):
        lifecycle.complete_token(tenant.id, waitpoint.id, {"x": 2})
    waitpoint.refresh_from_db()
    assert waitpoint.output == {"x": 1}


# --- stuck places ---------------------------------------------------------------------


def test_lost_callback_is_found_and_the_batch_completed_by_the_sweeper(
    tenant: Tenant, callbacks: list[uuid.UUID]
) -> None:
    batch, waitpoint = waiting_batch(tenant, 2)
    stream(batch, ndjson([{"payload": i} for i in range(2)]))
    for job_id in child_ids(batch):
        finish(job_id)
    assert callbacks == [batch.id]  # ...and the message is dropped: never run
    Batch.objects.filter(id=batch.id).update(updated_at=timezone.now() - timedelta(seconds=60))

    assert [r[0] for r in repair.find_lost_callbacks()] == [batch.id]
    report = sweeper.sweep()

    assert report.counts().get("batch_callback_lost") == 1
    batch.refresh_from_db()
    waitpoint.refresh_from_db()
    assert batch.status == "completed" and waitpoint.status == "completed"
    assert repair.find_lost_callbacks() == []


def test_drifted_counter_is_recounted_and_the_batch_completes(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    batch = batch_factory(run_count=2)
    stream(batch, ndjson([{"payload": i} for i in range(2)]))
    for job_id in child_ids(batch):
        finish(job_id)
    Batch.objects.filter(id=batch.id).update(completed_count=1, succeeded_count=1)  # a lost increment

    assert [r[0] for r in repair.find_drifted_counters()] == [batch.id]
    report = sweeper.sweep()

    assert report.counts().get("batch_counter_drifted") == 1
    batch.refresh_from_db()
    assert counters(batch) == (2, 2, 0, 0) and batch.status == "completed"


def test_unsealed_batch_past_its_deadline_is_aborted_and_its_parent_not_left_waiting(
    tenant: Tenant, callbacks: list[uuid.UUID]
) -> None:
    batch, waitpoint = waiting_batch(tenant, 3)
    stream(batch, ndjson([{"payload": 0}]))
    Batch.objects.filter(id=batch.id).update(seal_deadline=timezone.now() - timedelta(seconds=1))

    report = sweeper.sweep()

    assert report.counts().get("batch_unsealed_past_deadline") == 1
    batch.refresh_from_db()
    waitpoint.refresh_from_db()
    assert batch.status == "aborted"
    assert waitpoint.output_is_error and waitpoint.output["type"] == "SealTimeout"
    assert not Job.objects.filter(batch=batch).exclude(status="cancelled").exists()
    with pytest.raises(lifecycle.BatchClosed):
        stream(batch, ndjson([{"payload": 1, "index": 1}]))


def test_pending_waitpoint_past_its_timeout_completes_with_a_timeout_error(tenant: Tenant) -> None:
    token, _ = lifecycle.create_waitpoint(tenant.id, "token", timeout_seconds=60)
    moment, _ = lifecycle.create_waitpoint(tenant.id, "datetime", timeout_seconds=60)
    Waitpoint.objects.update(timeout_at=timezone.now() - timedelta(seconds=1))

    report = sweeper.sweep()

    assert report.counts().get("waitpoint_past_timeout") == 2
    token.refresh_from_db()
    moment.refresh_from_db()
    assert token.output_is_error and token.output["type"] == "WaitpointTimeout"
    assert moment.status == "completed" and not moment.output_is_error


def test_job_left_waiting_on_a_completed_waitpoint_is_resumed(tenant: Tenant) -> None:
    waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "token")
    job = jobs_lifecycle.submit(tenant, "examples.wait_token", {"waitpoint": str(waitpoint.id)}).job
    attempt = start(job.id)
    from django.db import transaction

    with transaction.atomic():
        assert jobs_lifecycle.suspend_in_tx(job.id, attempt.lease_token, waitpoint.id)
    job.refresh_from_db()
    assert job.status == "waiting" and job.lease_token is None and job.attempts == 0
    assert list(job.executions.values_list("status", flat=True)) == ["suspended"]
    # Completed behind the engine's back (the resume is lost):
    Waitpoint.objects.filter(id=waitpoint.id).update(status="completed", output={"ok": True})

    report = sweeper.sweep()

    assert report.counts().get("waiting_waitpoint_done") == 1
    job.refresh_from_db()
    assert job.status in ("queued", "dispatched") and job.waiting_for_id is None
    assert job.events.filter(type="repaired", message="waiting_waitpoint_done").count() == 1
    assert job.events.filter(type="resumed").count() == 1


def test_counting_a_child_costs_one_statement_whatever_the_batch_size(
    tenant: Tenant, callbacks: list[uuid.UUID], batch_factory: Callable[..., Batch]
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def finish_statements(job_id: uuid.UUID) -> list[str]:
        attempt = start(job_id)
        with CaptureQueriesContext(connection) as queries:
            assert jobs_lifecycle.succeed(job_id, attempt.lease_token, "ok").won
        return [q["sql"] for q in queries.captured_queries]

    plain = jobs_lifecycle.submit(tenant, "examples.echo", 1, delay_seconds=3600).job
    small = batch_factory(run_count=2)
    stream(small, ndjson([{"payload": i} for i in range(2)]))
    large = batch_factory(run_count=3000)
    stream(large, ndjson([{"payload": i} for i in range(3000)]))

    base = finish_statements(plain.id)
    in_small = finish_statements(child_ids(small)[0])
    in_large = finish_statements(child_ids(large)[0])

    extra = [sql for sql in in_small if "batches_batch" in sql]
    assert len(extra) == 1 and extra[0].lstrip().startswith("UPDATE batches_batch")
    assert len(in_small) == len(in_large) <= len(base) + 1
