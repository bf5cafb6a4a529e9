"""Production serving: gunicorn (as the Procfile runs it) and `check --deploy`."""

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.db import connection

from jobs.models import ApiKey, Job, Tenant
from tests.workers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def production_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_DEBUG", None)
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,api.example.com",
        **extra,
    )
    return env


def test_check_deploy_reports_no_warnings_with_production_settings() -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=production_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNINGS" not in result.stdout + result.stderr
    assert "no issues" in result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn(transactional_db: None) -> Iterator[int]:
    """`gunicorn batchplatform.wsgi` (the Procfile's web process) against the test database."""
    port = free_port()
    base = os.environ["DATABASE_URL"].rsplit("/", 1)[0]
    log = tempfile.NamedTemporaryFile("w+", prefix="bptest-gunicorn-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "batchplatform.wsgi", "--bind", f"127.0.0.1:{port}",
         "--workers", "1", "--access-logfile", "-"],
        cwd=ROOT, env=production_env(DATABASE_URL=f"{base}/{connection.settings_dict['NAME']}"),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )

    def listening() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {Path(log.name).read_text()[-3000:]}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(listening, 60, what="gunicorn to listen")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(log.name)


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
         chunks: list[bytes] | None = None) -> tuple[int, dict, object]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        if chunks is not None:
            conn.putrequest(method, path)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            for chunk in chunks:
                conn.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        raw = response.read()
        content_type = response.getheader("Content-Type", "")
        data = json.loads(raw) if "json" in content_type else raw
        return response.status, dict(response.getheaders()), data
    finally:
        conn.close()


@pytest.mark.slow
def test_gunicorn_serves_health_the_api_docs_and_chunked_bodies(gunicorn: int, tenant: Tenant) -> None:
    _, key = ApiKey.generate(tenant)
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    assert call(gunicorn, "GET", "/health/")[::2] == (200, {"status": "ok"})
    status, _, body = call(gunicorn, "GET", "/health/ready")
    assert (status, body["failed"]) == (200, [])

    status, _, job = call(gunicorn, "POST", "/api/v1/jobs", json.dumps({"task": "examples.echo", "payload": [1]}).encode(), auth)
    assert status == 201, job
    status, _, fetched = call(gunicorn, "GET", f"/api/v1/jobs/{job['id']}", headers=auth)
    assert (status, fetched["payload"]) == (200, [1])

    # A chunked body (no Content-Length) is read, and refused past the limit.
    pieces = [b'{"task": "examples.echo", ', b'"payload": {"chunked": true}}']
    status, _, chunked = call(gunicorn, "POST", "/api/v1/jobs", headers=auth, chunks=pieces)
    assert (status, chunked.get("payload")) == (201, {"chunked": True}), chunked
    huge = [b'{"task": "examples.echo", "payload": "'] + [b"x" * 65536] * 20 + [b'"}']
    status, _, refused = call(gunicorn, "POST", "/api/v1/jobs", headers=auth, chunks=huge)
    assert (status, refused["error"]["code"]) == (413, "payload_too_large")
    assert Job.objects.filter(tenant=tenant).count() == 2

    # Errors stay JSON in production: an unknown path, no key.
    status, _, missing = call(gunicorn, "GET", "/api/v1/nothing-here")
    assert (status, missing["error"]["code"]) == (404, "not_found")
    status, headers, unauth = call(gunicorn, "GET", "/api/v1/jobs")
    assert (status, unauth["error"]["code"], headers.get("WWW-Authenticate")) == (401, "unauthenticated", "Bearer")

    # The docs page and its bundled assets, with no CDN.
    status, _, page = call(gunicorn, "GET", "/api/docs/")
    assert status == 200 and b"swagger-ui" in page
    status, _, asset = call(gunicorn, "GET", "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert status == 200 and len(asset) > 100_000
    status, _, schema = call(gunicorn, "GET", "/api/schema/?format=json")
    assert status == 200 and "/api/v1/jobs" in schema["paths"]
