"""Retention: delete finished jobs, executions and events past configurable ages.

Runs daily from beat (`jobs.prune`) and as `manage.py prune_jobs`. Work is done in
chunks of RETENTION_CHUNK rows, each in its own short transaction, with rows claimed
by FOR UPDATE SKIP LOCKED, so a prune never holds long locks or blocks a transition.

Never deleted: a job that is not terminal; a job whose batch is still open; a job
in a tree (same root) that still has an unfinished job; a job that is the parent
of an open batch. Deleted events are first added to EventTally, so the /metrics
counters built from event counts never go down.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import DateTimeField, Exists, ExpressionWrapper, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Now

from .models import TERMINAL_STATUSES, UNFINISHED_STATUSES, Execution, Job, JobEvent

logger = logging.getLogger("jobs.retention")

# Batch statuses are the batches app's; `jobs` names them only through the relation.
BATCH_OPEN_STATUSES = ("pending", "processing")


@dataclass
class PruneReport:
    jobs: int = 0
    executions: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"jobs": self.jobs, "executions": self.executions, "events": self.events}


def _before(seconds: float) -> ExpressionWrapper:
    """`now() - seconds` in database time."""
    return ExpressionWrapper(Now() - Value(timedelta(seconds=seconds)), output_field=DateTimeField())


def prunable_jobs(age_seconds: float) -> QuerySet[Job]:
    unfinished_in_tree = Job.objects.filter(root_id=OuterRef("root_id"), status__in=UNFINISHED_STATUSES)
    return (
        Job.objects.filter(status__in=TERMINAL_STATUSES, finished_at__lt=_before(age_seconds))
        .exclude(batch__status__in=BATCH_OPEN_STATUSES)
        .exclude(Exists(unfinished_in_tree))
        .exclude(Exists(Job.objects.filter(parent_id=OuterRef("pk"), status__in=UNFINISHED_STATUSES)))
        .exclude(child_batches__status__in=BATCH_OPEN_STATUSES)
    )


def _tally_events(where: str, params: list[object]) -> None:
    """Add the events about to be deleted to EventTally (same transaction)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO jobs_eventtally (key, count) "
            "SELECT k, sum(n) FROM ("
            f"  SELECT type AS k, count(*) AS n FROM jobs_jobevent WHERE {where} GROUP BY type"
            "   UNION ALL"
            f"  SELECT 'repaired:' || message, count(*) FROM jobs_jobevent WHERE type = 'repaired' AND {where}"
            "   GROUP BY message"
            ") AS x GROUP BY k "
            "ON CONFLICT (key) DO UPDATE SET count = jobs_eventtally.count + EXCLUDED.count",
            [*params, *params],
        )


def prune_jobs_chunk(age_seconds: float, chunk: int) -> int:
    with transaction.atomic(durable=True):
        ids = list(
            prunable_jobs(age_seconds).select_for_update(skip_locked=True, of=("self",))
            .order_by("finished_at").values_list("id", flat=True)[:chunk]
        )
        if not ids:
            return 0
        _tally_events("job_id = ANY(%s)", [ids])
        # The ORM delete follows every relation (executions, events, owned waitpoints;
        # parent/root links of other jobs are set null).
        Job.objects.filter(id__in=ids).delete()
    return len(ids)


def prune_events_chunk(age_seconds: float, chunk: int) -> int:
    """Old events of terminal jobs (an unfinished job keeps its whole history)."""
    with transaction.atomic(durable=True):
        ids = list(
            JobEvent.objects.filter(created_at__lt=_before(age_seconds), job__status__in=TERMINAL_STATUSES)
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("id").values_list("id", flat=True)[:chunk]
        )
        if not ids:
            return 0
        _tally_events("id = ANY(%s)", [ids])
        JobEvent.objects.filter(id__in=ids).delete()
    return len(ids)


def prune_executions_chunk(age_seconds: float, chunk: int) -> int:
    """Old closed executions; a running one is the sweeper's to close first."""
    with transaction.atomic(durable=True):
        ids = list(
            Execution.objects.filter(finished_at__lt=_before(age_seconds))
            .filter(~Q(status="running"))
            .select_for_update(skip_locked=True, of=("self",))
            .order_by("id").values_list("id", flat=True)[:chunk]
        )
        if ids:
            Execution.objects.filter(id__in=ids).delete()
    return len(ids)


def prune(
    *,
    jobs_seconds: float | None = None,
    executions_seconds: float | None = None,
    events_seconds: float | None = None,
    chunk: int | None = None,
    max_chunks: int = 10_000,
    should_stop: Callable[[], bool] = lambda: False,
) -> PruneReport:
    """One full prune; each argument defaults to its RETENTION_* setting.

    `should_stop` is checked between chunks (each chunk is its own transaction, so
    stopping there leaves nothing half done)."""
    chunk = chunk or settings.RETENTION_CHUNK
    report = PruneReport()
    steps = [
        ("jobs", prune_jobs_chunk, jobs_seconds or settings.RETENTION_JOBS_SECONDS),
        ("events", prune_events_chunk, events_seconds or settings.RETENTION_EVENTS_SECONDS),
        ("executions", prune_executions_chunk, executions_seconds or settings.RETENTION_EXECUTIONS_SECONDS),
    ]
    for name, step, age in steps:
        for _ in range(max_chunks):
            if should_stop():
                break
            n = step(age, chunk)
            setattr(report, name, getattr(report, name) + n)
            if n < chunk:
                break
    if report.jobs or report.events or report.executions:
        logger.info("pruned %s", report.as_dict(), extra={"fields": {"pruned": report.as_dict()}})
    return report
