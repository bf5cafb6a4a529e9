"""What an operator needs at a glance, read from Postgres (and the broker's queue length).

`snapshot()` is the one function behind `monitor_jobs`, `/health/jobs`, `/metrics` and
the operations dashboard, so they can never disagree about what is stuck. Stuck
counts come from the sweeper's own place definitions: what is counted here is what
the next sweep moves.
"""

import logging
from dataclasses import asdict, dataclass, field
from uuid import UUID

import redis
from django.conf import settings
from django.db import connection, transaction

from . import registry, sweeper
from .models import JobStatus

logger = logging.getLogger("jobs.monitoring")

# kombu's Redis transport keeps messages of priority p > 0 in "<queue>\x06\x16<p>".
_PRIORITY_SEP = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


@dataclass(frozen=True)
class PlaceStatus:
    name: str
    count: int | None  # None: counting it failed (see error), which is not healthy
    oldest_id: str | None
    description: str = ""
    error: str | None = None


@dataclass(frozen=True)
class TenantJobs:
    tenant_id: str
    slug: str
    counts: dict[str, int]
    oldest_running_seconds: float | None
    oldest_running_id: str | None
    # How long the longest-waiting ready job has been ready (starvation shows here).
    oldest_ready_queued_seconds: float | None = None


@dataclass(frozen=True)
class Snapshot:
    places: list[PlaceStatus]
    tenants: list[TenantJobs] = field(default_factory=list)
    # Messages waiting in each Celery queue; None when the broker did not answer.
    broker_backlog: dict[str, int | None] = field(default_factory=dict)
    # Failed jobs waiting for an operator (the dead-letter view); monitoring only.
    dead_letters: int = 0

    @property
    def stuck(self) -> dict[str, int | None]:
        return {p.name: p.count for p in self.places}

    @property
    def stuck_jobs(self) -> int:
        return sum(p.count or 0 for p in self.places)

    @property
    def healthy(self) -> bool:
        return all(p.count == 0 for p in self.places)

    def as_dict(self) -> dict[str, object]:
        return {
            "healthy": self.healthy,
            "stuck_jobs": self.stuck_jobs,
            "places": [asdict(p) for p in self.places],
            "tenants": [asdict(t) for t in self.tenants],
            "broker_backlog": self.broker_backlog,
            "dead_letters": self.dead_letters,
        }


def place_statuses(tenant_id: UUID | None = None) -> list[PlaceStatus]:
    statuses = []
    for place in list(sweeper.PLACES):
        try:
            # A savepoint: a failing count must not poison a caller's transaction.
            with transaction.atomic():
                n, oldest = place.measure(tenant_id)
            statuses.append(PlaceStatus(place.name, n, oldest, place.description))
        except Exception as exc:
            logger.exception("counting stuck place %s failed", place.name)
            statuses.append(PlaceStatus(place.name, None, None, place.description, f"{type(exc).__name__}: {exc}"))
    return statuses


def tenant_jobs(tenant_id: UUID | None = None) -> list[TenantJobs]:
    where, params = ("WHERE t.id = %s", [tenant_id]) if tenant_id else ("", [])
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT t.id, t.slug, j.status, count(j.id) FROM jobs_tenant t "
            f"LEFT JOIN jobs_job j ON j.tenant_id = t.id {where} GROUP BY t.id, t.slug, j.status ORDER BY t.slug",
            params,
        )
        counts_rows = cursor.fetchall()
        # The age of each tenant's longest-running current attempt (database time).
        cursor.execute(
            "SELECT DISTINCT ON (j.tenant_id) j.tenant_id, EXTRACT(EPOCH FROM now() - e.started_at), j.id "
            "FROM jobs_job j JOIN jobs_execution e ON e.job_id = j.id AND e.lease_token = j.lease_token "
            "WHERE j.status = 'running'" + (" AND j.tenant_id = %s" if tenant_id else "")
            + " ORDER BY j.tenant_id, e.started_at",
            params,
        )
        running = {row[0]: (float(row[1]), str(row[2])) for row in cursor.fetchall()}
        cursor.execute(
            "SELECT tenant_id, EXTRACT(EPOCH FROM now() - min(run_at)) FROM jobs_job "
            "WHERE status = 'queued' AND run_at <= now()" + (" AND tenant_id = %s" if tenant_id else "")
            + " GROUP BY tenant_id",
            params,
        )
        waiting = {row[0]: float(row[1]) for row in cursor.fetchall()}
    tenants: dict[UUID, TenantJobs] = {}
    for tid, slug, status, n in counts_rows:
        entry = tenants.get(tid)
        if entry is None:
            age, oldest = running.get(tid, (None, None))
            entry = tenants[tid] = TenantJobs(
                str(tid), slug, {s.value: 0 for s in JobStatus}, age, oldest, waiting.get(tid)
            )
        if status is not None:
            entry.counts[status] = int(n)
    return list(tenants.values())


def queue_names() -> list[str]:
    names = {settings.CELERY_DEFAULT_QUEUE}
    for name in registry.registered_names():
        names.add(registry.get_task(name).queue_name)
    return sorted(names)


def broker_backlog() -> dict[str, int | None]:
    """LLEN of each Celery queue (with BROKER_KEY_PREFIX). Monitoring only: nothing
    in Redis decides what happens to a job."""
    try:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
        with client.pipeline(transaction=False) as pipe:
            names = queue_names()
            for name in names:
                key = settings.BROKER_KEY_PREFIX + name
                pipe.llen(key)
                for p in _PRIORITY_STEPS:
                    pipe.llen(f"{key}{_PRIORITY_SEP}{p}")
            lengths = pipe.execute()
        client.close()
    except redis.RedisError as exc:
        logger.warning("could not read broker queue lengths: %s", exc)
        return {name: None for name in queue_names()}
    step = 1 + len(_PRIORITY_STEPS)
    return {name: int(sum(lengths[i * step:(i + 1) * step])) for i, name in enumerate(names)}


def snapshot(tenant_id: UUID | None = None, *, tenants: bool = True, broker: bool = True) -> Snapshot:
    """Stuck counts per place, and (unless turned off) jobs by status per tenant, the
    broker backlog and the dead letters. `/health/jobs` asks for the counts only."""
    places = place_statuses(tenant_id)
    if not tenants:
        return Snapshot(places=places)
    per_tenant = tenant_jobs(tenant_id)
    return Snapshot(
        places=places,
        tenants=per_tenant,
        broker_backlog=broker_backlog() if broker else {},
        dead_letters=sum(t.counts.get(JobStatus.FAILED, 0) for t in per_tenant),
    )
