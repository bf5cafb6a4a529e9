"""Handlers for the fault suite, loaded in workers through TASK_MODULES (FAULT_TASK_MODULES).

Each records the pid of the pool process running each attempt in a file, so a test
can kill exactly that process.
"""

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from jobs.registry import task
from jobs.runner import JobContext


def pid_file(job_id: object, attempt: int) -> Path:
    # A file, not Redis: the Redis fault tests must not depend on the broker here.
    return Path(tempfile.gettempdir()) / f"bptest-faults-pid-{job_id}-{attempt}"


def read_pid(job_id: object, attempt: int) -> int | None:
    try:
        return int(pid_file(job_id, attempt).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _record(ctx: JobContext) -> None:
    path = pid_file(ctx.job_id, ctx.attempt)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)


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
