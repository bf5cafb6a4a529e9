"""Every transition of a job, each a compare-and-set whose row count decides who won.

What follows a win (the execution row, the event, the batch counter through hooks,
refilling the tenant's free slot) is written in the same transaction; Celery
messages are sent on commit. Each function says what losing means.
"""

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction
from django.db.models.functions import Now
from django.utils import timezone
from psycopg.types.json import Jsonb

from . import dispatch, hooks, metrics_hooks, retry
from .models import EventType, Job, JobEvent, JobStatus, Tenant, UNFINISHED_STATUSES
from .registry import get_task

logger = logging.getLogger("jobs.lifecycle")

STALLED_MESSAGE = "job stalled more than allowable limit"


class InvalidInput(ValueError):
    """Submitted data the engine refuses (nothing is written)."""


class IdempotencyConflict(Exception):
    """Same idempotency key, different task or payload."""

    def __init__(self, existing_id: UUID):
        super().__init__(f"idempotency key already used by job {existing_id} with a different request")
        self.existing_id = existing_id


class InvalidState(Exception):
    """The job is not in a state this action can move it from."""


def canonical_json(value: Any) -> str:
    """Serialise or refuse: the payload must round-trip through JSON."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"payload is not JSON-serialisable: {exc}") from None


def payload_hash(task: str, payload_json: str) -> str:
    import hashlib

    return hashlib.sha256(f"{task}\0{payload_json}".encode()).hexdigest()


def error_dict(type_: str, message: str) -> dict[str, str]:
    return {"type": type_, "message": message[:4000]}


def _log(event: str, **fields: Any) -> None:
    logger.info(event, extra={"fields": {k: str(v) if isinstance(v, UUID) else v for k, v in fields.items()}})


# --- submit -----------------------------------------------------------------------


@dataclass(frozen=True)
class Submitted:
    job: Job
    created: bool


def _job_fields(
    tenant: Tenant,
    task: str,
    payload: Any,
    *,
    max_attempts: int | None,
    timeout_seconds: float | None,
    priority: int,
    delay_seconds: float,
) -> dict[str, Any]:
    spec = get_task(task)
    payload_json = canonical_json(payload)
    if len(payload_json.encode()) > settings.JOB_PAYLOAD_MAX_BYTES:
        raise InvalidInput(f"payload is larger than {settings.JOB_PAYLOAD_MAX_BYTES} bytes")
    attempts = max_attempts or spec.max_attempts or settings.JOB_MAX_ATTEMPTS_DEFAULT
    if not 1 <= attempts <= settings.JOB_MAX_ATTEMPTS_LIMIT:
        raise InvalidInput(f"max_attempts must be between 1 and {settings.JOB_MAX_ATTEMPTS_LIMIT}")
    timeout = timeout_seconds or spec.timeout or settings.JOB_TIMEOUT_SECONDS_DEFAULT
    if not 0 < timeout <= settings.JOB_TIMEOUT_SECONDS_LIMIT:
        raise InvalidInput(f"timeout_seconds must be between 0 and {settings.JOB_TIMEOUT_SECONDS_LIMIT}")
    if not 0 <= delay_seconds <= settings.JOB_DELAY_SECONDS_LIMIT:
        raise InvalidInput(f"delay_seconds must be between 0 and {settings.JOB_DELAY_SECONDS_LIMIT}")
    return {
        "tenant": tenant,
        "task": task,
        "queue": spec.queue_name,
        "payload": json.loads(payload_json),
        "payload_hash": payload_hash(task, payload_json),
        "max_attempts": attempts,
        "timeout_seconds": timeout,
        "priority": priority,
        # Postgres time, never this host's: a skewed clock must not delay or hurry a job.
        **({"run_at": Now() + timedelta(seconds=delay_seconds)} if delay_seconds else {}),
    }


@transaction.atomic
def submit(
    tenant: Tenant,
    task: str,
    payload: Any = None,
    *,
    idempotency_key: str | None = None,
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    priority: int = 0,
    delay_seconds: float = 0,
    parent: Job | None = None,
) -> Submitted:
    """Create a job and dispatch it if its tenant has a free slot.

    Raises UnknownTask or InvalidInput before writing anything. The same
    idempotency key with the same task and payload returns the existing job
    (created=False); with another task or payload, IdempotencyConflict.
    """
    fields = _job_fields(
        tenant, task, payload,
        max_attempts=max_attempts, timeout_seconds=timeout_seconds,
        priority=priority, delay_seconds=delay_seconds,
    )
    if idempotency_key is not None:
        existing = Job.objects.filter(tenant=tenant, idempotency_key=idempotency_key).first()
        if existing is not None:
            return _same_or_conflict(existing, fields["payload_hash"])
    job_id = uuid.uuid4()
    root_id = parent.root_id if parent is not None else job_id
    job = Job(id=job_id, idempotency_key=idempotency_key, parent=parent, root_id=root_id, **fields)
    try:
        with transaction.atomic():
            job.save(force_insert=True)
            if delay_seconds:
                job.refresh_from_db(fields=["run_at"])
    except Exception as exc:  # unique violation: a concurrent submit with the same key won
        from django.db import IntegrityError

        if not isinstance(exc, IntegrityError) or idempotency_key is None:
            raise
        existing = Job.objects.get(tenant=tenant, idempotency_key=idempotency_key)
        return _same_or_conflict(existing, fields["payload_hash"])
    JobEvent.objects.create(job=job, tenant=tenant, type=EventType.CREATED)
    for row in dispatch.dispatch_tenant(tenant.id):
        if row.id == job.id:  # keep the returned object in step with its row
            job.status, job.dispatch_token = JobStatus.DISPATCHED, row.dispatch_token
    _log("job_submitted", job=job.id, tenant=tenant.id, task=task)
    return Submitted(job=job, created=True)


def _same_or_conflict(existing: Job, new_hash: str) -> Submitted:
    if existing.payload_hash != new_hash:
        raise IdempotencyConflict(existing.id)
    return Submitted(job=existing, created=False)


# --- start --------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    job_id: UUID
    tenant_id: UUID
    task: str
    payload: Any
    attempt: int
    max_attempts: int
    lease_token: UUID
    worker: str


_START_SQL = """
WITH j AS (
    UPDATE jobs_job SET
        status = 'running',
        attempts = attempts + 1,
        lease_token = %(lease)s::uuid,
        lease_owner = %(worker)s::varchar,
        lease_expires_at = now() + make_interval(secs => %(lease_seconds)s::float8),
        timeout_at = now() + make_interval(secs => timeout_seconds),
        started_at = COALESCE(started_at, now()),
        updated_at = now()
    WHERE id = %(id)s::uuid AND status = 'dispatched' AND dispatch_token = %(token)s::uuid
    RETURNING id, tenant_id, task, payload, attempts, max_attempts
), e AS (
    INSERT INTO jobs_execution (job_id, attempt, status, worker, lease_token, started_at)
    SELECT id, attempts, 'running', %(worker)s::varchar, %(lease)s::uuid, now() FROM j
), ev AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, created_at)
    SELECT id, tenant_id, 'started', attempts, %(worker)s::varchar, now() FROM j
)
SELECT id, tenant_id, task, payload, attempts, max_attempts FROM j
"""


@transaction.atomic(durable=True)
def start(job_id: UUID, dispatch_token: UUID, worker: str) -> Attempt | None:
    """dispatched → running for the holder of the current dispatch token.

    Creates this attempt's Execution and lease in the same transaction. None means
    the delivery is stale (a duplicate, a re-dispatched job, a cancelled job): the
    caller acknowledges the message and runs nothing.
    """
    lease = uuid.uuid4()
    with connection.cursor() as cursor:
        cursor.execute(
            _START_SQL,
            {"id": job_id, "token": dispatch_token, "lease": lease, "worker": worker,
             "lease_seconds": settings.JOB_LEASE_SECONDS},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    payload = row[3] if not isinstance(row[3], str) else json.loads(row[3])
    _log("job_started", job=row[0], tenant=row[1], attempt=row[4], worker=worker)
    return Attempt(
        job_id=row[0], tenant_id=row[1], task=row[2], payload=payload,
        attempt=row[4], max_attempts=row[5], lease_token=lease, worker=worker,
    )


# --- heartbeat -----------------------------------------------------------------------


class LeaseState:
    HELD = "held"
    LOST = "lost"
    CANCELLED = "cancelled"


def renew_lease(job_id: UUID, lease_token: UUID) -> str:
    """Extend the lease if still ours. LOST: taken over or finished; CANCELLED: stop."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET lease_expires_at = now() + make_interval(secs => %s) "
            "WHERE id = %s AND status = 'running' AND lease_token = %s",
            [settings.JOB_LEASE_SECONDS, job_id, lease_token],
        )
        if cursor.rowcount == 1:
            return LeaseState.HELD
        cursor.execute("SELECT status FROM jobs_job WHERE id = %s", [job_id])
        row = cursor.fetchone()
    if row is not None and row[0] == JobStatus.CANCELLED:
        return LeaseState.CANCELLED
    return LeaseState.LOST


