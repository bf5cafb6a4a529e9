import io
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.db.models.functions import Now
from django.test import Client

import tests.monitoring.tasks  # noqa: F401  (registers monitoring.nap in this process)
from jobs.models import Job, JobEvent
from tests.monitoring.tasks import effect_key
from tests.workers import Worker

WORKER_TASK_MODULES = os.environ["TASK_MODULES"] + ",tests.monitoring.tasks"


@pytest.fixture
def monitored_worker(worker_factory: Callable[..., Worker]) -> Callable[..., Worker]:
    """worker_factory, with the monitoring test tasks loaded in the worker."""

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> Worker:
        return worker_factory(env={"TASK_MODULES": WORKER_TASK_MODULES, **(env or {})}, **kwargs)

    return start


def queue_key() -> str:
    return settings.BROKER_KEY_PREFIX + settings.CELERY_DEFAULT_QUEUE


def effects(client: redis.Redis, job: Job, attempts: int = 4) -> dict[int, int]:
    counts = {a: client.get(effect_key(job.id, a)) for a in range(1, attempts + 1)}
    return {a: int(v) for a, v in counts.items() if v is not None}


def monitor(*args: str) -> tuple[int, str]:
    """`manage.py monitor_jobs` in this process: (exit code, output)."""
    out = io.StringIO()
    try:
        call_command("monitor_jobs", *args, stdout=out, no_color=True)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue()


def monitor_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out = monitor("--json", *args)
    return code, json.loads(out)


def place_count(report: dict[str, Any], name: str) -> tuple[int, str | None]:
    place = next(p for p in report["places"] if p["name"] == name)
    return place["count"], place["oldest_id"]


def health() -> tuple[int, dict[str, Any]]:
    response = Client().get("/health/jobs")
    return response.status_code, response.json()


def repairs(job: Job, reason: str | None = None) -> int:
    qs = JobEvent.objects.filter(job_id=job.id, type="repaired")
    return qs.filter(message=reason).count() if reason else qs.count()


def db_past(job: Job, column: str, extra_seconds: float = 0.0) -> bool:
    """True once the job's `column` lies more than `extra_seconds` in the database's past."""
    from datetime import timedelta

    from django.db.models import ExpressionWrapper, F, DateTimeField

    shifted = ExpressionWrapper(F(column) + timedelta(seconds=extra_seconds), output_field=DateTimeField())
    return Job.objects.filter(id=job.id).annotate(t=shifted).filter(t__lt=Now()).exists()


@pytest.fixture
def places_restored() -> Iterator[None]:
    from jobs import sweeper

    saved = list(sweeper.PLACES)
    yield
    sweeper.PLACES[:] = saved
