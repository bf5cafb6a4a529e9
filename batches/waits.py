"""Waits inside a handler: return the result of a completed waitpoint, or suspend.

    from batches import waits

    @task(name="reports.fanout")
    def fanout(ctx, payload):
        out = waits.batch_trigger_and_wait(ctx, "reports.part", payload["parts"])
        return out["results"]

A wait that cannot be answered yet moves the job to `waiting` (no lease, no
concurrency slot) in the same transaction that creates what it waits on, then raises
`Suspended` to unwind the handler. When the waitpoint completes the job is queued
again and the handler runs again from the top; each wait call is keyed by its
position in the handler (ctx.wait_seq), so the same call now finds its completed
waitpoint and returns its output. Handlers must therefore be deterministic up to
their waits (docs/handlers.md).
"""

from typing import Any, NoReturn
from uuid import UUID

from django.db import transaction

from jobs import lifecycle as jobs_lifecycle
from jobs.models import Job, Tenant
from jobs.runner import JobCancelled, JobContext, PermanentError, Suspended

from . import intake, lifecycle
from .models import Waitpoint, WaitpointStatus, WaitpointType


class WaitpointError(PermanentError):
    """The waitpoint completed with an error (batch cancelled or aborted, child
    failed, timed out). Permanent: running the handler again would see it again."""

    def __init__(self, output: Any):
        self.output = output
        message = output.get("message") if isinstance(output, dict) else None
        super().__init__(message or f"waitpoint completed with an error: {output!r}")


def _next_seq(ctx: JobContext) -> int:
    seq = ctx.wait_seq
    ctx.wait_seq += 1
    return seq


def _answer(waitpoint: Waitpoint) -> Any:
    if waitpoint.output_is_error:
        raise WaitpointError(waitpoint.output)
    return waitpoint.output


def _owned(ctx: JobContext, seq: int) -> Waitpoint | None:
    return Waitpoint.objects.filter(owner_job_id=ctx.job_id, owner_seq=seq).first()


def _suspend_in_tx(ctx: JobContext, waitpoint_id: UUID) -> Waitpoint | None:
    """Suspend on the waitpoint unless it is already completed (then return it).

    The waitpoint row is read FOR SHARE: a completion waits for this transaction,
    and then its resume sees this job waiting; a completion that came first is seen
    here. Either way the job is never left waiting on a completed waitpoint.
    """
    waitpoint = Waitpoint.objects.select_for_update(no_key=True).get(id=waitpoint_id)
    if waitpoint.status == WaitpointStatus.COMPLETED:
        return waitpoint
    if not jobs_lifecycle.suspend_in_tx(ctx.job_id, ctx.lease_token, waitpoint_id):
        raise JobCancelled("lease lost before the job could wait")  # rolls back what the wait created
    return None


def _wait(ctx: JobContext, waitpoint_id: UUID) -> Any:
    with transaction.atomic(durable=True):
        done = _suspend_in_tx(ctx, waitpoint_id)
    if done is not None:
        return _answer(done)
    raise Suspended()


def _create_and_wait(ctx: JobContext, seq: int, create: "Creator") -> Any | NoReturn:
    with transaction.atomic(durable=True):
        waitpoint = create()
        done = _suspend_in_tx(ctx, waitpoint.id)
    if done is not None:
        return _answer(done)
    raise Suspended()


Creator = Any  # Callable[[], Waitpoint]


def _parent(ctx: JobContext) -> Job:
    return Job.objects.only("id", "root_id", "tenant_id", "priority").get(id=ctx.job_id)


