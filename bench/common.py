"""Shared set-up for benchmarks: a private database and broker prefix, workers.

Import this module first: it sets the environment before Django loads.
"""

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BENCH_DB = os.environ.get("BENCH_DATABASE", "bp_bench")
_base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/batchplatform").rsplit("/", 1)[0]
os.environ.update(
    DATABASE_URL=f"{_base}/{BENCH_DB}",
    DJANGO_SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "bench-only-secret-key-" + "x" * 40),
    DJANGO_SETTINGS_MODULE="batchplatform.settings",
    BROKER_KEY_PREFIX=f"bpbench-{uuid.uuid4().hex[:8]}:",
    BENCH_PLAIN_PREFIX=f"bpbench-plain-{uuid.uuid4().hex[:8]}:",
    JOB_LEASE_SECONDS=os.environ.get("JOB_LEASE_SECONDS", "2"),
    JOB_LEASE_RENEW_SECONDS=os.environ.get("JOB_LEASE_RENEW_SECONDS", "0.5"),
    STALLED_INTERVAL_SECONDS=os.environ.get("STALLED_INTERVAL_SECONDS", "0.5"),
    DISPATCH_INTERVAL_SECONDS=os.environ.get("DISPATCH_INTERVAL_SECONDS", "0.25"),
    LOG_LEVEL="WARNING",
)


def prepare_database() -> None:
    """Create (or recreate) the benchmark's own database and migrate it."""
    import psycopg

    with psycopg.connect(f"{_base}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{BENCH_DB}"')
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True, env=os.environ
    )


def setup_django() -> None:
    import django

    django.setup()


def reset_tables() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE jobs_jobevent, jobs_execution, jobs_job, batches_batch, batches_waitpoint, "
            "jobs_dispatchcursor, jobs_apikey, jobs_tenant CASCADE"
        )


def purge_broker() -> None:
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(settings.REDIS_URL)
    for prefix in (settings.BROKER_KEY_PREFIX, os.environ["BENCH_PLAIN_PREFIX"]):
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)


def start_worker(**kwargs: object) -> "object":
    from tests.workers import Worker

    return Worker(BENCH_DB, **kwargs).wait_ready(60)  # type: ignore[arg-type]


def start_plain_worker(concurrency: int = 2) -> subprocess.Popen:
    log = open(f"/tmp/bpbench-plain-{uuid.uuid4().hex[:6]}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.plain_app", "worker", "-c", str(concurrency),
         "-l", "warning", "--without-mingle", "--without-gossip", "-n", f"plain{uuid.uuid4().hex[:6]}@bench"],
        cwd=ROOT, env=os.environ, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    time.sleep(4)  # plain Celery has no readiness row to poll; its boot takes ~2 s here
    return proc


def stop(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def jain(values: list[float]) -> float:
    return sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values)
