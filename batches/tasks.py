"""Celery tasks: thin wrappers that unpack ids and call into batches.lifecycle."""

from uuid import UUID

from celery import shared_task

from jobs.failpoints import failpoint

from . import lifecycle


@shared_task(name="batches.complete_batch", ignore_result=True)
def complete_batch(batch_id: str) -> bool:
    """The chord callback (idempotent; the sweeper re-runs it if this message is lost)."""
    failpoint("complete_batch")
    return lifecycle.complete_batch(UUID(batch_id))
