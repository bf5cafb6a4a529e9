"""The run commands and deployment files stay valid."""

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_docker_compose_file_is_valid() -> None:
    assert shutil.which("docker-compose"), "install Debian's docker-compose (.ci/run does)"
    env = dict(os.environ, DJANGO_SECRET_KEY="x" * 50, FLOWER_BASIC_AUTH="ops:secret")
    result = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_runs_the_same_processes_as_make_run() -> None:
    env = dict(os.environ, DJANGO_SECRET_KEY="x" * 50, FLOWER_BASIC_AUTH="ops:secret")
    services = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yaml", "config", "--services"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    ).stdout.split()
    procfile = {line.split(":", 1)[0] for line in (ROOT / "Procfile").read_text().splitlines() if ":" in line}
    assert procfile == {"web", "worker", "beat", "flower"}
    assert procfile | {"postgres", "redis"} <= set(services)


def test_celery_never_accepts_pickle() -> None:
    from batchplatform.celery import app

    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == app.conf.result_serializer == "json"
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
