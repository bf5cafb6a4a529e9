"""Jobs in real states, made through the engine's own transitions, and staff users."""

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from jobs import lifecycle
from jobs.lifecycle import error_dict
from jobs.models import Job, Tenant


def make_job(tenant: Tenant, status: str, task: str = "examples.echo", **submit: Any) -> Job:
    """A job brought to `status` by the lifecycle functions a worker would call."""
    if status == "queued":
        return lifecycle.submit(tenant, task, {"n": 1}, delay_seconds=3600, **submit).job
    if status == "failed":
        submit.setdefault("max_attempts", 1)  # failed for good: a dead letter
    job = lifecycle.submit(tenant, task, {"n": 1}, **submit).job
    job.refresh_from_db()
    assert job.status == "dispatched"
    if status == "dispatched":
        return job
    if status == "cancelled":
        lifecycle.cancel(job.id, "test")
        job.refresh_from_db()
        return job
    attempt = lifecycle.start(job.id, job.dispatch_token, "w-test@host")
    assert attempt is not None
    if status == "succeeded":
        assert lifecycle.succeed(job.id, attempt.lease_token, {"ok": True}).won
    elif status == "failed":
        assert lifecycle.fail(
            job.id, attempt.lease_token, attempt=attempt.attempt, max_attempts=attempt.max_attempts,
            error=error_dict("RuntimeError", "boom"), retryable=False,
        ).won
    else:
        assert status == "running", status
    job.refresh_from_db()
    assert job.status == status
    return job


def finish_children(batch: Any) -> None:
    """Run every child of `batch` to success through the worker's transitions."""
    for child in Job.objects.filter(batch=batch):
        attempt = lifecycle.start(child.id, child.dispatch_token, "w-test@host")
        assert attempt is not None
        assert lifecycle.succeed(child.id, attempt.lease_token, {"i": child.batch_index}).won


@pytest.fixture
def job_in(tenant: Tenant) -> Callable[..., Job]:
    def make(status: str, **kwargs: Any) -> Job:
        return make_job(tenant, status, **kwargs)

    return make


@pytest.fixture
def staff_factory(db: None) -> Callable[..., Client]:
    """A logged-in staff client holding exactly the named permissions ("jobs.view_job")."""
    counter = iter(range(10**6))

    def make(*perms: str) -> Client:
        user = User.objects.create_user(f"staff{next(counter)}", password="pw", is_staff=True)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
        client = Client()
        client.force_login(user)
        return client

    return make


def messages_of(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []
