import json
import time
from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs import lifecycle
from jobs.models import Job, TERMINAL_STATUSES, Tenant
from jobs.registry import UnknownTask


class Command(BaseCommand):
    help = "Submit a job for a tenant; with --wait, wait for it to finish and print it."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("task")
        parser.add_argument("payload", nargs="?", default="null", help="JSON payload")
        parser.add_argument("--wait", action="store_true")
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args: Any, slug: str, task: str, payload: str, wait: bool, timeout: float, **kw: Any) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant {slug!r}")
        try:
            data = json.loads(payload)
            job = lifecycle.submit(tenant, task, data).job
        except (json.JSONDecodeError, UnknownTask, lifecycle.InvalidInput) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"job {job.id} {job.status}")
        if not wait:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.status in TERMINAL_STATUSES:
                self.stdout.write(json.dumps({"id": str(job.id), "status": job.status, "result": job.result, "error": job.error, "attempts": job.attempts}))
                return
            time.sleep(0.2)
        raise CommandError(f"job {job.id} still {job.status} after {timeout}s")
