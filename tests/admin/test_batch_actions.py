"""Batch and waitpoint actions: rows changed, rows skipped with the reason, permissions."""

from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db import transaction
from django.test import Client
from django.urls import reverse

from batches import lifecycle as batches
from batches.models import Batch, Waitpoint
from jobs import lifecycle
from jobs.models import Job, Tenant
from tests.admin.conftest import finish_children, make_job, messages_of

BATCHES = "/admin/batches/batch/"
WAITPOINTS = "/admin/batches/waitpoint/"


def post_action(client: Client, url: str, action: str, rows: list[Any], **extra: str):  # type: ignore[no-untyped-def]
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(r.pk) for r in rows], "index": "0", **extra}
    return client.post(url, data, follow=True)


def fresh(row: Any) -> Any:
    return type(row).objects.get(pk=row.pk)


@pytest.fixture
def batch_of(tenant: Tenant) -> Callable[..., Batch]:
    def make(n: int = 3, waitpoint: Waitpoint | None = None, parent: Job | None = None) -> Batch:
        return batches.create_batch(
            tenant, task="examples.echo", run_count=n, items=[{"payload": {"i": i}} for i in range(n)],
            waitpoint=waitpoint, parent=parent,
        ).batch

    return make


def waiting_parent(tenant: Tenant, type_: str = "batch") -> tuple[Job, Waitpoint]:
    """A running job suspended on a fresh waitpoint, as a handler's wait does it."""
    parent = make_job(tenant, "running")
    waitpoint, _ = batches.create_waitpoint(tenant.id, type_, owner_job_id=parent.id, owner_seq=1)
    with transaction.atomic():
        assert lifecycle.suspend_in_tx(parent.id, parent.lease_token, waitpoint.id)
    return fresh(parent), waitpoint


def test_cancel_batches_asks_first_then_cancels_open_ones_and_skips_closed_ones(
    admin_client: Client, batch_of: Callable[..., Batch]
) -> None:
    open_batch, closed = batch_of(), batch_of()
    batches.cancel_batch(closed.id)

    page = admin_client.post(BATCHES, {"action": "cancel_batches", ACTION_CHECKBOX_NAME: [str(open_batch.id)],
                                       "index": "0"})
    assert page.status_code == 200 and b"Yes, I" in page.content
    assert fresh(open_batch).status == "processing"

    response = post_action(admin_client, BATCHES, "cancel_batches", [open_batch, closed], confirm="yes")

    assert messages_of(response) == ["Cancelled 1 batch.", "Skipped 1: already cancelled (1)."]
    assert fresh(open_batch).status == "cancelled"
    assert set(Job.objects.filter(batch=open_batch).values_list("status", flat=True)) == {"cancelled"}


def test_abort_with_error_completes_the_waitpoint_with_the_error_and_the_parent_goes_on(
    admin_client: Client, tenant: Tenant, batch_of: Callable[..., Batch]
) -> None:
    parent, waitpoint = waiting_parent(tenant)
    batch = batch_of(waitpoint=waitpoint, parent=parent)
    assert fresh(parent).status == "waiting"

    response = post_action(
        admin_client, BATCHES, "abort_batches", [batch], confirm="yes", reason="upstream outage"
    )

    assert messages_of(response) == ["Aborted 1 batch."]
    assert fresh(batch).status == "aborted"
    waitpoint = fresh(waitpoint)
    assert waitpoint.status == "completed" and waitpoint.output_is_error
    assert waitpoint.output["message"].startswith("upstream outage")
    assert fresh(parent).status in ("queued", "dispatched")  # resumed

    again = post_action(admin_client, BATCHES, "abort_batches", [batch], confirm="yes")
    assert messages_of(again) == ["Aborted 0 batches.", "Skipped 1: already aborted (1)."]


def test_repair_names_each_cause_fixes_it_or_says_nothing_is_wrong(
    admin_client: Client, tenant: Tenant, batch_of: Callable[..., Batch]
) -> None:
    healthy = batch_of()
    drifted = batch_of()
    Batch.objects.filter(id=drifted.id).update(completed_count=2, succeeded_count=2)
    parent, waitpoint = waiting_parent(tenant)
    callback_lost = batch_of(n=2, waitpoint=waitpoint, parent=parent)
    finish_children(callback_lost)  # the callback is queued on commit, which never comes here: lost
    assert fresh(callback_lost).status == "processing" and fresh(callback_lost).completed_count == 2
    missing = batch_of()
    Job.objects.filter(batch=missing, batch_index=2).delete()

    response = post_action(admin_client, BATCHES, "repair_batches", [healthy, drifted, callback_lost, missing])

    text = messages_of(response)
    assert text[0].startswith("Repaired 2 batches: ")
    assert "counter drifted (2 counted, 0 done): recounted (1)" in text[0]
    assert "finished and parent resumed (1)" in text[0]
    assert text[1] == (
        "Skipped 2: children missing (2 of 3), no safe automatic fix: abort it with an error (1); nothing wrong (1)."
    )
    assert (fresh(drifted).completed_count, fresh(drifted).succeeded_count) == (0, 0)
    assert fresh(callback_lost).status == "completed"
    assert fresh(waitpoint).status == "completed" and not fresh(waitpoint).output_is_error
    assert fresh(parent).status in ("queued", "dispatched")
    assert fresh(missing).status == "processing"


