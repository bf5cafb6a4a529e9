"""The batch and waitpoint places of the sweeper's stuck table (see jobs.sweeper).

Each place is a finder (rows stuck there, read without locks, database time) and a
repairer that calls the same idempotent function as the normal path and records a
`repaired` event on the job involved. Registered from BatchesConfig.ready().
"""

from django.conf import settings
from django.db import transaction

from jobs import lifecycle as jobs_lifecycle
from jobs import metrics_hooks
from jobs.models import EventType, JobEvent
from jobs.sweeper import Place, SqlQuery

from . import lifecycle

Row = tuple[object, ...]


def _repaired(job_id: object, tenant_id: object, reason: str) -> None:
    metrics_hooks.bump(f"repaired:{reason}")
    if job_id is not None:
        JobEvent.objects.create(job_id=job_id, tenant_id=tenant_id, type=EventType.REPAIRED, message=reason)


# A batch whose last child's count or seal queued the callback a moment ago is not
# stuck yet: give the callback one sweep interval before doing its work.
def _grace() -> float:
    return settings.STALLED_INTERVAL_SECONDS


WAITING_ON_COMPLETED = SqlQuery(
    select="j.id, j.waiting_for_id, j.tenant_id",
    from_where=(
        "FROM jobs_job j JOIN batches_waitpoint w ON w.id = j.waiting_for_id "
        "WHERE j.status = 'waiting' AND w.status = 'completed'"
    ),
    order="w.completed_at",
)
find_waiting_on_completed = WAITING_ON_COMPLETED.find


def repair_waiting_on_completed(row: Row) -> bool:
    job_id, waitpoint_id, tenant_id = row
    with transaction.atomic(durable=True):
        moved = jobs_lifecycle.resume_in_tx(waitpoint_id, job_id)  # type: ignore[arg-type]
        if moved:
            _repaired(job_id, tenant_id, "waiting_waitpoint_done")
    return bool(moved)


# Sealed with every child counted but still processing, or completed with its
# waitpoint still pending: the chord callback never ran (or never finished).
LOST_CALLBACK = SqlQuery(
    select="b.id, b.tenant_id, b.parent_id",
    from_where=(
        "FROM batches_batch b LEFT JOIN batches_waitpoint w ON w.id = b.waitpoint_id "
        "WHERE ((b.status = 'processing' AND b.sealed AND b.completed_count = b.run_count) "
        "OR (b.status = 'completed' AND w.status = 'pending')) "
        "AND b.updated_at < now() - make_interval(secs => %s)"
    ),
    order="b.updated_at",
    params=lambda: [_grace()],
    tenant_column="b.tenant_id",
    example="b.id",
)
find_lost_callbacks = LOST_CALLBACK.find


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


# Processing batches whose counters differ from a recount of their children. Only
# batches that look stuck are recounted: sealed with no unfinished child yet short
# of run_count, or untouched for STUCK_BATCH_SECONDS.
DRIFTED_COUNTER = SqlQuery(
    select="b.id, b.tenant_id, b.parent_id",
    from_where=(
        "FROM batches_batch b WHERE b.status = 'processing' "
        "AND ((b.sealed AND b.completed_count <> b.run_count AND NOT EXISTS ("
        "  SELECT 1 FROM jobs_job u WHERE u.batch_id = b.id "
        "  AND u.status IN ('queued', 'dispatched', 'running', 'waiting'))) "
        " OR b.updated_at < now() - make_interval(secs => %s)) "
        "AND ROW(b.completed_count::bigint, b.succeeded_count::bigint, b.failed_count::bigint, "
        f"b.cancelled_count::bigint) IS DISTINCT FROM {_RECOUNT}"
    ),
    order="b.updated_at",
    params=lambda: [settings.STUCK_BATCH_SECONDS],
    tenant_column="b.tenant_id",
    example="b.id",
)
find_drifted_counters = DRIFTED_COUNTER.find


