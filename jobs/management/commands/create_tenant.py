from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs.models import Tenant


class Command(BaseCommand):
    help = "Create a tenant (or update its limits if it exists)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--concurrency-limit", type=int, default=None)
        parser.add_argument("--weight", type=int, default=None)
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, slug: str, concurrency_limit: int | None, weight: int | None, name: str, **kw: Any) -> None:
        if concurrency_limit is not None and concurrency_limit < 1:
            raise CommandError("--concurrency-limit must be at least 1")
        if weight is not None and weight < 1:
            raise CommandError("--weight must be at least 1")
        tenant, created = Tenant.objects.get_or_create(slug=slug, defaults={"name": name or slug})
        if concurrency_limit is not None:
            tenant.concurrency_limit = concurrency_limit
        if weight is not None:
            tenant.weight = weight
        tenant.save()
        verb = "created" if created else "updated"
        self.stdout.write(
            f"tenant {tenant.slug} {verb} (id {tenant.id}, concurrency_limit {tenant.concurrency_limit}, weight {tenant.weight})"
        )
