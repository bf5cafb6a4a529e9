"""Every job action: rows changed, rows skipped with the reason, permission denied."""

from collections.abc import Callable
from datetime import timedelta

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from jobs.models import EventType, Job
from tests.admin.conftest import messages_of

CHANGELIST = "/admin/jobs/job/"


def post_action(client: Client, action: str, jobs: list[Job], **extra: str):  # type: ignore[no-untyped-def]
    data = {"action": action, ACTION_CHECKBOX_NAME: [str(j.id) for j in jobs], "index": "0", **extra}
    return client.post(CHANGELIST, data, follow=True)


def action_choices(page) -> list[str]:  # type: ignore[no-untyped-def]
    form = page.context["action_form"]
    return [] if form is None else [name for name, _ in form.fields["action"].choices if name]


def statuses(*jobs: Job) -> list[str]:
    return [Job.objects.get(id=j.id).status for j in jobs]


def test_cancel_asks_for_confirmation_before_changing_anything(
    admin_client: Client, job_in: Callable[..., Job]
) -> None:
    job = job_in("queued")

    response = admin_client.post(
        CHANGELIST, {"action": "cancel_jobs", ACTION_CHECKBOX_NAME: [str(job.id)], "index": "0"}
    )

    assert response.status_code == 200
    assert b"Yes, I&#x27;m sure" in response.content or b"Yes, I'm sure" in response.content
    assert str(job) in response.content.decode()
    assert statuses(job) == ["queued"]


def test_cancel_cancels_unfinished_jobs_and_skips_finished_ones_with_the_reason(
    admin_client: Client, job_in: Callable[..., Job]
) -> None:
    queued, running, done, already = job_in("queued"), job_in("running"), job_in("succeeded"), job_in("cancelled")

    response = post_action(
        admin_client, "cancel_jobs", [queued, running, done, already], confirm="yes", reason="bad deploy"
    )

    assert statuses(queued, running, done, already) == ["cancelled", "cancelled", "succeeded", "cancelled"]
    assert messages_of(response) == [
        "Cancelled 2 jobs.",
        "Skipped 2: already cancelled (1); already finished: succeeded (1).",
    ]
    event = Job.objects.get(id=running.id).events.get(type=EventType.CANCELLED)
    assert event.message.startswith("bad deploy (admin")
    assert running.executions.get().status == "cancelled"


def test_requeue_gives_failed_and_cancelled_jobs_a_fresh_budget_and_skips_the_rest(
    admin_client: Client, job_in: Callable[..., Job]
) -> None:
    failed, cancelled, running = job_in("failed"), job_in("cancelled"), job_in("running")
    assert failed.attempts == 1 == failed.max_attempts

    response = post_action(admin_client, "requeue_jobs", [failed, cancelled, running])

    assert messages_of(response) == ["Requeued 2 jobs.", "Skipped 1: not failed or cancelled: running (1)."]
    requeued = Job.objects.get(id=failed.id)
    assert requeued.status in ("queued", "dispatched")  # the dispatcher may take it at once
    assert requeued.attempts == 0 and requeued.error is None
    assert requeued.events.filter(type=EventType.REQUEUED).count() == 1
    assert statuses(running) == ["running"]


def test_repair_now_names_the_stuck_place_applies_its_repair_and_says_when_nothing_is_wrong(
    admin_client: Client, job_in: Callable[..., Job]
) -> None:
    stalled, lost, healthy = job_in("running"), job_in("dispatched"), job_in("running")
    Job.objects.filter(id=stalled.id).update(lease_expires_at=Now() - timedelta(seconds=5))
    Job.objects.filter(id=lost.id).update(dispatch_deadline=Now() - timedelta(seconds=5))

    response = post_action(admin_client, "repair_jobs", [stalled, lost, healthy])

    text = messages_of(response)
    assert text[0].startswith("Repaired 2 jobs: ")
    assert "expired lease" in text[0] and "message lost" in text[0]
    assert text[1] == "Skipped 1: nothing wrong (1)."
    stalled_now = Job.objects.get(id=stalled.id)
    assert stalled_now.stalled_count == 1 and stalled_now.status in ("queued", "dispatched")
    assert stalled_now.executions.get(attempt=1).status == "lost"
    assert stalled_now.events.filter(type=EventType.REPAIRED, message="lease_expired").count() == 1
    assert lost.events.filter(type=EventType.REDISPATCHED).count() == 1
    assert statuses(healthy) == ["running"]
    assert not healthy.events.filter(type=EventType.REPAIRED).exists()


