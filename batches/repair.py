"""The batch and waitpoint places of the sweeper's stuck table (see jobs.sweeper).

Each place is a finder (rows stuck there, read without locks, database time) and a
repairer that calls the same idempotent function as the normal path and records a
`repaired` event on the job involved. Registered from BatchesConfig.ready().
"""

from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from jobs import lifecycle as jobs_lifecycle
from jobs import metrics_hooks
from jobs.models import EventType, JobEvent
from jobs.sweeper import CHUNK, Place

from . import lifecycle

Row = tuple[object, ...]


def _rows(sql: str, params: list[object], tenant_id: UUID | None, column: str) -> list[Row]:
    if tenant_id is not None:
        sql += f" AND {column} = %s"
        params = [*params, tenant_id]
    with connection.cursor() as cursor:
        cursor.execute(sql + f" LIMIT {CHUNK}", params)
        return list(cursor.fetchall())


def _repaired(job_id: object, tenant_id: object, reason: str) -> None:
    metrics_hooks.bump(f"repaired:{reason}")
    if job_id is not None:
        JobEvent.objects.create(job_id=job_id, tenant_id=tenant_id, type=EventType.REPAIRED, message=reason)


# A batch whose last child's count or seal queued the callback a moment ago is not
# stuck yet: give the callback one sweep interval before doing its work.
def _grace() -> float:
    return settings.STALLED_INTERVAL_SECONDS


def find_waiting_on_completed(tenant_id: UUID | None = None) -> list[Row]:
    """waiting, but its waitpoint is already completed (the resume was lost)."""
    return _rows(
        "SELECT j.id, j.waiting_for_id, j.tenant_id FROM jobs_job j "
        "JOIN batches_waitpoint w ON w.id = j.waiting_for_id "
        "WHERE j.status = 'waiting' AND w.status = 'completed'",
        [], tenant_id, "j.tenant_id",
    )


def repair_waiting_on_completed(row: Row) -> bool:
    job_id, waitpoint_id, tenant_id = row
    with transaction.atomic(durable=True):
        moved = jobs_lifecycle.resume_in_tx(waitpoint_id, job_id)  # type: ignore[arg-type]
        if moved:
            _repaired(job_id, tenant_id, "waiting_waitpoint_done")
    return bool(moved)


def find_lost_callbacks(tenant_id: UUID | None = None) -> list[Row]:
    """Sealed with every child counted but still processing, or completed with its
    waitpoint still pending: the chord callback never ran (or never finished)."""
    return _rows(
        "SELECT b.id, b.tenant_id, b.parent_id FROM batches_batch b "
        "LEFT JOIN batches_waitpoint w ON w.id = b.waitpoint_id "
        "WHERE ((b.status = 'processing' AND b.sealed AND b.completed_count = b.run_count) "
        "OR (b.status = 'completed' AND w.status = 'pending')) "
        "AND b.updated_at < now() - make_interval(secs => %s)",
        [_grace()], tenant_id, "b.tenant_id",
    )


