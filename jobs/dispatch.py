"""Fair dispatch: move ready jobs from queued to dispatched, tenant by tenant.

A tenant's concurrency is a count of its own rows that are dispatched (within their
deadline, enforced by the sweeper) or running (within their lease): there is no
token to leak. The platform as a whole keeps at most DISPATCH_MAX_ACTIVE jobs active,
and shares that capacity between tenants with ready work by deficit round robin:
on each visit a tenant's deficit grows by DISPATCH_DRR_QUANTUM × weight (capped at
DISPATCH_MAX_DEFICIT) and it may dispatch that many jobs, bounded by its own free
slots; the pointer moves on when its deficit is spent or it cannot take more. The
deficits and the pointer are rows in Postgres; losing them costs one less fair round.

One dispatcher at a time holds a transaction-level advisory lock, so counts and
claims never race. Claims are one statement per tenant visit (FOR UPDATE SKIP LOCKED
with a LIMIT), so 100,000 queued jobs cost a handful of statements per cycle.
Celery messages are sent only after the claiming transaction commits.
"""

import logging
import math
from dataclasses import dataclass
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from . import metrics_hooks
from .failpoints import failpoint

logger = logging.getLogger(__name__)

LOCK_NAMESPACE = 0x6270  # "bp": first key of our two-int advisory locks
DISPATCH_LOCK = (LOCK_NAMESPACE, 1)
TENANT_LOCK_NAMESPACE = LOCK_NAMESPACE  # kept for the sweeper's lock key


@dataclass(frozen=True)
class Dispatched:
    id: UUID
    dispatch_token: UUID
    task: str
    queue: str
    timeout_seconds: float


@dataclass
class _Tenant:
    id: UUID
    weight: int
    free: int  # concurrency_limit - active, floored at 0
    deficit: float


_CANDIDATES_SQL = """
SELECT t.id, t.weight, t.concurrency_limit, t.dispatch_deficit,
       (SELECT count(*) FROM jobs_job a
        WHERE a.tenant_id = t.id AND a.status IN ('dispatched', 'running')) AS active,
       (SELECT count(*) FROM jobs_job g WHERE g.status IN ('dispatched', 'running')) AS active_total,
       (SELECT c.tenant_id FROM jobs_dispatchcursor c WHERE c.id = 1) AS pointer
FROM jobs_tenant t
WHERE EXISTS (
    SELECT 1 FROM jobs_job j
    WHERE j.tenant_id = t.id AND j.status = 'queued' AND j.run_at <= statement_timestamp()
)
ORDER BY t.id
"""

# Claims for every tenant of the plan, the events, the deficits and the pointer: one
# statement. `alloc` is a VALUES list of (tenant, n, new deficit).
_CLAIM_SQL = """
WITH alloc(tenant_id, n, deficit) AS (VALUES {values}),
picked AS (
    SELECT p.id FROM alloc, LATERAL (
        SELECT j.id FROM jobs_job j
        WHERE j.tenant_id = alloc.tenant_id AND j.status = 'queued' AND j.run_at <= statement_timestamp()
        ORDER BY j.priority DESC, j.run_at, j.created_at
        LIMIT alloc.n
        FOR UPDATE SKIP LOCKED
    ) p
    WHERE alloc.n > 0
), claimed AS (
    UPDATE jobs_job j SET
        status = 'dispatched',
        dispatch_token = gen_random_uuid(),
        dispatched_at = statement_timestamp(),
        dispatch_deadline = statement_timestamp() + make_interval(secs => %s),
        updated_at = statement_timestamp()
    FROM picked WHERE j.id = picked.id
    RETURNING j.id, j.tenant_id, j.dispatch_token, j.task, j.queue, j.timeout_seconds, j.attempts
), events AS (
    INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, created_at)
    SELECT id, tenant_id, 'dispatched', attempts + 1, '', statement_timestamp() FROM claimed
), deficits AS (
    UPDATE jobs_tenant t SET dispatch_deficit = alloc.deficit FROM alloc
    WHERE t.id = alloc.tenant_id AND t.dispatch_deficit IS DISTINCT FROM alloc.deficit
), pointer AS (
    INSERT INTO jobs_dispatchcursor (id, tenant_id) VALUES (1, %s)
    ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id
    WHERE jobs_dispatchcursor.tenant_id IS DISTINCT FROM EXCLUDED.tenant_id
)
SELECT id, dispatch_token, task, queue, timeout_seconds FROM claimed
"""


def _lock(cursor: object, wait: bool) -> bool:
    if wait:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(DISPATCH_LOCK))  # type: ignore[attr-defined]
        return True
    cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", list(DISPATCH_LOCK))  # type: ignore[attr-defined]
    return bool(cursor.fetchone()[0])  # type: ignore[attr-defined]


def plan(tenants: list[_Tenant], pointer: UUID | None, free: int, quantum: int, max_deficit: int) -> tuple[dict[UUID, int], UUID | None]:
    """Deficit round robin over `tenants` (sorted by id) for `free` slots.

    Pure: returns jobs to claim per tenant and the new pointer; mutates deficits.
    """
    alloc: dict[UUID, int] = {}
    ring = [t for t in tenants if t.free > 0]
    if not ring or free <= 0:
        return alloc, pointer
    start = next((i for i, t in enumerate(ring) if pointer is not None and t.id >= pointer), 0)
    i = start
    fresh_visit = ring[i].id != pointer  # the pointer's tenant keeps its unspent deficit
    while free > 0 and ring:
        t = ring[i]
        if fresh_visit or t.deficit < 1:
            t.deficit = min(t.deficit + quantum * t.weight, max_deficit)
        n = min(math.floor(t.deficit), t.free, free)
        alloc[t.id] = alloc.get(t.id, 0) + n
        t.deficit -= n
        t.free -= n
        free -= n
        if t.free <= 0:
            ring.pop(i)  # saturated: skip it for the rest of this cycle
            if not ring:
                break
            i %= len(ring)
            fresh_visit = True
        elif t.deficit < 1:
            i = (i + 1) % len(ring)
            fresh_visit = True
        else:
            fresh_visit = False  # global capacity ran out mid-visit; resume here next time
    next_pointer = ring[i].id if ring else None
    return alloc, next_pointer


