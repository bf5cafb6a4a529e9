"""The API with real concurrency and a real worker: racing creates, the shared bucket,
and a job submitted over HTTP that a Celery worker runs."""

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from jobs.api import ratelimit
from jobs.models import ApiKey, Job, Tenant
from tests.workers import Worker, wait_until


def test_bucket_script_is_atomic_under_concurrent_callers(broker: Any) -> None:
    """Twenty threads race for a bucket of ten: exactly ten win, none twice."""
    tenant = Tenant(id=uuid.uuid4(), slug="race", rate_limit_max=10, rate_limit_refill=1, rate_limit_refill_seconds=3600)
    barrier = threading.Barrier(20)
    outcomes: list[bool] = []
    lock = threading.Lock()

    def take() -> None:
        barrier.wait()
        decision = ratelimit.consume(tenant)
        with lock:
            outcomes.append(decision.allowed and decision.checked)

    threads = [threading.Thread(target=take) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 10
    assert outcomes.count(False) == 10
    broker.delete(f"{ratelimit._bucket_key(tenant)}")


@pytest.mark.slow
def test_concurrent_creates_with_one_idempotency_key_make_one_job(live_server: Any, tenant: Tenant) -> None:
    _, key = ApiKey.generate(tenant)
    headers = {"Authorization": f"Bearer {key}"}
    body = {"task": "examples.echo", "payload": {"order": 7}, "idempotency_key": "order-7"}
    barrier = threading.Barrier(8)
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def create() -> None:
        barrier.wait()
        response = requests.post(f"{live_server.url}/api/v1/jobs", json=body, headers=headers, timeout=30)
        with lock:
            answers.append((response.status_code, response.json()["id"]))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 7 + [201]
    assert len({job_id for _, job_id in answers}) == 1
    assert Job.objects.filter(tenant=tenant).count() == 1


@pytest.mark.slow
def test_job_submitted_over_http_runs_on_a_worker_and_shows_its_execution(
    live_server: Any, worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker_factory()
    _, key = ApiKey.generate(tenant)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"
    base = f"{live_server.url}/api/v1/jobs"

    created = session.post(base, json={"task": "examples.echo", "payload": {"hello": "api"}}, timeout=30)
    assert created.status_code == 201
    job_id = created.json()["id"]

    def finished() -> dict | None:
        body = session.get(f"{base}/{job_id}", timeout=30).json()
        return body if body["status"] == "succeeded" else None

    job = wait_until(finished, 60, what="the job to succeed")
    assert job["result"] == {"hello": "api"}
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    executions = session.get(f"{base}/{job_id}/executions", timeout=30).json()
    assert [(e["attempt"], e["status"]) for e in executions["results"]] == [(1, "succeeded")]
    assert executions["results"][0]["worker"]
    # Finished: cancel is refused, requeue is not allowed from succeeded either.
    assert session.post(f"{base}/{job_id}/cancel", timeout=30).status_code == 409
    assert session.post(f"{base}/{job_id}/requeue", timeout=30).status_code == 409
