"""A hypothesis state machine over the lifecycle functions, against Postgres.

No workers and no broker: each rule calls the functions a worker, the dispatcher,
the sweeper or an operator calls (submit, dispatch, deliver a current or stale
message, heartbeat, succeed, fail, suspend on a token, complete the token, expire a
lease or a dispatch deadline, sweep, cancel, requeue, create/append/seal a batch,
run or duplicate its chord callback, cancel it). Every step is followed by the
invariants (settled=False); at the end of each example the platform is driven to
completion through the normal path and the sweeper, and the settled invariants
must hold.

The whole test runs in one database transaction (pytest-django's `db`): each example
is a savepoint rolled back at its end, `transaction.on_commit` callbacks never fire
(no Celery message is sent, so lost messages and lost callbacks are the norm and the
sweeper or a duplicated callback rule must cope), and `now()` is frozen — time moves
only through the expire rules, which put deadlines into the past.

CI runs HYPOTHESIS_EXAMPLES (default 25) examples of up to 30 steps. The seed is
printed; replay a failure with HYPOTHESIS_SEED=<seed>.
"""

import json
import os
import random
import uuid
from typing import Any
from uuid import UUID

import hypothesis.strategies as st
import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from batches import intake
from batches import lifecycle as batches
from batches.models import Batch, Waitpoint
from jobs import dispatch, lifecycle, sweeper
from jobs.lifecycle import Attempt, InvalidState, LeaseState
from jobs.models import Job, Tenant
from tests.faults.invariants import assert_invariants

EXAMPLES = int(os.environ.get("HYPOTHESIS_EXAMPLES", "25"))
STEPS = int(os.environ.get("HYPOTHESIS_STEPS", "30"))
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([] if os.environ.get("HYPOTHESIS_NO_SHRINK") else [Phase.shrink])
SEED = int(os.environ.get("HYPOTHESIS_SEED") or random.randrange(2**32))


def _past(sql_where: str, column: str, params: list[Any]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE jobs_job SET {column} = now() - interval '1 second' WHERE {sql_where}", params
        )


