"""The worker side of a job: start, heartbeat, run the handler, finish.

Each attempt holds a lease in Postgres. One heartbeat thread per worker process
renews the lease of the attempt that process is running; a renewal that finds the
job cancelled or taken over tells the handler to stop, and a worker whose lease was
taken over cannot write a result (every finish is a compare-and-set on the lease).
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from uuid import UUID

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import DatabaseError, InterfaceError, OperationalError, close_old_connections, connection

from . import lifecycle
from .failpoints import failpoint
from .lifecycle import Attempt, LeaseState, error_dict
from .registry import UnknownTask, get_task

logger = logging.getLogger("jobs.runner")
T = TypeVar("T")


class JobCancelled(Exception):
    """Raised in a handler (by ctx.check()) when its job was cancelled or taken over."""


class PermanentError(Exception):
    """Raise from a handler to fail the job at once, without retries."""


class Suspended(BaseException):
    """Raised by a wait call after the job was moved to `waiting`; unwinds the handler.

    A BaseException so a handler's `except Exception` does not swallow it.
    """


class LeaseWatch:
    def __init__(self, attempt: Attempt):
        self.attempt = attempt
        self.state = LeaseState.HELD
        self.stop = threading.Event()
        self.pending_failure: str | None = None


class Heartbeater:
    """One daemon thread per process renewing the current attempt's lease.

    It touches the database only when an attempt outlives JOB_LEASE_RENEW_SECONDS, so
    short jobs cost no extra connection or statement.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: LeaseWatch | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, attempt: Attempt) -> LeaseWatch:
        watch = LeaseWatch(attempt)
        with self._lock:
            self._current = watch
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
                self._thread.start()
        self._wake.set()
        return watch

    def release(self, watch: LeaseWatch) -> None:
        with self._lock:
            if self._current is watch:
                self._current = None

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                watch = self._current
            if watch is None:
                continue
            while not watch.stop.wait(settings.JOB_LEASE_RENEW_SECONDS):
                with self._lock:
                    if self._current is not watch:
                        break
                renew(watch)
                if watch.state != LeaseState.HELD:
                    break


def renew(watch: LeaseWatch) -> None:
    """Renew once; on a database error record `lock_extension_failed` (now, or at
    the next renewal that reaches the database) and keep trying until the lease is
    gone. Runs in the heartbeat thread or, for ctx.heartbeat(), in the handler's."""
    attempt = watch.attempt
    try:
        state = lifecycle.renew_lease(attempt.job_id, attempt.lease_token)
        if watch.pending_failure is not None:
            lifecycle.record_lock_extension_failed(
                attempt.job_id, attempt.tenant_id, attempt.attempt, watch.pending_failure
            )
            watch.pending_failure = None
    except DatabaseError as exc:
        connection.close()  # this thread's connection; reconnects on next use
        logger.warning("lease renewal failed for job %s: %s", attempt.job_id, exc)
        watch.pending_failure = watch.pending_failure or f"lease renewal failed: {exc}"
        try:
            lifecycle.record_lock_extension_failed(
                attempt.job_id, attempt.tenant_id, attempt.attempt, watch.pending_failure
            )
            watch.pending_failure = None
        except DatabaseError:
            connection.close()
        return
    if state != LeaseState.HELD:
        if state == LeaseState.LOST:
            try:
                lifecycle.record_lock_extension_failed(
                    attempt.job_id, attempt.tenant_id, attempt.attempt, "lease was taken over"
                )
            except DatabaseError:
                connection.close()
        watch.state = state
        watch.stop.set()


_heartbeater = Heartbeater()


