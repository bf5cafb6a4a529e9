"""Celery signal handlers: connection hygiene and recovery at worker start."""

import logging
from typing import Any

from celery.signals import task_prerun, worker_init, worker_process_init, worker_ready
from django.conf import settings
from django.db import close_old_connections, connection
from django.db.backends.signals import connection_created

logger = logging.getLogger("jobs.recovery")
_booted_at: object = None


@task_prerun.connect
def _recycle_broken_connections(**kwargs: Any) -> None:
    # Celery's fixup is told to reuse connections (celery.py); drop only broken ones.
    close_old_connections()


def _worker_commit_mode(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Worker-side transitions commit without waiting for the WAL flush.

    A Postgres crash can then forget the last few hundred milliseconds of starts,
    heartbeats and finishes; leases and dispatch deadlines re-run those attempts, so
    nothing is lost or stuck, only repeated (at-least-once, as always). Intake over the
    API keeps synchronous commits: a 2xx means the job is durable. WORKER_SYNCHRONOUS_COMMIT=on
    restores full durability at about twice the cost per job.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT set_config('synchronous_commit', %s, false)", [settings.WORKER_SYNCHRONOUS_COMMIT])


def _enter_worker_mode() -> None:
    if settings.WORKER_SYNCHRONOUS_COMMIT != "on":
        connection_created.connect(_worker_commit_mode, dispatch_uid="worker-commit-mode")


@worker_process_init.connect
def _pool_process_started(**kwargs: Any) -> None:
    _enter_worker_mode()


@worker_init.connect
def _remember_boot_time(**kwargs: Any) -> None:
    """Database time at boot, before this worker can start any attempt."""
    global _booted_at
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            _booted_at = cursor.fetchone()[0]
    except Exception:
        logger.exception("could not read database time at worker boot")
    finally:
        connection.close()
    _enter_worker_mode()  # solo and thread pools run tasks in this process


@worker_ready.connect
def _recover_at_start(sender: Any = None, **kwargs: Any) -> None:
    """Recover at once what a previous run of this worker left running, then sweep."""
    from . import sweeper

    hostname = getattr(sender, "hostname", None)
    try:
        if hostname and _booted_at is not None:
            moved = sweeper.recover_worker(hostname, _booted_at)
            if moved:
                logger.warning("recovered %d job(s) left running by %s: %s", len(moved), hostname, moved)
        report = sweeper.sweep_single_flight()
        if report and report.moved:
            logger.warning("startup sweep moved %s", report.counts())
    except Exception:
        logger.exception("startup recovery failed; the periodic sweep will retry")
    finally:
        connection.close()
