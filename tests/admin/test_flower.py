"""Flower, as `make run` starts it (Procfile), answers only with its basic auth."""

import base64
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.workers import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_of(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def test_procfile_runs_flower_behind_basic_auth_from_the_environment() -> None:
    line = next(l for l in (ROOT / "Procfile").read_text().splitlines() if l.startswith("flower:"))
    assert "celery -A batchplatform flower" in line
    assert '--basic-auth="${FLOWER_BASIC_AUTH}"' in line


@pytest.mark.slow
def test_flower_from_the_procfile_answers_401_without_auth_and_200_with_it(tmp_path: Path) -> None:
    """`make run` is `honcho start -f Procfile`; run just its flower line, as written."""
    port = free_port()
    log = open(tmp_path / "flower.log", "w")
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "CELERY_SKIP_CHECKS": "1",
        "FLOWER_PORT": str(port), "FLOWER_BASIC_AUTH": "ops:s3cret",
    }
    proc = subprocess.Popen(
        [str(Path(bin_dir) / "honcho"), "start", "-f", "Procfile", "flower"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until(lambda: status_of(url) or proc.poll() is not None, timeout=60, interval=0.2, what="flower up")
        assert proc.poll() is None, (tmp_path / "flower.log").read_text()[-3000:]
        assert status_of(url) == 401
        assert status_of(url, "ops:wrong") == 401
        assert status_of(url, "ops:s3cret") == 200
        assert status_of(url + "api/workers", "ops:s3cret") == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
