"""A plain Celery chord for the batch benchmark's baseline: the same broker, JSON,
acks_late and prefetch 1 as ours, with Celery's Redis result backend doing the
chord counting (its standard implementation)."""

import os
import time

import redis
from celery import Celery

PREFIX = os.environ.get("BENCH_CHORD_PREFIX", "bpbench-chord:")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("chordbench", set_as_current=False)  # never the process's current app
app.conf.update(
    broker_url=REDIS_URL,
    result_backend=REDIS_URL,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"global_keyprefix": PREFIX},
    result_backend_transport_options={"global_keyprefix": PREFIX},
    result_expires=600,
    task_default_queue="chord",
    worker_hijack_root_logger=False,
)
_redis = redis.Redis.from_url(REDIS_URL)


@app.task(name="chord.noop")
def noop(i: int) -> int:
    return i


@app.task(name="chord.done")
def done(results: list[int]) -> None:
    _redis.set(f"{PREFIX}done", f"{time.time()} {len(results)}")
