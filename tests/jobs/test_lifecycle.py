"""Transitions driven directly against Postgres (no worker): who wins, what is written."""

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from jobs import dispatch, lifecycle, runner, sweeper
from jobs.models import Execution, Job, JobEvent, Tenant
from jobs.registry import UnknownTask


def start(job: Job, worker: str = "w@test") -> lifecycle.Attempt:
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, worker)
    assert attempt is not None
    return attempt


def expire_lease(job: Job) -> None:
    Job.objects.filter(id=job.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))


@pytest.mark.django_db
class TestSubmit:
    def test_unknown_task_is_refused_and_nothing_is_written(self, tenant: Tenant) -> None:
        with pytest.raises(UnknownTask):
            lifecycle.submit(tenant, "no.such.task", {})
        assert not Job.objects.exists() and not JobEvent.objects.exists()

    @pytest.mark.parametrize("payload", [{"x": object()}, {"x": float("nan")}, {1, 2}])
    def test_non_json_payload_is_refused_and_nothing_is_written(self, tenant: Tenant, payload: Any) -> None:
        with pytest.raises(lifecycle.InvalidInput, match="JSON"):
            lifecycle.submit(tenant, "examples.echo", payload)
        assert not Job.objects.exists()

    def test_payload_over_the_limit_is_refused(self, tenant: Tenant, settings: Any) -> None:
        settings.JOB_PAYLOAD_MAX_BYTES = 100
        with pytest.raises(lifecycle.InvalidInput, match="larger"):
            lifecycle.submit(tenant, "examples.echo", "x" * 200)
        assert not Job.objects.exists()

    def test_same_idempotency_key_and_body_returns_the_existing_job(self, tenant: Tenant) -> None:
        first = lifecycle.submit(tenant, "examples.echo", {"a": 1}, idempotency_key="k1")
        again = lifecycle.submit(tenant, "examples.echo", {"a": 1}, idempotency_key="k1")
        assert first.created and not again.created and again.job.id == first.job.id
        assert Job.objects.count() == 1

    def test_same_idempotency_key_with_another_payload_conflicts(self, tenant: Tenant) -> None:
        lifecycle.submit(tenant, "examples.echo", {"a": 1}, idempotency_key="k1")
        with pytest.raises(lifecycle.IdempotencyConflict):
            lifecycle.submit(tenant, "examples.echo", {"a": 2}, idempotency_key="k1")
        assert Job.objects.count() == 1

    def test_idempotency_keys_are_per_tenant(self, tenant_factory: Callable[..., Tenant]) -> None:
        a, b = tenant_factory(), tenant_factory()
        lifecycle.submit(a, "examples.echo", 1, idempotency_key="same")
        assert lifecycle.submit(b, "examples.echo", 2, idempotency_key="same").created

    def test_submit_dispatches_up_to_the_tenant_limit(self, tenant_factory: Callable[..., Tenant]) -> None:
        tenant = tenant_factory(concurrency_limit=2)
        jobs = [lifecycle.submit(tenant, "examples.echo", i).job for i in range(5)]
        statuses = sorted(Job.objects.filter(id__in=[j.id for j in jobs]).values_list("status", flat=True))
        assert statuses == ["dispatched"] * 2 + ["queued"] * 3

    def test_a_top_level_job_is_its_own_root(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1).job
        assert job.root_id == job.id and job.parent_id is None


