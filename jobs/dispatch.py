"""Dispatch: move a tenant's ready jobs from queued to dispatched, under its limit.

A tenant's concurrency is a count of its own rows that are dispatched (within their
deadline, enforced by the sweeper) or running (within their lease): there is no token
to leak. Counting and claiming happen under a per-tenant transaction-level advisory
lock, so two dispatchers can never both fill the same free slot; claims use
FOR UPDATE SKIP LOCKED in one statement per tenant. Celery messages are sent only
after the claiming transaction commits.
"""

import logging
import zlib
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from . import metrics_hooks

logger = logging.getLogger(__name__)

# First key of the two-int advisory lock space; the second is the tenant.
TENANT_LOCK_NAMESPACE = 0x6270  # "bp"
GLOBAL_DISPATCH_LOCK = (0x6270, 1)


@dataclass(frozen=True)
class Dispatched:
    id: UUID
    dispatch_token: UUID
    task: str
    queue: str
    timeout_seconds: float


def tenant_lock_key(tenant_id: UUID) -> int:
    # int4 key from the UUID; collisions only serialise two tenants' dispatch.
    return zlib.crc32(tenant_id.bytes) - 2**31


_CLAIM_SQL = """
WITH free AS (
    SELECT GREATEST(t.concurrency_limit - (
        SELECT count(*) FROM jobs_job a
        WHERE a.tenant_id = t.id AND a.status IN ('dispatched', 'running')
    ), 0) AS n
    FROM jobs_tenant t WHERE t.id = %(tenant)s
), picked AS (
    SELECT j.id FROM jobs_job j
    WHERE j.tenant_id = %(tenant)s AND j.status = 'queued' AND j.run_at <= statement_timestamp()  -- Django's Now() is statement time
    ORDER BY j.priority DESC, j.run_at, j.created_at
    LIMIT LEAST((SELECT n FROM free), %(max)s)
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs_job j SET
        status = 'dispatched',
        dispatch_token = gen_random_uuid(),
        dispatched_at = now(),
        dispatch_deadline = now() + make_interval(secs => %(deadline)s),
        updated_at = now()
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.tenant_id, j.dispatch_token, j.task, j.queue, j.timeout_seconds, j.attempts
), events AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, created_at)
    SELECT id, tenant_id, 'dispatched', attempts + 1, '', now() FROM claimed
)
SELECT id, dispatch_token, task, queue, timeout_seconds FROM claimed
"""


def dispatch_tenant(tenant_id: UUID, max_jobs: int = 1000) -> list[Dispatched]:
    """Claim up to the tenant's free slots inside the caller's transaction.

    Messages go out on commit. Blocks on the tenant's lock for as long as another
    dispatcher of the same tenant holds it (one short transaction).
    """
    assert connection.in_atomic_block, "dispatch_tenant must run inside a transaction"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", [TENANT_LOCK_NAMESPACE, tenant_lock_key(tenant_id)]
        )
        cursor.execute(
            _CLAIM_SQL,
            {"tenant": tenant_id, "max": max_jobs, "deadline": settings.DISPATCH_DEADLINE_SECONDS},
        )
        rows = [Dispatched(*row) for row in cursor.fetchall()]
    if rows:
        transaction.on_commit(lambda: send_dispatched(rows))
    return rows


def send_dispatched(rows: list[Dispatched]) -> None:
    """Publish one Celery message per dispatched job (after commit).

    A failure here loses nothing: the rows stay `dispatched` and the sweeper
    re-dispatches them when their deadline passes.
    """
    from .tasks import run_job

    grace = max(5.0, min(60.0, settings.JOB_LEASE_SECONDS))
    try:
        with run_job.app.producer_or_acquire() as producer:
            for row in rows:
                run_job.apply_async(
                    args=[str(row.id), str(row.dispatch_token)],
                    queue=row.queue,
                    soft_time_limit=row.timeout_seconds,
                    time_limit=row.timeout_seconds + grace,
                    producer=producer,
                )
    except Exception:
        logger.exception("could not publish %d dispatched job(s); the sweeper will re-dispatch them", len(rows))
        return
    metrics_hooks.dispatched(len(rows))


def tenants_with_ready_work() -> list[UUID]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT DISTINCT tenant_id FROM jobs_job WHERE status = 'queued' AND run_at <= statement_timestamp()"
        )
        return [row[0] for row in cursor.fetchall()]


def dispatch_ready() -> int:
    """One dispatch cycle over every tenant with ready work; returns jobs dispatched."""
    total = 0
    for tenant_id in tenants_with_ready_work():
        while True:
            with transaction.atomic(durable=True):
                rows = dispatch_tenant(tenant_id)
            total += len(rows)
            if len(rows) < 1000:
                break
    return total
