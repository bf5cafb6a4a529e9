"""Celery tasks: thin wrappers that unpack ids and call into batches.lifecycle."""

from uuid import UUID

from celery import shared_task

from . import lifecycle


@shared_task(name="batches.complete_batch", ignore_result=True)
def complete_batch(batch_id: str) -> bool:
    """The chord callback (idempotent; the sweeper re-runs it if this message is lost)."""
    return lifecycle.complete_batch(UUID(batch_id))


@shared_task(name="batches.fail_fast_batch", ignore_result=True)
def fail_fast_batch(batch_id: str) -> bool:
    return lifecycle.fail_fast(UUID(batch_id))
