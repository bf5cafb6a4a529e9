"""Every row of docs/API.md's job table, with its status codes, plus bad inputs."""

from collections.abc import Callable
from typing import Any

import pytest
from django.utils import timezone

from jobs import lifecycle
from jobs.models import Execution, Job, JobEvent, JobStatus, Tenant
from tests.api.conftest import ApiClient
from tests.api.test_conventions import assert_error

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs"
JOB_FIELDS = {
    "id", "task", "status", "payload", "result", "error", "attempts", "max_attempts", "stalled_count",
    "priority", "idempotency_key", "batch", "batch_index", "parent", "root", "progress", "created_at",
    "run_at", "started_at", "finished_at", "updated_at",
}


def finish(job: Job, status: str, **fields: Any) -> Job:
    """Put a job in a finished state directly (the engine's paths are tested elsewhere)."""
    Job.objects.filter(pk=job.pk).update(status=status, finished_at=timezone.now(), **fields)
    job.refresh_from_db()
    return job


# --- POST /api/v1/jobs -------------------------------------------------------------------


def test_create_answers_201_with_the_job_object(api: ApiClient) -> None:
    response = api.post(
        JOBS,
        {"task": "examples.echo", "payload": {"x": [1, 2]}, "max_attempts": 3, "timeout_seconds": 30,
         "priority": 5, "idempotency_key": "order-1"},
    )
    assert response.status_code == 201
    body = response.json()
    assert set(body) == JOB_FIELDS
    job = Job.objects.get(pk=body["id"])
    assert job.tenant_id == api.tenant.id
    assert body["task"] == "examples.echo"
    assert body["payload"] == {"x": [1, 2]}
    assert body["status"] in ("queued", "dispatched")
    assert (body["max_attempts"], body["priority"], body["idempotency_key"]) == (3, 5, "order-1")
    assert job.timeout_seconds == 30
    assert body["root"] == body["id"]
    assert body["error"] is None and body["result"] is None
    assert body["created_at"].endswith("Z") or "+" in body["created_at"]
    assert body["attempts"] == 0 and body["stalled_count"] == 0


def test_create_with_only_a_task_uses_the_defaults(api: ApiClient, settings) -> None:
    body = api.post(JOBS, {"task": "examples.echo"}).json()
    assert body["payload"] is None
    assert body["max_attempts"] == settings.JOB_MAX_ATTEMPTS_DEFAULT
    assert body["priority"] == 0


def test_create_with_a_delay_sets_run_at_in_the_future(api: ApiClient) -> None:
    body = api.post(JOBS, {"task": "examples.echo", "delay_seconds": 3600}).json()
    assert body["status"] == "queued"  # not ready: not dispatched
    job = Job.objects.get(pk=body["id"])
    assert (job.run_at - job.created_at).total_seconds() == pytest.approx(3600, abs=1)


def test_same_idempotency_key_and_body_answers_200_with_the_existing_job(api: ApiClient) -> None:
    request = {"task": "examples.echo", "payload": {"a": 1}, "idempotency_key": "k1"}
    first = api.post(JOBS, request)
    again = api.post(JOBS, request)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert Job.objects.count() == 1


@pytest.mark.parametrize(
    "second", [{"task": "examples.echo", "payload": {"a": 2}}, {"task": "examples.fail", "payload": {"a": 1}}]
)
def test_same_idempotency_key_with_another_body_is_409(api: ApiClient, second: dict) -> None:
    assert api.post(JOBS, {"task": "examples.echo", "payload": {"a": 1}, "idempotency_key": "k1"}).status_code == 201
    assert_error(api.post(JOBS, {**second, "idempotency_key": "k1"}), 409, "idempotency_conflict")
    assert Job.objects.count() == 1


def test_idempotency_keys_are_per_tenant(api: ApiClient, other_api: ApiClient) -> None:
    request = {"task": "examples.echo", "payload": {"a": 1}, "idempotency_key": "shared"}
    assert api.post(JOBS, request).status_code == 201
    assert other_api.post(JOBS, {**request, "payload": {"a": 2}}).status_code == 201
    assert Job.objects.count() == 2


def test_unregistered_task_is_400_unknown_task(api: ApiClient) -> None:
    assert_error(api.post(JOBS, {"task": "no.such.task"}), 400, "unknown_task")
    assert not Job.objects.exists()


