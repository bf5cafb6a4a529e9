"""The job changelist's filters and search find what their names say."""

from collections.abc import Callable
from datetime import timedelta

from django.db.models.functions import Now
from django.test import Client

from jobs import lifecycle
from jobs.models import Job, Tenant
from tests.admin.conftest import make_job

CHANGELIST = "/admin/jobs/job/"


def listed(client: Client, query: str) -> set[str]:
    response = client.get(CHANGELIST + query)
    assert response.status_code == 200, query
    assert "?e=1" not in response.get("Location", ""), query
    return {str(j.id) for j in response.context["cl"].result_list}


def stalled_past_the_limit(tenant: Tenant) -> Job:
    """Failed by the stall limit with attempts to spare: stalled, requeued, stalled again."""
    job = make_job(tenant, "running", max_attempts=5)
    assert lifecycle.mark_stalled(job.id, job.lease_token, "test") == "queued"
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, "w-test@host")
    assert attempt is not None
    assert lifecycle.mark_stalled(job.id, attempt.lease_token, "test") == "failed"
    job.refresh_from_db()
    assert job.attempts < job.max_attempts
    return job


def test_dead_letter_is_failed_after_exhausting_attempts_or_the_stall_limit(
    admin_client: Client, tenant: Tenant, job_in: Callable[..., Job]
) -> None:
    exhausted = job_in("failed")
    stalled = stalled_past_the_limit(tenant)
    job_in("running"), job_in("succeeded"), job_in("cancelled")

    assert listed(admin_client, "?dead_letter=yes") == {str(exhausted.id), str(stalled.id)}


def test_status_tenant_task_and_stuck_filters(
    admin_client: Client, tenant_factory: Callable[..., Tenant], job_in: Callable[..., Job]
) -> None:
    other = tenant_factory(slug="globex")
    queued, running = job_in("queued"), job_in("running")
    elsewhere = make_job(other, "queued", task="examples.sleep")
    Job.objects.filter(id=running.id).update(lease_expires_at=Now() - timedelta(seconds=5))

    assert listed(admin_client, "?status__exact=queued") == {str(queued.id), str(elsewhere.id)}
    assert listed(admin_client, f"?tenant__id__exact={other.id}") == {str(elsewhere.id)}
    assert listed(admin_client, "?task=examples.sleep") == {str(elsewhere.id)}
    assert listed(admin_client, "?stuck=any") == {str(running.id)}
    assert listed(admin_client, "?stuck=running_lease_expired") == {str(running.id)}
    assert listed(admin_client, "?stuck=dispatched_message_lost") == set()


def test_search_by_id_idempotency_key_and_batch(
    admin_client: Client, tenant: Tenant, job_in: Callable[..., Job]
) -> None:
    keyed = make_job(tenant, "queued", idempotency_key="order-42")
    plain = job_in("queued")

    assert listed(admin_client, "?q=order-42") == {str(keyed.id)}
    assert listed(admin_client, f"?q={plain.id}") == {str(plain.id)}
    assert listed(admin_client, "?q=not-a-uuid-nor-a-key") == set()
