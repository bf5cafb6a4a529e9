"""Handlers used only by the batch tests; loaded in workers through TASK_MODULES."""

from typing import Any

from batches import waits
from jobs.registry import task
from jobs.runner import JobContext


@task(name="tests.batches.child_then_sleep")
def child_then_sleep(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """trigger_and_wait, then wait_for: two waits, keyed by their position."""
    child = waits.trigger_and_wait(ctx, "examples.echo", {"from": "child"})
    waits.wait_for(ctx, float(payload.get("seconds", 0.5)))
    return {"child": child, "runs_done": ctx.wait_seq}
