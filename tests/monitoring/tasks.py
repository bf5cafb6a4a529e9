"""Handlers for the monitoring tests; workers load them through TASK_MODULES.

`monitoring.nap` counts each run of each attempt in Redis (so a test proves nothing
ran twice) and is slow only on its first `slow_attempts` attempts, so a job that
was stuck can complete on the attempt the sweeper gave it.
"""

from typing import Any

import redis
from django.conf import settings

from jobs.registry import task
from jobs.runner import JobContext


def effect_key(job_id: object, attempt: int) -> str:
    return f"{settings.BROKER_KEY_PREFIX}monitoring-effect:{job_id}:{attempt}"


@task(name="monitoring.nap")
def nap(ctx: JobContext, payload: dict[str, Any]) -> Any:
    redis.Redis.from_url(settings.REDIS_URL).incr(effect_key(ctx.job_id, ctx.attempt))
    if ctx.attempt <= int(payload.get("slow_attempts", 0)):
        ctx.sleep(float(payload.get("seconds", 0)))
    return {"attempt": ctx.attempt}
