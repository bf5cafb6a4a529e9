"""Every transition of a batch and a waitpoint, each a compare-and-set.

Lock order, everywhere: the batch's intake lock (advisory) → child job rows → the
batch row → waitpoint rows → the dispatcher's lock. A child's terminal transition
holds its job row and then takes the batch row (the counter update); whatever
touches both must follow the same order or two actors deadlock.
"""

import hashlib
import json
import logging
import uuid
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models.functions import Now
from psycopg.types.json import Jsonb

from jobs import hooks
from jobs import lifecycle as jobs_lifecycle
from jobs.lifecycle import IdempotencyConflict, InvalidInput, InvalidState, error_dict
from jobs.models import Job, Tenant
from jobs.registry import UnknownTask, get_task

from .models import Batch, BatchStatus, OnChildFailure, Waitpoint, WaitpointStatus, WaitpointType

logger = logging.getLogger("batches.lifecycle")

INTAKE_LOCK_NAMESPACE = 0x6271
OPEN_STATUSES = (BatchStatus.PENDING, BatchStatus.PROCESSING)
CLOSED_STATUSES = (BatchStatus.CANCELLED, BatchStatus.ABORTED)
INLINE_ITEMS_MAX = 1000


class BatchClosed(Exception):
    """The batch was cancelled or aborted: it takes no more items."""


def _json(value: Any) -> Any:
    # Django leaves jsonb as text on raw cursors; decode it here.
    return json.loads(value) if isinstance(value, str) else value


