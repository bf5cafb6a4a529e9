"""Celery tasks: thin wrappers that unpack ids and call into batches.lifecycle."""

from uuid import UUID

# Bound to our app, not to whichever Celery app is current in the process: a second
# app (a client library, a benchmark's baseline) must not receive our messages.
from batchplatform.celery import app

from jobs.failpoints import failpoint

from . import lifecycle


@app.task(name="batches.complete_batch", ignore_result=True)
def complete_batch(batch_id: str) -> bool:
    """The chord callback (idempotent; the sweeper re-runs it if this message is lost)."""
    failpoint("complete_batch")
    return lifecycle.complete_batch(UUID(batch_id))
