"""Phase 2 intake against real Postgres: chunks, resume, bad lines, the seal."""

from collections.abc import Callable, Iterator

import pytest
from django.db import connection

from batches import intake, lifecycle
from batches.models import Batch
from jobs.models import Job
from tests.batches.conftest import ndjson, stream
from tests.workers import wait_until


def children(batch: Batch) -> list[tuple[int, object, str]]:
    return list(Job.objects.filter(batch=batch).order_by("batch_index").values_list("batch_index", "payload", "status"))


def test_stream_of_all_items_creates_children_in_index_order_and_seals(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=3)
    result = stream(batch, ndjson([{"payload": {"n": i}} for i in range(3)]))

    assert (result.sealed, result.enqueued_count, result.missing, result.error) == (True, 3, 0, None)
    batch.refresh_from_db()
    assert batch.sealed and batch.sealed_at is not None and batch.status == "processing"
    assert [(i, p) for i, p, _ in children(batch)] == [(0, {"n": 0}), (1, {"n": 1}), (2, {"n": 2})]
    job = Job.objects.get(batch=batch, batch_index=1)
    assert job.root_id == job.id and job.parent_id is None and job.task == "examples.echo"
    assert not job.events.filter(type="created").exists()  # the batch records its children's creation


def test_short_stream_reports_missing_and_a_resend_skips_what_was_received(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=4)
    items = [{"payload": i, "index": i} for i in range(4)]

    first = stream(batch, ndjson(items[:2]))
    assert (first.sealed, first.missing) == (False, 2)

    again = stream(batch, ndjson(items))  # the whole stream again, after a dropped connection
    assert (again.sealed, again.enqueued_count, again.error) == (True, 4, None)
    assert [i for i, _, _ in children(batch)] == [0, 1, 2, 3]
    assert Job.objects.filter(batch=batch).count() == 4


def test_same_index_with_another_payload_is_invalid_item_with_its_line(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=4)
    stream(batch, ndjson([{"payload": "a", "index": 0}]))

    result = stream(batch, ndjson([{"payload": "b", "index": 1}, {"payload": "changed", "index": 0}]))

    assert result.error is not None and result.error.code == "invalid_item" and result.error.line == 2
    assert [(i, p) for i, p, _ in children(batch)] == [(0, "a"), (1, "b")]  # the line before it is kept


@pytest.mark.parametrize(
    "line, why",
    [
        (b"{not json", "malformed"),
        (b'{"payload": 1, "index": 7}', "index out of range"),
        (b'{"payload": 1, "index": -1}', "negative index"),
        (b'{"payload": 1, "task": "no.such.task"}', "unknown task"),
        (b'{"index": 1}', "no payload"),
        (b"[1, 2]", "not an object"),
    ],
)
def test_bad_line_is_invalid_item_and_the_lines_before_it_are_kept(
    batch_factory: Callable[..., Batch], line: bytes, why: str
) -> None:
    batch = batch_factory(run_count=5)
    body = ndjson([{"payload": 0}, {"payload": 1}]) + line + b"\n" + ndjson([{"payload": 3}])

    result = stream(batch, body)

    assert result.error is not None, why
    assert (result.error.code, result.error.line) == ("invalid_item", 3)
    assert [i for i, _, _ in children(batch)] == [0, 1]
    assert not result.sealed


def test_line_over_the_size_limit_is_payload_too_large(
    batch_factory: Callable[..., Batch], settings: object
) -> None:
    settings.BATCH_ITEM_MAX_BYTES = 100  # type: ignore[attr-defined]
    batch = batch_factory(run_count=3)
    body = ndjson([{"payload": "ok"}]) + ndjson([{"payload": "x" * 500}]) + ndjson([{"payload": "late"}])

    result = stream(batch, body)

    assert result.error is not None and (result.error.code, result.error.line) == ("payload_too_large", 2)
    assert [p for _, p, _ in children(batch)] == ["ok"]


def test_blank_lines_and_crlf_are_accepted(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=2)
    result = stream(batch, b'{"payload": 1}\r\n\n{"payload": 2}')
    assert result.sealed and [p for _, p, _ in children(batch)] == [1, 2]


def test_payload_with_backslashes_and_unicode_round_trips_through_copy(batch_factory: Callable[..., Batch]) -> None:
    payload = {"path": "C:\\temp\\new", "quote": '"\t\n', "emoji": "\u00e9\U0001f600", "esc": "\\u0041"}
    batch = batch_factory(run_count=2)
    body = ndjson([{"payload": payload}]) + '{"payload": "h\u00e9 \u00e9"}\n'.encode()  # raw UTF-8 too
    assert stream(batch, body).sealed
    assert [p for _, p, _ in children(batch)] == [payload, "h\u00e9 \u00e9"]