def _log(event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": {k: str(v) if isinstance(v, UUID) else v for k, v in fields.items()}})


def intake_lock_key(batch_id: UUID) -> int:
    return zlib.crc32(batch_id.bytes) - 2**31


def lock_intake_in_tx(batch_id: UUID, *, exclusive: bool) -> None:
    """Intake chunks hold it shared; cancel and abort exclusive, so no chunk can add
    children to a batch between a cancel's sweep of its children and its status."""
    fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {fn}(%s, %s)", [INTAKE_LOCK_NAMESPACE, intake_lock_key(batch_id)])


# --- create -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    batch: Batch
    created: bool


def _request_hash(fields: dict[str, Any], items: list[Any] | None) -> str:
    body = json.dumps({**fields, "items": items}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def validate_batch(task: str, run_count: Any, on_child_failure: str) -> None:
    if task:
        get_task(task)  # UnknownTask
    if isinstance(run_count, bool) or not isinstance(run_count, int) or not 1 <= run_count <= settings.BATCH_MAX_ITEMS:
        raise InvalidInput(f"run_count must be an integer between 1 and {settings.BATCH_MAX_ITEMS}")
    if on_child_failure not in OnChildFailure.values:
        raise InvalidInput(f"on_child_failure must be one of {', '.join(OnChildFailure.values)}")


@transaction.atomic
def create_batch(
    tenant: Tenant,
    *,
    run_count: int,
    task: str = "",
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    on_child_failure: str = OnChildFailure.CONTINUE,
    items: list[Any] | None = None,
    parent: Job | None = None,
    waitpoint: Waitpoint | None = None,
) -> Created:
    """Phase 1: a pending batch expecting `run_count` items, sealed within
    BATCH_SEAL_TIMEOUT_SECONDS. With `items` (phase-2 lines as objects) it is filled
    and sealed in this same transaction.

    Raises UnknownTask, InvalidInput, intake.ItemError (a bad inline item, nothing
    written) and IdempotencyConflict; the same key and request returns the existing
    batch (created=False).
    """
    validate_batch(task, run_count, on_child_failure)
    if max_attempts is not None and not 1 <= max_attempts <= settings.JOB_MAX_ATTEMPTS_LIMIT:
        raise InvalidInput(f"max_attempts must be between 1 and {settings.JOB_MAX_ATTEMPTS_LIMIT}")
    if timeout_seconds is not None and not 0 < timeout_seconds <= settings.JOB_TIMEOUT_SECONDS_LIMIT:
        raise InvalidInput(f"timeout_seconds must be between 0 and {settings.JOB_TIMEOUT_SECONDS_LIMIT}")
    if items is not None and len(items) > INLINE_ITEMS_MAX:
        raise InvalidInput(f"at most {INLINE_ITEMS_MAX} inline items; stream larger batches in phase 2")
    fields = {
        "task": task, "run_count": run_count, "max_attempts": max_attempts,
        "timeout_seconds": timeout_seconds, "on_child_failure": on_child_failure,
    }
    request_hash = _request_hash(fields, items)
    if idempotency_key is not None:
        existing = Batch.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_or_conflict(existing, request_hash)
    batch = Batch(
        tenant=tenant, idempotency_key=idempotency_key, request_hash=request_hash,
        parent=parent, waitpoint=waitpoint, **fields,
    )
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # Database time (rule 5) for the seal deadline.
                cursor.execute("SELECT now() + make_interval(secs => %s)", [settings.BATCH_SEAL_TIMEOUT_SECONDS])
                batch.seal_deadline = cursor.fetchone()[0]
            batch.save(force_insert=True)
    except IntegrityError:
        if idempotency_key is None:
            raise
        existing = Batch.objects.get(tenant=tenant, idempotency_key=idempotency_key)
        return _same_or_conflict(existing, request_hash)
    if items is not None:
        from . import intake

        result = intake.add_items_in_tx(batch.id, intake.parse_objects(items))
        if result.error is not None:
            raise result.error  # rolls the whole create back
        batch.refresh_from_db()
    _log("batch_created", batch=batch.id, tenant=tenant.id, run_count=run_count)
    return Created(batch=batch, created=True)


def _same_or_conflict(existing: Batch, request_hash: str) -> Created:
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(existing.id)
    return Created(batch=existing, created=False)


# --- fan-in: counting children --------------------------------------------------------

_COUNT_SQL = """
UPDATE batches_batch SET
    completed_count = completed_count + %(n)s,
    succeeded_count = succeeded_count + %(s)s,
    failed_count = failed_count + %(f)s,
    cancelled_count = cancelled_count + %(c)s,
    updated_at = now()
WHERE id = %(id)s
RETURNING completed_count, run_count, sealed, status, on_child_failure, failed_count
"""


def count_terminal_children(jobs: list[hooks.TerminalJob]) -> None:
    """The jobs_became_terminal hook: count children into their batch, in the
    transaction of their terminal transition, so each is counted exactly once.

    "Am I the last?" is decided by the update's RETURNING row: the update that
    brings completed_count to run_count on a sealed, processing batch queues the
    callback after commit (the seal does the same when it comes second). One update
    per batch, in batch-id order, however many children moved at once.
    """
    tally: dict[UUID, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for job in jobs:
        if job.batch_id is None:
            continue
        t = tally[job.batch_id]
        t[0] += 1
        t[1 + ("succeeded", "failed", "cancelled").index(job.status)] += 1
    with connection.cursor() as cursor:
        for batch_id in sorted(tally):
            n, s, f, c = tally[batch_id]
            cursor.execute(_COUNT_SQL, {"id": batch_id, "n": n, "s": s, "f": f, "c": c})
            row = cursor.fetchone()
            if row is None:
                continue
            completed, run_count, sealed, status, policy, failed = row
            if status != BatchStatus.PROCESSING:
                continue
            if sealed and completed == run_count:
                queue_callback_on_commit(batch_id)
            elif policy == OnChildFailure.FAIL_FAST and f and failed == f:
                queue_fail_fast_on_commit(batch_id)  # the first permanent failure
    _complete_run_waitpoints([j for j in jobs if j.parent_id is not None and j.batch_id is None])


def uncount_requeued_child(job_id: UUID, batch_id: UUID | None) -> None:
    """The job_requeued hook: a terminal child went back to queued, so its batch's
    counters are recounted (under the batch row lock, in the requeue's transaction)."""
    if batch_id is not None:
        recount_in_tx(batch_id)


def queue_callback_on_commit(batch_id: UUID) -> None:
    from .tasks import complete_batch

    transaction.on_commit(lambda: complete_batch.delay(str(batch_id)))


def queue_fail_fast_on_commit(batch_id: UUID) -> None:
    """Cancel the rest right after the failing child's transaction commits, in this
    process: a message would wait behind the very children it is meant to stop.
    Not inside that transaction: cancelling siblings while holding the batch row
    would invert the lock order of their own finishes. If this process dies first,
    the sweeper's `batch_fail_fast_lost` place does it."""

    def run() -> None:
        try:
            fail_fast(batch_id)
        except Exception:
            logger.exception("fail_fast of batch %s failed; the sweeper will retry", batch_id)

    transaction.on_commit(run)


_RECOUNT_SQL = """
UPDATE batches_batch b SET
    completed_count = r.completed, succeeded_count = r.succeeded,
    failed_count = r.failed, cancelled_count = r.cancelled, updated_at = now()
FROM (
    SELECT count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled')) AS completed,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled
    FROM jobs_job WHERE batch_id = %(id)s
) r
WHERE b.id = %(id)s
RETURNING b.completed_count, b.run_count, b.sealed, b.status
"""


def recount_in_tx(batch_id: UUID) -> bool:
    """Set the counters from a recount of the children. Returns whether the batch is
    now ready for its callback (sealed, processing, every child counted).

    The row is locked first, in its own statement, so the recount's snapshot sees
    every child transition that committed while we waited for the lock; one still
    uncommitted counts itself in after us.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM batches_batch WHERE id = %s FOR UPDATE", [batch_id])
        if cursor.fetchone() is None:
            return False
        cursor.execute(_RECOUNT_SQL, {"id": batch_id})
        completed, run_count, sealed, status = cursor.fetchone()
    return status == BatchStatus.PROCESSING and sealed and completed == run_count


@transaction.atomic(durable=True)
def recount(batch_id: UUID) -> bool:
    """Repair a drifted counter; queue the callback if that made the batch complete."""
    ready = recount_in_tx(batch_id)
    if ready:
        queue_callback_on_commit(batch_id)
    return ready


# --- the chord callback ------------------------------------------------------------------


def batch_output(batch_id: UUID) -> dict[str, Any]:
    """`{"results", "errors", "succeeded", "failed"}` in index order (one read, once
    per batch, when it completes)."""
    batch = Batch.objects.only("run_count").get(id=batch_id)
    results: list[Any] = [None] * batch.run_count
    errors: list[Any] = [None] * batch.run_count
    succeeded = failed = 0
    rows = Job.objects.filter(batch_id=batch_id).order_by("batch_index").values_list(
        "batch_index", "status", "result", "error"
    )
    for index, status, result, error in rows.iterator(chunk_size=2000):
        if status == "succeeded":
            results[index] = result
            succeeded += 1
        else:
            errors[index] = error or error_dict("Unfinished", f"child ended {status}")
            failed += 1
    return {"results": results, "errors": errors, "succeeded": succeeded, "failed": failed}


@transaction.atomic(durable=True)
def complete_batch(batch_id: UUID) -> bool:
    """The chord callback: processing → completed once every child is counted, then
    the batch's waitpoint pending → completed, then its waiting parent → queued.

    Each step is a compare-and-set and each runs even if an earlier one had already
    happened, so running it twice, or after a partial repair, does the rest and
    nothing again. Returns whether this call moved anything (batch or waitpoint).
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE batches_batch SET status = 'completed', completed_at = now(), updated_at = now() "
            "WHERE id = %s AND status = 'processing' AND sealed AND completed_count = run_count",
            [batch_id],
        )
        won = cursor.rowcount == 1
        cursor.execute(
            "SELECT b.waitpoint_id FROM batches_batch b JOIN batches_waitpoint w ON w.id = b.waitpoint_id "
            "WHERE b.id = %s AND b.status = 'completed' AND w.status = 'pending'",
            [batch_id],
        )
        row = cursor.fetchone()
    resumed = row is not None and complete_waitpoint_in_tx(row[0], batch_output(batch_id), is_error=False)
    if won:
        _log("batch_completed", batch=batch_id)
    return won or resumed


# --- cancel, abort, fail fast --------------------------------------------------------------


def close_batch_in_tx(batch_id: UUID, status: str, error: dict[str, str]) -> bool:
    """pending | processing → cancelled | aborted: unfinished children cancelled (a
    running one stops at its next heartbeat and its late result is refused), then
    the batch's waitpoint completed with `error`, resuming the waiting parent.

    False: the batch had already completed or closed (nothing changes).
    """
    lock_intake_in_tx(batch_id, exclusive=True)
    if not Batch.objects.filter(id=batch_id, status__in=OPEN_STATUSES).exists():
        return False
    # Children first, then the batch row: the order a child's own finish takes.
    jobs_lifecycle.cancel_jobs(Job.objects.filter(batch_id=batch_id), error["message"])
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE batches_batch SET status = %s, completed_at = now(), updated_at = now() "
            "WHERE id = %s AND status IN ('pending', 'processing') RETURNING waitpoint_id",
            [status, batch_id],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    if row[0] is not None:
        complete_waitpoint_in_tx(row[0], error, is_error=True)
    _log("batch_closed", batch=batch_id, status=status, reason=error["message"])
    return True


@transaction.atomic(durable=True)
def cancel_batch(batch_id: UUID, reason: str = "batch cancelled") -> bool:
    return close_batch_in_tx(batch_id, BatchStatus.CANCELLED, error_dict("BatchCancelled", reason))


@transaction.atomic(durable=True)
def abort_unsealed(batch_id: UUID) -> bool:
    """An unsealed batch past its seal deadline → aborted (only if still unsealed and
    past the deadline in database time)."""
    if not Batch.objects.filter(
        id=batch_id, sealed=False, status__in=OPEN_STATUSES, seal_deadline__lt=Now()
    ).exists():
        return False
    return close_batch_in_tx(
        batch_id, BatchStatus.ABORTED,
        error_dict("SealTimeout", "batch was not sealed before its seal deadline"),
    )


@transaction.atomic(durable=True)
def fail_fast(batch_id: UUID) -> bool:
    """on_child_failure=fail_fast after a permanent child failure: cancel the rest
    and complete the waitpoint with an error (the batch ends `cancelled`)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT batch_index, error FROM jobs_job WHERE batch_id = %s AND status = 'failed' "
            "ORDER BY finished_at, batch_index LIMIT 1",
            [batch_id],
        )
        first = cursor.fetchone()
    if first is None:
        return False
    message = f"child {first[0]} failed permanently: {(_json(first[1]) or {}).get('message', '')}"
    return close_batch_in_tx(batch_id, BatchStatus.CANCELLED, error_dict("ChildFailed", message))


# --- waitpoints --------------------------------------------------------------------------------


def _timeout_at(seconds: float | None, default: float) -> Any:
    seconds = default if seconds is None else seconds
    if not 0 < seconds <= settings.WAITPOINT_TIMEOUT_SECONDS_LIMIT:
        raise InvalidInput(f"timeout_seconds must be between 0 and {settings.WAITPOINT_TIMEOUT_SECONDS_LIMIT}")
    with connection.cursor() as cursor:
        cursor.execute("SELECT now() + make_interval(secs => %s)", [seconds])
        return cursor.fetchone()[0]


@transaction.atomic
def create_waitpoint(
    tenant_id: UUID,
    type: str,
    *,
    timeout_seconds: float | None = None,
    idempotency_key: str | None = None,
    owner_job_id: UUID | None = None,
    owner_seq: int | None = None,
    run_id: UUID | None = None,
) -> tuple[Waitpoint, bool]:
    """A pending waitpoint with a deadline. Same idempotency key: the existing one."""
    default = {
        WaitpointType.TOKEN: settings.WAITPOINT_TOKEN_TIMEOUT_SECONDS,
        WaitpointType.BATCH: settings.WAITPOINT_BATCH_TIMEOUT_SECONDS,
        WaitpointType.RUN: settings.WAITPOINT_BATCH_TIMEOUT_SECONDS,
    }.get(type, 0.0)
    if idempotency_key is not None:
        existing = Waitpoint.objects.filter(tenant_id=tenant_id, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    waitpoint = Waitpoint(
        id=uuid.uuid4(), tenant_id=tenant_id, type=type, idempotency_key=idempotency_key,
        owner_job_id=owner_job_id, owner_seq=owner_seq, run_id=run_id,
        timeout_at=_timeout_at(timeout_seconds, default),
    )
    try:
        with transaction.atomic():
            waitpoint.save(force_insert=True)
    except IntegrityError:
        if idempotency_key is None:
            raise
        return Waitpoint.objects.get(tenant_id=tenant_id, idempotency_key=idempotency_key), False
    return waitpoint, True


def complete_waitpoint_in_tx(waitpoint_id: UUID, output: Any, *, is_error: bool) -> bool:
    """pending → completed with `output`, then every job waiting on it → queued.

    False: it was already completed; its output stays as it was.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE batches_waitpoint SET status = 'completed', output = %s, output_is_error = %s, "
            "completed_at = now() WHERE id = %s AND status = 'pending'",
            [Jsonb(output) if output is not None else None, is_error, waitpoint_id],
        )
        if cursor.rowcount != 1:
            return False
    jobs_lifecycle.resume_in_tx(waitpoint_id)
    return True


@transaction.atomic(durable=True)
def complete_token(tenant_id: UUID, waitpoint_id: UUID, output: Any, is_error: bool = False) -> Waitpoint:
    """Another service completes a token waitpoint (REST). Raises Waitpoint.DoesNotExist
    for another tenant's, InvalidState if it is already completed or not a token."""
    waitpoint = Waitpoint.objects.get(id=waitpoint_id, tenant_id=tenant_id)
    if waitpoint.type != WaitpointType.TOKEN:
        raise InvalidState(f"a {waitpoint.type} waitpoint is completed by the platform, not over the API")
    if not complete_waitpoint_in_tx(waitpoint_id, output, is_error=is_error):
        raise InvalidState("waitpoint is already completed")
    waitpoint.refresh_from_db()
    return waitpoint


@transaction.atomic(durable=True)
def expire_waitpoint(waitpoint_id: UUID) -> bool:
    """A pending waitpoint past timeout_at (database time). A `datetime` waitpoint
    completes normally at its time; a batch's is ended by cancelling the batch (so
    its children stop too); any other completes with a timeout error."""
    waitpoint = (
        Waitpoint.objects.filter(id=waitpoint_id, status=WaitpointStatus.PENDING, timeout_at__lt=Now()).first()
    )
    if waitpoint is None:
        return False
    if waitpoint.type == WaitpointType.DATETIME:
        return complete_waitpoint_in_tx(waitpoint_id, None, is_error=False)
    error = error_dict("WaitpointTimeout", f"{waitpoint.type} waitpoint timed out")
    batch_id = Batch.objects.filter(waitpoint_id=waitpoint_id).values_list("id", flat=True).first()
    if batch_id is not None and close_batch_in_tx(batch_id, BatchStatus.CANCELLED, error):
        return True
    return complete_waitpoint_in_tx(waitpoint_id, error, is_error=True)


def _complete_run_waitpoints(jobs: Iterable[hooks.TerminalJob]) -> None:
    """A child started by trigger_and_wait ended: complete its `run` waitpoint with
    its result (or its error). Only jobs with a parent and no batch can have one."""
    ids = [j.id for j in jobs]
    if not ids:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT w.id, j.status, j.result, j.error FROM batches_waitpoint w JOIN jobs_job j ON j.id = w.run_id "
            "WHERE w.run_id = ANY(%s) AND w.status = 'pending' ORDER BY w.id",
            [ids],
        )
        rows = cursor.fetchall()
    for waitpoint_id, status, result, error in rows:
        if status == "succeeded":
            complete_waitpoint_in_tx(waitpoint_id, _json(result), is_error=False)
        else:
            complete_waitpoint_in_tx(waitpoint_id, _json(error) or error_dict("ChildFailed", status), is_error=True)


__all__ = [
    "BatchClosed", "UnknownTask", "create_batch", "count_terminal_children", "complete_batch",
    "cancel_batch", "abort_unsealed", "fail_fast", "create_waitpoint", "complete_token",
]