BAD_INPUTS = [
    ({}, "task"),
    ({"task": None}, "task"),
    ({"task": 42}, "task"),
    ({"task": ["examples.echo"]}, "task"),
    ({"task": "examples.echo", "max_attempts": 0}, "max_attempts"),
    ({"task": "examples.echo", "max_attempts": -1}, "max_attempts"),
    ({"task": "examples.echo", "max_attempts": 10**9}, "max_attempts"),
    ({"task": "examples.echo", "max_attempts": "3"}, "max_attempts"),
    ({"task": "examples.echo", "max_attempts": 2.5}, "max_attempts"),
    ({"task": "examples.echo", "max_attempts": True}, "max_attempts"),
    ({"task": "examples.echo", "timeout_seconds": 0}, "timeout_seconds"),
    ({"task": "examples.echo", "timeout_seconds": -5}, "timeout_seconds"),
    ({"task": "examples.echo", "timeout_seconds": 10**12}, "timeout_seconds"),
    ({"task": "examples.echo", "delay_seconds": -1}, "delay_seconds"),
    ({"task": "examples.echo", "delay_seconds": 10**12}, "delay_seconds"),
    ({"task": "examples.echo", "delay_seconds": "soon"}, "delay_seconds"),
    ({"task": "examples.echo", "priority": 10**12}, "priority"),
    ({"task": "examples.echo", "priority": "high"}, "priority"),
    ({"task": "examples.echo", "idempotency_key": "k" * 256}, "idempotency_key"),
    ({"task": "examples.echo", "idempotency_key": ""}, "idempotency_key"),
    ({"task": "examples.echo", "idempotency_key": 7}, "idempotency_key"),
]


@pytest.mark.parametrize(("body", "field"), BAD_INPUTS)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(api: ApiClient, body: dict, field: str) -> None:
    error = assert_error(api.post(JOBS, body), 400, "invalid_request")
    assert field in error["fields"]
    assert not Job.objects.exists()
    assert not JobEvent.objects.exists()


def test_oversized_payload_is_413_and_writes_nothing(api: ApiClient, settings) -> None:
    body = {"task": "examples.echo", "payload": "x" * (settings.JOB_PAYLOAD_MAX_BYTES + 1)}
    assert_error(api.post(JOBS, body), 413, "payload_too_large")
    assert not Job.objects.exists()


def test_create_query_count_is_pinned(api: ApiClient, django_assert_max_num_queries: Callable) -> None:
    api.get(JOBS)  # first use writes last_used_at; not part of the pin
    # The API's own: the key, the job insert and its event, the re-read (+4 savepoints in
    # a test transaction). The rest (3 to 5) is the engine's dispatch of the new job.
    with django_assert_max_num_queries(13):
        assert api.post(JOBS, {"task": "examples.echo"}).status_code == 201


# --- GET /api/v1/jobs/{id} -----------------------------------------------------------------


def test_get_answers_200_with_the_job(api: ApiClient, django_assert_num_queries: Callable) -> None:
    job = lifecycle.submit(api.tenant, "examples.echo", {"v": 1}).job
    api.get(JOBS)
    with django_assert_num_queries(2):  # key, job
        response = api.get(f"{JOBS}/{job.id}")
    assert response.status_code == 200
    assert response.json()["id"] == str(job.id)
    assert set(response.json()) == JOB_FIELDS


def test_get_unknown_id_is_404(api: ApiClient) -> None:
    assert_error(api.get(f"{JOBS}/00000000-0000-0000-0000-000000000000"), 404, "not_found")


def test_failed_job_shows_its_error_object(api: ApiClient) -> None:
    job = finish(
        lifecycle.submit(api.tenant, "examples.echo").job, JobStatus.FAILED,
        error={"type": "RuntimeError", "message": "boom"}, attempts=1,
    )
    body = api.get(f"{JOBS}/{job.id}").json()
    assert body["error"] == {"type": "RuntimeError", "message": "boom"}
    assert body["status"] == "failed"


# --- GET /api/v1/jobs?status=&task=&batch= --------------------------------------------------


