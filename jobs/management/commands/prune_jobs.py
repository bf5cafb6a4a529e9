import signal
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs import retention


class Command(BaseCommand):
    help = (
        "Delete finished jobs, closed executions and old events past their retention ages "
        "(RETENTION_* settings unless given), in bounded chunks. Jobs of an open batch or "
        "of a tree with unfinished work are kept."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--jobs-days", type=float, default=None, help="finished jobs older than this")
        parser.add_argument("--executions-days", type=float, default=None)
        parser.add_argument("--events-days", type=float, default=None)
        parser.add_argument("--chunk", type=int, default=None, help="rows per transaction")

    def handle(
        self, *args: Any, jobs_days: float | None, executions_days: float | None,
        events_days: float | None, chunk: int | None, **kw: Any,
    ) -> None:
        for value in (jobs_days, executions_days, events_days):
            if value is not None and value <= 0:
                raise CommandError("ages must be positive")
        if chunk is not None and chunk < 1:
            raise CommandError("--chunk must be at least 1")
        stopping: list[int] = []
        # SIGTERM stops after the current chunk's transaction, not in the middle of it.
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
        report = retention.prune(
            jobs_seconds=jobs_days * 86400 if jobs_days else None,
            executions_seconds=executions_days * 86400 if executions_days else None,
            events_seconds=events_days * 86400 if events_days else None,
            chunk=chunk,
            should_stop=lambda: bool(stopping),
        )
        self.stdout.write(
            f"pruned {report.jobs} job(s), {report.executions} execution(s), {report.events} event(s)"
            + (" (stopped early by SIGTERM)" if stopping else "")
        )
