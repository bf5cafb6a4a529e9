import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

from jobs.models import Tenant
from tests.workers import Worker


@pytest.fixture
def tenant_factory(db: None) -> Callable[..., Tenant]:
    counter = iter(range(10**6))

    def make(**overrides: Any) -> Tenant:
        fields: dict[str, Any] = {"slug": f"tenant-{next(counter)}"}
        fields.update(overrides)
        return Tenant.objects.create(**fields)

    return make


@pytest.fixture
def tenant(tenant_factory: Callable[..., Tenant]) -> Tenant:
    return tenant_factory(slug="acme")


@pytest.fixture(scope="session")
def broker() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    yield client
    prefix = settings.BROKER_KEY_PREFIX
    assert prefix.startswith("bptest-"), "refusing to clean keys outside the test prefix"
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        client.delete(key)


def purge_queues(client: redis.Redis) -> None:
    """Delete this session's broker keys (messages of earlier tests)."""
    for key in client.scan_iter(match=f"{settings.BROKER_KEY_PREFIX}*", count=1000):
        client.delete(key)


@pytest.fixture
def worker_factory(transactional_db: None, broker: redis.Redis) -> Iterator[Callable[..., Worker]]:
    """Start real `celery worker` processes against the test database.

    Torn down (SIGKILL) before the database is flushed, so no worker writes into the
    next test.
    """
    purge_queues(broker)
    started: list[Worker] = []
    database_name = connection.settings_dict["NAME"]

    def start(wait: bool = True, **kwargs: Any) -> Worker:
        worker = Worker(database_name, **kwargs)
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.stop()
    if os.environ.get("BPTEST_SHOW_WORKER_LOGS"):
        for worker in started:
            print(f"--- {worker.hostname}\n{worker.log()[-3000:]}")
    purge_queues(broker)
