import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from batches import intake, lifecycle
from batches.models import Batch
from jobs.models import ApiKey, Tenant
from tests.api.conftest import ApiClient


def ndjson(items: list[Any]) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


def stream(batch: Batch, body: bytes) -> intake.IntakeResult:
    return intake.add_items(batch.id, intake.read_lines(io.BytesIO(body).readline))


@pytest.fixture
def batch_factory(tenant: Tenant) -> Callable[..., Batch]:
    def make(**overrides: Any) -> Batch:
        owner = overrides.pop("tenant", tenant)
        fields: dict[str, Any] = {"task": "examples.echo", "run_count": 3}
        fields.update(overrides)
        return lifecycle.create_batch(owner, **fields).batch

    return make


@pytest.fixture
def make_client(tenant_factory: Callable[..., Tenant]) -> Callable[..., ApiClient]:
    def make(owner: Tenant | None = None) -> ApiClient:
        owner = owner or tenant_factory()
        _, key = ApiKey.generate(owner)
        client = ApiClient(key)
        client.tenant = owner  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def api(make_client: Callable[..., ApiClient], tenant: Tenant) -> ApiClient:
    return make_client(tenant)


@pytest.fixture
def other_api(make_client: Callable[..., ApiClient]) -> ApiClient:
    return make_client()
