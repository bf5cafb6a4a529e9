import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from batches import intake, lifecycle
from batches.models import Batch
from jobs.models import Tenant
# The API clients are the API tests' own fixtures, shared rather than copied.
from tests.api.conftest import ApiClient, api, make_client, other_api  # noqa: F401
from tests.workers import ROOT, wait_until


def ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def stream(batch: Batch, body: bytes) -> intake.IntakeResult:
    pieces = [body[i:i + 7] for i in range(0, len(body), 7)]  # lines split across pieces
    return intake.add_items(batch.id, intake.read_lines(intake.LineSplitter(pieces)))


@pytest.fixture
def batch_factory(tenant: Tenant) -> Callable[..., Batch]:
    def make(**overrides: Any) -> Batch:
        owner = overrides.pop("tenant", tenant)
        fields: dict[str, Any] = {"task": "examples.echo", "run_count": 3}
        fields.update(overrides)
        return lifecycle.create_batch(owner, **fields).batch

    return make


TASK_MODULES = "jobs.examples,batches.examples,tests.tasks,tests.batches.tasks"


class Gunicorn:
    """`gunicorn batchplatform.wsgi` against the test database (it de-chunks bodies)."""

    def __init__(self, database_name: str):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        env = dict(os.environ)
        env["DATABASE_URL"] = env["DATABASE_URL"].rsplit("/", 1)[0] + "/" + database_name
        env.update(TASK_MODULES=TASK_MODULES, PYTHONUNBUFFERED="1")
        self.log = open(Path(tempfile.gettempdir()) / f"bptest-gunicorn-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "batchplatform.wsgi", "-b", f"127.0.0.1:{self.port}",
             "-w", "1", "--timeout", "120"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_until(self._ready, 30, what="gunicorn ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "gunicorn exited"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def gunicorn(transactional_db: None) -> Iterator[Gunicorn]:
    server = Gunicorn(connection.settings_dict["NAME"])
    yield server
    server.stop()


def post_stream(
    port: int, path: str, key: str, body: Iterable[bytes], *, chunked: bool, length: int | None = None
) -> tuple[int, Any]:
    """POST an NDJSON body piece by piece (the iterable may sleep or wait between
    pieces): chunked, or with a declared Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    if not chunked:
        headers["Content-Length"] = str(length)
    conn.request("POST", path, body=iter(body), headers=headers, encode_chunked=chunked)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data)
