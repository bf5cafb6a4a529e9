from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from jobs.models import ApiKey, Tenant


class Command(BaseCommand):
    help = "Create an API key for a tenant and print it once (only its hash is stored)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("slug")
        parser.add_argument("--name", default="")

    def handle(self, *args: Any, slug: str, name: str, **kw: Any) -> None:
        tenant = Tenant.objects.filter(slug=slug).first()
        if tenant is None:
            raise CommandError(f"no tenant {slug!r}; create it with `create_tenant {slug}`")
        _, key = ApiKey.generate(tenant, name=name)
        self.stdout.write(key)
