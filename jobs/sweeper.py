"""The sweeper: one function per place a job can get stuck, each idempotent.

Every repair calls the same lifecycle transition as the normal path and writes a
`repaired` event naming its reason. Candidates are read without locks and then
moved one by one by compare-and-set, so two sweepers at once move each item once.
Time comes from Postgres (`now()`), never from this host's clock.

A place is found and counted from one SQL definition (`SqlQuery`), so what
`monitor_jobs`, `/health/jobs` and `/metrics` count is exactly what the sweep moves.
Higher layers (batches) add their places with `register_place()`.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from . import dispatch, lifecycle, metrics_hooks
from .models import EventType, JobEvent

logger = logging.getLogger("jobs.sweeper")
SWEEP_LOCK = (dispatch.TENANT_LOCK_NAMESPACE, 2)
CHUNK = 500

Row = tuple[object, ...]
# A repair returns whether it moved its row, or the ids it moved (a repair that
# moves several rows at once, like a dispatch cycle, names each of them).
RepairResult = bool | list[str]


@dataclass
class SweepReport:
    moved: dict[str, list[str]] = field(default_factory=dict)
    # Jobs the closing dispatch cycle sent (the normal path, not a repair).
    dispatched: int = 0
    # Places whose find or repair raised; the other places were still swept.
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, place: str, ids: list[str]) -> None:
        if ids:
            self.moved.setdefault(place, []).extend(ids)

    def counts(self) -> dict[str, int]:
        return {place: len(ids) for place, ids in self.moved.items()}


@dataclass(frozen=True)
class SqlQuery:
    """A stuck place as SQL. `from_where` is `FROM ... WHERE ...` with %s params
    from `params()`; the tenant filter is appended to it."""

    select: str
    from_where: str
    order: str
    params: Callable[[], list[object]] = list
    tenant_column: str = "j.tenant_id"
    example: str = "j.id"

    def _where(self, tenant_id: UUID | None) -> tuple[str, list[object]]:
        sql, params = self.from_where, self.params()
        if tenant_id:
            sql, params = f"{sql} AND {self.tenant_column} = %s", [*params, tenant_id]
        return sql, params

    def find(self, tenant_id: UUID | None = None) -> list[Row]:
        sql, params = self._where(tenant_id)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {self.select} {sql} ORDER BY {self.order} LIMIT {CHUNK}", params)
            return list(cursor.fetchall())

    def count(self, tenant_id: UUID | None = None) -> tuple[int, str | None]:
        """How many rows are stuck here, and the oldest one's job id."""
        sql, params = self._where(tenant_id)
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT (SELECT count(*) {sql}), (SELECT {self.example} {sql} ORDER BY {self.order} LIMIT 1)",
                [*params, *params],
            )
            n, example = cursor.fetchone()
        return int(n), (str(example) if example is not None else None)


@dataclass(frozen=True)
class Place:
    name: str
    find: Callable[[UUID | None], list[Row]]
    repair: Callable[[Row], RepairResult]
    # (count, oldest example id); without it, measured by `find` (capped at CHUNK).
    count: Callable[[UUID | None], tuple[int, str | None]] | None = None
    description: str = ""

    def measure(self, tenant_id: UUID | None = None) -> tuple[int, str | None]:
        if self.count is not None:
            return self.count(tenant_id)
        rows = self.find(tenant_id)
        return len(rows), (str(rows[0][0]) if rows else None)


def record_repaired(job_id: object, tenant_id: object, reason: str, batch_id: object = None) -> None:
    """The `repaired` event (in the caller's transaction) and its log line."""
    JobEvent.objects.create(job_id=job_id, tenant_id=tenant_id, type=EventType.REPAIRED, message=reason)
    metrics_hooks.bump(f"repaired:{reason}")
    fields: dict[str, Any] = {"job": str(job_id), "tenant": str(tenant_id), "reason": reason}
    if batch_id is not None:
        fields["batch"] = str(batch_id)
    logger.info("job_repaired", extra={"fields": fields})


_repaired = record_repaired  # the name batches' places used first


def _grace() -> float:
    # The worker's hard time limit is timeout + this grace (dispatch.send_dispatched):
    # past it, a live worker would have ended the attempt itself.
    return max(5.0, min(60.0, settings.JOB_LEASE_SECONDS))


# --- running past its timeout: the worker did not end it -------------------------------

OVERDUE = SqlQuery(
    select="j.id, j.lease_token, j.tenant_id, j.batch_id",
    from_where="FROM jobs_job j WHERE j.status = 'running' AND j.timeout_at < now() - make_interval(secs => %s)",
    order="j.timeout_at",
    params=lambda: [_grace()],
)
find_overdue = OVERDUE.find


