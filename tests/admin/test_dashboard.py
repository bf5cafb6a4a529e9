"""The operations dashboard: staff only, counts per tenant, stuck places, repairs."""

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from jobs import sweeper
from jobs.models import Job, Tenant
from tests.admin.conftest import finish_children

DASHBOARD = "/admin/operations/"
FRAGMENT = "/admin/operations/fragment/"


def test_dashboard_is_for_staff_only(client: Client, db: None) -> None:
    assert reverse("admin:operations") == DASHBOARD
    assert client.get(DASHBOARD).status_code == 302  # to the login page
    assert client.get(FRAGMENT).status_code == 302
    user = User.objects.create_user("notstaff", password="pw")
    client.force_login(user)
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_dashboard_shows_tenant_counts_stuck_places_repairs_and_flower(
    admin_client: Client, tenant: Tenant, job_in: Callable[..., Job], settings: Any
) -> None:
    settings.FLOWER_URL = "http://flower.example:5555/"
    Tenant.objects.filter(id=tenant.id).update(concurrency_limit=3)
    job_in("queued")
    stalled = job_in("running")
    job_in("failed")
    job_in("succeeded")
    Job.objects.filter(id=stalled.id).update(lease_expires_at=Now() - timedelta(seconds=5))

    response = admin_client.get(DASHBOARD)

    assert response.status_code == 200
    context = response.context
    row = next(t for t in context["tenants"] if t["slug"] == "acme")
    assert dict((s, n) for s, n, _ in row["by_status"]) == {"queued": 1, "dispatched": 0, "running": 1, "waiting": 0}
    assert (row["active"], row["concurrency_limit"], row["failed"], row["succeeded"]) == (1, 3, 1, 1)
    places = {p["name"]: p for p in context["places"]}
    assert set(places) == {p.name for p in sweeper.PLACES}
    assert places["running_lease_expired"]["count"] == 1
    assert places["running_lease_expired"]["url"] == "/admin/jobs/job/?stuck=running_lease_expired"
    assert context["dead_letters"] == 1
    assert context["throughput"]["totals"]["failed"] == 1
    html = response.content.decode()
    assert 'href="http://flower.example:5555/"' in html
    assert "data-fragment-url" in html and "setTimeout(refresh" in html

    # The stuck link lists exactly the stuck job.
    listed = admin_client.get(places["running_lease_expired"]["url"])
    assert [j.id for j in listed.context["cl"].result_list] == [stalled.id]

    # After a repair, the fragment (what the page fetches) shows it among the last repairs.
    sweeper.sweep()
    fragment = admin_client.get(FRAGMENT)
    assert fragment.status_code == 200
    assert "<html" not in fragment.content.decode()
    assert [e.job_id for e in fragment.context["repairs"]] == [stalled.id]
    assert "lease_expired" in fragment.content.decode()


def test_dashboard_is_a_bounded_number_of_queries_whatever_the_tenants_and_jobs(
    admin_client: Client, tenant_factory: Callable[..., Tenant], job_in: Callable[..., Job],
    django_assert_max_num_queries: Any,
) -> None:
    for _ in range(20):
        tenant_factory()
    for status in ("queued", "running", "failed", "succeeded"):
        job_in(status)
    # Fixed queries plus one per stuck place (finder or counter, in a savepoint in tests).
    with django_assert_max_num_queries(20 + 3 * len(sweeper.PLACES)):
        assert admin_client.get(FRAGMENT).status_code == 200


def test_batch_and_waitpoint_places_link_to_their_own_changelists(
    admin_client: Client, tenant: Tenant
) -> None:
    from batches import lifecycle as batches
    from batches.models import Batch, Waitpoint

    batch = batches.create_batch(tenant, task="examples.echo", run_count=2, items=[{"payload": 1}, {"payload": 2}]).batch
    finish_children(batch)  # its callback goes out on commit, which never comes here: lost
    Batch.objects.filter(id=batch.id).update(updated_at=Now() - timedelta(hours=1))
    waitpoint, _ = batches.create_waitpoint(tenant.id, "token", timeout_seconds=60)
    Waitpoint.objects.filter(id=waitpoint.id).update(timeout_at=Now() - timedelta(seconds=5))

    places = {p["name"]: p for p in admin_client.get(DASHBOARD).context["places"]}

    lost = places["batch_callback_lost"]
    assert lost["count"] == 1 and lost["url"].startswith("/admin/batches/batch/?stuck=")
    assert [b.id for b in admin_client.get(lost["url"]).context["cl"].result_list] == [batch.id]
    expired = places["waitpoint_past_timeout"]
    assert expired["count"] == 1 and expired["url"].startswith("/admin/batches/waitpoint/?stuck=")
    assert [w.id for w in admin_client.get(expired["url"]).context["cl"].result_list] == [waitpoint.id]
