"""The OpenAPI schema against the real server: schemathesis over every operation.

Each operation gets a fixed number of generated requests, valid ones and invalid
ones, with derandomised generation (a fixed seed), so a run is repeatable. Half the
cases on ``/jobs/{job_id}...`` use a real job of the tenant (one queued, one failed)
instead of a random id, so 200 and 409 answers are checked against the schema too.

Checks: no 5xx, every status code and content type documented, every response body
and header as the schema says, and invalid requests refused with a 4xx.
(``schemathesis.pytest.from_fixture`` needs pytest < 9, hence the plain loop over
``operation.as_strategy()``.)
"""

import itertools
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis import checks as st_checks

from jobs import lifecycle
from jobs.models import ApiKey, Job, JobStatus, Tenant

EXAMPLES_PER_OPERATION = 30

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_operation_answers_as_its_schema_says(
    live_server: Any, broker: redis.Redis, tenant: Tenant, mode: GenerationMode
) -> None:
    _, key = ApiKey.generate(tenant)
    queued = lifecycle.submit(tenant, "examples.echo", {"seeded": 1}, delay_seconds=3600).job
    failed = lifecycle.submit(tenant, "examples.echo", {"seeded": 2}, delay_seconds=3600).job
    Job.objects.filter(pk=failed.pk).update(status=JobStatus.FAILED, error={"type": "X", "message": "y"})
    job_ids = itertools.cycle([None, str(queued.id), None, str(failed.id)])
    headers = {"Authorization": f"Bearer {key}"}
    extra_checks = [st_checks.negative_data_rejection] if mode == GenerationMode.NEGATIVE else []

    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {
        "/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/executions",
        "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/requeue",
    }
    calls = 0
    for operation in operations:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION, derandomize=True, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            nonlocal calls
            if "job_id" in (case.path_parameters or {}):
                job_id = next(job_ids)
                if job_id is not None and mode == GenerationMode.POSITIVE:
                    case.path_parameters["job_id"] = job_id
            case.call_and_validate(headers=headers, checks=CHECKS + extra_checks)
            calls += 1

        run()
    assert calls >= len(operations)
