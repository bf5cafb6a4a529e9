"""The eight invariants of ARCHITECTURE.md, checked against Postgres.

`assert_invariants()` reads the rows (jobs, executions, events, batches, waitpoints)
and raises one AssertionError listing every violation. It is called at the end of
each fault test, by the hypothesis state machine after every step, and by the soak.

Two modes:
- `settled=True` (the default, after a fault test waited for the platform to react):
  every job is terminal, every batch closed, no active row is past its deadline.
- `settled=False` (mid-run, the state machine): only what must hold at every
  commit (the transition history is legal, counters equal recounts, fencing, bounds).

How each is checked:
1. every accepted id has a job; every batch has exactly enqueued_count children with
   distinct indexes; settled: every job is terminal.
2. no top-level job outside `accepted`; no child index outside its batch.
3. the history replay below; executions = starts; at most one open execution, and
   only for the current lease; batch counters = a recount of the children.
4. every unfinished row carries the deadline that moves it on (run_at, dispatch
   deadline, lease and timeout, waitpoint timeout, seal deadline); every attempt
   ended within its hard limit + lease + sweep interval (+ slack for a loaded
   machine); settled: no batch open.
5. no tenant over its concurrency limit, the platform under DISPATCH_MAX_ACTIVE;
   settled: no active row past its lease or dispatch deadline.
6. a batch's waitpoint is completed exactly when the batch closed, as an error when
   it was cancelled or aborted; per job and waitpoint at most one suspension and no
   more resumptions than suspensions; settled: nobody waits on a completed waitpoint.
7. no second succeeded execution in a run; a stale write that won would also break
   the replay (the state machine checks each start, renewal and finish directly).
8. attempts <= max_attempts and = the runs started since the last requeue (minus
   suspensions); stalls <= MAX_STALLED_COUNT + 1, the last one failing the job.

The job's own event log is the witness: every transition writes its event in the
transition's own transaction, so replaying a job's events must give a legal path
that ends in the job's current status, with exactly one terminal transition per
requeue epoch.
"""

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.conf import settings
from django.db import connection

UNFINISHED = {"queued", "dispatched", "running", "waiting"}
TERMINAL = {"succeeded", "failed", "cancelled"}

# event -> (states it may leave, state it enters; None: decided by what follows)
TRANSITIONS: dict[str, tuple[set[str], str | None]] = {
    "dispatched": ({"queued"}, "dispatched"),
    "redispatched": ({"dispatched"}, "queued"),
    "started": ({"dispatched"}, "running"),
    "succeeded": ({"running"}, "succeeded"),
    "failed": ({"running"}, "failed"),
    "timed_out": ({"running"}, "failed"),
    "retry_scheduled": ({"running"}, "queued"),
    "stalled": ({"running"}, None),  # requeued, or failed past max_stalled_count / max_attempts
    "suspended": ({"running"}, "waiting"),
    "resumed": ({"waiting"}, "queued"),
    "cancelled": (UNFINISHED, "cancelled"),
    "requeued": ({"failed", "cancelled"}, "queued"),
}


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    jobs: int = 0
    batches: int = 0
    waitpoints: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    def add(self, invariant: int, message: str) -> None:
        if len(self.violations) < 200:
            self.violations.append(f"invariant {invariant}: {message}")

    def summary(self) -> str:
        return (
            f"{self.jobs} jobs {dict(sorted(self.by_status.items()))}, {self.batches} batches, "
            f"{self.waitpoints} waitpoints, {len(self.violations)} violations"
        )


def _rows(sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, list(params))
        return list(cursor.fetchall())


def _replay(job_status: str, events: list[str]) -> tuple[str | None, list[int], str]:
    """Replay transition events from `queued`. Returns (error, terminal transitions
    per requeue epoch, the final state)."""
    state = "queued"
    epochs = [0]
    for i, event in enumerate(events):
        sources, target = TRANSITIONS[event]
        if state not in sources:
            return f"{event} from {state} (history {events})", epochs, state
        if target is None:  # stalled
            following = events[i + 1] if i + 1 < len(events) else None
            if following == "requeued" or (following is None and job_status == "failed"):
                target = "failed"
            else:
                target = "queued"
        if event == "requeued":
            epochs.append(0)
        state = target
        if state in TERMINAL:
            epochs[-1] += 1
    return None, epochs, state


