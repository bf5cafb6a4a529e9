"""`make bench`: our figures next to plain Celery on the same services, same run.

Prints each figure and writes them all to bench/results/<time>.json. Takes a few
minutes on 2 cores. Sizes can be reduced with BENCH_SCALE=0.1 for a quick look.
"""

import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402  (sets the environment before Django)

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
RESULTS: dict[str, object] = {}


def n(value: int) -> int:
    return max(10, int(value * SCALE))


def report(name: str, **figures: object) -> None:
    RESULTS[name] = figures
    shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
    print(f"{name:<28} {shown}", flush=True)


def queue_backlog(tenant: object, count: int, task: str = "examples.echo", payload: object = None) -> None:
    from jobs.models import Job

    Job.objects.bulk_create(
        [Job(tenant=tenant, task=task, queue="batchplatform", payload=payload, payload_hash="h",
             max_attempts=3, timeout_seconds=60) for _ in range(count)],
        batch_size=1000,
    )
    from django.db import connection

    with connection.cursor() as cursor:  # as intake does after a large stream
        cursor.execute("ANALYZE jobs_job")


def wait_count(sql: str, params: list[object], target: int, timeout: float = 600) -> float:
    from django.db import connection

    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(sql, params)
            if cursor.fetchone()[0] >= target:
                return time.monotonic()
            time.sleep(0.02)
    raise TimeoutError(sql)


def bench_noop_throughput() -> None:
    import redis
    from django.conf import settings

    from bench import plain_app
    from jobs import dispatch
    from jobs.models import Tenant

    count = n(5000)
    common.reset_tables()
    tenant = Tenant.objects.create(slug="thru", concurrency_limit=200)
    queue_backlog(tenant, count)
    # Beat's sweeper re-dispatches a message that never arrives after the deadline.
    settings.DISPATCH_DEADLINE_SECONDS = 5
    worker = common.start_worker(concurrency=2, beat=True, env={"DISPATCH_DEADLINE_SECONDS": "5"})
    t0 = time.monotonic()
    dispatch.dispatch_ready()
    t1 = wait_count("SELECT count(*) FROM jobs_job WHERE status = 'succeeded'", [], count)
    worker.stop()
    settings.DISPATCH_DEADLINE_SECONDS = 300
    ours = count / (t1 - t0)
    from jobs.models import JobEvent

    redispatched = JobEvent.objects.filter(type="redispatched").count()

    plain = common.start_plain_worker(concurrency=2)
    client = redis.Redis.from_url(settings.REDIS_URL)
    t0 = time.monotonic()
    with plain_app.app.producer_or_acquire() as producer:
        for _ in range(count):
            plain_app.noop.apply_async(("bulk",), producer=producer)
    key = f"{os.environ['BENCH_PLAIN_PREFIX']}done:bulk"
    while int(client.get(key) or 0) < count:
        time.sleep(0.02)
    t1 = time.monotonic()
    common.stop(plain)
    baseline = count / (t1 - t0)
    report(
        "noop_throughput", jobs=count, ours_per_s=ours, plain_celery_per_s=baseline, ratio=ours / baseline,
        messages_never_delivered_redispatched=redispatched,
    )


