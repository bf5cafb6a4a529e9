"""Tenants (limits editable) and API keys (plain key shown once, revoke)."""

import re
from collections.abc import Callable

from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.test import Client
from django.urls import reverse

from jobs.models import ApiKey, Tenant
from tests.admin.conftest import messages_of


def test_tenant_concurrency_limit_and_weight_are_editable_and_shown_with_active_count(
    admin_client: Client, tenant: Tenant
) -> None:
    url = reverse("admin:jobs_tenant_change", args=[tenant.id])
    response = admin_client.post(url, {
        "slug": tenant.slug, "name": "Acme", "concurrency_limit": "7", "weight": "3",
        "rate_limit_max": "", "rate_limit_refill": "", "rate_limit_refill_seconds": "",
    })
    assert response.status_code == 302, response.content[:3000]
    tenant.refresh_from_db()
    assert (tenant.concurrency_limit, tenant.weight, tenant.name) == (7, 3, "Acme")
    listing = admin_client.get(reverse("admin:jobs_tenant_changelist"))
    assert "0 / 7" in listing.content.decode()


def test_creating_an_api_key_shows_the_plain_key_once_and_stores_only_its_hash(
    admin_client: Client, tenant: Tenant
) -> None:
    response = admin_client.post(
        reverse("admin:jobs_apikey_add"), {"tenant": str(tenant.id), "name": "ci"}, follow=True
    )

    shown = re.search(r'id="bp-new-key">(bp_[^<]+)<', response.content.decode())
    assert shown is not None
    key = shown.group(1)
    stored = ApiKey.objects.get(tenant=tenant)
    assert stored.key_hash == ApiKey.hash_key(key) and stored.prefix == key[: ApiKey.PREFIX_LENGTH]
    assert stored.name == "ci"
    again = admin_client.get(reverse("admin:jobs_apikey_change", args=[stored.id]))
    assert key not in again.content.decode()
    listing = admin_client.get(reverse("admin:jobs_apikey_changelist")).content.decode()
    assert stored.prefix in listing and key not in listing


def test_revoke_revokes_active_keys_and_skips_revoked_ones(admin_client: Client, tenant: Tenant) -> None:
    active, _ = ApiKey.generate(tenant, "a")
    revoked, _ = ApiKey.generate(tenant, "b")
    ApiKey.objects.filter(id=revoked.id).update(revoked_at="2026-01-01T00:00:00Z")

    response = admin_client.post(
        reverse("admin:jobs_apikey_changelist"),
        {"action": "revoke_keys", ACTION_CHECKBOX_NAME: [str(active.id), str(revoked.id)], "index": "0"},
        follow=True,
    )

    assert messages_of(response) == ["Revoked 1 API key.", "Skipped 1: already revoked (1)."]
    active.refresh_from_db()
    revoked.refresh_from_db()
    assert active.revoked_at is not None and revoked.revoked_at.year == 2026 and revoked.revoked_at.month == 1


def test_staff_without_change_permission_cannot_revoke(
    staff_factory: Callable[..., Client], tenant: Tenant
) -> None:
    key, _ = ApiKey.generate(tenant)
    viewer = staff_factory("jobs.view_apikey")
    viewer.post(
        reverse("admin:jobs_apikey_changelist"),
        {"action": "revoke_keys", ACTION_CHECKBOX_NAME: [str(key.id)], "index": "0"},
    )
    key.refresh_from_db()
    assert key.revoked_at is None
