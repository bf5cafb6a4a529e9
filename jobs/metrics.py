"""/metrics: a Prometheus collector that reads Postgres at scrape time.

Why not process-local counters: under gunicorn and Celery prefork every process
would count its own share, and workers on other machines would not be seen at all.
Every number here is a query against the rows, so any web process answers the same
scrape with the same values, and nothing needs PROMETHEUS_MULTIPROC_DIR (which only
works when all processes share one machine's disk).

- Gauges: jobs by tenant and status, stuck items per sweeper place (the same
  `monitoring.snapshot()` as `/health/jobs`), oldest running attempt per tenant,
  broker backlog, dead letters.
- Counters: events by type for the types that signal trouble (stalled, lock
  extension failures, retries, time-outs, re-dispatches, refused results) and
  repairs by reason: counts of JobEvent rows. Those types are rare, and each count is
  an index-only range on `event_type_idx`. The pruner adds what it deletes to
  EventTally in the same transaction, and the counters include it, so they never
  go down.
- Histograms of dispatch latency (dispatched → started, per attempt) and run time
  (started → finished, per attempt) are gauge histograms over the attempts that
  started or finished in the last METRICS_WINDOW_SECONDS, computed from event rows.
  A cumulative histogram would need one writer that sees every observation; the rows
  already hold the timestamps, so the window is exact and costs one indexed range.
"""

from collections.abc import Iterator, Sequence

from django.conf import settings
from django.db import connection
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import monitoring

PREFIX = "batchplatform"
TROUBLE_EVENTS = (
    "stalled", "lock_extension_failed", "retry_scheduled", "timed_out",
    "redispatched", "stale_result_refused", "repaired", "failed",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_DISPATCH_LATENCY_SQL = """
SELECT EXTRACT(EPOCH FROM s.created_at - d.created_at)
FROM jobs_jobevent s
CROSS JOIN LATERAL (
    SELECT created_at FROM jobs_jobevent d
    WHERE d.job_id = s.job_id AND d.id < s.id AND d.type = 'dispatched'
    ORDER BY d.id DESC LIMIT 1
) d
WHERE s.type = 'started' AND s.created_at > now() - make_interval(secs => %(window)s)
"""

_RUN_TIME_SQL = """
SELECT EXTRACT(EPOCH FROM f.created_at - e.started_at)
FROM jobs_jobevent f
CROSS JOIN LATERAL (
    SELECT started_at FROM jobs_execution e
    WHERE e.job_id = f.job_id AND e.attempt = f.attempt AND e.started_at <= f.created_at
    ORDER BY e.id DESC LIMIT 1
) e
WHERE f.type IN ('succeeded', 'failed', 'retry_scheduled', 'timed_out')
  AND f.created_at > now() - make_interval(secs => %(window)s)
"""


def _window() -> float:
    return float(getattr(settings, "METRICS_WINDOW_SECONDS", 300))


def _histogram(name: str, doc: str, sql: str, buckets: Sequence[float]) -> GaugeHistogramMetricFamily:
    filters = ", ".join(f"count(*) FILTER (WHERE v <= {float(b)!r})" for b in buckets)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {filters}, count(*), COALESCE(sum(v), 0) FROM ({sql}) AS x(v)", {"window": _window()})
        row = cursor.fetchone()
    counts, total, gsum = row[: len(buckets)], row[len(buckets)], row[len(buckets) + 1]
    pairs = [(repr(float(b)), float(c)) for b, c in zip(buckets, counts)] + [("+Inf", float(total))]
    return GaugeHistogramMetricFamily(name, doc, buckets=pairs, gsum_value=float(gsum))


def _event_counts() -> tuple[dict[str, int], dict[str, int]]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT type, count(*) FROM jobs_jobevent WHERE type = ANY(%s) GROUP BY type", [list(TROUBLE_EVENTS)]
        )
        by_type = {t: int(n) for t, n in cursor.fetchall()}
        cursor.execute("SELECT message, count(*) FROM jobs_jobevent WHERE type = 'repaired' GROUP BY message")
        by_reason = {reason: int(n) for reason, n in cursor.fetchall()}
        # Events the pruner deleted: the counters must never go down.
        cursor.execute("SELECT key, count FROM jobs_eventtally")
        for key, n in cursor.fetchall():
            if key.startswith("repaired:"):
                reason = key.removeprefix("repaired:")
                by_reason[reason] = by_reason.get(reason, 0) + int(n)
            elif key in TROUBLE_EVENTS:
                by_type[key] = by_type.get(key, 0) + int(n)
    return by_type, by_reason


class JobsCollector(Collector):
    """Everything is read when Prometheus scrapes; nothing is kept in the process."""

    def collect(self) -> Iterator[Metric]:
        snap = monitoring.snapshot()

        jobs = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs by tenant and status.", labels=["tenant", "status"])
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_running_job_seconds", "Age of the oldest running attempt per tenant.", labels=["tenant"]
        )
        queued = GaugeMetricFamily(
            f"{PREFIX}_oldest_ready_queued_job_seconds",
            "How long the longest-waiting ready queued job has been ready, per tenant.", labels=["tenant"],
        )
        for t in snap.tenants:
            for status, n in t.counts.items():
                jobs.add_metric([t.slug, status], n)
            oldest.add_metric([t.slug], t.oldest_running_seconds or 0.0)
            queued.add_metric([t.slug], t.oldest_ready_queued_seconds or 0.0)
        yield jobs
        yield oldest
        yield queued

        stuck = GaugeMetricFamily(
            f"{PREFIX}_stuck_jobs", "Items stuck in each sweeper place (NaN: counting failed).", labels=["place"]
        )
        for p in snap.places:
            stuck.add_metric([p.name], float("nan") if p.count is None else p.count)
        yield stuck
        yield GaugeMetricFamily(f"{PREFIX}_jobs_healthy", "1 when nothing is stuck.", value=1 if snap.healthy else 0)

        backlog = GaugeMetricFamily(
            f"{PREFIX}_broker_queue_messages", "Messages waiting in each Celery queue (NaN: broker down).",
            labels=["queue"],
        )
        for queue, n in snap.broker_backlog.items():
            backlog.add_metric([queue], float("nan") if n is None else n)
        yield backlog
        yield GaugeMetricFamily(f"{PREFIX}_dead_letter_jobs", "Failed jobs (the dead-letter view).", value=snap.dead_letters)

        by_type, by_reason = _event_counts()
        events = CounterMetricFamily(f"{PREFIX}_job_events", "Job events that signal trouble, by type.", labels=["type"])
        for event_type in TROUBLE_EVENTS:
            events.add_metric([event_type], by_type.get(event_type, 0))
        yield events
        repairs = CounterMetricFamily(f"{PREFIX}_repairs", "Sweeper repairs by reason.", labels=["reason"])
        for reason, n in sorted(by_reason.items()):
            repairs.add_metric([reason], n)
        yield repairs

        yield _histogram(
            f"{PREFIX}_dispatch_latency_seconds",
            f"Dispatched to started, per attempt started in the last {_window():g}s.",
            _DISPATCH_LATENCY_SQL, LATENCY_BUCKETS,
        )
        yield _histogram(
            f"{PREFIX}_run_seconds",
            f"Started to finished, per attempt finished in the last {_window():g}s.",
            _RUN_TIME_SQL, RUN_BUCKETS,
        )


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JobsCollector())
    return reg