def _lines(objects: list[Any]) -> Any:
    """Items as the NDJSON intake reads them from a request body."""
    body = b"".join(json.dumps(o).encode() + b"\n" for o in objects)
    return intake.read_lines(intake.LineSplitter([body]))


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.savepoint = transaction.savepoint()
        self.tenants = [
            Tenant.objects.create(slug=f"sm-{uuid.uuid4().hex[:8]}", concurrency_limit=limit) for limit in (2, 3)
        ]
        self.accepted: list[UUID] = []
        self.deliveries: list[tuple[UUID, UUID]] = []  # every (job, dispatch token) ever sent
        self.attempts: list[Attempt] = []  # every attempt ever started, current or stale
        self.batches: list[tuple[UUID, int, int]] = []  # (id, run_count, items sent)
        self.tokens: list[UUID] = []

    def teardown(self) -> None:
        try:
            self._drain()
            assert_invariants(settled=True, accepted=self.accepted, execution_slack_seconds=10**6)
        finally:
            transaction.savepoint_rollback(self.savepoint)

    # --- helpers --------------------------------------------------------------------

    def _ordered(self, queryset: Any) -> list[Any]:
        """Rows of `queryset` (id first) in an order that does not depend on random
        ids, so that an example replays the same way (hypothesis requires it)."""
        batch_pos = {b[0]: n for n, b in enumerate(self.batches)}
        accepted_pos = {j: n for n, j in enumerate(self.accepted)}
        rows = list(queryset.values_list("id", "batch_id", "batch_index", *self.extra))
        rows.sort(key=lambda r: (batch_pos.get(r[1], -1), r[2] or 0, accepted_pos.get(r[0], -1)))
        return [(r[0], *r[3:]) for r in rows]

    extra: tuple[str, ...] = ()

    def _jobs(self, status: str, *fields: str) -> list[Any]:
        self.extra = fields
        try:
            return self._ordered(Job.objects.filter(status=status))
        finally:
            self.extra = ()

    def _note_dispatched(self) -> None:
        for job_id, token in self._jobs("dispatched", "dispatch_token"):
            if (job_id, token) not in self.deliveries:
                self.deliveries.append((job_id, token))

    def _current(self, attempt: Attempt) -> bool:
        return Job.objects.filter(id=attempt.job_id, status="running", lease_token=attempt.lease_token).exists()

    def _finish(self, attempt: Attempt, ok: bool, retryable: bool = True) -> None:
        current = self._current(attempt)
        if ok:
            outcome = lifecycle.succeed(attempt.job_id, attempt.lease_token, {"attempt": attempt.attempt})
        else:
            outcome = lifecycle.fail(
                attempt.job_id, attempt.lease_token, attempt=attempt.attempt, max_attempts=attempt.max_attempts,
                error={"type": "Boom", "message": "rule failed it"}, retryable=retryable,
            )
        assert outcome.won == current, "a finish wins exactly when its lease is current (fencing)"
        if not outcome.won:
            lifecycle.record_stale_result(attempt.job_id, attempt.tenant_id, attempt.attempt, "refused")
        self._note_dispatched()

    def _drain(self) -> None:
        """Finish everything through the normal path and the sweeper."""
        for _ in range(60):
            for batch_id, run_count, sent in list(self.batches):
                if sent < run_count and Batch.objects.filter(id=batch_id, status__in=["pending", "processing"]).exists():
                    self._append(batch_id, run_count, sent, run_count - sent)
            for wp in Waitpoint.objects.filter(status="pending", type="token"):
                batches.complete_token(wp.tenant_id, wp.id, {"drained": True})
            for batch_id in Batch.objects.filter(status="processing").values_list("id", flat=True):
                batches.complete_batch(batch_id)  # the callback whose on_commit message never left
            _past("status = 'queued'", "run_at", [])
            _past("status = 'dispatched'", "dispatch_deadline", [])
            _past("status = 'running'", "lease_expires_at", [])
            sweeper.sweep()
            dispatch.dispatch_ready()
            for job_id, token in self._jobs("dispatched", "dispatch_token"):
                attempt = lifecycle.start(job_id, token, "drain")
                if attempt is not None:
                    self._finish(attempt, ok=True)
            unfinished = Job.objects.filter(status__in=["queued", "dispatched", "running", "waiting"]).exists()
            open_batches = Batch.objects.filter(status__in=["pending", "processing"]).exists()
            if not unfinished and not open_batches:
                return
        raise AssertionError("the platform did not finish everything after 60 drain rounds")

    def _append(self, batch_id: UUID, run_count: int, sent: int, n: int) -> None:
        items = [{"index": i, "payload": {"i": i}} for i in range(sent, min(run_count, sent + n))]
        try:
            intake.add_items(batch_id, _lines(items))
        except batches.BatchClosed:
            pass
        self.batches = [(b, r, min(r, sent + n) if b == batch_id else s) for b, r, s in self.batches]
        self._note_dispatched()

    # --- rules ------------------------------------------------------------------------

    @rule(t=st.integers(0, 1), max_attempts=st.integers(1, 3))
    def submit(self, t: int, max_attempts: int) -> None:
        job = lifecycle.submit(self.tenants[t], "examples.echo", {"n": len(self.accepted)}, max_attempts=max_attempts).job
        self.accepted.append(job.id)
        self._note_dispatched()

    @rule()
    def dispatch_cycle(self) -> None:
        with transaction.atomic(durable=True):
            dispatch.run_cycle(wait=True)
        self._note_dispatched()

    @precondition(lambda self: self.deliveries)
    @rule(i=st.integers(0, 10**6), twice=st.booleans())
    def deliver(self, i: int, twice: bool) -> None:
        job_id, token = self.deliveries[i % len(self.deliveries)]
        current = Job.objects.filter(id=job_id, status="dispatched", dispatch_token=token).exists()
        attempt = lifecycle.start(job_id, token, "sm-worker")
        assert (attempt is not None) == current, "a start wins exactly when its dispatch token is current"
        if attempt is not None:
            self.attempts.append(attempt)
        if twice:  # the same message again: always refused
            assert lifecycle.start(job_id, token, "sm-worker-2") is None

    @precondition(lambda self: self.attempts)
    @rule(i=st.integers(0, 10**6))
    def heartbeat(self, i: int) -> None:
        attempt = self.attempts[i % len(self.attempts)]
        current = self._current(attempt)
        state = lifecycle.renew_lease(attempt.job_id, attempt.lease_token)
        assert (state == LeaseState.HELD) == current

    @precondition(lambda self: self.attempts)
    @rule(i=st.integers(0, 10**6), ok=st.booleans(), retryable=st.booleans())
    def finish(self, i: int, ok: bool, retryable: bool) -> None:
        self._finish(self.attempts[i % len(self.attempts)], ok, retryable)

    @precondition(lambda self: self.attempts)
    @rule(i=st.integers(0, 10**6))
    def suspend_on_token(self, i: int) -> None:
        attempt = self.attempts[i % len(self.attempts)]
        current = self._current(attempt)
        try:
            with transaction.atomic(durable=True):
                waitpoint, _ = batches.create_waitpoint(attempt.tenant_id, "token")
                if not lifecycle.suspend_in_tx(attempt.job_id, attempt.lease_token, waitpoint.id):
                    raise InvalidState("lease lost")  # roll the waitpoint back, as batches.waits does
        except InvalidState:
            assert not current
            return
        assert current
        self.tokens.append(waitpoint.id)
        self._note_dispatched()

    @precondition(lambda self: self.tokens)
    @rule(i=st.integers(0, 10**6))
    def complete_token(self, i: int) -> None:
        wp = Waitpoint.objects.get(id=self.tokens[i % len(self.tokens)])
        try:
            batches.complete_token(wp.tenant_id, wp.id, {"ok": True})
        except InvalidState:
            assert wp.status == "completed"
        self._note_dispatched()

    @rule(i=st.integers(0, 10**6))
    def expire_lease(self, i: int) -> None:
        running = self._jobs("running")
        if running:
            _past("id = %s", "lease_expires_at", [running[i % len(running)][0]])

    @rule(i=st.integers(0, 10**6))
    def expire_dispatch_deadline(self, i: int) -> None:
        dispatched = self._jobs("dispatched")
        if dispatched:
            _past("id = %s", "dispatch_deadline", [dispatched[i % len(dispatched)][0]])

    @rule()
    def time_passes_for_backoff(self) -> None:
        _past("status = 'queued'", "run_at", [])

    @rule()
    def sweep(self) -> None:
        report = sweeper.sweep()
        assert not report.errors, report.errors
        self._note_dispatched()

    @precondition(lambda self: self.accepted)
    @rule(i=st.integers(0, 10**6))
    def cancel(self, i: int) -> None:
        job_id = self.accepted[i % len(self.accepted)]
        status = Job.objects.get(id=job_id).status
        try:
            lifecycle.cancel(job_id, "rule cancelled it")
        except InvalidState:
            assert status in ("succeeded", "failed")
        self._note_dispatched()

    @precondition(lambda self: self.accepted)
    @rule(i=st.integers(0, 10**6))
    def requeue(self, i: int) -> None:
        job_id = self.accepted[i % len(self.accepted)]
        status = Job.objects.get(id=job_id).status
        try:
            lifecycle.requeue(job_id, "rule requeued it")
        except InvalidState:
            assert status not in ("failed", "cancelled")
        self._note_dispatched()

    @rule(t=st.integers(0, 1), run_count=st.integers(1, 4), first=st.integers(0, 4))
    def create_batch(self, t: int, run_count: int, first: int) -> None:
        batch = batches.create_batch(self.tenants[t], task="examples.echo", run_count=run_count).batch
        self.batches.append((batch.id, run_count, 0))
        if first:
            self._append(batch.id, run_count, 0, first)

    @precondition(lambda self: self.batches)
    @rule(i=st.integers(0, 10**6), n=st.integers(1, 3))
    def append_items(self, i: int, n: int) -> None:
        batch_id, run_count, sent = self.batches[i % len(self.batches)]
        self._append(batch_id, run_count, sent, n)  # reaching run_count seals it

    @precondition(lambda self: self.batches)
    @rule(i=st.integers(0, 10**6))
    def chord_callback(self, i: int) -> None:
        """The callback, delivered whenever (early, late, twice): only a ready batch completes."""
        batch_id = self.batches[i % len(self.batches)][0]
        before = Batch.objects.get(id=batch_id)
        ready = before.status == "processing" and before.sealed and before.completed_count == before.run_count
        moved = batches.complete_batch(batch_id)
        assert moved == ready or before.status == "completed"

    @precondition(lambda self: self.batches)
    @rule(i=st.integers(0, 10**6))
    def cancel_batch(self, i: int) -> None:
        batches.cancel_batch(self.batches[i % len(self.batches)][0], "rule cancelled the batch")
        self._note_dispatched()

    @invariant()
    def invariants_hold(self) -> None:
        assert_invariants(settled=False, accepted=self.accepted, execution_slack_seconds=10**6)


@pytest.fixture
def settings_override(settings: Any) -> None:
    # Backoff passes only when the time_passes rule says so (now() is frozen in the
    # test's transaction, but dispatch compares run_at with the statement's time).
    settings.JOB_RETRY_BASE_SECONDS = 3600
    settings.JOB_RETRY_MAX_SECONDS = 3600


@pytest.mark.django_db
def test_lifecycle_state_machine_keeps_every_invariant(
    capsys: pytest.CaptureFixture[str], settings_override: None
) -> None:
    with capsys.disabled():
        print(f"\nlifecycle state machine: HYPOTHESIS_SEED={SEED} examples={EXAMPLES} steps={STEPS}")
    machine = seed(SEED)(LifecycleMachine)
    try:
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                phases=PHASES,
            ),
        )
    except BaseException as exc:
        raise AssertionError(f"state machine failed; replay with HYPOTHESIS_SEED={SEED}: {exc}") from exc
