"""`make run` is `honcho start -f Procfile` after migrate and the demo set-up: run the
whole Procfile (web under gunicorn, worker, beat, Flower) against the test database,
submit a job over HTTP and see it succeed."""

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from jobs.models import ApiKey, Tenant
from tests.admin.test_flower import free_port, status_of
from tests.workers import wait_until

ROOT = Path(__file__).resolve().parent.parent


def call(method: str, url: str, key: str, body: object = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_the_procfile_serves_the_api_runs_jobs_and_flower(
    transactional_db: None, tenant_factory: Callable[..., Tenant], tmp_path: Path
) -> None:
    tenant = tenant_factory(slug="demo")
    _, key = ApiKey.generate(tenant)
    web_port, flower_port = free_port(), free_port()
    bin_dir = str(Path(sys.executable).parent)
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    (ROOT / ".run").mkdir(exist_ok=True)
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "CELERY_SKIP_CHECKS": "1",
        "DATABASE_URL": f"{base}/{connection.settings_dict['NAME']}", "DJANGO_DEBUG": "0",
        "PORT": str(web_port), "FLOWER_PORT": str(flower_port), "FLOWER_BASIC_AUTH": "ops:s3cret",
    }
    log = open(tmp_path / "honcho.log", "w")
    proc = subprocess.Popen(
        [str(Path(bin_dir) / "honcho"), "start", "-f", "Procfile"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    web = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: status_of(web + "/health/ready") == 200, 60, interval=0.5, what="web ready")
        status, job = call("POST", web + "/api/v1/jobs", key, {"task": "examples.echo", "payload": {"hi": 1}})
        assert status == 201, job

        def finished() -> dict | None:
            _, body = call("GET", f"{web}/api/v1/jobs/{job['id']}", key)
            return body if body.get("status") == "succeeded" else None

        done = wait_until(finished, 60, interval=0.3, what="the job to run on the Procfile's worker")
        assert done["result"] == {"hi": 1}  # type: ignore[index]
        flower = f"http://127.0.0.1:{flower_port}/"
        wait_until(lambda: status_of(flower, "ops:s3cret") == 200, 60, interval=0.5, what="flower")
        assert status_of(flower) == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