def test_repair_now_twice_repairs_once(admin_client: Client, job_in: Callable[..., Job]) -> None:
    stalled = job_in("running")
    Job.objects.filter(id=stalled.id).update(lease_expires_at=Now() - timedelta(seconds=5))

    post_action(admin_client, "repair_jobs", [stalled])
    second = post_action(admin_client, "repair_jobs", [stalled])

    assert messages_of(second) == ["Repaired 0 jobs.", "Skipped 1: nothing wrong (1)."]
    assert stalled.events.filter(type=EventType.REPAIRED).count() == 1


def test_staff_without_the_action_permission_cannot_run_it(
    staff_factory: Callable[..., Client], job_in: Callable[..., Job]
) -> None:
    viewer = staff_factory("jobs.view_job")
    queued, failed = job_in("queued"), job_in("failed")

    page = viewer.get(CHANGELIST)
    assert page.status_code == 200
    assert action_choices(page) == []

    post_action(viewer, "cancel_jobs", [queued], confirm="yes")
    post_action(viewer, "requeue_jobs", [failed])
    post_action(viewer, "repair_jobs", [queued])
    assert statuses(queued, failed) == ["queued", "failed"]
    assert not Job.objects.filter(events__type__in=["cancelled", "requeued", "repaired"]).exists()


def test_each_action_needs_its_own_permission(
    staff_factory: Callable[..., Client], job_in: Callable[..., Job]
) -> None:
    canceller = staff_factory("jobs.view_job", "jobs.cancel_job")
    queued, failed = job_in("queued"), job_in("failed")

    assert action_choices(canceller.get(CHANGELIST)) == ["cancel_jobs"]

    post_action(canceller, "requeue_jobs", [failed])
    post_action(canceller, "cancel_jobs", [queued], confirm="yes")
    assert statuses(queued, failed) == ["cancelled", "failed"]


def test_job_rows_cannot_be_added_changed_or_deleted_through_forms(
    admin_client: Client, job_in: Callable[..., Job]
) -> None:
    job = job_in("failed")
    change_url = reverse("admin:jobs_job_change", args=[job.id])

    assert admin_client.get(reverse("admin:jobs_job_add")).status_code == 403
    assert admin_client.get(reverse("admin:jobs_job_delete", args=[job.id])).status_code == 403
    page = admin_client.get(change_url)
    assert page.status_code == 200 and b'name="status"' not in page.content  # a view, not a form
    admin_client.post(change_url, {"status": "succeeded"})
    assert statuses(job) == ["failed"]
    for model in ("execution", "jobevent"):
        assert admin_client.get(reverse(f"admin:jobs_{model}_add")).status_code == 403


def test_a_job_page_offers_the_permitted_actions_and_comes_back_after_running_one(
    staff_factory: Callable[..., Client], job_in: Callable[..., Job]
) -> None:
    operator = staff_factory("jobs.view_job", "jobs.requeue_job", "jobs.cancel_job")
    failed, queued = job_in("failed"), job_in("queued")
    page_url = reverse("admin:jobs_job_change", args=[failed.id])

    page = operator.get(page_url).content.decode()
    assert 'id="bp-action-requeue_jobs"' in page and 'id="bp-action-cancel_jobs"' in page
    assert 'id="bp-action-repair_jobs"' not in page  # not permitted

    response = operator.post(CHANGELIST, {
        "action": "requeue_jobs", ACTION_CHECKBOX_NAME: [str(failed.id)], "index": "0", "_console_next": page_url,
    })
    assert response.status_code == 302 and response["Location"] == page_url
    assert statuses(failed) != ["failed"]

    # A destructive one goes through its confirmation page and still comes back.
    queued_url = reverse("admin:jobs_job_change", args=[queued.id])
    data = {"action": "cancel_jobs", ACTION_CHECKBOX_NAME: [str(queued.id)], "index": "0", "_console_next": queued_url}
    confirm = operator.post(CHANGELIST, data)
    assert f'name="_console_next" value="{queued_url}"' in confirm.content.decode()
    done = operator.post(CHANGELIST, {**data, "confirm": "yes"})
    assert done["Location"] == queued_url and statuses(queued) == ["cancelled"]


def test_an_action_never_redirects_off_site(admin_client: Client, job_in: Callable[..., Job]) -> None:
    failed = job_in("failed")
    response = admin_client.post(CHANGELIST, {
        "action": "requeue_jobs", ACTION_CHECKBOX_NAME: [str(failed.id)], "index": "0",
        "_console_next": "https://evil.example/",
    })
    assert response.status_code == 302 and response["Location"] == CHANGELIST
