"""`monitor_jobs`, `recover_jobs` and `/health/jobs` on healthy and stuck systems."""

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection

from jobs import lifecycle, sweeper
from jobs.models import Job, Tenant
from tests.monitoring.conftest import health, monitor, monitor_json, place_count
from tests.workers import ROOT


def manage(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, against this test's database."""
    env = dict(os.environ)
    base = env["DATABASE_URL"].rsplit("/", 1)[0]
    env["DATABASE_URL"] = f"{base}/{connection.settings_dict['NAME']}"
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def leave_execution_open(tenant: Tenant) -> Job:
    """A finished job whose execution's closing write never happened."""
    job = lifecycle.submit(tenant, "examples.echo", 1).job
    job.refresh_from_db()
    attempt = lifecycle.start(job.id, job.dispatch_token, "w")
    assert attempt is not None and lifecycle.succeed(job.id, attempt.lease_token, 1).won
    job.executions.update(status="running", finished_at=None)
    return job


@pytest.mark.slow  # a dozen real `manage.py` processes
@pytest.mark.django_db(transaction=True)
def test_monitor_jobs_exits_0_when_healthy_and_1_with_stuck_work(tenant_factory: Callable[..., Tenant]) -> None:
    acme, other = tenant_factory(slug="acme"), tenant_factory(slug="other")
    lifecycle.submit(acme, "examples.echo", 1, delay_seconds=600)  # waiting for its time: not stuck

    healthy = manage("monitor_jobs")
    assert healthy.returncode == 0, healthy.stderr
    assert "OK: nothing stuck." in healthy.stdout
    assert "acme" in healthy.stdout

    job = leave_execution_open(acme)
    stuck = manage("monitor_jobs")
    print(stuck.stdout)  # shown in the issue note
    assert stuck.returncode == 1, stuck.stderr
    assert "STUCK: 1 item(s) in 1 place(s): execution_left_running" in stuck.stdout
    [line] = [x for x in stuck.stdout.splitlines() if "execution_left_running " in x]
    assert line.split() == ["!!", "execution_left_running", "1", "oldest:", str(job.id)]
    for place in sweeper.PLACES:
        assert place.name in stuck.stdout

    as_json = manage("monitor_jobs", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["healthy"] is False and report["stuck_jobs"] == 1
    assert place_count(report, "execution_left_running") == (1, str(job.id))

    assert manage("monitor_jobs", "--tenant", "other").returncode == 0  # other's jobs are fine
    assert manage("monitor_jobs", "--tenant", "nope").returncode != 0

    dry = manage("recover_jobs", "--dry-run")
    assert dry.returncode == 0 and "execution_left_running: would move 1" in dry.stdout
    assert manage("monitor_jobs").returncode == 1  # a dry run moved nothing
    recovered = manage("recover_jobs", "--tenant", "acme")
    assert recovered.returncode == 0 and "execution_left_running: moved 1" in recovered.stdout
    assert manage("monitor_jobs").returncode == 0
    assert "Nothing stuck: moved nothing." in manage("recover_jobs").stdout
    assert other.jobs.count() == 0


@pytest.mark.django_db
def test_monitor_jobs_counts_by_status_per_tenant_with_the_oldest_running_age(
    tenant_factory: Callable[..., Tenant],
) -> None:
    acme = tenant_factory(slug="acme")
    running = lifecycle.submit(acme, "examples.echo", 1).job
    running.refresh_from_db()
    lifecycle.start(running.id, running.dispatch_token, "w")
    lifecycle.submit(acme, "examples.echo", 2, delay_seconds=600)

    code, report = monitor_json("--tenant", "acme")
    assert code == 0
    [row] = report["tenants"]
    assert row["slug"] == "acme"
    assert row["counts"]["running"] == 1 and row["counts"]["queued"] == 1
    assert row["oldest_running_id"] == str(running.id) and row["oldest_running_seconds"] >= 0
    code, text = monitor()
    assert "acme" in text and str(running.id) in text and "OK: nothing stuck." in text


@pytest.mark.django_db
def test_health_jobs_has_one_count_per_place_and_no_ids(tenant: Tenant) -> None:
    status, body = health()
    assert status == 200
    assert body == {"healthy": True, "stuck_jobs": 0, "stuck": {p.name: 0 for p in sweeper.PLACES}}

    job = leave_execution_open(tenant)
    status, body = health()
    assert status == 503 and body["stuck"]["execution_left_running"] == 1 and body["stuck_jobs"] == 1
    assert str(job.id) not in json.dumps(body)


@pytest.fixture
def extra_place(places_restored: None) -> Iterator[list[tuple[object, ...]]]:
    """A place registered the way batches registers its own."""
    rows: list[tuple[object, ...]] = []
    sweeper.register_place(sweeper.Place("extra_place", lambda tenant_id: list(rows), lambda row: rows.remove(row) is None))
    yield rows


@pytest.mark.django_db
def test_every_registered_place_is_listed_counted_and_swept(extra_place: list[tuple[object, ...]]) -> None:
    assert health()[1]["stuck"]["extra_place"] == 0
    extra_place.append(("thing-1",))
    code, text = monitor()
    assert code == 1 and "extra_place" in text and "thing-1" in text
    assert health()[1]["stuck"]["extra_place"] == 1
    assert sweeper.sweep().moved == {"extra_place": ["thing-1"]}
    assert monitor()[0] == 0


@pytest.mark.django_db
def test_a_place_that_fails_is_reported_and_does_not_stop_the_sweep(
    places_restored: None, tenant: Tenant
) -> None:
    def broken(tenant_id: Any) -> list[tuple[object, ...]]:
        raise RuntimeError("boom")

    sweeper.PLACES.insert(0, sweeper.Place("broken_place", broken, lambda row: True))
    job = leave_execution_open(tenant)
    report = sweeper.sweep()
    assert report.errors == {"broken_place": "RuntimeError: boom"}
    assert report.moved["execution_left_running"]
    status, body = health()
    assert status == 503 and body["stuck"]["broken_place"] is None
    code, text = monitor()
    assert code == 1 and "broken_place" in text and "ERROR" in text
    assert job.events.filter(type="repaired").count() == 1


@pytest.mark.django_db(transaction=True)
def test_broker_backlog_and_dead_letters_are_shown_but_are_not_stuck(tenant: Tenant, broker: Any) -> None:
    from tests.conftest import purge_queues

    purge_queues(broker)
    lifecycle.submit(tenant, "examples.echo", 1)  # no worker: its message waits in Redis
    dead = lifecycle.submit(tenant, "examples.echo", 2).job
    dead.refresh_from_db()
    attempt = lifecycle.start(dead.id, dead.dispatch_token, "w")
    assert attempt is not None
    lifecycle.fail(dead.id, attempt.lease_token, attempt=1, max_attempts=1, error=lifecycle.error_dict("E", "x"))

    code, report = monitor_json()
    assert code == 0  # monitoring only: a backlog or a failed job is not stuck work
    assert report["broker_backlog"]["batchplatform"] == 2
    assert report["dead_letters"] == 1
    code, text = monitor()
    assert "Broker backlog (messages waiting): batchplatform=2" in text
    assert "Dead letters (failed jobs an operator may requeue): 1" in text
    purge_queues(broker)


@pytest.mark.django_db
def test_an_unreachable_broker_shows_as_unknown_backlog_not_as_a_crash(tenant: Tenant, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    code, report = monitor_json()
    assert code == 0 and report["broker_backlog"] == {"batchplatform": None}
    code, text = monitor()
    assert "batchplatform=?" in text


@pytest.mark.django_db
def test_the_oldest_ready_queued_job_shows_how_long_work_has_waited(tenant_factory: Callable[..., Tenant]) -> None:
    full = tenant_factory(slug="full", concurrency_limit=1)
    lifecycle.submit(full, "examples.echo", 1)
    waiting = lifecycle.submit(full, "examples.echo", 2).job  # over the limit: queued
    Job.objects.filter(id=waiting.id).update(run_at=waiting.run_at - timedelta(minutes=10))

    code, report = monitor_json("--tenant", "full")
    assert code == 0  # a full tenant's backlog is waiting for capacity, not stuck
    assert 590 < report["tenants"][0]["oldest_ready_queued_seconds"] < 3600
