"""Plain Celery, configured like ours (JSON, acks_late, prefetch 1), for baselines.

Each task records its start time in Redis so the benchmark can see when it ran.
"""

import os
import time

import redis
from celery import Celery

PREFIX = os.environ.get("BENCH_PLAIN_PREFIX", "bpbench-plain:")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("plain", set_as_current=False)  # never the process's current app
app.conf.update(
    broker_url=REDIS_URL,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    broker_transport_options={"global_keyprefix": PREFIX},
    task_default_queue="plain",
    worker_hijack_root_logger=False,
)
_redis = redis.Redis.from_url(REDIS_URL)


@app.task(name="plain.noop")
def noop(tag: str = "bulk") -> None:
    _redis.incr(f"{PREFIX}done:{tag}")


@app.task(name="plain.stamp")
def stamp(sent_at: float) -> None:
    _redis.rpush(f"{PREFIX}latency", time.time() - sent_at)