def test_list_is_newest_first_and_filters(api: ApiClient, django_assert_num_queries: Callable) -> None:
    echo1 = lifecycle.submit(api.tenant, "examples.echo", {"n": 1}).job
    fail = lifecycle.submit(api.tenant, "examples.fail", {"n": 2}).job
    echo2 = lifecycle.submit(api.tenant, "examples.echo", {"n": 3}).job
    finish(echo1, JobStatus.SUCCEEDED)
    api.get(JOBS)

    with django_assert_num_queries(2):  # key, page
        body = api.get(JOBS).json()
    assert [r["id"] for r in body["results"]] == [str(echo2.id), str(fail.id), str(echo1.id)]
    assert body["next"] is None

    by_task = api.get(JOBS, task="examples.echo").json()["results"]
    assert [r["id"] for r in by_task] == [str(echo2.id), str(echo1.id)]
    by_status = api.get(JOBS, status="succeeded").json()["results"]
    assert [r["id"] for r in by_status] == [str(echo1.id)]
    assert api.get(JOBS, batch="00000000-0000-0000-0000-000000000000").json()["results"] == []


def test_list_filter_by_batch(api: ApiClient) -> None:
    from batches.models import Batch

    batch = Batch.objects.create(
        tenant=api.tenant, task="examples.echo", run_count=1, seal_deadline=timezone.now()
    )
    child = lifecycle.submit(api.tenant, "examples.echo", {"i": 0}).job
    Job.objects.filter(pk=child.pk).update(batch=batch, batch_index=0)
    lifecycle.submit(api.tenant, "examples.echo", {"other": True})
    results = api.get(JOBS, batch=str(batch.id)).json()["results"]
    assert [(r["id"], r["batch"], r["batch_index"]) for r in results] == [(str(child.id), str(batch.id), 0)]


@pytest.mark.parametrize("params", [{"status": "exploded"}, {"batch": "not-a-uuid"}, {"colour": "red"}])
def test_list_with_a_bad_filter_is_400(api: ApiClient, params: dict) -> None:
    assert_error(api.get(JOBS, **params), 400, "invalid_request")


def test_list_shows_only_the_keys_tenant(api: ApiClient, other_api: ApiClient) -> None:
    mine = lifecycle.submit(api.tenant, "examples.echo").job
    lifecycle.submit(other_api.tenant, "examples.echo")
    assert [r["id"] for r in api.get(JOBS).json()["results"]] == [str(mine.id)]


# --- GET /api/v1/jobs/{id}/executions --------------------------------------------------------


def test_executions_lists_attempts_in_start_order(api: ApiClient, django_assert_num_queries: Callable) -> None:
    job = lifecycle.submit(api.tenant, "examples.echo").job
    now = timezone.now()
    Execution.objects.create(
        job=job, attempt=1, status="lost", worker="w1", lease_token=job.id, started_at=now, finished_at=now,
        error={"type": "WorkerLost", "message": "attempt lost"},
    )
    Execution.objects.create(job=job, attempt=2, status="running", worker="w2", lease_token=job.id, started_at=now)
    api.get(JOBS)
    with django_assert_num_queries(3):  # key, job, page
        body = api.get(f"{JOBS}/{job.id}/executions").json()
    assert body["next"] is None
    assert [(e["attempt"], e["status"], e["worker"]) for e in body["results"]] == [(1, "lost", "w1"), (2, "running", "w2")]
    assert set(body["results"][0]) == {"attempt", "status", "worker", "started_at", "finished_at", "error"}
    assert body["results"][0]["error"] == {"type": "WorkerLost", "message": "attempt lost"}
    assert body["results"][1]["error"] is None and body["results"][1]["finished_at"] is None


def test_executions_of_an_unknown_job_is_404(api: ApiClient) -> None:
    assert_error(api.get(f"{JOBS}/00000000-0000-0000-0000-000000000000/executions"), 404, "not_found")


# --- POST /api/v1/jobs/{id}/cancel ------------------------------------------------------------


