from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client

from jobs.models import ApiKey, Tenant


class ApiClient:
    """The Django test client with a bearer key and JSON bodies."""

    def __init__(self, key: str | None) -> None:
        self.client = Client()
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(path, params, headers=self.headers)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("content_type", "application/json")
        return self.client.post(path, body if body is not None else {}, headers=self.headers, **kwargs)


@pytest.fixture
def make_client(tenant_factory: Callable[..., Tenant]) -> Callable[..., ApiClient]:
    def make(tenant: Tenant | None = None) -> ApiClient:
        tenant = tenant or tenant_factory()
        _, key = ApiKey.generate(tenant)
        client = ApiClient(key)
        client.tenant = tenant  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def api(make_client: Callable[..., ApiClient], tenant: Tenant) -> ApiClient:
    return make_client(tenant)


@pytest.fixture
def other_api(make_client: Callable[..., ApiClient]) -> ApiClient:
    return make_client()