def set_progress(job_id: UUID, lease_token: UUID, progress: float) -> bool:
    """Record progress (0..1) if the lease is still ours; False means stop."""
    progress = max(0.0, min(1.0, float(progress)))
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET progress = %s, lease_expires_at = now() + make_interval(secs => %s) "
            "WHERE id = %s AND status = 'running' AND lease_token = %s",
            [progress, settings.JOB_LEASE_SECONDS, job_id, lease_token],
        )
        return cursor.rowcount == 1


def record_lock_extension_failed(job_id: UUID, tenant_id: UUID, attempt: int, reason: str) -> None:
    JobEvent.objects.create(
        job_id=job_id, tenant_id=tenant_id, type=EventType.LOCK_EXTENSION_FAILED,
        attempt=attempt, message=reason[:1000],
    )
    metrics_hooks.bump("lock_extension_failed")


# --- finish --------------------------------------------------------------------------

_FINISH_SQL = """
WITH j AS (
    UPDATE jobs_job SET
        status = %(status)s::varchar,
        result = %(result)s::jsonb,
        error = %(error)s::jsonb,
        run_at = CASE WHEN %(status)s::varchar = 'queued' THEN now() + make_interval(secs => %(delay)s::float8) ELSE run_at END,
        finished_at = CASE WHEN %(status)s::varchar = 'queued' THEN NULL ELSE now() END,
        progress = CASE WHEN %(status)s::varchar = 'succeeded' AND progress IS NOT NULL THEN 1 ELSE progress END,
        dispatch_token = NULL, dispatch_deadline = NULL,
        lease_token = NULL, lease_expires_at = NULL, timeout_at = NULL,
        updated_at = now()
    WHERE id = %(id)s::uuid AND status = 'running' AND lease_token = %(lease)s::uuid
    RETURNING id, tenant_id, batch_id, parent_id, attempts
), e AS (
    UPDATE jobs_execution SET status = %(exec_status)s::varchar, finished_at = now(), error = %(error)s::jsonb
    WHERE job_id IN (SELECT id FROM j) AND lease_token = %(lease)s::uuid AND status = 'running'
), ev AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, data, created_at)
    SELECT id, tenant_id, %(event)s::varchar, attempts, %(message)s::text, %(event_data)s::jsonb, now() FROM j
)
SELECT id, tenant_id, batch_id, parent_id, attempts, {refill} FROM j
""".format(refill=dispatch.refill_lock_sql("j.tenant_id", requeued="%(status)s::varchar = 'queued'"))


