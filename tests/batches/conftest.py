import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from batches import intake, lifecycle
from batches.models import Batch
from jobs.models import Tenant


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