def repair_overdue(row: Row) -> bool:
    job_id, lease, tenant_id, *rest = row
    with transaction.atomic(durable=True):
        outcome = lifecycle.time_out_in_tx(job_id, lease)  # type: ignore[arg-type]
        if outcome.won:
            record_repaired(job_id, tenant_id, "running_too_long", rest[0] if rest else None)
    return outcome.won


# --- running with an expired lease: the worker died ------------------------------------

# Overdue jobs are excluded: they belong to running_too_long, so no job counts twice.
EXPIRED_LEASE = SqlQuery(
    select="j.id, j.lease_token, j.tenant_id, j.batch_id",
    from_where=(
        "FROM jobs_job j WHERE j.status = 'running' AND j.lease_expires_at < now() "
        "AND (j.timeout_at IS NULL OR j.timeout_at >= now() - make_interval(secs => %s))"
    ),
    order="j.lease_expires_at",
    params=lambda: [_grace()],
)
find_expired_leases = EXPIRED_LEASE.find


def repair_expired_lease(row: Row) -> bool:
    job_id, lease, tenant_id, *rest = row
    with transaction.atomic(durable=True):
        status = lifecycle.mark_stalled_in_tx(job_id, lease, "lease expired")  # type: ignore[arg-type]
        if status is not None:
            record_repaired(job_id, tenant_id, "lease_expired", rest[0] if rest else None)
    return status is not None


# --- dispatched, message lost ------------------------------------------------------------

LOST_DISPATCH = SqlQuery(
    select="j.id, j.dispatch_token, j.tenant_id, j.batch_id",
    from_where="FROM jobs_job j WHERE j.status = 'dispatched' AND j.dispatch_deadline < now()",
    order="j.dispatch_deadline",
)
find_lost_dispatches = LOST_DISPATCH.find


def repair_lost_dispatch(row: Row) -> bool:
    job_id, token, tenant_id, *rest = row
    with transaction.atomic(durable=True):
        won = lifecycle.redispatch_in_tx(job_id, token)  # type: ignore[arg-type]
        if won:
            record_repaired(job_id, tenant_id, "dispatch_lost", rest[0] if rest else None)
    return won


# --- an execution left running after its job moved on ------------------------------------

# Start, finish, stall and cancel each close the execution in the transition's own
# transaction, so this state is never transient: no age threshold is needed.
OPEN_EXECUTION = SqlQuery(
    select="e.id, e.lease_token, j.tenant_id, j.id, j.batch_id",
    from_where=(
        "FROM jobs_execution e JOIN jobs_job j ON j.id = e.job_id WHERE e.status = 'running' "
        "AND (j.status <> 'running' OR j.lease_token IS DISTINCT FROM e.lease_token)"
    ),
    order="e.started_at",
)
find_open_executions = OPEN_EXECUTION.find


def repair_open_execution(row: Row) -> bool:
    exec_id, lease, tenant_id, job_id, *rest = row
    with transaction.atomic(durable=True):
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE jobs_execution e SET status = 'lost', finished_at = now() FROM jobs_job j "
                "WHERE e.id = %s AND e.status = 'running' AND j.id = e.job_id "
                "AND (j.status <> 'running' OR j.lease_token IS DISTINCT FROM e.lease_token)",
                [exec_id],
            )
            won = cursor.rowcount == 1
        if won:
            record_repaired(job_id, tenant_id, "execution_left_running", rest[0] if rest else None)
    return won


# --- queued and ready, with room to run, but nobody dispatched it ------------------------


def _queued_params() -> list[object]:
    cap = getattr(settings, "DISPATCH_MAX_ACTIVE", None)
    return [settings.STUCK_QUEUED_SECONDS, cap if cap is not None else 2**31 - 1]


QUEUED_NOT_DISPATCHED = SqlQuery(
    select="j.id, j.tenant_id, j.batch_id",
    from_where=(
        "FROM jobs_job j JOIN jobs_tenant t ON t.id = j.tenant_id "
        "LEFT JOIN (SELECT tenant_id, count(*) AS n FROM jobs_job "
        "           WHERE status IN ('dispatched', 'running') GROUP BY tenant_id) a ON a.tenant_id = j.tenant_id "
        "WHERE j.status = 'queued' AND j.run_at < now() - make_interval(secs => %s) "
        "AND COALESCE(a.n, 0) < t.concurrency_limit "
        "AND (SELECT count(*) FROM jobs_job WHERE status IN ('dispatched', 'running')) < %s"
    ),
    order="j.run_at",
    params=_queued_params,
)
find_queued_not_dispatched = QUEUED_NOT_DISPATCHED.find