def run_cycle(wait: bool = True, locked: bool = False) -> list[Dispatched]:
    """One dispatch cycle inside the caller's transaction; messages go out on commit.

    `wait=False` (refills after a finish) skips the cycle when another dispatcher
    holds the lock; a slot that cycle could not see is refilled by the next finish,
    submit or beat tick (DISPATCH_INTERVAL_SECONDS). `locked=True`: the caller
    already took the lock in its own statement (saves a round trip per job).
    """
    assert connection.in_atomic_block, "dispatch must run inside a transaction"
    with connection.cursor() as cursor:
        if not locked and not _lock(cursor, wait):
            return []
        cursor.execute(_CANDIDATES_SQL)
        rows = cursor.fetchall()
        if not rows:
            return []
        active_total, pointer = rows[0][5], rows[0][6]
        tenants = [_Tenant(id=r[0], weight=max(1, r[1]), free=max(0, r[2] - r[4]), deficit=r[3]) for r in rows]
        alloc, new_pointer = plan(
            tenants,
            pointer,
            settings.DISPATCH_MAX_ACTIVE - active_total,
            settings.DISPATCH_DRR_QUANTUM,
            settings.DISPATCH_MAX_DEFICIT,
        )
        params: list[object] = []
        for t in tenants:
            params += [t.id, alloc.get(t.id, 0), t.deficit]
        sql = _CLAIM_SQL.format(values=", ".join(["(%s::uuid, %s::int, %s::float8)"] * len(tenants)))
        cursor.execute(sql, [*params, settings.DISPATCH_DEADLINE_SECONDS, new_pointer])
        claimed = [Dispatched(*row) for row in cursor.fetchall()]
    if claimed:
        transaction.on_commit(lambda: send_dispatched(claimed))
        if logger.isEnabledFor(logging.INFO):
            for row in claimed:
                logger.info("job_dispatched", extra={"fields": {"job": str(row.id), "queue": row.queue}})
    return claimed


def dispatch_tenant(tenant_id: UUID | None = None) -> list[Dispatched]:
    """New work arrived (for `tenant_id`): run a cycle now, waiting for the lock so
    the new rows are seen. Inside the caller's transaction."""
    return run_cycle(wait=True)


def refill(locked: bool = False) -> list[Dispatched]:
    """A slot was freed: run a cycle unless another dispatcher is running one."""
    return run_cycle(wait=False, locked=locked)


def refill_lock_sql(tenant_id_column: str, requeued: str = "false") -> str:
    """An expression a finish statement selects to decide, in its own round trip,
    whether a refill cycle is worth running, taking the dispatch lock (without
    waiting) if so.

    Worth it when there is ready work and either the platform has 10% of
    DISPATCH_MAX_ACTIVE free, or the finishing job's tenant could take a quarter of
    its (effective) limit: small limits are refilled on every finish, large ones in
    chunks instead of one cycle per finish. Counts are taken in the statement's
    snapshot, where the finishing job is still active, hence the + 1; for the same
    reason a job the statement itself requeues (`requeued`, an SQL boolean) counts as
    ready work although the EXISTS cannot see it.
    """
    return f"""(SELECT CASE WHEN ({requeued} OR EXISTS (
                SELECT 1 FROM jobs_job q WHERE q.status = 'queued' AND q.run_at <= statement_timestamp()
            )) AND (
                f.global_free >= GREATEST(1, %(max_active)s::int / 10)
                OR LEAST(f.tenant_free, f.global_free) >= GREATEST(1, LEAST(f.lim, %(max_active)s::int) / 4)
            )
            THEN pg_try_advisory_xact_lock({DISPATCH_LOCK[0]}, {DISPATCH_LOCK[1]}) ELSE false END
        FROM (
            SELECT t.concurrency_limit AS lim,
                   t.concurrency_limit + 1 - (SELECT count(*) FROM jobs_job a
                        WHERE a.tenant_id = t.id AND a.status IN ('dispatched', 'running')) AS tenant_free,
                   %(max_active)s::int + 1 - (SELECT count(*) FROM jobs_job g
                        WHERE g.status IN ('dispatched', 'running')) AS global_free
            FROM jobs_tenant t WHERE t.id = {tenant_id_column}
        ) f)"""


def send_dispatched(rows: list[Dispatched]) -> None:
    """Publish one Celery message per dispatched job (after commit).

    A failure here loses nothing: the rows stay `dispatched` and the sweeper
    re-dispatches them when their deadline passes.
    """
    from .tasks import run_job

    grace = max(5.0, min(60.0, settings.JOB_LEASE_SECONDS))
    failpoint("before_publish")
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


def dispatch_ready() -> int:
    """Cycles until nothing more can be dispatched (beat, sweeper); returns the count."""
    total = 0
    while True:
        with transaction.atomic(durable=True):
            n = len(run_cycle(wait=True))
        total += n
        if n == 0:
            return total
