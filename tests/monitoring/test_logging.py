"""Structured logs: one JSON object per line, with job, batch and tenant ids."""

import io
import json
import logging
from collections.abc import Callable, Iterator

import pytest

from jobs import lifecycle, sweeper
from jobs.logging import JsonFormatter
from jobs.models import Job, Tenant
from tests.workers import Worker, wait_until


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    engine = logging.getLogger("jobs")
    old_level = engine.level
    engine.addHandler(handler)
    engine.setLevel(logging.INFO)
    yield stream
    engine.removeHandler(handler)
    engine.setLevel(old_level)


def entries(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.django_db
def test_transitions_and_repairs_log_one_json_object_per_line_with_ids(json_log: io.StringIO, tenant: Tenant) -> None:
    job = lifecycle.submit(tenant, "examples.echo", 1).job
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, "w")
    assert attempt is not None and lifecycle.succeed(job.id, attempt.lease_token, 1).won
    job.executions.update(status="running", finished_at=None)
    sweeper.sweep()

    logged = entries(json_log)  # every line parses
    by_event = {e.get("event"): e for e in logged}
    for event in ("job_submitted", "job_succeeded", "job_repaired"):
        entry = by_event[event]
        assert entry["job"] == str(job.id) and entry["tenant"] == str(tenant.id), entry
        assert "batch" in entry and entry["level"] == "INFO"
    assert by_event["job_repaired"]["reason"] == "execution_left_running"


def test_reserved_keys_in_fields_do_not_overwrite_the_record() -> None:
    record = logging.LogRecord("jobs.x", logging.WARNING, __file__, 1, "thing %s", ("happened",), None)
    record.fields = {"message": "field", "job": "j1"}
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "thing happened" and entry["field_message"] == "field"
    assert entry["job"] == "j1" and entry["batch"] is None and entry["tenant"] is None


@pytest.mark.slow
def test_a_worker_with_log_format_json_writes_json_lines_with_the_job_ids(
    worker_factory: Callable[..., Worker], tenant: Tenant
) -> None:
    worker = worker_factory(env={"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"})
    job = lifecycle.submit(tenant, "examples.echo", 1).job
    wait_until(lambda: Job.objects.get(id=job.id).status == "succeeded", what="job to succeed")

    def succeeded_line() -> dict[str, object] | None:
        for line in worker.log().splitlines():
            if line.startswith("{"):
                entry = json.loads(line)
                if entry.get("event") == "job_succeeded":
                    return entry
        return None

    entry = wait_until(succeeded_line, what="the job_succeeded log line")
    assert entry["job"] == str(job.id) and entry["tenant"] == str(tenant.id)  # type: ignore[index]
    logged = [line for line in worker.log().splitlines() if line.startswith("{")]
    assert all(isinstance(json.loads(line), dict) for line in logged)
