"""Handlers for the fault suite, loaded in workers through TASK_MODULES (FAULT_TASK_MODULES).

Each records the pid of the pool process running it (and the attempt) in Redis, so a
test can kill exactly that process.
"""

import os
import time
from typing import Any

import redis
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from jobs.registry import task
from jobs.runner import JobContext


def pid_key(job_id: object, attempt: int) -> str:
    return f"{settings.BROKER_KEY_PREFIX}faults:pid:{job_id}:{attempt}"


def _record(ctx: JobContext) -> None:
    redis.Redis.from_url(settings.REDIS_URL).set(pid_key(ctx.job_id, ctx.attempt), os.getpid(), ex=600)


@task(name="faults.sleep")
def sleep(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Sleep `seconds` (`first_seconds` on attempt 1); `stubborn` ignores cancellation."""
    _record(ctx)
    seconds = float(payload.get("first_seconds" if ctx.attempt == 1 and "first_seconds" in payload else "seconds", 0))
    if payload.get("stubborn"):
        time.sleep(seconds)
    else:
        ctx.sleep(seconds)
    return {"attempt": ctx.attempt}


@task(name="faults.ignore_soft_limit")
def ignore_soft_limit(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Swallows SoftTimeLimitExceeded and keeps going: only the hard limit stops it."""
    _record(ctx)
    deadline = time.monotonic() + float(payload.get("seconds", 60))
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            pass
    return "should never get here"
