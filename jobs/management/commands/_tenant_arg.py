"""The `--tenant SLUG` option shared by the monitoring commands."""

from uuid import UUID

from django.core.management.base import CommandError

from jobs.models import Tenant


def tenant_id_for(slug: str | None) -> UUID | None:
    if slug is None:
        return None
    tenant = Tenant.objects.filter(slug=slug).first()
    if tenant is None:
        raise CommandError(f"no tenant with slug {slug!r}")
    return tenant.id
