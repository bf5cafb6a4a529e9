"""Bearer API keys: ``Authorization: Bearer <key>``.

The key's first ``ApiKey.PREFIX_LENGTH`` characters find the row (one indexed query,
tenant joined); the SHA-256 of the whole key is compared in constant time. Revoked
keys are refused. ``last_used_at`` is written at most once a minute per key (a
conditional UPDATE), so a busy client does not turn every read into a write.

After authentication ``request.auth`` is the ``ApiKey`` and ``tenant_of(request)`` its
tenant; ``request.user`` stays None (keys are not Django users). No key, a wrong key
and a revoked key all answer 401 ``unauthenticated`` (see errors.py); the message does
not say which, so a caller cannot probe for valid prefixes.
"""

import hmac
from datetime import timedelta
from typing import Any

from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from jobs.models import ApiKey, Tenant

LAST_USED_RESOLUTION = timedelta(minutes=1)
INVALID_KEY = "invalid or revoked API key"


class BearerKeyAuthentication(BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[None, ApiKey] | None:
        parts = get_authorization_header(request).split()
        if not parts:
            return None  # no credentials: HasApiKey answers 401
        if len(parts) != 2 or parts[0].lower() != self.keyword.lower().encode():
            raise exceptions.AuthenticationFailed("expected the header Authorization: Bearer <key>")
        try:
            key = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed(INVALID_KEY) from None
        api_key = find_key(key)
        if api_key is None:
            raise exceptions.AuthenticationFailed(INVALID_KEY)
        touch(api_key)
        return (None, api_key)

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) and tells clients which scheme to use.
        return self.keyword


def find_key(key: str) -> ApiKey | None:
    """The live key matching ``key``, or None (unknown, wrong, revoked)."""
    if len(key) <= ApiKey.PREFIX_LENGTH:
        return None
    api_key = ApiKey.objects.select_related("tenant").filter(prefix=key[: ApiKey.PREFIX_LENGTH]).first()
    if api_key is None:
        return None
    if not hmac.compare_digest(api_key.key_hash.encode(), ApiKey.hash_key(key).encode()):
        return None
    if api_key.revoked_at is not None:
        return None
    return api_key


def touch(api_key: ApiKey) -> None:
    """Record use, at most once per LAST_USED_RESOLUTION (no write on most requests)."""
    now = timezone.now()
    cutoff = now - LAST_USED_RESOLUTION
    if api_key.last_used_at is not None and api_key.last_used_at > cutoff:
        return
    # Conditional, so concurrent requests write once between them.
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=cutoff)
    ).update(last_used_at=now)
    api_key.last_used_at = now


class HasApiKey(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return isinstance(request.auth, ApiKey)


def tenant_of(request: Request) -> Tenant:
    """The tenant of the authenticated key; every query a view makes is scoped to it."""
    api_key = request.auth
    if not isinstance(api_key, ApiKey):  # a view without HasApiKey called this
        raise exceptions.NotAuthenticated()
    return api_key.tenant


class BearerKeyScheme(OpenApiAuthenticationExtension):
    target_class = BearerKeyAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API key from `create_api_key`."}