class JobContext:
    """What a handler gets besides its payload."""

    def __init__(self, attempt: Attempt, watch: LeaseWatch):
        self._attempt = attempt
        self._watch = watch
        self.wait_seq = 0  # position of the next wait call; see batches.waits

    @property
    def job_id(self) -> UUID:
        return self._attempt.job_id

    @property
    def tenant_id(self) -> UUID:
        return self._attempt.tenant_id

    @property
    def attempt(self) -> int:
        return self._attempt.attempt

    @property
    def lease_token(self) -> UUID:
        return self._attempt.lease_token

    @property
    def should_stop(self) -> bool:
        """True once the job was cancelled or its lease taken over."""
        return self._watch.stop.is_set()

    def check(self) -> None:
        if self.should_stop:
            raise JobCancelled(self._watch.state)

    def heartbeat(self) -> None:
        """Renew the lease now (the heartbeat thread also does it periodically)."""
        renew(self._watch)
        self.check()

    def set_progress(self, fraction: float) -> None:
        if not lifecycle.set_progress(self.job_id, self.lease_token, fraction):
            self._watch.state = LeaseState.LOST
            self._watch.stop.set()
        self.check()

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (with JobCancelled) if the job is cancelled or lost."""
        if self._watch.stop.wait(seconds):
            raise JobCancelled(self._watch.state)


def with_db_retry(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run a transition again after a dropped connection. Safe because every
    transition is a compare-and-set: a retry of a write that did commit loses."""
    for i in range(attempts):
        try:
            return fn()
        except (OperationalError, InterfaceError):
            if i == attempts - 1:
                raise
            connection.close()
            time.sleep(min(2.0, 0.1 * 2**i))
    raise AssertionError("unreachable")


def run(job_id: UUID, dispatch_token: UUID, worker: str) -> str:
    """Run one delivery of a job's message. Returns what happened, for logs and tests."""
    close_old_connections()
    failpoint("before_start")
    attempt = with_db_retry(lambda: lifecycle.start(job_id, dispatch_token, worker))
    if attempt is None:
        logger.info("stale delivery of job %s ignored (token %s)", job_id, dispatch_token)
        return "stale"
    failpoint("after_start_commit")
    watch = _heartbeater.watch(attempt)
    ctx = JobContext(attempt, watch)
    try:
        outcome = _call_handler(attempt, ctx)
    finally:
        watch.stop.set()
        _heartbeater.release(watch)
    failpoint("before_finish")
    result = _write_outcome(attempt, watch, outcome)
    failpoint("after_finish_commit")
    return result


# (kind, value): kind is "ok", "error", "permanent", "timeout", "stopped" or "suspended"
_Outcome = tuple[str, Any]


def _call_handler(attempt: Attempt, ctx: JobContext) -> _Outcome:
    try:
        spec = get_task(attempt.task)
    except UnknownTask as exc:
        return "permanent", error_dict("UnknownTask", str(exc))
    try:
        value = spec.func(ctx, attempt.payload)
    except Suspended:
        return "suspended", None
    except SoftTimeLimitExceeded:
        return "timeout", error_dict("TimeoutError", "attempt exceeded its timeout")
    except JobCancelled:
        return "stopped", None
    except PermanentError as exc:
        return "permanent", error_dict(type(exc).__name__, str(exc) or type(exc).__name__)
    except Exception as exc:
        if ctx.should_stop:
            return "stopped", None
        return "error", error_dict(type(exc).__name__, str(exc) or repr(exc))
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return "permanent", error_dict("ResultNotSerializable", f"handler returned a non-JSON result: {exc}")
    return "ok", value


def _write_outcome(attempt: Attempt, watch: LeaseWatch, outcome: _Outcome) -> str:
    kind, value = outcome
    if kind == "suspended":
        return "suspended"
    if kind == "stopped":
        # Cancelled (the cancel already closed the attempt) or taken over (the
        # sweeper closed it as lost): there is nothing left for us to write.
        return watch.state
    if kind == "ok":
        result = with_db_retry(lambda: lifecycle.succeed(attempt.job_id, attempt.lease_token, value))
    else:
        result = with_db_retry(
            lambda: lifecycle.fail(
                attempt.job_id, attempt.lease_token, attempt=attempt.attempt,
                max_attempts=attempt.max_attempts, error=value,
                retryable=kind != "permanent", timed_out=kind == "timeout",
            )
        )
    if not result.won:
        logger.warning("result of job %s attempt %s refused: lease no longer held", attempt.job_id, attempt.attempt)
        with_db_retry(
            lambda: lifecycle.record_stale_result(
                attempt.job_id, attempt.tenant_id, attempt.attempt, f"{kind} result refused: lease no longer held"
            )
        )
        return "refused"
    return str(result.status)