@pytest.mark.parametrize("line", [b'{"payload": "a\\u0000b"}', b'{"payload": "\\ud800"}', b'{"payload": NaN}',
                                  b'{"payload": "\xff"}'])
def test_json_that_postgres_cannot_store_is_an_invalid_item(batch_factory: Callable[..., Batch], line: bytes) -> None:
    batch = batch_factory(run_count=2)
    result = stream(batch, ndjson([{"payload": 1}]) + line + b"\n")
    assert result.error is not None and (result.error.code, result.error.line) == ("invalid_item", 2)
    assert [p for _, p, _ in children(batch)] == [1]


def test_item_task_overrides_the_batch_task(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(task="", run_count=2)
    result = stream(batch, ndjson([{"payload": 1, "task": "examples.echo"}, {"payload": 2}]))
    assert result.error is not None and result.error.line == 2  # no task for line 2
    assert Job.objects.get(batch=batch).task == "examples.echo"


def test_sealed_or_completed_batch_answers_sealed_without_reading(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=1)
    stream(batch, ndjson([{"payload": 1}]))
    Batch.objects.filter(id=batch.id).update(status="completed", sealed=False)  # seed 002's shape

    result = stream(batch, b"garbage that is never parsed\n")

    assert result.sealed and result.error is None


def test_cancelled_batch_refuses_items(batch_factory: Callable[..., Batch]) -> None:
    batch = batch_factory(run_count=2)
    assert lifecycle.cancel_batch(batch.id)
    with pytest.raises(lifecycle.BatchClosed):
        stream(batch, ndjson([{"payload": 1}]))


def test_inline_items_fill_and_seal_in_the_create_call(tenant: object) -> None:
    batch = lifecycle.create_batch(
        tenant, task="examples.echo", run_count=2, items=[{"payload": "a"}, {"payload": "b"}]  # type: ignore[arg-type]
    ).batch
    assert (batch.sealed, batch.enqueued_count, batch.status) == (True, 2, "processing")


def test_bad_inline_item_creates_nothing(tenant: object) -> None:
    with pytest.raises(intake.ItemError) as err:
        lifecycle.create_batch(tenant, task="examples.echo", run_count=2, items=[{"payload": 1}, {"nope": 1}])  # type: ignore[arg-type]
    assert err.value.line == 2
    assert not Batch.objects.exists() and not Job.objects.exists()


def test_batch_over_the_item_limit_is_refused(tenant: object, settings: object) -> None:
    settings.BATCH_MAX_ITEMS = 10  # type: ignore[attr-defined]
    with pytest.raises(lifecycle.InvalidInput):
        lifecycle.create_batch(tenant, task="examples.echo", run_count=11)  # type: ignore[arg-type]


def test_idempotent_create_returns_the_same_batch_or_conflicts(tenant: object) -> None:
    first = lifecycle.create_batch(tenant, task="examples.echo", run_count=2, idempotency_key="k")  # type: ignore[arg-type]
    again = lifecycle.create_batch(tenant, task="examples.echo", run_count=2, idempotency_key="k")  # type: ignore[arg-type]
    assert first.created and not again.created and again.batch.id == first.batch.id
    with pytest.raises(lifecycle.IdempotencyConflict):
        lifecycle.create_batch(tenant, task="examples.echo", run_count=3, idempotency_key="k")  # type: ignore[arg-type]


def test_a_long_stream_is_written_in_chunks_with_one_dispatch_each(batch_factory: Callable[..., Batch]) -> None:
    n = intake.CHUNK_ITEMS * 2 + 5
    batch = batch_factory(run_count=n)
    result = stream(batch, ndjson([{"payload": i} for i in range(n)]))
    assert result.sealed and result.enqueued_count == n
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(DISTINCT batch_index), min(batch_index), max(batch_index) FROM jobs_job WHERE batch_id = %s", [batch.id])
        assert cursor.fetchone() == (n, 0, n - 1)


@pytest.mark.django_db(transaction=True)
def test_pipelined_writer_keeps_chunks_before_a_bad_line_and_reports_it(tenant: object) -> None:
    n = intake.CHUNK_ITEMS * 3
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=n).batch  # type: ignore[arg-type]
    good = [{"payload": i} for i in range(intake.CHUNK_ITEMS * 2 + 10)]
    body = ndjson(good) + b"{oops\n" + ndjson([{"payload": "after"}])
    assert not connection.in_atomic_block  # the writer thread path

    result = stream(batch, body)

    assert result.error is not None and result.error.line == len(good) + 1
    assert Job.objects.filter(batch=batch).count() == len(good)
    assert result.enqueued_count == len(good) and not result.sealed


