"""Tasks that ship with the platform, for demos, tests and smoke checks (docs/API.md)."""

from typing import Any

from .registry import task
from .runner import JobContext


@task(name="examples.echo")
def echo(ctx: JobContext, payload: Any) -> Any:
    return payload


@task(name="examples.sleep")
def sleep(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Sleep `seconds`, stopping early if cancelled; the lease is renewed meanwhile."""
    ctx.sleep(float(payload.get("seconds", 1)))
    return payload.get("value")


@task(name="examples.fail")
def fail(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Raise on attempts 1..fail_times, then return `value`; fail_times = -1 always raises."""
    fail_times = int(payload.get("fail_times", -1))
    if fail_times < 0 or ctx.attempt <= fail_times:
        raise RuntimeError(f"examples.fail: attempt {ctx.attempt} fails as asked")
    return payload.get("value")