@pytest.mark.django_db
class TestFencing:
    def test_a_stale_dispatch_token_starts_nothing(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1).job
        assert lifecycle.start(job.id, uuid.uuid4(), "w") is None
        start(job)
        job.refresh_from_db()
        # The same (current) token delivered again: the job is already running.
        assert lifecycle.start(job.id, job.dispatch_token, "w") is None
        assert Execution.objects.filter(job=job).count() == 1

    def test_finish_loses_after_lease_takeover(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1, max_attempts=3).job
        first = start(job)
        expire_lease(job)
        assert sweeper.sweep().counts()["running_lease_expired"] == 1
        second = start(job)

        assert not lifecycle.succeed(job.id, first.lease_token, "stale").won
        assert not lifecycle.fail(
            job.id, first.lease_token, attempt=1, max_attempts=3, error=lifecycle.error_dict("E", "x")
        ).won
        assert lifecycle.renew_lease(job.id, first.lease_token) == lifecycle.LeaseState.LOST
        assert lifecycle.succeed(job.id, second.lease_token, "fresh").won
        job.refresh_from_db()
        assert job.result == "fresh" and job.status == "succeeded"

    def test_a_late_result_cannot_flip_a_cancelled_job(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1).job
        attempt = start(job)
        lifecycle.cancel(job.id)
        assert lifecycle.renew_lease(job.id, attempt.lease_token) == lifecycle.LeaseState.CANCELLED
        assert not lifecycle.succeed(job.id, attempt.lease_token, "late").won
        job.refresh_from_db()
        assert job.status == "cancelled" and job.result is None


@pytest.mark.django_db
class TestStalls:
    def test_stalled_beyond_max_stalled_count_fails_with_the_bull_message(self, tenant: Tenant, settings: Any) -> None:
        settings.MAX_STALLED_COUNT = 1
        job = lifecycle.submit(tenant, "examples.echo", 1, max_attempts=5).job
        start(job)
        expire_lease(job)
        sweeper.sweep()
        job.refresh_from_db()
        assert job.status == "dispatched" and job.stalled_count == 1  # requeued and dispatched again

        start(job)
        expire_lease(job)
        sweeper.sweep()
        job.refresh_from_db()
        assert job.status == "failed" and job.stalled_count == 2
        assert job.error == {"type": "Stalled", "message": "job stalled more than allowable limit"}
        assert list(job.executions.values_list("status", flat=True)) == ["lost", "lost"]

    def test_a_stall_on_the_last_attempt_fails_instead_of_exceeding_max_attempts(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1, max_attempts=1).job
        start(job)
        expire_lease(job)
        sweeper.sweep()
        job.refresh_from_db()
        assert job.status == "failed" and job.attempts == 1
        assert job.error["type"] == "WorkerLost"

    def test_overdue_job_is_timed_out_by_the_sweeper_when_its_worker_is_gone(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1, max_attempts=1).job
        start(job)
        Job.objects.filter(id=job.id).update(timeout_at=timezone.now() - timedelta(hours=1))
        assert sweeper.sweep().counts() == {"running_too_long": 1}
        job.refresh_from_db()
        assert job.status == "failed" and job.error["type"] == "TimeoutError"
        assert list(job.executions.values_list("status", flat=True)) == ["timed_out"]

    def test_an_execution_left_running_is_closed_as_lost(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1).job
        attempt = start(job)
        lifecycle.succeed(job.id, attempt.lease_token, 1)
        Execution.objects.filter(job=job).update(status="running", finished_at=None)  # a crashed write
        assert sweeper.sweep().counts() == {"execution_left_running": 1}
        assert list(job.executions.values_list("status", flat=True)) == ["lost"]
        assert sweeper.sweep().counts() == {}


