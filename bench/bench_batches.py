"""Batch benchmark: NDJSON intake rate and memory, and a 10,000-child batch end to
end next to a plain Celery chord of 10,000 no-op tasks on the same services.

    python bench/bench_batches.py          # alone (its own database, broker prefix)
    make bench                             # bench/run.py calls main()

Intake is measured twice: in process (add_items over a generated stream, peak
Python allocations by tracemalloc) and over HTTP through gunicorn with a chunked
body (items/s, and the growth of the gunicorn worker's peak RSS while streaming).
Sizes scale with BENCH_SCALE (default 1: 10,000 and 100,000 items).
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import common  # noqa: E402  (sets the environment before Django)

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
CONCURRENCY = int(os.environ.get("BENCH_BATCH_CONCURRENCY", "2"))
# Which parts to run: "intake", "e2e" (default both), e.g. BENCH_BATCH_PARTS=e2e.
PARTS = set(os.environ.get("BENCH_BATCH_PARTS", "intake,e2e").split(","))
PIECE = 64 * 1024


def n(value: int) -> int:
    return max(100, int(value * SCALE))


def ndjson_pieces(count: int) -> Iterator[bytes]:
    """The stream, generated lazily in 64 KiB pieces (the client holds no more)."""
    buf: list[bytes] = []
    size = 0
    for i in range(count):
        line = b'{"payload": {"i": %d, "name": "item-%d"}}\n' % (i, i)
        buf.append(line)
        size += len(line)
        if size >= PIECE:
            yield b"".join(buf)
            buf, size = [], 0
    if buf:
        yield b"".join(buf)


def new_tenant(slug: str, limit: int = 10) -> Any:
    from jobs.models import ApiKey, Tenant

    tenant = Tenant.objects.create(slug=f"{slug}-{uuid.uuid4().hex[:6]}", concurrency_limit=limit)
    return tenant, ApiKey.generate(tenant)[1]


# --- intake in process ---------------------------------------------------------------


def intake_in_process(count: int) -> dict[str, float]:
    from batches import intake, lifecycle

    def run(measure_memory: bool) -> tuple[float, int]:
        tenant, _ = new_tenant("intake")
        batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=count).batch
        lines = intake.LineSplitter(ndjson_pieces(count))
        if measure_memory:
            tracemalloc.start()
        t0 = time.perf_counter()
        result = intake.add_items(batch.id, intake.read_lines(lines))
        elapsed = time.perf_counter() - t0
        peak = 0
        if measure_memory:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert result.sealed and result.enqueued_count == count, result
        return elapsed, peak

    elapsed, _ = run(False)
    _, peak = run(True)
    return {"items": count, "items_per_s": count / elapsed, "tracemalloc_peak_mib": peak / 2**20}


# --- intake over HTTP (gunicorn, chunked) ----------------------------------------------


class Gunicorn:
    def __init__(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.log = open(f"/tmp/bpbench-gunicorn-{self.port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "batchplatform.wsgi", "-b", f"127.0.0.1:{self.port}",
             "-w", "1", "--timeout", "600"],
            cwd=common.ROOT, env=os.environ, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)

    def worker_pid(self) -> int:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return int(out.split()[0])

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.log.close()


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def stream(port: int, key: str, batch_id: uuid.UUID, pieces: Iterator[bytes]) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        "POST", f"/api/v1/batches/{batch_id}/items", body=pieces, encode_chunked=True,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200, body
    return body


def intake_over_http(count: int) -> dict[str, float]:
    from batches import lifecycle

    server = Gunicorn()
    try:
        tenant, key = new_tenant("http")
        warm = lifecycle.create_batch(tenant, task="examples.echo", run_count=100).batch
        stream(server.port, key, warm.id, ndjson_pieces(100))  # load everything once
        pid = server.worker_pid()
        before = rss_kib(pid, "VmHWM")
        batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=count).batch
        t0 = time.perf_counter()
        answer = stream(server.port, key, batch.id, ndjson_pieces(count))
        elapsed = time.perf_counter() - t0
        after = rss_kib(pid, "VmHWM")
        assert answer["sealed"] and answer["enqueued_count"] == count, answer
        return {"items": count, "items_per_s": count / elapsed, "peak_rss_growth_mib": (after - before) / 1024,
                "worker_peak_rss_mib": after / 1024}
    finally:
        server.stop()


# --- a 10,000-child batch end to end vs a plain Celery chord ------------------------------


def wait_for(predicate: Any, timeout: float = 900) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark timed out")
        time.sleep(0.02)
    return time.perf_counter()


def batch_end_to_end(count: int) -> dict[str, float]:
    from batches import intake, lifecycle
    from batches.models import Waitpoint

    tenant, _ = new_tenant("e2e", limit=200)
    worker = common.start_worker(concurrency=CONCURRENCY)
    try:
        t0 = time.perf_counter()
        waitpoint, _ = lifecycle.create_waitpoint(tenant.id, "batch")
        batch = lifecycle.create_batch(tenant, task="examples.echo", run_count=count, waitpoint=waitpoint).batch
        intake.add_items(batch.id, intake.read_lines(intake.LineSplitter(ndjson_pieces(count))))
        t1 = wait_for(lambda: Waitpoint.objects.filter(id=waitpoint.id, status="completed").exists())
    finally:
        worker.stop()
    waitpoint.refresh_from_db()
    assert waitpoint.output["succeeded"] == count
    return {"children": count, "seconds": t1 - t0, "children_per_s": count / (t1 - t0)}


def chord_end_to_end(count: int) -> dict[str, float]:
    import redis
    from celery import chord

    prefix = f"bpbench-chord-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "BENCH_CHORD_PREFIX": prefix}
    log = open(f"/tmp/bpbench-chord-{uuid.uuid4().hex[:6]}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench.chord_app", "worker", "-c", str(CONCURRENCY),
         "-l", "warning", "--without-mingle", "--without-gossip", "-n", f"chord{uuid.uuid4().hex[:6]}@bench"],
        cwd=common.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    os.environ["BENCH_CHORD_PREFIX"] = prefix
    sys.modules.pop("bench.chord_app", None)
    from bench import chord_app

    client = redis.Redis.from_url(chord_app.REDIS_URL)
    try:
        time.sleep(4)  # plain Celery has no readiness row to poll
        t0 = time.perf_counter()
        chord(chord_app.noop.s(i) for i in range(count))(chord_app.done.s())
        t1 = wait_for(lambda: client.get(f"{prefix}done") is not None)
    finally:
        common.stop(proc)
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            client.delete(key)
    return {"children": count, "seconds": t1 - t0, "children_per_s": count / (t1 - t0)}


def main() -> dict[str, Any]:
    results: dict[str, Any] = {}

    def report(name: str, figures: dict[str, Any]) -> None:
        results[name] = figures
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        print(f"{name:<28} {shown}", flush=True)

    common.reset_tables()
    if "intake" in PARTS:
        for count in (n(10_000), n(100_000)):
            report(f"batch_intake_inproc_{count}", intake_in_process(count))
            common.reset_tables()
        for count in (n(10_000), n(100_000)):
            report(f"batch_intake_http_{count}", intake_over_http(count))
            common.reset_tables()
        common.purge_broker()
    if "e2e" not in PARTS:
        return results
    children = n(10_000)
    ours = batch_end_to_end(children)
    common.reset_tables()
    common.purge_broker()
    plain = chord_end_to_end(children)
    report("batch_vs_chord", {
        "children": children, "worker_concurrency": CONCURRENCY,
        "batch_s": ours["seconds"], "chord_s": plain["seconds"],
        "batch_per_s": ours["children_per_s"], "chord_per_s": plain["children_per_s"],
        "ratio": ours["children_per_s"] / plain["children_per_s"],
    })
    return results


if __name__ == "__main__":
    common.prepare_database()
    common.setup_django()
    common.purge_broker()
    main()
