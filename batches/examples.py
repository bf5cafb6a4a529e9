"""Example tasks that wait (examples.fanout, examples.wait_token) — see docs/API.md."""

from typing import Any

from jobs.registry import task
from jobs.runner import JobContext, PermanentError

from . import waits


@task(name="examples.fanout")
def fanout(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Run `task` over each of `items` as one batch; return every result and error in
    item order: {"results", "errors", "succeeded", "failed"}."""
    if not isinstance(payload, dict) or not isinstance(payload.get("task"), str) or not isinstance(
        payload.get("items"), list
    ):
        raise PermanentError('payload must be {"task": name, "items": [payload, ...]}')
    return waits.batch_trigger_and_wait(ctx, payload["task"], payload["items"])


@task(name="examples.wait_token")
def wait_token(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Wait on the token waitpoint `payload["waitpoint"]` and return its output."""
    if not isinstance(payload, dict) or "waitpoint" not in payload:
        raise PermanentError('payload must be {"waitpoint": id}')
    return waits.wait_for_token(ctx, payload["waitpoint"])