@pytest.mark.django_db(transaction=True)
def test_batch_cancelled_mid_stream_stops_the_stream_with_batch_closed(
    tenant: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "FLUSH_SECONDS", 3600)  # chunks by size only
    n = intake.CHUNK_ITEMS * 2
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=n).batch  # type: ignore[arg-type]

    def pieces() -> Iterator[bytes]:
        yield ndjson([{"payload": i} for i in range(intake.CHUNK_ITEMS)])
        yield ndjson([{"payload": intake.CHUNK_ITEMS}])  # the first chunk is handed to the writer
        wait_until(lambda: Job.objects.filter(batch=batch).exists(), 30, what="first chunk written")
        assert lifecycle.cancel_batch(batch.id, "cancelled mid-stream")
        yield ndjson([{"payload": i} for i in range(intake.CHUNK_ITEMS + 1, n)])

    with pytest.raises(lifecycle.BatchClosed):
        intake.add_items(batch.id, intake.read_lines(intake.LineSplitter(pieces())))
    assert set(Job.objects.filter(batch=batch).values_list("status", flat=True)) == {"cancelled"}
    assert Job.objects.filter(batch=batch).count() == intake.CHUNK_ITEMS


def test_large_items_are_written_in_chunks_bounded_by_bytes(
    batch_factory: Callable[..., Batch], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "CHUNK_BYTES", 10_000)
    writes: list[int] = []
    real = intake._Writer.write

    def counting(self: intake._Writer, items: list[intake.Item]) -> None:
        writes.append(sum(len(i.copy_row) for i in items))
        real(self, items)

    monkeypatch.setattr(intake._Writer, "write", counting)
    batch = batch_factory(run_count=20)
    result = stream(batch, ndjson([{"payload": "x" * 3000} for _ in range(20)]))

    assert result.sealed
    assert len(writes) >= 5 and max(writes) < 10_000 + 3100


def test_intake_statements_grow_with_chunks_not_with_items(
    batch_factory: Callable[..., Batch], monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(intake, "FLUSH_SECONDS", 3600)  # chunks by size only, however slow this machine

    def statements(items: int) -> int:
        batch = batch_factory(run_count=items)
        with CaptureQueriesContext(connection) as queries:
            assert stream(batch, ndjson([{"payload": i} for i in range(items)])).sealed
        return len(queries.captured_queries)

    one_item, one_chunk = statements(1), statements(intake.CHUNK_ITEMS)
    two_chunks, three_chunks = statements(2 * intake.CHUNK_ITEMS), statements(3 * intake.CHUNK_ITEMS)

    assert one_item == one_chunk
    per_chunk = two_chunks - one_chunk
    # lock, status, staging, COPY, INSERT (in a savepoint), counters, a dispatch cycle;
    # here each chunk's transaction is a savepoint of the test's
    assert per_chunk == three_chunks - two_chunks and per_chunk <= 14


@pytest.mark.django_db(transaction=True)
def test_statistics_are_refreshed_only_when_a_stream_outgrew_them(tenant: object) -> None:
    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=3000).batch  # type: ignore[arg-type]
    assert stream(batch, ndjson([{"payload": i} for i in range(3000)])).sealed  # below ANALYZE_AFTER_ROWS
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")

    assert not intake.analyze_jobs_if_stale(1000)  # a third of what the statistics know
    assert intake.analyze_jobs_if_stale(5000)  # more than the table they describe


@pytest.mark.django_db(transaction=True)
def test_a_reader_that_fails_stops_the_writer_thread(tenant: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    monkeypatch.setattr(intake, "FLUSH_SECONDS", 3600)  # chunks by size only

    batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=5000).batch  # type: ignore[arg-type]

    def pieces() -> Iterator[bytes]:
        yield ndjson([{"payload": i} for i in range(intake.CHUNK_ITEMS + 1)])
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        intake.add_items(batch.id, intake.read_lines(intake.LineSplitter(pieces())))
    assert not [t for t in threading.enumerate() if t.name == "batch-intake-writer"]
    # The chunk handed over before the failure is written; the item after it is not.
    assert Job.objects.filter(batch=batch).count() == intake.CHUNK_ITEMS
