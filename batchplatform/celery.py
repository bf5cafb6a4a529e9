"""The Celery app. Each reliability setting names the failure it prevents."""

import os
from datetime import timedelta

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "batchplatform.settings")

app = Celery("batchplatform")


def configure(app: Celery) -> None:
    from django.conf import settings

    app.conf.update(
        broker_url=settings.REDIS_URL,
        result_backend=settings.CELERY_RESULT_BACKEND,
        result_extended=settings.CELERY_RESULT_EXTENDED,
        # JSON only: a serialiser that builds arbitrary objects turns write access to
        # Redis into code execution.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Ack after the task returns, not on receipt: a worker that dies mid-task leaves
        # the message in Redis for redelivery instead of silently losing it.
        task_acks_late=True,
        # Without this a pool child killed under acks_late is marked FAILURE and acked,
        # so the message is never redelivered.
        task_reject_on_worker_lost=True,
        # One message reserved per process: a dying worker strands at most one
        # prefetched message, and a long job does not hold others hostage.
        worker_prefetch_multiplier=1,
        # Redis redelivers an unacked message after this; it must exceed any job
        # timeout or long jobs would be delivered twice while still running. The
        # engine's leases, not this, are the recovery path (fencing drops duplicates).
        broker_transport_options={
            "visibility_timeout": settings.CELERY_VISIBILITY_TIMEOUT,
            "global_keyprefix": settings.BROKER_KEY_PREFIX,
        },
        result_backend_transport_options={"global_keyprefix": settings.BROKER_KEY_PREFIX},
        # Survive a Redis restart at start-up instead of exiting.
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.CELERY_DEFAULT_QUEUE,
        # A runaway platform task (sweep, dispatch) is stopped; per-job limits are
        # sent with each job's message from its own timeout.
        task_soft_time_limit=300,
        task_time_limit=360,
        # Task events for Flower (three extra Redis publishes per task; Flower also
        # switches them on when it connects, so CELERY_TASK_EVENTS=0 is safe for speed).
        worker_send_task_events=settings.CELERY_TASK_EVENTS,
        task_send_sent_event=settings.CELERY_TASK_EVENTS,
        # Celery's Django fixup closes the DB connection after every task unless told
        # to reuse it; a new Postgres connection per task cost ~4x throughput here.
        # Broken connections are still recycled by close_old_connections (jobs/signals.py).
        CELERY_DB_REUSE_MAX=1_000_000_000,
        worker_hijack_root_logger=False,
        beat_schedule={
            "dispatch": {
                "task": "jobs.dispatch",
                "schedule": timedelta(seconds=settings.DISPATCH_INTERVAL_SECONDS),
                "options": {"expires": settings.DISPATCH_INTERVAL_SECONDS * 5},
            },
            "sweep": {
                "task": "jobs.sweep",
                "schedule": timedelta(seconds=settings.STALLED_INTERVAL_SECONDS),
                "options": {"expires": settings.STALLED_INTERVAL_SECONDS * 5},
            },
            # Retention: delete finished jobs, executions and events past their age.
            "prune": {
                "task": "jobs.prune",
                "schedule": timedelta(seconds=settings.RETENTION_INTERVAL_SECONDS),
                "options": {"expires": settings.RETENTION_INTERVAL_SECONDS / 2},
            },
        },
        beat_max_loop_interval=min(settings.DISPATCH_INTERVAL_SECONDS, 5),
    )


configure(app)
app.autodiscover_tasks()
