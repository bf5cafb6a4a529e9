"""Phase 2 intake: NDJSON lines in, child jobs out, in chunks, in constant memory.

The body is read one line at a time (never whole), parsed, and children are
written a chunk at a time with COPY into a temporary table and one INSERT ... ON
CONFLICT DO NOTHING keyed by (batch, index), so a resumed stream skips what it
already sent. Each chunk commits on its own and dispatches its children at once:
children can finish before the stream ends, and the seal (enqueued_count reaching
run_count, in the same update) queues the callback if it comes second.
"""

import json
import queue
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection, transaction

from jobs import dispatch
from jobs.failpoints import failpoint
from jobs.registry import UnknownTask, get_task

from . import lifecycle
from .lifecycle import BatchClosed
from .models import BatchStatus

CHUNK_ITEMS = 2000
# ...or fewer when items are large: a chunk never holds much more than this (one
# chunk is parsed while the previous one is written, so memory is about twice it).
CHUNK_BYTES = 8 * 1024 * 1024
# A stream that added at least this many children refreshes jobs_job's statistics.
ANALYZE_AFTER_ROWS = 5000
# Children are queued as lines arrive: a partial chunk is written once it is this old,
# or as soon as the client has sent nothing more for now (`idle`, see read_lines'
# callers), so a trickling stream's items never wait for the next line.
FLUSH_SECONDS = 0.05
_ITEM_KEYS = {"payload", "task", "index"}


class ItemError(Exception):
    """A bad line: `invalid_item` (400) or `payload_too_large` (413), with its 1-based line."""

    def __init__(self, line: int, message: str, code: str = "invalid_item"):
        super().__init__(message)
        self.line = line
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Item:
    line: int
    index: int
    task: str
    payload: Any
    copy_row: bytes  # the staging row in COPY text format, the line's own JSON included


@dataclass(frozen=True)
class IntakeResult:
    batch_id: UUID
    sealed: bool
    enqueued_count: int
    run_count: int
    status: str
    error: ItemError | None = None

    @property
    def missing(self) -> int:
        return max(self.run_count - self.enqueued_count, 0)


# --- reading and parsing ----------------------------------------------------------------


class LineSplitter:
    """Lines (without their newline) from an iterable of byte pieces as they arrive.

    Holds at most one partial line plus one piece; a line over BATCH_ITEM_MAX_BYTES
    raises a 413 ItemError as soon as that is known. `at_boundary` is True when every
    complete line received so far has been handed out (the next one needs more data).
    """

    def __init__(self, pieces: Iterable[bytes]):
        self.pieces = pieces
        self.at_boundary = True

    def __iter__(self) -> Iterator[bytes]:
        limit = settings.BATCH_ITEM_MAX_BYTES
        parts: list[bytes] = []  # the line in progress, unjoined (a long line is not re-copied per piece)
        size = 0
        line_no = 0
        for piece in self.pieces:
            if b"\n" not in piece:
                parts.append(piece)
                size += len(piece)
                if size > limit + 1:  # + a CR
                    raise ItemError(line_no + 1, f"line is larger than {limit} bytes", code="payload_too_large")
                continue
            if parts:
                parts.append(piece)
                piece, parts, size = b"".join(parts), [], 0
            lines = piece.split(b"\n")
            tail = lines.pop()
            self.at_boundary = False
            last = len(lines) - 1
            for i, line in enumerate(lines):
                line_no += 1
                if len(line) > limit + 1:
                    raise ItemError(line_no, f"line is larger than {limit} bytes", code="payload_too_large")
                self.at_boundary = i == last
                yield line
            self.at_boundary = True
            if tail:
                parts, size = [tail], len(tail)
                if size > limit + 1:
                    raise ItemError(line_no + 1, f"line is larger than {limit} bytes", code="payload_too_large")
        if parts:
            yield b"".join(parts)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_lines(lines: Iterable[bytes]) -> Iterator[tuple[int, Any, bytes]]:
    """(line number, decoded object, raw line) for each non-blank line."""
    limit = settings.BATCH_ITEM_MAX_BYTES
    for line_no, raw in enumerate(lines, start=1):
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if len(raw) > limit:
            raise ItemError(line_no, f"line is larger than {limit} bytes", code="payload_too_large")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise ItemError(line_no, f"line is not valid JSON: {exc}") from None
        yield line_no, obj, raw