@pytest.mark.django_db
class TestOperatorActions:
    def test_cancel_cancels_the_tree_below_and_again_changes_nothing(self, tenant: Tenant) -> None:
        parent = lifecycle.submit(tenant, "examples.echo", 0).job
        child = lifecycle.submit(tenant, "examples.echo", 1, parent=parent).job
        grandchild = lifecycle.submit(tenant, "examples.echo", 2, parent=child).job
        assert grandchild.root_id == parent.id

        moved = lifecycle.cancel(parent.id)
        assert set(moved) == {parent.id, child.id, grandchild.id}
        assert set(Job.objects.values_list("status", flat=True)) == {"cancelled"}
        assert lifecycle.cancel(parent.id) == []

    def test_cancel_of_a_finished_job_is_invalid(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1).job
        lifecycle.succeed(job.id, start(job).lease_token, 1)
        with pytest.raises(lifecycle.InvalidState):
            lifecycle.cancel(job.id)

    def test_requeue_gives_a_fresh_budget_and_keeps_executions(self, tenant: Tenant) -> None:
        job = lifecycle.submit(tenant, "examples.echo", 1, max_attempts=1).job
        attempt = start(job)
        lifecycle.fail(job.id, attempt.lease_token, attempt=1, max_attempts=1, error=lifecycle.error_dict("E", "x"))
        job.refresh_from_db()
        assert job.status == "failed"

        lifecycle.requeue(job.id)
        job.refresh_from_db()
        assert job.status == "dispatched" and job.attempts == 0 and job.stalled_count == 0
        assert job.executions.count() == 1
        second = start(job)
        assert second.attempt == 1
        with pytest.raises(lifecycle.InvalidState):
            lifecycle.requeue(job.id)


@pytest.mark.django_db(transaction=True)
def test_two_dispatchers_at_once_never_exceed_the_limit_or_dispatch_twice(
    tenant_factory: Callable[..., Tenant],
) -> None:
    tenant = tenant_factory(concurrency_limit=7)
    Job.objects.bulk_create(
        [
            Job(tenant=tenant, task="examples.echo", queue="q", payload=i, payload_hash="h",
                max_attempts=3, timeout_seconds=10, run_at=timezone.now())
            for i in range(100)
        ]
    )
    barrier = threading.Barrier(4)
    results: list[list[dispatch.Dispatched]] = []

    def run() -> None:
        try:
            barrier.wait()
            from django.db import transaction

            with transaction.atomic():
                results.append(dispatch.dispatch_tenant(tenant.id))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [row.id for rows in results for row in rows]
    assert len(ids) == len(set(ids)) == 7
    assert Job.objects.filter(status="dispatched").count() == 7


@pytest.mark.django_db(transaction=True)
def test_a_job_life_costs_three_commits_and_the_same_statements_for_the_1st_and_1000th_job(
    tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = 0
    real_commit = connection._commit

    def counting_commit() -> None:
        nonlocal commits
        commits += 1
        real_commit()

    monkeypatch.setattr(connection, "_commit", counting_commit)

    def life() -> None:
        job = lifecycle.submit(tenant, "examples.echo", {"n": 1}).job  # commit 1: created + dispatched
        token = Job.objects.values_list("dispatch_token", flat=True).get(id=job.id)
        assert runner.run(job.id, token, "w@test") == "succeeded"  # commits 2 and 3: start, finish

    def measured_life() -> tuple[int, list[str]]:
        nonlocal commits
        commits = 0
        with CaptureQueriesContext(connection) as queries:
            life()
        # The token lookup stands in for the Celery message; it is not part of the life.
        return commits, [q["sql"] for q in queries.captured_queries if "dispatch_token\" FROM" not in q["sql"]]

    first_commits, first = measured_life()
    for _ in range(998):
        life()
    last_commits, last = measured_life()

    assert first_commits == last_commits == 3
    assert len(first) == len(last)
    assert Job.objects.filter(status="succeeded").count() == 1000


@pytest.mark.django_db(transaction=True)
def test_an_immediate_retry_is_dispatched_in_the_failing_transaction(tenant: Tenant) -> None:
    job = lifecycle.submit(tenant, "examples.fail", {"fail_times": 1}, max_attempts=3).job
    attempt = start(job)
    outcome = lifecycle.fail(
        job.id, attempt.lease_token, attempt=1, max_attempts=3, error=lifecycle.error_dict("E", "x")
    )
    assert outcome.status == "queued" and outcome.retry_delay == 0
    job.refresh_from_db()
    assert job.status == "dispatched"  # no beat tick needed
