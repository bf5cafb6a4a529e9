"""Fixtures of the fault suite: our own Redis server, TCP proxies, broker switching.

Never touches the machine's Redis server process: tests that restart or stall Redis
start their own `redis-server` on a free port as a subprocess (own process group).
"""

import contextlib
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings
from django.db import connection

import tests.faults.tasks  # noqa: F401  (registers the fault handlers in this process too)
from batchplatform.celery import app
from jobs.models import Job
from tests.faults.proxy import Proxy, free_port
from tests.workers import Worker, wait_until

FAULT_TASK_MODULES = "jobs.examples,batches.examples,tests.tasks,tests.faults.tasks"
FAULT_ENV = {"TASK_MODULES": FAULT_TASK_MODULES}


class RedisServer:
    """`redis-server` without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="bptest-redis-")

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        client = redis.Redis.from_url(self.url)
        wait_until(lambda: self._ping(client), 10, what=f"redis-server on {self.port}")
        return self

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@pytest.fixture(autouse=True)
def _remove_pid_files() -> Iterator[None]:
    """tests.faults.tasks leaves one small file per attempt: remove this test's."""
    before = set(Path(tempfile.gettempdir()).glob("bptest-faults-pid-*"))
    yield
    for path in set(Path(tempfile.gettempdir()).glob("bptest-faults-pid-*")) - before:
        path.unlink(missing_ok=True)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.kill()


@pytest.fixture
def proxies() -> Iterator[Callable[[str, int], Proxy]]:
    started: list[Proxy] = []

    def make(host: str, port: int) -> Proxy:
        proxy = Proxy(host, port)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


@contextlib.contextmanager
def use_broker(url: str) -> Iterator[None]:
    """Publish from this test process to `url` (the workers' broker) for a while."""
    old = app.conf.broker_url
    app.conf.broker_url = url
    app._after_fork()  # drop the cached connection and producer pools
    try:
        yield
    finally:
        app.conf.broker_url = old
        app._after_fork()


def fault_worker(factory: Callable[..., Worker], env: dict[str, str] | None = None, **kwargs: Any) -> Worker:
    return factory(env={**FAULT_ENV, **(env or {})}, **kwargs)


def database_url_via(port: int) -> str:
    """The test database's URL through a proxy listening on `port`."""
    s = connection.settings_dict
    return f"postgres://{s['USER']}@127.0.0.1:{port}/{s['NAME']}"


def wait_status(job_id: object, *statuses: str, timeout: float = 60) -> Job:
    wait_for(
        lambda: Job.objects.filter(id=job_id, status__in=statuses).exists(),
        timeout, what=f"job {job_id} to reach {statuses}",
    )
    return Job.objects.get(id=job_id)


def wait_all(ids: list[Any], *statuses: str, timeout: float = 90) -> None:
    wait_for(
        lambda: Job.objects.filter(id__in=ids, status__in=statuses).count() == len(ids),
        timeout, what=f"{len(ids)} jobs to reach {statuses}",
    )


def queue_key() -> str:
    return settings.BROKER_KEY_PREFIX + settings.CELERY_DEFAULT_QUEUE


def state_dump() -> str:
    """Jobs, batches and recent events by status: appended to a timeout's message."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT task, status, attempts, stalled_count, count(*) FROM jobs_job GROUP BY 1, 2, 3, 4")
        jobs = cursor.fetchall()
        cursor.execute("SELECT status, sealed, run_count, enqueued_count, completed_count FROM batches_batch")
        batches = cursor.fetchall()
        cursor.execute("SELECT type, count(*) FROM jobs_jobevent GROUP BY 1")
        events = cursor.fetchall()
    return f"jobs={jobs} batches={batches} events={events}"


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "") -> object:
    try:
        return wait_until(predicate, timeout, interval=0.1, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {state_dump()}") from None