def repair_queued_not_dispatched(row: Row) -> list[str]:
    """Run the normal dispatch cycle; every stuck job it claims gets its event.

    The cycle may claim several stuck jobs at once (all of them, usually), so the
    later rows of the same pass find nothing left to do.
    """
    with transaction.atomic(durable=True):
        claimed = [d.id for d in dispatch.dispatch_tenant(row[1])]  # type: ignore[arg-type]
        if not claimed:
            return []
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id, tenant_id, batch_id FROM jobs_job WHERE id = ANY(%s) "
                "AND run_at < now() - make_interval(secs => %s) ORDER BY run_at",
                [claimed, settings.STUCK_QUEUED_SECONDS],
            )
            stuck = cursor.fetchall()
        for job_id, tenant_id, batch_id in stuck:
            record_repaired(job_id, tenant_id, "queued_not_dispatched", batch_id)
    return [str(r[0]) for r in stuck]


# Order matters: a job past its timeout is timed out before its lease is judged, and
# queued work is dispatched last, into the capacity the repairs above freed.
PLACES: list[Place] = [
    Place("running_too_long", find_overdue, repair_overdue, OVERDUE.count,
          "running past its timeout and the worker's hard limit: timed out"),
    Place("running_lease_expired", find_expired_leases, repair_expired_lease, EXPIRED_LEASE.count,
          "running, lease expired (worker died): stalled, requeued or failed"),
    Place("dispatched_message_lost", find_lost_dispatches, repair_lost_dispatch, LOST_DISPATCH.count,
          "dispatched, not started by its deadline: re-dispatched with a new token"),
    Place("execution_left_running", find_open_executions, repair_open_execution, OPEN_EXECUTION.count,
          "execution still running after its job moved on: closed as lost"),
    Place("queued_not_dispatched", find_queued_not_dispatched, repair_queued_not_dispatched,
          QUEUED_NOT_DISPATCHED.count, "queued and ready with free capacity past STUCK_QUEUED_SECONDS: dispatched"),
]


def register_place(place: Place) -> None:
    """Higher layers (batches) add their stuck places here from AppConfig.ready()."""
    for i, existing in enumerate(PLACES):
        if existing.name == place.name:
            PLACES[i] = place  # a re-import replaces, never duplicates
            return
    PLACES.append(place)


def _sweep_place(place: Place, tenant_id: UUID | None, dry_run: bool, report: SweepReport) -> None:
    while True:
        rows = place.find(tenant_id)
        if dry_run:
            report.add(place.name, [str(r[0]) for r in rows])
            return
        moved: list[str] = []
        for row in rows:
            result = place.repair(row)
            if isinstance(result, list):
                moved.extend(result)
            elif result:
                moved.append(str(row[0]))
        report.add(place.name, moved)
        if len(rows) < CHUNK or not moved:
            return


def sweep(tenant_id: UUID | None = None, dry_run: bool = False) -> SweepReport:
    """One full pass over every place; returns what moved (or would move).

    A place that raises is logged and reported; the others are still swept.
    """
    report = SweepReport()
    for place in list(PLACES):
        try:
            _sweep_place(place, tenant_id, dry_run, report)
        except Exception as exc:
            logger.exception("sweeping %s failed", place.name, extra={"fields": {"place": place.name}})
            report.errors[place.name] = f"{type(exc).__name__}: {exc}"
    if not dry_run:
        report.dispatched = dispatch.dispatch_ready()
    if report.moved:
        logger.info("sweep moved %s", report.counts(), extra={"fields": {"moved": report.counts()}})
    return report


def sweep_single_flight() -> SweepReport | None:
    """The periodic sweep: skipped if another sweeper holds the lock right now."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", list(SWEEP_LOCK))
        if not cursor.fetchone()[0]:
            return None
    try:
        return sweep()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", list(SWEEP_LOCK))


def recover_worker(hostname: str, booted_at: object) -> list[str]:
    """At worker start: attempts this hostname began before it booted are dead now
    (its previous incarnation crashed), so stall them without waiting for the lease."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT j.id, j.lease_token, j.tenant_id, j.batch_id FROM jobs_job j JOIN jobs_execution e "
            "ON e.job_id = j.id AND e.lease_token = j.lease_token "
            "WHERE j.status = 'running' AND j.lease_owner = %s AND e.started_at < %s "
            f"ORDER BY e.started_at LIMIT {CHUNK}",
            [hostname, booted_at],
        )
        rows = cursor.fetchall()
    moved = []
    for job_id, lease, tenant_id, batch_id in rows:
        with transaction.atomic(durable=True):
            if lifecycle.mark_stalled_in_tx(job_id, lease, f"worker {hostname} restarted") is not None:
                record_repaired(job_id, tenant_id, "worker_restarted", batch_id)
                moved.append(str(job_id))
    return moved
