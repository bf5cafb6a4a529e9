"""Soak: a 10,000-item batch and a stream of single jobs across several tenants, while
a chaos loop SIGKILLs a random worker every few seconds. Prints the invariants of
ARCHITECTURE.md and the time to finish. Not part of CI: `make soak`.

    make soak                                   # defaults below
    .venv/bin/python scripts/soak.py --items 10000 --tenants 4 --workers 3 --kill-every 5

Uses its own database (SOAK_DATABASE_URL, default .../bp_soak), which it empties
first, and a private Redis key prefix it deletes at the end. Exit status 0 only if
every item finished and every invariant holds.
"""

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SOAK_ENV = {
    "DJANGO_SETTINGS_MODULE": "batchplatform.settings",
    "DJANGO_SECRET_KEY": "soak-only-secret-key-" + "x" * 40,
    "DATABASE_URL": os.environ.get("SOAK_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bp_soak"),
    "BROKER_KEY_PREFIX": f"soak-{uuid.uuid4().hex[:10]}:",
    # Short deadlines so recovery is visible within a soak; production uses longer ones.
    "JOB_LEASE_SECONDS": "4",
    "JOB_LEASE_RENEW_SECONDS": "1",
    "STALLED_INTERVAL_SECONDS": "1",
    "DISPATCH_INTERVAL_SECONDS": "0.5",
    "DISPATCH_DEADLINE_SECONDS": "6",
    "JOB_RETRY_BASE_SECONDS": "0.5",
    "JOB_RETRY_MAX_SECONDS": "5",
    # A killed worker may be killed again before its jobs finish: allow a few stalls.
    "MAX_STALLED_COUNT": "5",
    "JOB_MAX_ATTEMPTS_DEFAULT": "5",
    "LOG_LEVEL": "WARNING",
    "CELERY_TASK_EVENTS": "0",
}
for _key, _value in SOAK_ENV.items():
    # Never DATABASE_URL from the environment: the soak empties its database.
    if _key in ("BROKER_KEY_PREFIX", "DATABASE_URL"):
        os.environ[_key] = _value
    else:
        os.environ.setdefault(_key, _value)

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from batches import intake  # noqa: E402
from batches import lifecycle as batches  # noqa: E402
from batches.models import Batch  # noqa: E402
from jobs import lifecycle  # noqa: E402
from jobs.models import Job, Tenant  # noqa: E402
from tests.faults.invariants import check  # noqa: E402
from tests.workers import Worker  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare_database() -> str:
    name = connection.settings_dict["NAME"]
    if "soak" not in name:
        sys.exit(f"refusing to empty database {name!r}: the soak's database name must contain 'soak'")
    os.system(f"{sys.executable} {ROOT / 'scripts' / 'ensure_db.py'}")
    call_command("migrate", interactive=False, verbosity=0)
    call_command("flush", interactive=False, verbosity=0)
    return name


def submit_work(items: int, tenants: list[Tenant], singles: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """One batch of `items` children for the first tenant, streamed as NDJSON; `singles`
    single jobs spread over the others."""
    import json

    batch = batches.create_batch(tenants[0], task="examples.sleep", run_count=items).batch
    body = b"".join(
        json.dumps({"payload": {"seconds": random.choice([0, 0.01, 0.05, 0.2]), "value": i}}).encode() + b"\n"
        for i in range(items)
    )
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    result = intake.add_items(batch.id, intake.read_lines(intake.LineSplitter(chunks)))
    assert result.sealed, result
    jobs = []
    others = tenants[1:] or tenants
    for i in range(singles):
        seconds = random.choice([0, 0.05, 0.5, 2])
        jobs.append(lifecycle.submit(others[i % len(others)], "examples.sleep", {"seconds": seconds}).job.id)
    return [batch.id], jobs


def unfinished() -> int:
    return Job.objects.filter(status__in=["queued", "dispatched", "running", "waiting"]).count() + Batch.objects.filter(
        status__in=["pending", "processing"]
    ).count()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=1_000, help="single jobs over the other tenants")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--kill-every", type=float, default=5.0, help="seconds between SIGKILLs")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()

    database = prepare_database()
    log(f"database {database}, broker prefix {settings.BROKER_KEY_PREFIX}")
    tenants = [Tenant.objects.create(slug=f"soak-{i}", concurrency_limit=8) for i in range(args.tenants)]

    env = {k: os.environ[k] for k in SOAK_ENV if k in os.environ}
    workers: list[Worker] = []
    kills = restarts_same_name = 0

    beats: dict[str, bool] = {}

    def start(name: str | None = None, beat: bool = False) -> Worker:
        worker = Worker(database, name=name, concurrency=args.concurrency, beat=beat, env=env)
        workers.append(worker)
        beats[worker.logfile.name] = beat
        return worker

    live = [start(beat=(i < 2)) for i in range(args.workers)]  # two beats: two sweepers racing
    for worker in live:
        worker.wait_ready(60)
    t0 = time.monotonic()
    batch_ids, job_ids = submit_work(args.items, tenants, args.singles)
    log(f"submitted a {args.items}-item batch and {args.singles} single jobs over {args.tenants} tenants "
        f"in {time.monotonic() - t0:.1f}s")

    next_kill = time.monotonic() + args.kill_every
    try:
        while unfinished():
            if time.monotonic() - t0 > args.timeout:
                log(f"timed out with {unfinished()} unfinished rows")
                break
            if time.monotonic() >= next_kill:
                victim = random.choice(live)
                victim.kill()
                kills += 1
                live.remove(victim)
                # Half the time the replacement comes back under the same name, as a
                # restarted container would: startup recovery takes its jobs at once.
                same = random.random() < 0.5
                restarts_same_name += same
                beat = beats[victim.logfile.name]
                live.append(start(name=victim.name if same else None, beat=beat).wait_ready(60))
                done = Job.objects.filter(status__in=["succeeded", "failed", "cancelled"]).count()
                log(f"killed {victim.hostname} (kill {kills}); {done} jobs finished, {unfinished()} unfinished")
                next_kill = time.monotonic() + args.kill_every
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        time.sleep(2 * settings.STALLED_INTERVAL_SECONDS)
    finally:
        for worker in workers:
            worker.stop()
        client = redis.Redis.from_url(settings.REDIS_URL)
        for key in client.scan_iter(match=f"{settings.BROKER_KEY_PREFIX}*", count=1000):
            client.delete(key)

    report = check(settled=True, accepted=job_ids, execution_slack_seconds=120)
    total = Job.objects.count()
    stalled = Job.objects.filter(stalled_count__gt=0).count()
    batch = Batch.objects.get(id=batch_ids[0])
    log(f"finished {total} jobs in {elapsed:.1f}s ({total / elapsed:.0f} jobs/s) with {kills} SIGKILLs "
        f"({restarts_same_name} restarts under the same name); {stalled} jobs recovered from a dead worker")
    log(f"batch {batch.id}: {batch.status}, {batch.completed_count}/{batch.run_count} "
        f"(succeeded {batch.succeeded_count}, failed {batch.failed_count})")
    log(f"invariants: {report.summary()}")
    for violation in report.violations[:50]:
        log(f"  {violation}")
    return 0 if not report.violations and batch.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
