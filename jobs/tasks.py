"""Celery tasks: thin wrappers that unpack ids and call into the engine."""

from typing import Any
from uuid import UUID

# Bound to our app, not to whichever Celery app is current in the process: a second
# app (a client library, a benchmark's baseline) must not receive our messages.
from batchplatform.celery import app

from . import dispatch, runner, sweeper


@app.task(name="jobs.run_job", bind=True, ignore_result=True)
def run_job(self: Any, job_id: str, dispatch_token: str) -> str:
    return runner.run(UUID(job_id), UUID(dispatch_token), self.request.hostname or "unknown")


@app.task(name="jobs.dispatch", ignore_result=True)
def dispatch_ready() -> int:
    return dispatch.dispatch_ready()


@app.task(name="jobs.sweep")
def sweep() -> dict[str, int] | None:
    report = sweeper.sweep_single_flight()
    return None if report is None else report.counts()


# Chunked, each chunk its own transaction: a time limit only postpones the rest.
@app.task(name="jobs.prune", ignore_result=True, soft_time_limit=3600, time_limit=3660)
def prune() -> dict[str, int]:
    from . import retention

    return retention.prune().as_dict()
