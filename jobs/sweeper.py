"""The sweeper: one function per place a job can get stuck, each idempotent.

Every repair calls the same lifecycle transition as the normal path and writes a
`repaired` event naming its reason. Candidates are read without locks and then
moved one by one by compare-and-set, so two sweepers at once move each item once.
Time comes from Postgres (`now()`), never from this host's clock.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from . import dispatch, lifecycle, metrics_hooks
from .models import EventType, JobEvent

logger = logging.getLogger("jobs.sweeper")
SWEEP_LOCK = (dispatch.TENANT_LOCK_NAMESPACE, 2)
CHUNK = 500


@dataclass
class SweepReport:
    moved: dict[str, list[str]] = field(default_factory=dict)

    def add(self, place: str, ids: list[str]) -> None:
        if ids:
            self.moved.setdefault(place, []).extend(ids)

    def counts(self) -> dict[str, int]:
        return {place: len(ids) for place, ids in self.moved.items()}


def _candidates(sql: str, params: list[object]) -> list[tuple[object, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql + f" LIMIT {CHUNK}", params)
        return list(cursor.fetchall())


def _tenant_clause(tenant_id: UUID | None, column: str = "tenant_id") -> tuple[str, list[object]]:
    return (f" AND {column} = %s", [tenant_id]) if tenant_id else ("", [])


def _repaired(job_id: object, tenant_id: object, reason: str) -> None:
    JobEvent.objects.create(job_id=job_id, tenant_id=tenant_id, type=EventType.REPAIRED, message=reason)
    metrics_hooks.bump(f"repaired:{reason}")


# Each finder returns the rows stuck in its place; each repairer moves one row.

def find_overdue(tenant_id: UUID | None = None) -> list[tuple[object, ...]]:
    """Running past timeout_at plus the hard-limit grace: the worker did not end it."""
    where, params = _tenant_clause(tenant_id)
    grace = max(5.0, min(60.0, settings.JOB_LEASE_SECONDS))
    return _candidates(
        "SELECT id, lease_token, tenant_id FROM jobs_job WHERE status = 'running' "
        "AND timeout_at < now() - make_interval(secs => %s)" + where + " ORDER BY timeout_at",
        [grace, *params],
    )


def repair_overdue(row: tuple[object, ...]) -> bool:
    job_id, lease, tenant_id = row
    with transaction.atomic(durable=True):
        outcome = lifecycle.time_out_in_tx(job_id, lease)  # type: ignore[arg-type]
        if outcome.won:
            _repaired(job_id, tenant_id, "running_too_long")
    return outcome.won


def find_expired_leases(tenant_id: UUID | None = None) -> list[tuple[object, ...]]:
    where, params = _tenant_clause(tenant_id)
    return _candidates(
        "SELECT id, lease_token, tenant_id FROM jobs_job WHERE status = 'running' "
        "AND lease_expires_at < now()" + where + " ORDER BY lease_expires_at",
        params,
    )


def repair_expired_lease(row: tuple[object, ...]) -> bool:
    job_id, lease, tenant_id = row
    with transaction.atomic(durable=True):
        status = lifecycle.mark_stalled_in_tx(job_id, lease, "lease expired")  # type: ignore[arg-type]
        if status is not None:
            _repaired(job_id, tenant_id, "lease_expired")
    return status is not None


def find_lost_dispatches(tenant_id: UUID | None = None) -> list[tuple[object, ...]]:
    where, params = _tenant_clause(tenant_id)
    return _candidates(
        "SELECT id, dispatch_token, tenant_id FROM jobs_job WHERE status = 'dispatched' "
        "AND dispatch_deadline < now()" + where + " ORDER BY dispatch_deadline",
        params,
    )


def repair_lost_dispatch(row: tuple[object, ...]) -> bool:
    job_id, token, tenant_id = row
    with transaction.atomic(durable=True):
        won = lifecycle.redispatch_in_tx(job_id, token)  # type: ignore[arg-type]
        if won:
            _repaired(job_id, tenant_id, "dispatch_lost")
    return won


def find_open_executions(tenant_id: UUID | None = None) -> list[tuple[object, ...]]:
    """An execution still `running` whose job has moved on to another lease or state."""
    where, params = _tenant_clause(tenant_id, "j.tenant_id")
    return _candidates(
        "SELECT e.id, e.lease_token, j.tenant_id, j.id FROM jobs_execution e JOIN jobs_job j ON j.id = e.job_id "
        "WHERE e.status = 'running' AND (j.status <> 'running' OR j.lease_token IS DISTINCT FROM e.lease_token)"
        + where + " ORDER BY e.started_at",
        params,
    )


def repair_open_execution(row: tuple[object, ...]) -> bool:
    exec_id, lease, tenant_id, job_id = row
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
            _repaired(job_id, tenant_id, "execution_left_running")
    return won


@dataclass(frozen=True)
class Place:
    name: str
    find: Callable[[UUID | None], list[tuple[object, ...]]]
    repair: Callable[[tuple[object, ...]], bool]


# Order matters: a job past its timeout is timed out before its lease is judged.
PLACES: list[Place] = [
    Place("running_too_long", find_overdue, repair_overdue),
    Place("running_lease_expired", find_expired_leases, repair_expired_lease),
    Place("dispatched_message_lost", find_lost_dispatches, repair_lost_dispatch),
    Place("execution_left_running", find_open_executions, repair_open_execution),
]


def register_place(place: Place) -> None:
    """Higher layers (batches) add their stuck places here from AppConfig.ready()."""
    if all(p.name != place.name for p in PLACES):
        PLACES.append(place)


def sweep(tenant_id: UUID | None = None, dry_run: bool = False) -> SweepReport:
    """One full pass over every place; returns what moved (or would move)."""
    report = SweepReport()
    for place in PLACES:
        while True:
            rows = place.find(tenant_id)
            if dry_run:
                report.add(place.name, [str(r[0]) for r in rows])
                break
            moved = [str(r[0]) for r in rows if place.repair(r)]
            report.add(place.name, moved)
            if len(rows) < CHUNK or not moved:
                break
    if not dry_run:
        report.add("queued_dispatched", [str(n) for n in range(dispatch.dispatch_ready())])
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
    rows = _candidates(
        "SELECT j.id, j.lease_token, j.tenant_id FROM jobs_job j JOIN jobs_execution e "
        "ON e.job_id = j.id AND e.lease_token = j.lease_token "
        "WHERE j.status = 'running' AND j.lease_owner = %s AND e.started_at < %s",
        [hostname, booted_at],
    )
    moved = []
    for job_id, lease, tenant_id in rows:
        with transaction.atomic(durable=True):
            if lifecycle.mark_stalled_in_tx(job_id, lease, f"worker {hostname} restarted") is not None:  # type: ignore[arg-type]
                _repaired(job_id, tenant_id, "worker_restarted")
                moved.append(str(job_id))
    return moved
