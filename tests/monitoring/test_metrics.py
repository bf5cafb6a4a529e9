"""/metrics: Prometheus text that prometheus-client's own parser reads, read from
Postgres at scrape time, and moving when jobs run."""

from collections.abc import Callable

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from jobs import lifecycle, sweeper
from jobs.models import Job, Tenant
from tests.workers import Worker, wait_until


def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.mark.django_db
def test_metrics_parse_and_list_every_stuck_place(tenant: Tenant) -> None:
    samples = scrape()
    for place in sweeper.PLACES:
        assert value(samples, "batchplatform_stuck_jobs", place=place.name) == 0
    assert value(samples, "batchplatform_jobs_healthy") == 1
    assert ("batchplatform_jobs", (("status", "queued"), ("tenant", "acme"))) in samples
    assert ("batchplatform_broker_queue_messages", (("queue", "batchplatform"),)) in samples


@pytest.mark.django_db
def test_stuck_items_and_repairs_show_in_metrics(tenant: Tenant) -> None:
    job = lifecycle.submit(tenant, "examples.echo", 1).job
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, "w")
    assert attempt is not None and lifecycle.succeed(job.id, attempt.lease_token, 1).won
    job.executions.update(status="running", finished_at=None)

    samples = scrape()
    assert value(samples, "batchplatform_stuck_jobs", place="execution_left_running") == 1
    assert value(samples, "batchplatform_jobs_healthy") == 0
    sweeper.sweep()
    samples = scrape()
    assert value(samples, "batchplatform_stuck_jobs", place="execution_left_running") == 0
    assert value(samples, "batchplatform_repairs_total", reason="execution_left_running") == 1
    assert value(samples, "batchplatform_job_events_total", type="repaired") == 1


@pytest.mark.slow
def test_metrics_move_when_jobs_run(worker_factory: Callable[..., Worker], tenant: Tenant) -> None:
    before = scrape()
    worker_factory(beat=True)  # beat dispatches the retry when its backoff ends
    jobs = [lifecycle.submit(tenant, "examples.echo", i).job for i in range(3)]
    failing = lifecycle.submit(tenant, "examples.fail", {"fail_times": 1, "value": "ok"}, max_attempts=3).job
    wait_until(
        lambda: Job.objects.filter(id__in=[j.id for j in [*jobs, failing]], status="succeeded").count() == 4,
        timeout=60, what="jobs to succeed",
    )
    after = scrape()

    succeeded = "batchplatform_jobs", (("status", "succeeded"), ("tenant", "acme"))
    assert after[succeeded] - before.get(succeeded, 0) == 4
    assert value(after, "batchplatform_job_events_total", type="retry_scheduled") == 1
    # 5 attempts started and finished in the window: each observed once.
    assert value(after, "batchplatform_dispatch_latency_seconds_gcount") - value(
        before, "batchplatform_dispatch_latency_seconds_gcount"
    ) == 5
    assert value(after, "batchplatform_run_seconds_gcount") - value(before, "batchplatform_run_seconds_gcount") == 5
    assert value(after, "batchplatform_run_seconds_bucket", le="+Inf") == value(after, "batchplatform_run_seconds_gcount")
    assert value(after, "batchplatform_dispatch_latency_seconds_gsum") > 0