def repair_lost_callback(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    done = lifecycle.complete_batch(batch_id)  # type: ignore[arg-type]
    if done:
        with transaction.atomic(durable=True):
            _repaired(parent_id, tenant_id, "batch_callback_lost")
    return done


_RECOUNT = (
    "(SELECT ROW(count(*) FILTER (WHERE c.status IN ('succeeded', 'failed', 'cancelled')), "
    "count(*) FILTER (WHERE c.status = 'succeeded'), count(*) FILTER (WHERE c.status = 'failed'), "
    "count(*) FILTER (WHERE c.status = 'cancelled')) FROM jobs_job c WHERE c.batch_id = b.id)"
)


def find_drifted_counters(tenant_id: UUID | None = None) -> list[Row]:
    """Processing batches whose counters differ from a recount of their children.

    Only batches that look stuck are recounted: sealed with no unfinished child yet
    short of run_count, or untouched for STUCK_BATCH_SECONDS.
    """
    return _rows(
        "SELECT b.id, b.tenant_id, b.parent_id FROM batches_batch b WHERE b.status = 'processing' "
        "AND ((b.sealed AND b.completed_count <> b.run_count AND NOT EXISTS ("
        "  SELECT 1 FROM jobs_job u WHERE u.batch_id = b.id "
        "  AND u.status IN ('queued', 'dispatched', 'running', 'waiting'))) "
        " OR b.updated_at < now() - make_interval(secs => %s)) "
        "AND ROW(b.completed_count::bigint, b.succeeded_count::bigint, b.failed_count::bigint, "
        "b.cancelled_count::bigint) "
        f"IS DISTINCT FROM {_RECOUNT}",
        [settings.STUCK_BATCH_SECONDS], tenant_id, "b.tenant_id",
    )


def repair_drifted_counter(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    with transaction.atomic(durable=True):
        lifecycle.recount_in_tx(batch_id)  # type: ignore[arg-type]
        _repaired(parent_id, tenant_id, "batch_counter_drifted")
    lifecycle.complete_batch(batch_id)  # type: ignore[arg-type]  # a no-op unless now complete
    return True


def find_unsealed_past_deadline(tenant_id: UUID | None = None) -> list[Row]:
    return _rows(
        "SELECT id, tenant_id, parent_id FROM batches_batch "
        "WHERE status IN ('pending', 'processing') AND NOT sealed AND seal_deadline < now()",
        [], tenant_id, "tenant_id",
    )


def repair_unsealed(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    won = lifecycle.abort_unsealed(batch_id)  # type: ignore[arg-type]
    if won:
        with transaction.atomic(durable=True):
            _repaired(parent_id, tenant_id, "batch_unsealed_past_deadline")
    return won


def find_fail_fast_pending(tenant_id: UUID | None = None) -> list[Row]:
    """fail_fast batches with a failed child still processing: the message that
    should have cancelled the rest was lost."""
    return _rows(
        "SELECT id, tenant_id, parent_id FROM batches_batch WHERE status = 'processing' "
        "AND on_child_failure = 'fail_fast' AND failed_count > 0 "
        "AND updated_at < now() - make_interval(secs => %s)",
        [_grace()], tenant_id, "tenant_id",
    )


def repair_fail_fast(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    won = lifecycle.fail_fast(batch_id)  # type: ignore[arg-type]
    if won:
        with transaction.atomic(durable=True):
            _repaired(parent_id, tenant_id, "batch_fail_fast_lost")
    return won


def find_expired_waitpoints(tenant_id: UUID | None = None) -> list[Row]:
    """Pending past timeout_at: a `datetime` waitpoint's time has come; any other
    completes with a timeout error so nothing waits forever."""
    return _rows(
        "SELECT id, tenant_id, owner_job_id, type FROM batches_waitpoint "
        "WHERE status = 'pending' AND timeout_at < now()",
        [], tenant_id, "tenant_id",
    )


def repair_expired_waitpoint(row: Row) -> bool:
    waitpoint_id, tenant_id, owner_job_id, type_ = row
    won = lifecycle.expire_waitpoint(waitpoint_id)  # type: ignore[arg-type]
    if won and type_ != "datetime":
        with transaction.atomic(durable=True):
            _repaired(owner_job_id, tenant_id, "waitpoint_timed_out")
    return won


PLACES = [
    Place("batch_counter_drifted", find_drifted_counters, repair_drifted_counter),
    Place("batch_callback_lost", find_lost_callbacks, repair_lost_callback),
    Place("batch_unsealed_past_deadline", find_unsealed_past_deadline, repair_unsealed),
    Place("batch_fail_fast_lost", find_fail_fast_pending, repair_fail_fast),
    Place("waitpoint_past_timeout", find_expired_waitpoints, repair_expired_waitpoint),
    Place("waiting_waitpoint_done", find_waiting_on_completed, repair_waiting_on_completed),
]
