"""The pruner: old finished work goes in bounded chunks; unfinished trees and open
batches stay; counters built from events never go down."""

import io
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from batches.models import Batch
from jobs import lifecycle, retention, sweeper
from jobs.models import EventTally, Execution, Job, JobEvent, Tenant
from tests.monitoring.test_metrics import scrape, value

HOUR = 3600.0


def finished_job(tenant: Tenant, *, hours_ago: float = 2, **submit: object) -> Job:
    job = lifecycle.submit(tenant, "examples.echo", 1, **submit).job  # type: ignore[arg-type]
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, "w")
    assert attempt is not None and lifecycle.succeed(job.id, attempt.lease_token, 1).won
    age(job, hours_ago)
    return job


def age(job: Job, hours_ago: float) -> None:
    then = timezone.now() - timedelta(hours=hours_ago)
    Job.objects.filter(id=job.id).update(finished_at=then)
    JobEvent.objects.filter(job_id=job.id).update(created_at=then)
    Execution.objects.filter(job_id=job.id).update(finished_at=then)


def prune(**kwargs: object) -> retention.PruneReport:
    options: dict[str, object] = {"jobs_seconds": HOUR, "events_seconds": HOUR, "executions_seconds": HOUR}
    options.update(kwargs)
    return retention.prune(**options)  # type: ignore[arg-type]


@pytest.mark.django_db
def test_old_finished_jobs_go_in_chunks_with_their_executions_and_events(tenant: Tenant) -> None:
    old = [finished_job(tenant) for _ in range(5)]
    recent = finished_job(tenant, hours_ago=0)
    waiting_for_its_time = lifecycle.submit(tenant, "examples.echo", 1, delay_seconds=10 * HOUR).job

    report = prune(chunk=2)

    assert report.jobs == 5
    assert not Job.objects.filter(id__in=[j.id for j in old]).exists()
    assert not Execution.objects.filter(job_id__in=[j.id for j in old]).exists()
    assert not JobEvent.objects.filter(job_id__in=[j.id for j in old]).exists()
    assert set(Job.objects.values_list("id", flat=True)) == {recent.id, waiting_for_its_time.id}
    assert prune(chunk=2).jobs == 0


@pytest.mark.django_db
def test_a_finished_child_of_an_unfinished_tree_is_kept(tenant: Tenant) -> None:
    parent = lifecycle.submit(tenant, "examples.echo", 0).job  # dispatched: unfinished
    child = finished_job(tenant, parent=parent)
    grandchild = finished_job(tenant, parent=child)

    assert prune().jobs == 0
    assert Job.objects.filter(id__in=[child.id, grandchild.id]).count() == 2

    lifecycle.cancel(parent.id)
    age(Job.objects.get(id=parent.id), 2)
    assert prune().jobs == 3


@pytest.mark.django_db
def test_children_of_an_open_batch_are_kept_until_it_ends(tenant: Tenant) -> None:
    batch = Batch.objects.create(
        tenant=tenant, run_count=1, status="processing", sealed=True, seal_deadline=timezone.now() + timedelta(hours=1)
    )
    child = finished_job(tenant)
    Job.objects.filter(id=child.id).update(batch=batch, batch_index=0)

    assert prune().jobs == 0
    Batch.objects.filter(id=batch.id).update(status="completed")
    assert prune().jobs == 1


@pytest.mark.django_db
def test_old_events_of_finished_jobs_go_but_an_unfinished_job_keeps_its_history(tenant: Tenant) -> None:
    kept = finished_job(tenant, hours_ago=0)
    JobEvent.objects.filter(job_id=kept.id).update(created_at=timezone.now() - timedelta(hours=2))
    running = lifecycle.submit(tenant, "examples.echo", 1).job
    JobEvent.objects.filter(job_id=running.id).update(created_at=timezone.now() - timedelta(hours=2))

    report = prune()

    assert report.jobs == 0 and report.events == 4  # created, dispatched, started, succeeded
    assert not JobEvent.objects.filter(job_id=kept.id).exists()
    assert JobEvent.objects.filter(job_id=running.id).count() == 2
    assert Job.objects.filter(id=kept.id).exists()


@pytest.mark.django_db
def test_metrics_counters_do_not_go_down_when_events_are_pruned(tenant: Tenant) -> None:
    job = finished_job(tenant, hours_ago=0)
    job.executions.update(status="running", finished_at=None)
    sweeper.sweep()
    age(job, 2)
    before = scrape()
    assert value(before, "batchplatform_repairs_total", reason="execution_left_running") == 1

    assert prune().jobs == 1
    after = scrape()

    assert not JobEvent.objects.filter(type="repaired").exists()
    assert value(after, "batchplatform_repairs_total", reason="execution_left_running") == 1
    assert value(after, "batchplatform_job_events_total", type="repaired") == 1
    assert EventTally.objects.get(key="succeeded").count == 1


@pytest.mark.django_db
def test_prune_jobs_command_prints_what_it_deleted(tenant: Tenant) -> None:
    for _ in range(3):
        finished_job(tenant, hours_ago=48)
    out = io.StringIO()
    call_command("prune_jobs", "--jobs-days", "1", "--events-days", "1", "--executions-days", "1", "--chunk", "2", stdout=out)
    assert out.getvalue().strip() == "pruned 3 job(s), 0 execution(s), 0 event(s)"
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM jobs_job")
        assert cursor.fetchone()[0] == 0


def test_prune_is_scheduled_daily_by_beat() -> None:
    from django.conf import settings

    from batchplatform.celery import app

    entry = app.conf.beat_schedule["prune"]
    assert entry["task"] == "jobs.prune"
    assert entry["schedule"] == timedelta(seconds=settings.RETENTION_INTERVAL_SECONDS) == timedelta(days=1)


@pytest.mark.django_db
def test_prune_stops_between_chunks_when_asked(tenant: Tenant) -> None:
    for _ in range(4):
        finished_job(tenant)
    calls: list[int] = []

    def stop_after_first_chunk() -> bool:
        calls.append(1)
        return len(calls) > 1

    report = prune(chunk=2, should_stop=stop_after_first_chunk)
    assert report.jobs == 2 and Job.objects.count() == 2