def parse_objects(items: list[Any]) -> Iterator[tuple[int, Any, bytes]]:
    """Inline items of a phase-1 create: line n is item n-1."""
    for i, obj in enumerate(items):
        try:
            raw = json.dumps(obj, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise ItemError(i + 1, f"item is not valid JSON: {exc}") from None
        yield i + 1, obj, raw


def socket_idle(sock: socket.socket | None) -> Callable[[], bool]:
    """A probe: True when nothing more is waiting on the client's socket right now.
    (Data a server already buffered reads without blocking; flushing early then only
    makes a chunk smaller.)"""
    if sock is None:
        return lambda: False

    def idle() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    return idle


class _Context:
    """What validating an item needs from its batch; task specs cached by name."""

    def __init__(self, row: tuple[Any, ...]):
        (self.tenant_id, self.run_count, self.task, self.max_attempts, self.timeout_seconds,
         self.parent_id, self.root_id, self.priority, self.status, self.sealed) = row
        self._specs: dict[str, tuple[str, int, float]] = {}

    def spec(self, name: str, line: int) -> tuple[str, int, float]:
        cached = self._specs.get(name)
        if cached is None:
            try:
                spec = get_task(name)
            except UnknownTask as exc:
                raise ItemError(line, str(exc)) from None
            cached = (
                spec.queue_name,
                self.max_attempts or spec.max_attempts or settings.JOB_MAX_ATTEMPTS_DEFAULT,
                self.timeout_seconds or spec.timeout or settings.JOB_TIMEOUT_SECONDS_DEFAULT,
            )
            self._specs[name] = cached
        return cached


def to_item(line: int, position: int, obj: Any, raw: bytes, ctx: _Context) -> Item:
    if not isinstance(obj, dict) or "payload" not in obj:
        raise ItemError(line, 'each line must be an object with a "payload"')
    if len(obj) > 1 and not _ITEM_KEYS.issuperset(obj):
        raise ItemError(line, f"unknown field(s): {', '.join(sorted(set(obj) - _ITEM_KEYS))}")
    index = obj.get("index", position)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < ctx.run_count:
        raise ItemError(line, f"index must be an integer from 0 to {ctx.run_count - 1}")
    task = obj.get("task") or ctx.task
    if not isinstance(task, str) or not task:
        raise ItemError(line, "the item has no task and the batch has no default task")
    queue, max_attempts, timeout = ctx.spec(task, line)
    if b"\\u" in raw:
        _check_postgres_text(line, obj["payload"])
    # The line's own JSON goes to Postgres as is (no re-serialising); COPY text
    # format only needs backslashes doubled (valid JSON has no raw tab or newline).
    copy_row = b"%d\t%d\t%s\t%s\t%d\t%r\t%s\n" % (
        line, index, task.encode(), queue.encode(), max_attempts, timeout, raw.replace(b"\\", b"\\\\"),
    )
    return Item(line, index, task, obj["payload"], copy_row)


def _check_postgres_text(line: int, payload: Any) -> None:
    """jsonb refuses NUL characters and lone surrogates that JSON allows as escapes."""
    try:
        text = json.dumps(payload, ensure_ascii=False)
        text.encode()
    except (UnicodeEncodeError, ValueError):
        raise ItemError(line, "payload holds an invalid Unicode escape (a lone surrogate)") from None
    if "\\u0000" in text:  # json.dumps keeps control characters escaped
        raise ItemError(line, "payload holds a NUL character, which is not supported")


# --- writing ------------------------------------------------------------------------------

_CONTEXT_SQL = """
SELECT b.tenant_id, b.run_count, b.task, b.max_attempts, b.timeout_seconds,
       b.parent_id, p.root_id, COALESCE(p.priority, 0), b.status, b.sealed
FROM batches_batch b LEFT JOIN jobs_job p ON p.id = b.parent_id
WHERE b.id = %s
"""

_STAGING_SQL = """
CREATE TEMP TABLE batch_intake (
    line int, idx int, task text, queue text, max_attempts int, timeout_seconds float8, item jsonb
) ON COMMIT DELETE ROWS
"""

# Earliest line whose index already holds another task or payload (jsonb equality:
# key order and spacing do not matter).
_MISMATCH_SQL = """
SELECT min(s.line) FROM batch_intake s
JOIN jobs_job j ON j.batch_id = %s AND j.batch_index = s.idx
WHERE j.task <> s.task OR j.payload IS DISTINCT FROM s.item -> 'payload'
"""

# Children get no `created` event: their batch records their creation, and at
# intake rates the extra row (and its foreign-key checks) would halve throughput.
_INSERT_SQL = """
WITH src AS (
    SELECT gen_random_uuid() AS id, s.line, s.idx, s.task, s.queue, s.max_attempts, s.timeout_seconds,
           s.item -> 'payload' AS payload
    FROM batch_intake s WHERE s.line < %(before)s
), ins AS (
    INSERT INTO jobs_job (
        id, tenant_id, task, queue, status, payload, payload_hash, attempts, max_attempts,
        stalled_count, priority, timeout_seconds, batch_id, batch_index, parent_id, root_id,
        lease_owner, created_at, run_at, updated_at
    )
    SELECT id, %(tenant)s, task, queue, 'queued', payload,
           encode(sha256(convert_to(task || chr(31) || payload::text, 'UTF8')), 'hex'),
           0, max_attempts, 0, %(priority)s, timeout_seconds, %(batch)s, idx, %(parent)s,
           COALESCE(%(root)s::uuid, id), '', now(), now(), now()
    FROM src
    ON CONFLICT (batch_id, batch_index) WHERE batch_id IS NOT NULL DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""

# Count the new children in and seal when the last expected one arrives; whoever
# comes second of this seal and the last child's count queues the callback.
_ENQUEUED_SQL = """
UPDATE batches_batch SET
    enqueued_count = enqueued_count + %(n)s,
    status = CASE WHEN status = 'pending' THEN 'processing' ELSE status END,
    sealed = sealed OR enqueued_count + %(n)s >= run_count,
    sealed_at = CASE WHEN NOT sealed AND enqueued_count + %(n)s >= run_count THEN now() ELSE sealed_at END,
    updated_at = now()
WHERE id = %(id)s
RETURNING enqueued_count, run_count, sealed, completed_count, status
"""


def _status_in_tx(batch_id: UUID) -> tuple[int, int, bool, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT enqueued_count, run_count, sealed, status FROM batches_batch WHERE id = %s", [batch_id]
        )
        return cursor.fetchone()


def _flush_in_tx(
    batch_id: UUID, ctx: _Context, items: list[Item], dispatch_now: bool = True
) -> tuple[IntakeResult, int | None]:
    """Write one chunk. Returns the batch's state after it and the first line whose
    index was already received with another payload (rows from it on are not written)."""
    lifecycle.lock_intake_in_tx(batch_id, exclusive=False)
    enqueued, run_count, sealed, status = _status_in_tx(batch_id)
    if status in lifecycle.CLOSED_STATUSES:
        raise BatchClosed(status)
    if sealed or status == BatchStatus.COMPLETED or not items:
        return IntakeResult(batch_id, sealed or status == BatchStatus.COMPLETED, enqueued, run_count, status), None
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('pg_temp.batch_intake') IS NULL")
        if cursor.fetchone()[0]:
            cursor.execute(_STAGING_SQL)
        else:
            cursor.execute("DELETE FROM batch_intake")
        with cursor.copy(
            "COPY batch_intake (line, idx, task, queue, max_attempts, timeout_seconds, item) FROM STDIN"
        ) as copy:
            copy.write(b"".join(it.copy_row for it in items))
        params = {"before": 2**31 - 1, "tenant": ctx.tenant_id, "priority": ctx.priority, "batch": batch_id,
                  "parent": ctx.parent_id, "root": ctx.root_id}
        savepoint = transaction.savepoint()
        cursor.execute(_INSERT_SQL, params)
        inserted = cursor.fetchone()[0]
        bad_line = None
        if inserted < len(items):
            # Some indexes were already there (a resumed stream): only then can an
            # item differ from what its index holds. If one does, write only the
            # lines before it.
            cursor.execute(_MISMATCH_SQL, [batch_id])
            bad_line = cursor.fetchone()[0]
        if bad_line is not None:
            transaction.savepoint_rollback(savepoint)
            cursor.execute(_INSERT_SQL, {**params, "before": bad_line})
            inserted = cursor.fetchone()[0]
        else:
            transaction.savepoint_commit(savepoint)
        if inserted == 0:
            return IntakeResult(batch_id, sealed, enqueued, run_count, status), bad_line
        cursor.execute(_ENQUEUED_SQL, {"id": batch_id, "n": inserted})
        enqueued, run_count, sealed, completed, status = cursor.fetchone()
    if sealed and enqueued - inserted < run_count and completed == run_count:
        # Every child was counted before this seal. Sealing with the last item's
        # insert makes the last child come second in practice; this keeps "whichever
        # comes second queues the callback" true however children get counted.
        lifecycle.queue_callback_on_commit(batch_id)
    failpoint("intake_before_dispatch")
    if dispatch_now:
        dispatch.dispatch_tenant(ctx.tenant_id)  # last: it takes the dispatcher's lock
    else:
        _dispatch_on_commit(ctx.tenant_id)
    return IntakeResult(batch_id, sealed, enqueued, run_count, status), bad_line


def _dispatch_on_commit(tenant_id: UUID) -> None:
    """Dispatch a streamed chunk's children once it has committed, not under its batch
    row lock: a child of the same batch finishing at that moment holds the dispatch
    lock (taken in its finish statement to refill) and waits for that row to count
    itself in, so waiting for the dispatch lock here deadlocks (found by the soak,
    tests/faults/test_races.py). If this dispatch fails, beat's dispatches them."""

    def run() -> None:
        with transaction.atomic(durable=True):
            dispatch.dispatch_tenant(tenant_id)

    transaction.on_commit(run, robust=True)


def _load_context(batch_id: UUID) -> _Context:
    with connection.cursor() as cursor:
        cursor.execute(_CONTEXT_SQL, [batch_id])
        row = cursor.fetchone()
    if row is None:
        raise LookupError(f"batch {batch_id} does not exist")
    return _Context(row)


class _Writer:
    """Writes chunks in order, here and now; the base of the pipelined writer."""

    def __init__(self, flush: Callable[[list[Item]], tuple[IntakeResult, int | None]], initial: IntakeResult):
        self._flush = flush
        self.result = initial
        self.bad: int | None = None

    def write(self, items: list[Item]) -> None:
        self.result, self.bad = self._flush(items)

    def stopped(self) -> bool:
        """Nothing more will be written: a mismatch was found or the batch sealed."""
        return self.bad is not None or self.result.sealed

    def finish(self) -> tuple[IntakeResult, int | None]:
        return self.result, self.bad

    def abandon(self) -> None:
        """The reader failed: finish what was already handed over, then stop."""


class _PipelinedWriter(_Writer):
    """Writes each chunk in a second thread, on its own connection, while the caller
    parses the next: the stream costs the larger of parsing and writing, not their
    sum. At most one chunk waits, so memory stays bounded."""

    def __init__(self, flush: Callable[[list[Item]], tuple[IntakeResult, int | None]], initial: IntakeResult):
        super().__init__(flush, initial)
        self._queue: queue.Queue[list[Item] | None] = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="batch-intake-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while (items := self._queue.get()) is not None:
                if self._stop.is_set():
                    continue  # drain what the reader sent before it noticed
                try:
                    super().write(items)
                except BaseException as exc:  # re-raised in the caller's thread by finish()
                    self._error = exc
                    self._stop.set()
                    continue
                if super().stopped():
                    self._stop.set()
        finally:
            connection.close()  # this thread's own connection

    def write(self, items: list[Item]) -> None:
        self._queue.put(items)

    def stopped(self) -> bool:
        return self._stop.is_set()

    def finish(self) -> tuple[IntakeResult, int | None]:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.result, self.bad

    def abandon(self) -> None:
        self._queue.put(None)  # what was handed over is still written (a resend skips it)
        self._thread.join()


def _run(
    objects: Iterator[tuple[int, Any, bytes]],
    writer: _Writer,
    ctx: _Context,
    idle: Callable[[], bool] = lambda: False,
) -> IntakeResult:
    pending: list[Item] = []
    seen: dict[int, tuple[str, Any]] = {}  # index → (task, payload) within the pending chunk only
    started = time.monotonic()
    position = 0
    pending_bytes = 0
    item_error: ItemError | None = None
    try:
        for line, obj, raw in objects:
            item = to_item(line, position, obj, raw, ctx)
            position += 1
            previous = seen.get(item.index)
            if previous is not None:
                if previous != (item.task, item.payload):
                    raise ItemError(line, f"index {item.index} was already received with another payload")
                continue
            seen[item.index] = (item.task, item.payload)
            pending.append(item)
            pending_bytes += len(item.copy_row)
            if (
                len(pending) >= CHUNK_ITEMS or pending_bytes >= CHUNK_BYTES
                or time.monotonic() - started >= FLUSH_SECONDS or idle()
            ):
                writer.write(pending)
                pending, seen, started, pending_bytes = [], {}, time.monotonic(), 0
                if writer.stopped():
                    break  # a mismatch, or sealed: everything expected is in
    except ItemError as exc:
        item_error = exc  # the items before it are still written
    except BaseException:
        writer.abandon()  # never leave the writer thread (and its connection) behind
        raise
    if pending and not writer.stopped():
        writer.write(pending)
    result, bad = writer.finish()
    if bad is not None:  # always before any later bad line: chunks are written in order
        return _with_error(result, ItemError(bad, "index was already received with another payload"))
    if item_error is not None and not result.sealed:
        return _with_error(result, item_error)
    return result


def _with_error(result: IntakeResult, error: ItemError) -> IntakeResult:
    return IntakeResult(result.batch_id, result.sealed, result.enqueued_count, result.run_count, result.status, error)


def add_items(
    batch_id: UUID, objects: Iterator[tuple[int, Any, bytes]], idle: Callable[[], bool] = lambda: False
) -> IntakeResult:
    """Phase 2: write the stream's items, one committed chunk at a time.

    `idle()` says whether the client has sent nothing more yet: the pending items
    are written then, rather than after the next line (which may be far off).

    Raises BatchClosed (cancelled or aborted). A bad line ends the call with
    `error` set; the items before it are kept (their chunks are committed).
    """
    ctx = _load_context(batch_id)

    # A chunk of its own dispatches after its commit; inside a caller's transaction
    # (a test's) nothing commits, so dispatch inline as before.
    dispatch_now = connection.in_atomic_block

    def flush(items: list[Item]) -> tuple[IntakeResult, int | None]:
        with transaction.atomic(durable=True):
            return _flush_in_tx(batch_id, ctx, items, dispatch_now=dispatch_now)

    initial, _ = flush([])
    if initial.sealed:
        return initial  # already sealed or completed: 200 sealed, nothing to read
    # Inside an outer transaction (a test's) another connection would not see the
    # batch: write inline there.
    writer_class = _Writer if connection.in_atomic_block else _PipelinedWriter
    result = _run(objects, writer_class(flush, initial), ctx, idle)
    added = result.enqueued_count - initial.enqueued_count
    if added >= ANALYZE_AFTER_ROWS and not connection.in_atomic_block:
        analyze_jobs_if_stale(added)
    return result


def analyze_jobs_if_stale(added: int) -> bool:
    """Refresh jobs_job's planner statistics after a bulk load that outgrew them (as
    Postgres advises): until autovacuum gets to it, a table that just grew by tens
    of thousands of queued rows is planned as if it were small, and the dispatcher's
    queries become scans of every queued job, on every finish (measured here: 63 ms
    instead of 0.07 ms per dispatch with 60,000 queued). Only when the rows just
    added are at least half the table the statistics describe, so a large, steady
    table is never analyzed on the request path. Blocks no reads or writes."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE oid = 'jobs_job'::regclass")
        known = max(cursor.fetchone()[0], 0)
        if added * 2 < known:
            return False
        cursor.execute("ANALYZE jobs_job")
    return True


def add_items_in_tx(batch_id: UUID, objects: Iterator[tuple[int, Any, bytes]]) -> IntakeResult:
    """The same in the caller's transaction (inline items of a create, a handler's
    batch_trigger_and_wait): all or nothing."""
    ctx = _load_context(batch_id)

    def flush(items: list[Item]) -> tuple[IntakeResult, int | None]:
        return _flush_in_tx(batch_id, ctx, items)

    return _run(objects, _Writer(flush, flush([])[0]), ctx)