def test_complete_and_complete_with_error_resume_waiting_jobs_and_skip_what_they_must_not_touch(
    admin_client: Client, tenant: Tenant, batch_of: Callable[..., Batch]
) -> None:
    parent, token = waiting_parent(tenant, "token")
    other_parent, other = waiting_parent(tenant, "token")
    _, batch_waitpoint = waiting_parent(tenant, "batch")
    batch_of(waitpoint=batch_waitpoint)

    response = post_action(admin_client, WAITPOINTS, "complete_waitpoints", [token, batch_waitpoint])
    assert messages_of(response) == [
        "Completed 1 waitpoint.", "Skipped 1: a batch's waitpoint: cancel or abort the batch instead (1).",
    ]
    assert fresh(token).status == "completed" and fresh(parent).status in ("queued", "dispatched")

    confirm = admin_client.post(WAITPOINTS, {"action": "complete_waitpoints_with_error",
                                             ACTION_CHECKBOX_NAME: [str(other.id)], "index": "0"})
    assert b"Yes, I" in confirm.content and fresh(other).status == "pending"
    response = post_action(admin_client, WAITPOINTS, "complete_waitpoints_with_error", [other, token],
                           confirm="yes", reason="partner API gone")
    assert messages_of(response) == ["Completed 1 waitpoint.", "Skipped 1: already completed (1)."]
    other = fresh(other)
    assert other.output_is_error and other.output["message"].startswith("partner API gone")
    assert fresh(other_parent).status in ("queued", "dispatched")


def test_batch_and_waitpoint_actions_need_the_change_permission(
    staff_factory: Callable[..., Client], tenant: Tenant, batch_of: Callable[..., Batch]
) -> None:
    viewer = staff_factory("batches.view_batch", "batches.view_waitpoint")
    batch = batch_of()
    _, token = waiting_parent(tenant, "token")

    assert viewer.get(BATCHES).context["action_form"] is None
    post_action(viewer, BATCHES, "cancel_batches", [batch], confirm="yes")
    post_action(viewer, BATCHES, "abort_batches", [batch], confirm="yes")
    Batch.objects.filter(id=batch.id).update(completed_count=2)  # drifted: a repair would move it
    post_action(viewer, BATCHES, "repair_batches", [batch])
    post_action(viewer, WAITPOINTS, "complete_waitpoints", [token])
    post_action(viewer, WAITPOINTS, "complete_waitpoints_with_error", [token], confirm="yes")
    assert fresh(batch).status == "processing" and fresh(batch).completed_count == 2
    assert fresh(token).status == "pending"

    operator = staff_factory("batches.change_batch")
    post_action(operator, BATCHES, "cancel_batches", [batch], confirm="yes")
    assert fresh(batch).status == "cancelled"
    post_action(operator, WAITPOINTS, "complete_waitpoints", [token])
    assert fresh(token).status == "pending"  # change_batch is not change_waitpoint


def test_batch_page_shows_the_first_children_and_links_to_the_rest_with_bounded_queries(
    admin_client: Client, batch_of: Callable[..., Batch], django_assert_max_num_queries: Any
) -> None:
    batch = batch_of(n=300)

    with django_assert_max_num_queries(15):
        page = admin_client.get(reverse("admin:batches_batch_change", args=[batch.id]))

    html = page.content.decode()
    assert page.status_code == 200
    assert html.count("<td>#") == 20 and "<td>#19</td>" in html and "<td>#20</td>" not in html
    listing = admin_client.get(f"/admin/jobs/job/?batch__id__exact={batch.id}")
    assert listing.status_code == 200 and len(listing.context["cl"].result_list) == 50
    assert {j.batch_id for j in listing.context["cl"].result_list} == {batch.id}
    with django_assert_max_num_queries(12):
        assert admin_client.get(BATCHES).status_code == 200
    with django_assert_max_num_queries(12):
        assert admin_client.get(WAITPOINTS).status_code == 200


def test_waitpoint_page_shows_its_output_and_its_actions(
    admin_client: Client, tenant: Tenant
) -> None:
    _, token = waiting_parent(tenant, "token")
    page = admin_client.get(reverse("admin:batches_waitpoint_change", args=[token.id]))
    html = page.content.decode()
    assert page.status_code == 200
    assert 'id="bp-action-complete_waitpoints"' in html and 'id="bp-action-complete_waitpoints_with_error"' in html
    assert 'name="output"' not in html  # a view, not a form
