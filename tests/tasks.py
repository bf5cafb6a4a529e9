"""Handlers used only by tests; loaded in workers through TASK_MODULES (tests/env.py).

`tests.effect` counts each run of each attempt in Redis, so a test can prove a
handler's side effect happened once per attempt.
"""

import time
from typing import Any

import redis
from django.conf import settings

from jobs.registry import task
from jobs.runner import JobContext


def effect_key(job_id: object, attempt: int) -> str:
    return f"{settings.BROKER_KEY_PREFIX}effect:{job_id}:{attempt}"


@task(name="tests.effect")
def effect(ctx: JobContext, payload: dict[str, Any]) -> Any:
    redis.Redis.from_url(settings.REDIS_URL).incr(effect_key(ctx.job_id, ctx.attempt))
    seconds = float(payload.get("seconds", 0))
    if payload.get("ignore_cancel"):
        time.sleep(seconds)  # a handler that never checks: only fencing can stop its write
    else:
        ctx.sleep(seconds)
    return {"attempt": ctx.attempt}