def bench_queries_per_job() -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from jobs import lifecycle, runner
    from jobs.models import Job, Tenant

    common.reset_tables()
    tenant = Tenant.objects.create(slug="cost")
    commits = 0
    real_commit = connection._commit

    def counting() -> None:
        nonlocal commits
        commits += 1
        real_commit()

    connection._commit = counting  # type: ignore[method-assign]
    try:
        with CaptureQueriesContext(connection) as queries:
            job = lifecycle.submit(tenant, "examples.echo", {"n": 1}).job
            token = Job.objects.values_list("dispatch_token", flat=True).get(id=job.id)
            runner.run(job.id, token, "bench@local")
    finally:
        del connection._commit
    statements = [q for q in queries.captured_queries if "dispatch_token\" FROM" not in q["sql"]]
    data = [q for q in statements if q["sql"] not in ("BEGIN",) and not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    report("queries_per_job_life", statements=len(data), commits=commits)
    common.purge_broker()


def bench_dispatch_throughput() -> None:
    from django.conf import settings

    from jobs import dispatch
    from jobs.models import Tenant

    total = n(100_000)
    common.reset_tables()
    tenants = [Tenant.objects.create(slug=f"d{i}", concurrency_limit=total) for i in range(10)]
    for t in tenants:
        queue_backlog(t, total // 10)
    settings.DISPATCH_MAX_ACTIVE = total
    t0 = time.monotonic()
    dispatched = dispatch.dispatch_ready()
    elapsed = time.monotonic() - t0
    settings.DISPATCH_MAX_ACTIVE = 200
    common.purge_broker()
    report("dispatch_throughput", queued=total, tenants=10, dispatched=dispatched, jobs_per_s=dispatched / elapsed)


def bench_fairness() -> None:
    from django.db import connection

    from jobs import dispatch
    from jobs.models import Tenant

    common.reset_tables()
    weights = [1, 1, 1, 1, 3]
    tenants = [Tenant.objects.create(slug=f"f{i}", weight=w, concurrency_limit=100) for i, w in enumerate(weights)]
    for t in tenants:
        queue_backlog(t, n(3000))
    env = {"DISPATCH_MAX_ACTIVE": "6"}
    os.environ.update(env)
    from django.conf import settings

    settings.DISPATCH_MAX_ACTIVE = 6
    workers = [common.start_worker(concurrency=2, beat=True, env=env)]
    dispatch.dispatch_ready()
    time.sleep(3)  # settle
    with connection.cursor() as cursor:
        cursor.execute("SELECT max(id) FROM jobs_jobevent")
        start_id = cursor.fetchone()[0]
        time.sleep(10 * max(SCALE, 0.3))
        cursor.execute(
            "SELECT tenant_id, count(*) FROM jobs_jobevent WHERE type = 'dispatched' AND id > %s GROUP BY tenant_id",
            [start_id],
        )
        got = dict(cursor.fetchall())
    for w in workers:
        w.stop()
    settings.DISPATCH_MAX_ACTIVE = 200
    os.environ.pop("DISPATCH_MAX_ACTIVE")
    normalised = [got.get(t.id, 0) / t.weight for t in tenants]
    report(
        "fairness",
        weights="1,1,1,1,3",
        dispatched=",".join(str(got.get(t.id, 0)) for t in tenants),
        jain_index_weighted=common.jain(normalised),
    )
    common.purge_broker()


def bench_small_tenant_latency() -> None:
    import redis
    from django.conf import settings

    from bench import plain_app
    from jobs import dispatch, lifecycle
    from jobs.models import Job, Tenant

    big_n, samples = n(10_000), 60
    common.reset_tables()
    big = Tenant.objects.create(slug="big")
    small = Tenant.objects.create(slug="small")
    queue_backlog(big, big_n)
    worker = common.start_worker(concurrency=2, beat=True)
    dispatch.dispatch_ready()
    time.sleep(1)
    ids = []
    for i in range(samples):
        ids.append(lifecycle.submit(small, "examples.echo", i).job.id)
        time.sleep(0.05)
    wait_count("SELECT count(*) FROM jobs_job WHERE tenant_id = %s AND status = 'succeeded'", [small.id], samples)
    lat = [(j.started_at - j.created_at).total_seconds() for j in Job.objects.filter(id__in=ids)]
    backlog_left = Job.objects.filter(tenant=big, status="queued").count()
    worker.stop()
    common.purge_broker()

    plain = common.start_plain_worker(concurrency=2)
    client = redis.Redis.from_url(settings.REDIS_URL)
    with plain_app.app.producer_or_acquire() as producer:
        for _ in range(big_n):
            plain_app.noop.apply_async(("big",), producer=producer)
    time.sleep(1)
    for _ in range(samples):
        plain_app.stamp.delay(time.time())
        time.sleep(0.05)
    key = f"{os.environ['BENCH_PLAIN_PREFIX']}latency"
    deadline = time.monotonic() + 600
    while client.llen(key) < samples and time.monotonic() < deadline:
        time.sleep(0.1)
    fifo = [float(x) for x in client.lrange(key, 0, -1)]
    common.stop(plain)
    report(
        "small_tenant_latency",
        big_backlog=big_n,
        ours_p50_ms=common.percentile(lat, 50) * 1000,
        ours_p99_ms=common.percentile(lat, 99) * 1000,
        fifo_p50_ms=common.percentile(fifo, 50) * 1000,
        fifo_p99_ms=common.percentile(fifo, 99) * 1000,
        big_jobs_still_queued=backlog_left,
    )
    common.purge_broker()


def bench_recovery() -> None:
    from django.db import connection

    from jobs import lifecycle
    from jobs.models import Execution, Tenant

    common.reset_tables()
    tenant = Tenant.objects.create(slug="rec")
    victim = common.start_worker(concurrency=1, name="victim")
    job = lifecycle.submit(tenant, "examples.sleep", {"seconds": 30}).job
    wait_count("SELECT count(*) FROM jobs_job WHERE id = %s AND status = 'running'", [job.id], 1)
    standby = common.start_worker(concurrency=1, beat=True, name="standby")
    victim.kill()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        killed_at = cursor.fetchone()[0]
    wait_count("SELECT count(*) FROM jobs_execution WHERE job_id = %s", [job.id], 2, timeout=120)
    second = Execution.objects.filter(job_id=job.id).order_by("id").last()
    lease_wait = (second.started_at - killed_at).total_seconds()
    standby.stop()

    # A worker restarted under the same name recovers at boot, without the lease wait.
    common.reset_tables()
    tenant = Tenant.objects.create(slug="rec2")
    victim = common.start_worker(concurrency=1, name="phoenix", env={"JOB_LEASE_SECONDS": "60", "JOB_LEASE_RENEW_SECONDS": "20"})
    job = lifecycle.submit(tenant, "examples.sleep", {"seconds": 30}).job
    wait_count("SELECT count(*) FROM jobs_job WHERE id = %s AND status = 'running'", [job.id], 1)
    victim.kill()
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        killed_at = cursor.fetchone()[0]
    reborn = common.start_worker(concurrency=1, name="phoenix", env={"JOB_LEASE_SECONDS": "60", "JOB_LEASE_RENEW_SECONDS": "20"})
    wait_count("SELECT count(*) FROM jobs_execution WHERE job_id = %s", [job.id], 2, timeout=120)
    second = Execution.objects.filter(job_id=job.id).order_by("id").last()
    restart = (second.started_at - killed_at).total_seconds()
    reborn.stop()
    report(
        "recovery_after_sigkill",
        lease_seconds=float(os.environ["JOB_LEASE_SECONDS"]),
        kill_to_rerun_s=lease_wait,
        same_host_restart_lease_60s_kill_to_rerun_s=restart,
    )


def main() -> None:
    print(f"batchplatform bench on {platform.node()} ({os.cpu_count()} cores, {platform.python_version()}), scale {SCALE}")
    common.prepare_database()
    common.setup_django()
    common.purge_broker()
    selected = sys.argv[1:]
    benches = [
        bench_queries_per_job, bench_noop_throughput, bench_dispatch_throughput,
        bench_fairness, bench_small_tenant_latency, bench_recovery,
    ]
    for bench in benches:
        if selected and bench.__name__.removeprefix("bench_") not in selected:
            continue
        bench()
    try:
        from bench import bench_batches
    except ImportError:
        bench_batches = None
    if bench_batches is not None and (not selected or "batches" in selected):
        RESULTS["batches"] = bench_batches.main()
    out = Path(__file__).parent / "results" / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"machine": platform.node(), "cores": os.cpu_count(), "scale": SCALE, "results": RESULTS}, indent=2, default=str))
    print(f"written {out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out}")


if __name__ == "__main__":
    main()