def test_cancel_answers_200_cancelled_with_every_unfinished_job_below(api: ApiClient) -> None:
    parent = lifecycle.submit(api.tenant, "examples.echo").job
    child = lifecycle.submit(api.tenant, "examples.echo", {"c": 1}, parent=parent).job
    done_child = finish(lifecycle.submit(api.tenant, "examples.echo", {"c": 2}, parent=parent).job, JobStatus.SUCCEEDED)

    response = api.post(f"{JOBS}/{parent.id}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["error"]["type"] == "Cancelled"
    child.refresh_from_db()
    done_child.refresh_from_db()
    assert child.status == JobStatus.CANCELLED
    assert done_child.status == JobStatus.SUCCEEDED


def test_cancel_again_answers_200_unchanged(api: ApiClient) -> None:
    job = lifecycle.submit(api.tenant, "examples.echo").job
    first = api.post(f"{JOBS}/{job.id}/cancel").json()
    events = JobEvent.objects.filter(job=job).count()
    again = api.post(f"{JOBS}/{job.id}/cancel")
    assert again.status_code == 200
    assert again.json() == first
    assert JobEvent.objects.filter(job=job).count() == events


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_cancel_a_finished_job_is_409_invalid_state(api: ApiClient, status: str) -> None:
    job = finish(lifecycle.submit(api.tenant, "examples.echo").job, status)
    assert_error(api.post(f"{JOBS}/{job.id}/cancel"), 409, "invalid_state")
    job.refresh_from_db()
    assert job.status == status


def test_cancel_unknown_job_is_404(api: ApiClient) -> None:
    assert_error(api.post(f"{JOBS}/00000000-0000-0000-0000-000000000000/cancel"), 404, "not_found")


# --- POST /api/v1/jobs/{id}/requeue -----------------------------------------------------------


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.CANCELLED])
def test_requeue_answers_200_queued_with_a_fresh_budget(api: ApiClient, status: str) -> None:
    job = lifecycle.submit(api.tenant, "examples.echo").job
    Execution.objects.create(job=job, attempt=1, status="failed", lease_token=job.id, started_at=timezone.now())
    finish(job, status, attempts=3, stalled_count=1, error={"type": "X", "message": "y"})

    response = api.post(f"{JOBS}/{job.id}/requeue")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("queued", "dispatched")  # dispatched at once when the tenant has room
    assert (body["attempts"], body["stalled_count"], body["error"], body["finished_at"]) == (0, 0, None, None)
    assert job.executions.count() == 1  # earlier executions kept


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED])
def test_requeue_from_another_state_is_409_invalid_state(api: ApiClient, status: str) -> None:
    job = lifecycle.submit(api.tenant, "examples.echo", delay_seconds=600).job
    Job.objects.filter(pk=job.pk).update(status=status)
    assert_error(api.post(f"{JOBS}/{job.id}/requeue"), 409, "invalid_state")
    job.refresh_from_db()
    assert job.status == status


def test_requeue_unknown_job_is_404(api: ApiClient) -> None:
    assert_error(api.post(f"{JOBS}/00000000-0000-0000-0000-000000000000/requeue"), 404, "not_found")


# --- tenant isolation -------------------------------------------------------------------------


def snapshot(tenant: Tenant) -> list[tuple]:
    return list(
        Job.objects.filter(tenant=tenant).order_by("id").values_list("id", "status", "attempts", "updated_at", "error")
    ) + [("events", JobEvent.objects.filter(tenant=tenant).count())]


def test_every_job_endpoint_answers_404_for_another_tenants_job_and_changes_nothing(
    api: ApiClient, other_api: ApiClient
) -> None:
    queued = lifecycle.submit(api.tenant, "examples.echo", {"q": 1}).job
    failed = finish(lifecycle.submit(api.tenant, "examples.echo", {"f": 1}).job, JobStatus.FAILED)
    before = snapshot(api.tenant)

    for job in (queued, failed):
        for method, path in [
            ("get", f"{JOBS}/{job.id}"),
            ("get", f"{JOBS}/{job.id}/executions"),
            ("post", f"{JOBS}/{job.id}/cancel"),
            ("post", f"{JOBS}/{job.id}/requeue"),
        ]:
            foreign = getattr(other_api, method)(path)
            unknown = getattr(other_api, method)(path.replace(str(job.id), "00000000-0000-0000-0000-000000000000"))
            assert_error(foreign, 404, "not_found")
            assert foreign.json()["error"]["code"] == unknown.json()["error"]["code"]
            assert foreign.status_code == unknown.status_code

    assert other_api.get(JOBS).json()["results"] == []
    assert other_api.get(JOBS, task="examples.echo").json()["results"] == []
    # Same idempotency key in another tenant: a new job, never the first tenant's.
    Job.objects.filter(pk=queued.pk).update(idempotency_key="k")
    before = snapshot(api.tenant)
    created = other_api.post(JOBS, {"task": "examples.echo", "payload": {"q": 1}, "idempotency_key": "k"})
    assert created.status_code == 201 and created.json()["id"] != str(queued.id)
    assert snapshot(api.tenant) == before
