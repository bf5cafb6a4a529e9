import json
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from jobs import monitoring
from jobs.models import JobStatus

from ._tenant_arg import tenant_id_for


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


class Command(BaseCommand):
    help = (
        "Jobs by status per tenant (with the age of the oldest running attempt), every stuck "
        "place with its count and oldest example, the broker backlog and dead letters. "
        "Exits 1 when anything is stuck (for cron), 0 otherwise."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", default=None, help="only this tenant")
        parser.add_argument("--json", action="store_true", help="one JSON object, for machines")

    def handle(self, *args: Any, tenant: str | None, json: bool, **kw: Any) -> None:
        snap = monitoring.snapshot(tenant_id_for(tenant))
        if json:
            self.stdout.write(_json_dumps(snap.as_dict()))
        else:
            self._print(snap)
        if not snap.healthy:
            raise SystemExit(1)

    def _print(self, snap: monitoring.Snapshot) -> None:
        statuses = [s.value for s in JobStatus]
        width = max([6, *(len(t.slug) for t in snap.tenants)])
        self.stdout.write("Jobs by tenant")
        self.stdout.write(
            f"  {'tenant':<{width}} " + " ".join(f"{s:>10}" for s in statuses) + "  ready for  oldest running"
        )
        for t in snap.tenants:
            oldest = _age(t.oldest_running_seconds)
            if t.oldest_running_id:
                oldest += f" (job {t.oldest_running_id})"
            self.stdout.write(
                f"  {t.slug:<{width}} " + " ".join(f"{t.counts.get(s, 0):>10}" for s in statuses)
                + f"  {_age(t.oldest_ready_queued_seconds):>9}  {oldest}"
            )
        if not snap.tenants:
            self.stdout.write("  (no tenants)")
        self.stdout.write("")
        self.stdout.write("Stuck places")
        name_width = max(len(p.name) for p in snap.places)
        for p in snap.places:
            if p.count is None:
                line = f"  {p.name:<{name_width}}  ERROR  {p.error}"
            else:
                mark = "!!" if p.count else "ok"
                line = f"  {mark} {p.name:<{name_width}} {p.count:>7}"
                if p.oldest_id:
                    line += f"  oldest: {p.oldest_id}"
            self.stdout.write(line)
        self.stdout.write("")
        backlog = ", ".join(f"{q}={'?' if n is None else n}" for q, n in snap.broker_backlog.items())
        self.stdout.write(f"Broker backlog (messages waiting): {backlog or '-'}")
        self.stdout.write(f"Dead letters (failed jobs an operator may requeue): {snap.dead_letters}")
        self.stdout.write("")
        if snap.healthy:
            self.stdout.write(self.style.SUCCESS("OK: nothing stuck."))
        else:
            stuck_places = [p.name for p in snap.places if p.count != 0]
            self.stdout.write(
                self.style.ERROR(
                    f"STUCK: {snap.stuck_jobs} item(s) in {len(stuck_places)} place(s): {', '.join(stuck_places)}. "
                    "The sweeper moves them within STALLED_INTERVAL_SECONDS; `manage.py recover_jobs` does it now."
                )
            )


def _json_dumps(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