def repair_drifted_counter(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    with transaction.atomic(durable=True):
        lifecycle.recount_in_tx(batch_id)  # type: ignore[arg-type]
        _repaired(parent_id, tenant_id, "batch_counter_drifted")
    lifecycle.complete_batch(batch_id)  # type: ignore[arg-type]  # a no-op unless now complete
    return True


UNSEALED = SqlQuery(
    select="b.id, b.tenant_id, b.parent_id",
    from_where=(
        "FROM batches_batch b WHERE b.status IN ('pending', 'processing') AND NOT b.sealed "
        "AND b.seal_deadline < now()"
    ),
    order="b.seal_deadline",
    tenant_column="b.tenant_id",
    example="b.id",
)
find_unsealed_past_deadline = UNSEALED.find


def repair_unsealed(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    won = lifecycle.abort_unsealed(batch_id)  # type: ignore[arg-type]
    if won:
        with transaction.atomic(durable=True):
            _repaired(parent_id, tenant_id, "batch_unsealed_past_deadline")
    return won


# fail_fast batches with a failed child still processing: the process that should
# have cancelled the rest died first.
FAIL_FAST_PENDING = SqlQuery(
    select="b.id, b.tenant_id, b.parent_id",
    from_where=(
        "FROM batches_batch b WHERE b.status = 'processing' AND b.on_child_failure = 'fail_fast' "
        "AND b.failed_count > 0 AND b.updated_at < now() - make_interval(secs => %s)"
    ),
    order="b.updated_at",
    params=lambda: [_grace()],
    tenant_column="b.tenant_id",
    example="b.id",
)
find_fail_fast_pending = FAIL_FAST_PENDING.find


def repair_fail_fast(row: Row) -> bool:
    batch_id, tenant_id, parent_id = row
    won = lifecycle.fail_fast(batch_id)  # type: ignore[arg-type]
    if won:
        with transaction.atomic(durable=True):
            _repaired(parent_id, tenant_id, "batch_fail_fast_lost")
    return won


# Pending past timeout_at: a `datetime` waitpoint's time has come; any other
# completes with a timeout error so nothing waits forever.
EXPIRED_WAITPOINT = SqlQuery(
    select="w.id, w.tenant_id, w.owner_job_id, w.type",
    from_where="FROM batches_waitpoint w WHERE w.status = 'pending' AND w.timeout_at < now()",
    order="w.timeout_at",
    tenant_column="w.tenant_id",
    example="w.id",
)
find_expired_waitpoints = EXPIRED_WAITPOINT.find


def repair_expired_waitpoint(row: Row) -> bool:
    waitpoint_id, tenant_id, owner_job_id, type_ = row
    won = lifecycle.expire_waitpoint(waitpoint_id)  # type: ignore[arg-type]
    if won and type_ != "datetime":
        with transaction.atomic(durable=True):
            _repaired(owner_job_id, tenant_id, "waitpoint_timed_out")
    return won


PLACES = [
    Place("batch_counter_drifted", find_drifted_counters, repair_drifted_counter, DRIFTED_COUNTER.count,
          "batch counters differ from a recount of its children: recounted"),
    Place("batch_callback_lost", find_lost_callbacks, repair_lost_callback, LOST_CALLBACK.count,
          "sealed batch with every child counted still processing (chord callback lost): completed"),
    Place("batch_unsealed_past_deadline", find_unsealed_past_deadline, repair_unsealed, UNSEALED.count,
          "batch not sealed by its seal deadline: aborted, its waitpoint completed with an error"),
    Place("batch_fail_fast_lost", find_fail_fast_pending, repair_fail_fast, FAIL_FAST_PENDING.count,
          "fail_fast batch with a failed child still processing: the rest cancelled"),
    Place("waitpoint_past_timeout", find_expired_waitpoints, repair_expired_waitpoint, EXPIRED_WAITPOINT.count,
          "pending waitpoint past timeout_at: completed (a timeout error, or its time for a datetime)"),
    Place("waiting_waitpoint_done", find_waiting_on_completed, repair_waiting_on_completed,
          WAITING_ON_COMPLETED.count, "job still waiting on a completed waitpoint: resumed"),
]