def batch_trigger_and_wait(
    ctx: JobContext,
    task: str,
    items: list[Any],
    *,
    on_child_failure: str = "continue",
    max_attempts: int | None = None,
    timeout_seconds: float | None = None,
    wait_timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Run `task` over each payload in `items` as one batch and wait for all of them.

    Returns `{"results": [...], "errors": [...], "succeeded": k, "failed": m}` in
    item order. Raises WaitpointError if the batch was cancelled, aborted or timed out
    (or, with fail_fast, a child failed).
    """
    seq = _next_seq(ctx)
    existing = _owned(ctx, seq)
    if existing is not None:
        return _wait(ctx, existing.id) if existing.status == WaitpointStatus.PENDING else _answer(existing)
    if not items:  # nothing to run (still a wait position, for determinism)
        return {"results": [], "errors": [], "succeeded": 0, "failed": 0}
    tenant = Tenant.objects.get(id=ctx.tenant_id)

    def create() -> Waitpoint:
        waitpoint, _ = lifecycle.create_waitpoint(
            ctx.tenant_id, WaitpointType.BATCH, timeout_seconds=wait_timeout_seconds,
            owner_job_id=ctx.job_id, owner_seq=seq,
        )
        created = lifecycle.create_batch(
            tenant, task=task, run_count=len(items), on_child_failure=on_child_failure,
            max_attempts=max_attempts, timeout_seconds=timeout_seconds,
            parent=_parent(ctx), waitpoint=waitpoint,
        )
        result = intake.add_items_in_tx(created.batch.id, intake.parse_objects([{"payload": p} for p in items]))
        if result.error is not None:
            raise PermanentError(f"item {result.error.line}: {result.error.message}")
        return waitpoint

    return _create_and_wait(ctx, seq, create)


def trigger_and_wait(ctx: JobContext, task: str, payload: Any = None, **options: Any) -> Any:
    """Run one child job and wait for it: its result, or WaitpointError with its error."""
    seq = _next_seq(ctx)
    existing = _owned(ctx, seq)
    if existing is not None:
        return _wait(ctx, existing.id) if existing.status == WaitpointStatus.PENDING else _answer(existing)
    tenant = Tenant.objects.get(id=ctx.tenant_id)
    wait_timeout = options.pop("wait_timeout_seconds", None)

    def create() -> Waitpoint:
        child = jobs_lifecycle.submit(tenant, task, payload, parent=_parent(ctx), **options).job
        waitpoint, _ = lifecycle.create_waitpoint(
            ctx.tenant_id, WaitpointType.RUN, timeout_seconds=wait_timeout,
            owner_job_id=ctx.job_id, owner_seq=seq, run_id=child.id,
        )
        return waitpoint

    return _create_and_wait(ctx, seq, create)


def wait_for_token(ctx: JobContext, waitpoint_id: UUID | str) -> Any:
    """Wait until another service completes the token waitpoint (REST), then return
    its output (or raise WaitpointError if it was completed as an error or timed out)."""
    _next_seq(ctx)
    try:
        waitpoint_id = UUID(str(waitpoint_id))
    except ValueError:
        raise PermanentError(f"{waitpoint_id!r} is not a waitpoint id") from None
    waitpoint = Waitpoint.objects.filter(id=waitpoint_id, tenant_id=ctx.tenant_id).first()
    if waitpoint is None:
        raise PermanentError(f"waitpoint {waitpoint_id} does not exist")
    if waitpoint.status == WaitpointStatus.COMPLETED:
        return _answer(waitpoint)
    return _wait(ctx, waitpoint.id)


def wait_for(ctx: JobContext, seconds: float) -> None:
    """Sleep without holding a worker: the job waits on a `datetime` waitpoint that
    the sweeper completes at its time."""
    seq = _next_seq(ctx)
    existing = _owned(ctx, seq)
    if existing is not None:
        if existing.status == WaitpointStatus.PENDING:
            _wait(ctx, existing.id)
        return None
    if seconds <= 0:
        return None

    def create() -> Waitpoint:
        waitpoint, _ = lifecycle.create_waitpoint(
            ctx.tenant_id, WaitpointType.DATETIME, timeout_seconds=seconds,
            owner_job_id=ctx.job_id, owner_seq=seq,
        )
        return waitpoint

    _create_and_wait(ctx, seq, create)
    return None
