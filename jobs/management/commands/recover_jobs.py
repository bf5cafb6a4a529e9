from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from jobs import sweeper

from ._tenant_arg import tenant_id_for


class Command(BaseCommand):
    help = "Run one full sweep now (every stuck place) and print what it moved."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--tenant", metavar="SLUG", default=None, help="only this tenant's jobs")
        parser.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")

    def handle(self, *args: Any, tenant: str | None, dry_run: bool, **kw: Any) -> None:
        report = sweeper.sweep(tenant_id_for(tenant), dry_run=dry_run)
        verb = "would move" if dry_run else "moved"
        for place, ids in report.moved.items():
            self.stdout.write(f"{place}: {verb} {len(ids)}")
            for job_id in ids:
                self.stdout.write(f"  {job_id}")
        for place, error in report.errors.items():
            self.stderr.write(f"{place}: FAILED {error}")
        if not report.moved:
            self.stdout.write(f"Nothing stuck: {verb} nothing.")
        if report.dispatched:
            self.stdout.write(f"dispatch cycle sent {report.dispatched} queued job(s)")
        if report.errors:
            raise SystemExit(2)