def check(*, settled: bool = True, accepted: Iterable[UUID] | None = None,
          execution_slack_seconds: float = 60.0) -> Report:
    report = Report()
    max_stalled = settings.MAX_STALLED_COUNT
    grace = max(5.0, min(60.0, settings.JOB_LEASE_SECONDS))

    jobs = {
        row[0]: row
        for row in _rows(
            "SELECT id, status, attempts, max_attempts, stalled_count, tenant_id, lease_token, "
            "lease_expires_at < now(), dispatch_token, dispatch_deadline < now(), waiting_for_id, "
            "batch_id, run_at, timeout_at, lease_expires_at, dispatch_deadline, finished_at, result, error "
            "FROM jobs_job"
        )
    }
    report.jobs = len(jobs)
    for row in jobs.values():
        report.by_status[row[1]] = report.by_status.get(row[1], 0) + 1

    # 1. No lost item -------------------------------------------------------------------
    if accepted is not None:
        for job_id in set(accepted):
            if job_id not in jobs:
                report.add(1, f"accepted job {job_id} does not exist")
    for batch_id, enqueued, children, distinct, bad_index in _rows(
        "SELECT b.id, b.enqueued_count, count(j.id), count(DISTINCT j.batch_index), "
        "count(j.id) FILTER (WHERE j.batch_index IS NULL OR j.batch_index >= b.run_count) "
        "FROM batches_batch b LEFT JOIN jobs_job j ON j.batch_id = b.id GROUP BY b.id"
    ):
        if enqueued != children or distinct != children:
            report.add(1, f"batch {batch_id}: enqueued_count {enqueued}, {children} children, {distinct} indexes")
        if bad_index:
            report.add(2, f"batch {batch_id}: {bad_index} children with an index outside the batch")
    if settled:
        for job_id, row in jobs.items():
            if row[1] not in TERMINAL:
                report.add(1, f"job {job_id} is still {row[1]}")

    # 2. Nothing unexpected ---------------------------------------------------------------
    if accepted is not None:
        accepted_set = set(accepted)
        for job_id, parent_id in _rows("SELECT id, parent_id FROM jobs_job WHERE batch_id IS NULL"):
            if job_id not in accepted_set and parent_id is None:
                report.add(2, f"job {job_id} exists but no accepted request created it")
    for (job_id,) in _rows(
        "SELECT j.id FROM jobs_job j WHERE NOT EXISTS (SELECT 1 FROM jobs_tenant t WHERE t.id = j.tenant_id)"
    ):
        report.add(2, f"job {job_id} has no tenant")

    # 3. No double count: history replay, executions, batch counters ------------------------
    events: dict[UUID, list[str]] = defaultdict(list)
    for job_id, type_ in _rows(
        "SELECT job_id, type FROM jobs_jobevent WHERE type = ANY(%s) ORDER BY job_id, id", [list(TRANSITIONS)]
    ):
        events[job_id].append(type_)
    started_since_requeue: dict[UUID, int] = {}
    suspended_since_requeue: dict[UUID, int] = {}
    for job_id, row in jobs.items():
        history = events.get(job_id, [])
        error, epochs, state = _replay(row[1], history)
        if error:
            report.add(3, f"job {job_id}: illegal transition {error}")
            continue
        if state != row[1]:
            report.add(3, f"job {job_id}: history ends {state} but the job is {row[1]} ({history})")
        if any(n > 1 for n in epochs):
            report.add(3, f"job {job_id}: {max(epochs)} terminal transitions in one run ({history})")
        if row[1] in TERMINAL and epochs[-1] != 1:
            report.add(3, f"job {job_id}: {row[1]} with {epochs[-1]} terminal transitions ({history})")
        last = max((i for i, e in enumerate(history) if e == "requeued"), default=-1)
        started_since_requeue[job_id] = history[last + 1:].count("started")
        suspended_since_requeue[job_id] = history[last + 1:].count("suspended")

    executions: dict[UUID, list[tuple[Any, ...]]] = defaultdict(list)
    for ex in _rows(
        "SELECT e.job_id, e.id, e.status, e.lease_token, e.attempt, "
        "EXTRACT(EPOCH FROM (COALESCE(e.finished_at, now()) - e.started_at)), j.timeout_seconds "
        "FROM jobs_execution e JOIN jobs_job j ON j.id = e.job_id ORDER BY e.job_id, e.id"
    ):
        executions[ex[0]].append(ex)
    started_total = dict(_rows("SELECT job_id, count(*) FROM jobs_jobevent WHERE type = 'started' GROUP BY job_id"))
    for job_id, row in jobs.items():
        runs = executions.get(job_id, [])
        if len(runs) != started_total.get(job_id, 0):
            report.add(3, f"job {job_id}: {len(runs)} executions but {started_total.get(job_id, 0)} starts")
        open_runs = [r for r in runs if r[2] == "running"]
        if len(open_runs) > 1:
            report.add(3, f"job {job_id}: {len(open_runs)} executions running at once")
        for r in open_runs:
            if row[1] != "running" or r[3] != row[6]:
                report.add(3, f"job {job_id}: execution {r[1]} still running after the job moved to {row[1]}")
        if row[1] == "succeeded" and (not runs or runs[-1][2] != "succeeded"):
            report.add(3, f"job {job_id}: succeeded but its last execution is {runs[-1][2] if runs else None}")
        for r in runs:
            # Bounded time, per attempt: the worker's hard limit, or the lease and a
            # sweep for a dead worker (slack for a loaded machine and injected outages).
            bound = r[6] + grace + settings.JOB_LEASE_SECONDS + settings.STALLED_INTERVAL_SECONDS
            if r[5] is not None and float(r[5]) > bound + execution_slack_seconds:
                report.add(4, f"job {job_id}: execution {r[1]} lasted {float(r[5]):.1f}s (bound {bound:.1f}s)")

    for batch_id, status, sealed, run_count, enqueued, counters, recount in _rows(
        "SELECT b.id, b.status, b.sealed, b.run_count, b.enqueued_count, "
        "ARRAY[b.completed_count, b.succeeded_count, b.failed_count, b.cancelled_count], "
        "ARRAY[count(j.id) FILTER (WHERE j.status IN ('succeeded', 'failed', 'cancelled')), "
        "      count(j.id) FILTER (WHERE j.status = 'succeeded'), count(j.id) FILTER (WHERE j.status = 'failed'), "
        "      count(j.id) FILTER (WHERE j.status = 'cancelled')] "
        "FROM batches_batch b LEFT JOIN jobs_job j ON j.batch_id = b.id GROUP BY b.id"
    ):
        report.batches += 1
        if list(counters) != list(recount):
            report.add(3, f"batch {batch_id}: counters {list(counters)} but a recount gives {list(recount)}")
        if sealed and enqueued != run_count:
            report.add(1, f"batch {batch_id}: sealed with {enqueued} of {run_count} items")
        if status == "completed" and not (sealed and counters[0] == run_count):
            report.add(3, f"batch {batch_id}: completed with {counters[0]} of {run_count} children counted")
        if status in ("cancelled", "aborted") and recount[0] != enqueued:
            report.add(1, f"batch {batch_id}: {status} with unfinished children")
        if settled and status in ("pending", "processing"):
            report.add(4, f"batch {batch_id}: still {status}")

    # 4. Bounded time: every unfinished row carries the deadline that moves it on ----------
    for job_id, row in jobs.items():
        status = row[1]
        missing = (
            (status == "queued" and row[12] is None)
            or (status == "dispatched" and (row[8] is None or row[15] is None))
            or (status == "running" and (row[6] is None or row[14] is None or row[13] is None))
            or (status == "waiting" and row[10] is None)
        )
        if missing:
            report.add(4, f"job {job_id}: {status} without its deadline")
        if status in TERMINAL and row[16] is None:
            report.add(4, f"job {job_id}: {status} without finished_at")
    for (batch_id,) in _rows(
        "SELECT id FROM batches_batch WHERE status IN ('pending', 'processing') AND seal_deadline IS NULL"
    ):
        report.add(4, f"batch {batch_id}: open without a seal deadline")
    for (wp_id,) in _rows("SELECT id FROM batches_waitpoint WHERE status = 'pending' AND timeout_at IS NULL"):
        report.add(4, f"waitpoint {wp_id}: pending without a deadline")

    # 5. No leaked capacity -------------------------------------------------------------------
    if settled:
        for job_id, row in jobs.items():
            if (row[1] == "running" and row[7]) or (row[1] == "dispatched" and row[9]):
                report.add(5, f"job {job_id}: {row[1]} past its deadline still holds a slot")
    for tenant_id, limit, active in _rows(
        "SELECT t.id, t.concurrency_limit, count(j.id) FROM jobs_tenant t JOIN jobs_job j ON j.tenant_id = t.id "
        "AND j.status IN ('dispatched', 'running') GROUP BY t.id"
    ):
        if active > limit:
            report.add(5, f"tenant {tenant_id}: {active} active jobs over its limit {limit}")
    total_active = sum(1 for row in jobs.values() if row[1] in ("dispatched", "running"))
    if total_active > settings.DISPATCH_MAX_ACTIVE:
        report.add(5, f"{total_active} active jobs over DISPATCH_MAX_ACTIVE {settings.DISPATCH_MAX_ACTIVE}")

    # 6. Waitpoints completed once, waiting parents resumed once --------------------------------
    waitpoints = _rows(
        "SELECT w.id, w.status, w.output_is_error, w.completed_at, b.status FROM batches_waitpoint w "
        "LEFT JOIN batches_batch b ON b.waitpoint_id = w.id"
    )
    report.waitpoints = len(waitpoints)
    for wp_id, status, is_error, completed_at, batch_status in waitpoints:
        if (status == "completed") != (completed_at is not None):
            report.add(6, f"waitpoint {wp_id}: {status} with completed_at {completed_at}")
        if batch_status == "completed" and (status != "completed" or is_error):
            report.add(6, f"waitpoint {wp_id}: its batch completed but it is {status} (error={is_error})")
        if batch_status in ("cancelled", "aborted") and (status != "completed" or not is_error):
            report.add(6, f"waitpoint {wp_id}: its batch is {batch_status} but it is {status} (error={is_error})")
        if batch_status in ("pending", "processing") and status == "completed":
            report.add(6, f"waitpoint {wp_id}: completed while its batch is {batch_status}")
    for job_id, wp_id, suspended, resumed in _rows(
        "SELECT job_id, data->>'waitpoint', count(*) FILTER (WHERE type = 'suspended'), "
        "count(*) FILTER (WHERE type = 'resumed') FROM jobs_jobevent "
        "WHERE type IN ('suspended', 'resumed') GROUP BY job_id, data->>'waitpoint'"
    ):
        if suspended > 1 or resumed > suspended:
            report.add(6, f"job {job_id}: suspended {suspended}x and resumed {resumed}x on waitpoint {wp_id}")
    if settled:
        for (job_id,) in _rows(
            "SELECT j.id FROM jobs_job j JOIN batches_waitpoint w ON w.id = j.waiting_for_id "
            "WHERE j.status = 'waiting' AND w.status = 'completed'"
        ):
            report.add(6, f"job {job_id}: still waiting on a completed waitpoint")

    # 7. Fencing: a stale token changed nothing. A write that won with a stale token
    # would show as an illegal or second terminal transition in the replay (3) or as
    # a second succeeded execution here; the state machine also checks every single
    # start, renewal and finish against the row it found before the call.
    for job_id, row in jobs.items():
        runs = executions.get(job_id, [])
        if sum(1 for r in runs if r[2] == "succeeded") > 1 + events.get(job_id, []).count("requeued"):
            report.add(7, f"job {job_id}: more than one succeeded execution")

    # 8. Bounded attempts ----------------------------------------------------------------------
    for job_id, row in jobs.items():
        status, attempts, max_attempts, stalled = row[1], row[2], row[3], row[4]
        if attempts > max_attempts:
            report.add(8, f"job {job_id}: {attempts} attempts over max_attempts {max_attempts}")
        # The stall that exceeds max_stalled_count is the one that fails the job.
        if stalled > max_stalled + 1 or (stalled == max_stalled + 1 and status not in ("failed", "cancelled")):
            report.add(8, f"job {job_id}: stalled {stalled}x (max {max_stalled}) and {status}")
        if job_id in started_since_requeue:
            expected = started_since_requeue[job_id] - suspended_since_requeue[job_id]
            if attempts != expected:
                report.add(8, f"job {job_id}: attempts {attempts} but {expected} started runs since its last requeue")
    return report


def assert_invariants(*, settled: bool = True, accepted: Iterable[UUID] | None = None,
                      execution_slack_seconds: float = 60.0) -> Report:
    """Check all eight invariants; raise one AssertionError naming every violation."""
    report = check(settled=settled, accepted=accepted, execution_slack_seconds=execution_slack_seconds)
    assert not report.violations, "invariants violated:\n" + "\n".join(report.violations)
    return report
