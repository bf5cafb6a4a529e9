"""The engine with real Celery worker processes, Postgres and Redis."""

from collections.abc import Callable

import pytest

from jobs import lifecycle
from jobs.models import Execution, Job, JobEvent, Tenant
from tests.workers import Worker, wait_until


def wait_for_status(job: Job, *statuses: str, timeout: float = 30) -> Job:
    def done() -> bool:
        job.refresh_from_db()
        return job.status in statuses

    wait_until(done, timeout, what=f"job {job.id} to reach {statuses}")
    return job


def test_echo_job_succeeds_with_its_result_and_one_execution(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker_factory()
    job = lifecycle.submit(tenant, "examples.echo", {"hello": "world"}).job

    wait_for_status(job, "succeeded")

    assert job.result == {"hello": "world"}
    assert job.attempts == 1
    executions = list(job.executions.all())
    assert [(e.attempt, e.status) for e in executions] == [(1, "succeeded")]
    assert list(job.events.values_list("type", flat=True)) == ["created", "dispatched", "started", "succeeded"]