@dataclass(frozen=True)
class Outcome:
    won: bool
    status: str | None = None
    retry_delay: float | None = None


def _finish(
    job_id: UUID,
    lease_token: UUID,
    *,
    status: str,
    exec_status: str,
    event: str,
    result: Any = None,
    error: dict[str, str] | None = None,
    delay: float = 0.0,
    message: str = "",
    event_data: dict[str, Any] | None = None,
) -> tuple[UUID, UUID | None, UUID | None] | None:
    with connection.cursor() as cursor:
        cursor.execute(
            _FINISH_SQL,
            {
                "id": job_id, "lease": lease_token, "status": status, "exec_status": exec_status,
                "event": event, "result": Jsonb(result) if result is not None else None,
                "error": Jsonb(error) if error is not None else None, "delay": delay,
                "message": message, "event_data": Jsonb(event_data) if event_data is not None else None,
                "max_active": settings.DISPATCH_MAX_ACTIVE,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    _, tenant_id, batch_id, parent_id, _, dispatch_locked = row
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        hooks.jobs_became_terminal([hooks.TerminalJob(job_id, tenant_id, status, batch_id, parent_id)])
    if dispatch_locked:  # decided and taken in the finish statement (see refill_lock_sql)
        dispatch.refill(locked=True)
    return tenant_id, batch_id, parent_id


@transaction.atomic(durable=True)
def succeed(job_id: UUID, lease_token: UUID, result: Any) -> Outcome:
    """running → succeeded for the lease holder. A loss means the lease was taken over
    (stalled and requeued, cancelled, timed out): the result is refused."""
    won = _finish(
        job_id, lease_token, status=JobStatus.SUCCEEDED, exec_status="succeeded",
        event=EventType.SUCCEEDED, result=result,
    )
    if won is None:
        return Outcome(won=False)
    _log("job_succeeded", job=job_id, tenant=won[0], batch=won[1])
    return Outcome(won=True, status=JobStatus.SUCCEEDED)


def _fail(
    job_id: UUID,
    lease_token: UUID,
    *,
    attempt: int,
    max_attempts: int,
    error: dict[str, str],
    retryable: bool = True,
    timed_out: bool = False,
) -> Outcome:
    """running → queued (retry after backoff) or failed, for the lease holder.

    The retry decision is retry.decide(); a loss means the lease was taken over and
    this attempt's outcome no longer matters.
    """
    decision = retry.decide(
        attempt, max_attempts, retryable=retryable,
        base=settings.JOB_RETRY_BASE_SECONDS, cap=settings.JOB_RETRY_MAX_SECONDS,
    )
    exec_status = "timed_out" if timed_out else "failed"
    if decision.retry:
        won = _finish(
            job_id, lease_token, status=JobStatus.QUEUED, exec_status=exec_status,
            event=EventType.RETRY_SCHEDULED, error=error, delay=decision.delay_seconds,
            message=error["message"][:500], event_data={"delay_seconds": decision.delay_seconds, "error": error},
        )
        if won is not None:
            metrics_hooks.bump("retries")
    else:
        won = _finish(
            job_id, lease_token, status=JobStatus.FAILED, exec_status=exec_status,
            event=EventType.TIMED_OUT if timed_out else EventType.FAILED, error=error,
            message=error["message"][:500],
        )
    if won is None:
        return Outcome(won=False)
    status = JobStatus.QUEUED if decision.retry else JobStatus.FAILED
    _log("job_failed", job=job_id, tenant=won[0], status=status, error=error["type"])
    return Outcome(won=True, status=status, retry_delay=decision.delay_seconds if decision.retry else None)


fail = transaction.atomic(durable=True)(_fail)


@transaction.atomic(durable=True)
def record_stale_result(job_id: UUID, tenant_id: UUID, attempt: int, what: str) -> None:
    JobEvent.objects.create(
        job_id=job_id, tenant_id=tenant_id, type=EventType.STALE_RESULT_REFUSED,
        attempt=attempt, message=what[:1000],
    )


# --- recovery transitions (called by the sweeper and by operators) ---------------------

_STALL_SQL = """
WITH j AS (
    UPDATE jobs_job SET
        status = CASE WHEN stalled_count + 1 > %(max_stalled)s::int OR attempts >= max_attempts
                      THEN 'failed' ELSE 'queued' END,
        error = CASE WHEN stalled_count + 1 > %(max_stalled)s::int
                     THEN %(stalled_error)s::jsonb
                     WHEN attempts >= max_attempts THEN %(lost_error)s::jsonb
                     ELSE error END,
        finished_at = CASE WHEN stalled_count + 1 > %(max_stalled)s::int OR attempts >= max_attempts
                      THEN now() ELSE NULL END,
        stalled_count = stalled_count + 1,
        run_at = now(),
        dispatch_token = NULL, dispatch_deadline = NULL,
        lease_token = NULL, lease_expires_at = NULL, timeout_at = NULL,
        updated_at = now()
    WHERE id = %(id)s::uuid AND status = 'running' AND lease_token = %(lease)s::uuid
    RETURNING id, tenant_id, batch_id, parent_id, attempts, status, stalled_count
), e AS (
    UPDATE jobs_execution SET status = 'lost', finished_at = now(), error = %(lost_error)s::jsonb
    WHERE job_id IN (SELECT id FROM j) AND lease_token = %(lease)s::uuid AND status = 'running'
), ev AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, created_at)
    SELECT id, tenant_id, 'stalled', attempts, %(reason)s::text, now() FROM j
)
SELECT id, tenant_id, batch_id, parent_id, attempts, status, stalled_count FROM j
"""


def mark_stalled_in_tx(job_id: UUID, lease_token: UUID, reason: str) -> str | None:
    """running (lease expired or owner gone) → queued, or failed past max_stalled_count.

    The attempt's execution is closed as `lost`. Returns the new status, or None if
    the lease was renewed or the job moved on first (nothing to do).
    """
    stalled_error = error_dict("Stalled", STALLED_MESSAGE)
    lost_error = error_dict("WorkerLost", f"attempt lost: {reason}")
    with connection.cursor() as cursor:
        cursor.execute(
            _STALL_SQL,
            {"id": job_id, "lease": lease_token, "max_stalled": settings.MAX_STALLED_COUNT,
             "stalled_error": Jsonb(stalled_error), "lost_error": Jsonb(lost_error), "reason": reason},
        )
        row = cursor.fetchone()
    if row is None:
        return None
    _, tenant_id, batch_id, parent_id, _, status, _ = row
    metrics_hooks.bump("stalled")
    if status == JobStatus.FAILED:
        hooks.jobs_became_terminal([hooks.TerminalJob(job_id, tenant_id, status, batch_id, parent_id)])
    dispatch.refill()
    _log("job_stalled", job=job_id, tenant=tenant_id, status=status, reason=reason)
    return status


mark_stalled = transaction.atomic(durable=True)(mark_stalled_in_tx)


def redispatch_in_tx(job_id: UUID, dispatch_token: UUID) -> bool:
    """dispatched past its deadline (message lost) → queued, then dispatched anew.

    The old token stops matching, so a late copy of the lost message does nothing.
    False: the job started or moved on first.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE jobs_job SET status = 'queued', dispatch_token = NULL, dispatch_deadline = NULL, "
            "run_at = now(), updated_at = now() "
            "WHERE id = %s AND status = 'dispatched' AND dispatch_token = %s RETURNING tenant_id",
            [job_id, dispatch_token],
        )
        row = cursor.fetchone()
    if row is None:
        return False
    JobEvent.objects.create(
        job_id=job_id, tenant_id=row[0], type=EventType.REDISPATCHED,
        message="dispatched but never started before its deadline",
    )
    _log("job_redispatched", job=job_id, tenant=row[0])
    dispatch.dispatch_tenant(row[0])
    return True


redispatch = transaction.atomic(durable=True)(redispatch_in_tx)


def time_out_in_tx(job_id: UUID, lease_token: UUID) -> Outcome:
    """The sweeper's fallback for a running job past its timeout whose worker did not
    end it: the same transition a worker's own time limit takes."""
    job = Job.objects.filter(id=job_id, lease_token=lease_token, status=JobStatus.RUNNING).first()
    if job is None:
        return Outcome(won=False)
    return _fail(
        job_id, lease_token, attempt=job.attempts, max_attempts=job.max_attempts,
        error=error_dict("TimeoutError", f"attempt exceeded its timeout of {job.timeout_seconds:g}s"),
        timed_out=True,
    )


time_out = transaction.atomic(durable=True)(time_out_in_tx)


# --- operator actions ----------------------------------------------------------------


@transaction.atomic(durable=True)
def cancel(job_id: UUID, reason: str = "cancelled") -> list[UUID]:
    """Cancel a job and every unfinished job below it (same root). Returns the ids
    that moved; a finished job raises InvalidState, an already cancelled one moves
    nothing. Running workers see the cancel on their next heartbeat and their late
    results are refused (status is no longer running)."""
    job = Job.objects.select_for_update().filter(id=job_id).first()
    if job is None:
        raise Job.DoesNotExist(job_id)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise InvalidState(f"job is {job.status}")
    if job.root_id == job.id:
        tree = Job.objects.filter(root_id=job.id)
    else:
        tree = Job.objects.filter(id__in=_descendant_ids(job.id))
    return cancel_jobs(tree, reason)


def _descendant_ids(job_id: UUID) -> list[UUID]:
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH RECURSIVE t(id) AS (SELECT %s::uuid UNION ALL "
            "SELECT j.id FROM jobs_job j JOIN t ON j.parent_id = t.id) SELECT id FROM t",
            [job_id],
        )
        return [row[0] for row in cursor.fetchall()]


def cancel_jobs(queryset: Any, reason: str) -> list[UUID]:
    """Cancel the unfinished jobs of `queryset` inside the caller's transaction."""
    assert connection.in_atomic_block
    # Lock in id order so two overlapping cancels cannot deadlock.
    locked = list(
        queryset.filter(status__in=UNFINISHED_STATUSES)
        .order_by("id")
        .select_for_update()
        .values_list("id", "tenant_id", "batch_id", "parent_id", "attempts", "lease_token")
    )
    if not locked:
        return []
    ids = [row[0] for row in locked]
    now = timezone.now()
    error = error_dict("Cancelled", reason)
    Job.objects.filter(id__in=ids).update(
        status=JobStatus.CANCELLED, error=error, finished_at=now, updated_at=now,
        dispatch_token=None, dispatch_deadline=None, lease_token=None, lease_expires_at=None, timeout_at=None,
    )
    from .models import Execution

    Execution.objects.filter(job_id__in=ids, status="running").update(
        status="cancelled", finished_at=now, error=error
    )
    JobEvent.objects.bulk_create(
        [JobEvent(job_id=r[0], tenant_id=r[1], type=EventType.CANCELLED, attempt=r[4], message=reason) for r in locked]
    )
    hooks.jobs_became_terminal(
        [hooks.TerminalJob(r[0], r[1], JobStatus.CANCELLED, r[2], r[3]) for r in locked]
    )
    for r in locked:
        _log("job_cancelled", job=r[0], tenant=r[1], batch=r[2], reason=reason)
    dispatch.refill()
    return ids


@transaction.atomic(durable=True)
def requeue(job_id: UUID, reason: str = "requeued by operator") -> Job:
    """failed | cancelled → queued with a fresh budget (attempts and stalled_count 0;
    earlier executions kept). Any other state raises InvalidState."""
    updated = Job.objects.filter(
        id=job_id, status__in=(JobStatus.FAILED, JobStatus.CANCELLED)
    ).update(
        status=JobStatus.QUEUED, attempts=0, stalled_count=0, error=None, result=None,
        finished_at=None, run_at=timezone.now(), updated_at=timezone.now(), progress=None,
        dispatch_token=None, lease_token=None,
    )
    job = Job.objects.get(id=job_id)
    if updated == 0:
        raise InvalidState(f"job is {job.status}")
    JobEvent.objects.create(job=job, tenant_id=job.tenant_id, type=EventType.REQUEUED, message=reason)
    _log("job_requeued", job=job.id, tenant=job.tenant_id, batch=job.batch_id, reason=reason)
    hooks.job_requeued(job.id, job.batch_id)
    dispatch.dispatch_tenant(job.tenant_id)
    return job


# --- waiting ---------------------------------------------------------------------------
# A handler that waits on a waitpoint (batches.waits) gives up its lease and its
# tenant's concurrency slot; `jobs` knows only the waitpoint's id, never its model.

def _dispatch_after_commit() -> None:
    """Refill after the waiting transition commits, not inside it: its caller may hold
    a batch or waitpoint row that a finishing job, holding the dispatch lock since its
    finish statement, is waiting for (the deadlock the soak found in batch intake).
    A failure here loses nothing: beat's dispatch cycle picks the jobs up."""

    def run() -> None:
        with transaction.atomic(durable=True):
            dispatch.dispatch_tenant(None)

    transaction.on_commit(run, robust=True)


_SUSPEND_SQL = """
WITH j AS (
    UPDATE jobs_job SET
        status = 'waiting',
        waiting_for_id = %(waitpoint)s,
        -- A run that ends in a suspension gives its attempt back: waiting is not a
        -- failure, and attempts must never exceed max_attempts across resumes.
        attempts = GREATEST(attempts - 1, 0),
        dispatch_token = NULL, dispatch_deadline = NULL,
        lease_token = NULL, lease_owner = '', lease_expires_at = NULL, timeout_at = NULL,
        updated_at = now()
    WHERE id = %(id)s::uuid AND status = 'running' AND lease_token = %(lease)s::uuid
    RETURNING id, tenant_id, attempts
), e AS (
    UPDATE jobs_execution SET status = 'suspended', finished_at = now()
    WHERE job_id IN (SELECT id FROM j) AND lease_token = %(lease)s::uuid AND status = 'running'
), ev AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, data, created_at)
    SELECT id, tenant_id, 'suspended', attempts + 1, %(message)s::text, %(data)s, now() FROM j
)
SELECT tenant_id FROM j
"""


def suspend_in_tx(job_id: UUID, lease_token: UUID, waitpoint_id: UUID) -> bool:
    """running → waiting on `waitpoint_id`, for the lease holder, in the caller's transaction.

    The attempt's execution is closed as `suspended`, the lease cleared, and the freed
    slot refilled after commit. False: the lease was taken over or the job cancelled first; the
    caller must roll back whatever it created for the wait and stop the handler.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            _SUSPEND_SQL,
            {"id": job_id, "lease": lease_token, "waitpoint": waitpoint_id,
             "message": f"waiting on waitpoint {waitpoint_id}", "data": Jsonb({"waitpoint": str(waitpoint_id)})},
        )
        row = cursor.fetchone()
    if row is None:
        return False
    _dispatch_after_commit()
    _log("job_suspended", job=job_id, tenant=row[0], waitpoint=waitpoint_id)
    return True


_RESUME_SQL = """
WITH j AS (
    UPDATE jobs_job SET status = 'queued', waiting_for_id = NULL, run_at = now(), updated_at = now()
    WHERE status = 'waiting' AND waiting_for_id = %(waitpoint)s {job_filter}
    RETURNING id, tenant_id, attempts
), ev AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, data, created_at)
    SELECT id, tenant_id, 'resumed', attempts + 1, %(message)s::text, %(data)s, now() FROM j
)
SELECT id, tenant_id FROM j
"""


def resume_in_tx(waitpoint_id: UUID, job_id: UUID | None = None) -> list[UUID]:
    """waiting → queued for the jobs waiting on `waitpoint_id` (or just `job_id`),
    once that waitpoint is completed; dispatched after commit. In the caller's transaction.

    Returns the ids that moved. An empty list means none was waiting on it any more
    (already resumed, cancelled, or waiting on something else): nothing to do.
    """
    sql = _RESUME_SQL.format(job_filter="AND id = %(id)s::uuid" if job_id is not None else "")
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            {"waitpoint": waitpoint_id, "id": job_id, "message": f"waitpoint {waitpoint_id} completed",
             "data": Jsonb({"waitpoint": str(waitpoint_id)})},
        )
        rows = cursor.fetchall()
    if rows:
        _dispatch_after_commit()
        _log("jobs_resumed", waitpoint=waitpoint_id, count=len(rows))
    return [r[0] for r in rows]


resume = transaction.atomic(durable=True)(resume_in_tx)
