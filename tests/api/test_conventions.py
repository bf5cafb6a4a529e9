"""The API's shared conventions: error shape, auth, body limits, pagination, rate limit."""

import json
import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import ApiKey, Job, Tenant
from tests.api.conftest import ApiClient

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs"


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# --- auth ---------------------------------------------------------------------------


def test_no_key_is_401_unauthenticated_with_a_bearer_challenge() -> None:
    response = Client().get(JOBS)
    assert_error(response, 401, "unauthenticated")
    assert response["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "header",
    ["Bearer bp_wrongwrongwrongwrong", "Bearer", "Basic dXNlcjpwYXNz", "Bearer a b", "Bearer short"],
)
def test_wrong_key_or_scheme_is_401(header: str, api: ApiClient) -> None:
    response = Client().get(JOBS, headers={"Authorization": header})
    assert_error(response, 401, "unauthenticated")


def test_right_prefix_with_wrong_secret_is_401(tenant: Tenant) -> None:
    _, key = ApiKey.generate(tenant)
    forged = key[: ApiKey.PREFIX_LENGTH] + "x" * (len(key) - ApiKey.PREFIX_LENGTH)
    assert_error(Client().get(JOBS, headers={"Authorization": f"Bearer {forged}"}), 401, "unauthenticated")


def test_revoked_key_is_401_and_a_live_key_of_the_same_tenant_still_works(tenant: Tenant) -> None:
    revoked, revoked_key = ApiKey.generate(tenant)
    _, live_key = ApiKey.generate(tenant)
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())

    assert_error(Client().get(JOBS, headers={"Authorization": f"Bearer {revoked_key}"}), 401, "unauthenticated")
    assert Client().get(JOBS, headers={"Authorization": f"Bearer {live_key}"}).status_code == 200


def test_last_used_at_is_written_once_a_minute_not_on_every_request(
    tenant: Tenant, django_assert_num_queries: Callable
) -> None:
    api_key, key = ApiKey.generate(tenant)
    client = Client()
    headers = {"Authorization": f"Bearer {key}"}
    with django_assert_num_queries(3):  # key lookup, last_used_at update, the page
        client.get(JOBS, headers=headers)
    api_key.refresh_from_db()
    first_use = api_key.last_used_at
    assert first_use is not None
    with django_assert_num_queries(2):  # key lookup, the page: no write
        client.get(JOBS, headers=headers)
    api_key.refresh_from_db()
    assert api_key.last_used_at == first_use

    ApiKey.objects.filter(pk=api_key.pk).update(last_used_at=first_use - timedelta(minutes=2))
    client.get(JOBS, headers=headers)
    api_key.refresh_from_db()
    assert api_key.last_used_at > first_use - timedelta(minutes=2)


def test_schema_docs_and_health_need_no_key() -> None:
    client = Client()
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/health/").json() == {"status": "ok"}


# --- error shape --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/api/v1/nothing", "/api/v1/jobs/", "/api/v1/jobs/not-a-uuid", "/api/v2/jobs", "/api/"]
)
def test_unknown_api_paths_answer_json_404(path: str, api: ApiClient) -> None:
    assert_error(api.get(path), 404, "not_found")


def test_wrong_method_answers_json_405(api: ApiClient) -> None:
    response = api.client.delete(JOBS, headers=api.headers)
    assert_error(response, 405, "method_not_allowed")


def test_validation_errors_are_400_invalid_request_with_fields(api: ApiClient) -> None:
    error = assert_error(api.post(JOBS, {"task": 5, "max_attempts": "3"}), 400, "invalid_request")
    assert set(error["fields"]) == {"task", "max_attempts"}


def test_unknown_fields_are_refused(api: ApiClient) -> None:
    error = assert_error(api.post(JOBS, {"task": "examples.echo", "dealy_seconds": 5}), 400, "invalid_request")
    assert "dealy_seconds" in error["fields"]
    assert not Job.objects.exists()


def test_an_unexpected_exception_is_a_json_500_without_a_stack_trace(
    api: ApiClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from jobs import lifecycle

    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(lifecycle, "submit", explode)
    with caplog.at_level(logging.ERROR, logger="jobs.api"):
        response = api.post(JOBS, {"task": "examples.echo"})
    error = assert_error(response, 500, "server_error")
    assert "secret" not in response.content.decode()
    assert "Traceback" not in response.content.decode()
    assert "secret internal detail" in caplog.text  # logged for operators
    assert error["message"]


def test_handler500_answers_json_for_api_paths() -> None:
    from django.test import RequestFactory

    from jobs.api.errors import handler500

    response = handler500(RequestFactory().get("/api/v1/jobs"))
    assert response.status_code == 500
    assert json.loads(response.content) == {
        "error": {"code": "server_error", "message": "internal server error; the incident was logged"}
    }


# --- bodies -------------------------------------------------------------------------


def test_malformed_json_is_400_and_writes_nothing(api: ApiClient) -> None:
    assert_error(api.post(JOBS, '{"task": "examples.echo",'), 400, "invalid_request")
    assert_error(api.post(JOBS, '{"task": "examples.echo", "payload": NaN}'), 400, "invalid_request")
    assert_error(api.post(JOBS, b'{"task": "\xff"}'), 400, "invalid_request")
    assert_error(api.post(JOBS, "[" * 100_000), 400, "invalid_request")
    assert_error(api.post(JOBS, '["examples.echo"]'), 400, "invalid_request")
    assert not Job.objects.exists()


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_non_json_body_is_415(api: ApiClient, content_type: str) -> None:
    assert_error(api.post(JOBS, "task=examples.echo", content_type=content_type), 415, "unsupported_media_type")
    assert not Job.objects.exists()


def test_declared_oversized_body_is_413_before_reading(api: ApiClient, settings) -> None:
    settings.JOB_PAYLOAD_MAX_BYTES = 1000
    body = '{"task": "examples.echo", "payload": "' + "x" * 2000 + '"}'
    error = assert_error(api.post(JOBS, body), 413, "payload_too_large")
    assert error["limit"] == 1000
    assert not Job.objects.exists()


def test_body_exactly_at_the_limit_is_accepted(api: ApiClient, settings) -> None:
    head, tail = '{"task": "examples.echo", "payload": "', '"}'
    settings.JOB_PAYLOAD_MAX_BYTES = 1000
    body = head + "x" * (1000 - len(head) - len(tail)) + tail
    assert len(body) == 1000
    assert api.post(JOBS, body).status_code == 201


def test_chunked_body_is_read_up_to_the_limit_only(api: ApiClient, settings) -> None:
    """A body without Content-Length (chunked): the reader stops at limit + 1 bytes."""
    import io

    from django.test import RequestFactory
    from rest_framework.request import Request

    from jobs.api import limits
    from jobs.api.errors import ApiError

    class CountingStream(io.BytesIO):
        consumed = 0

        def read(self, size: int = -1) -> bytes:
            chunk = super().read(size)
            self.consumed += len(chunk)
            return chunk

    def chunked_request(body: bytes) -> tuple[Request, CountingStream]:
        stream = CountingStream(body)
        request = RequestFactory().post(
            JOBS, content_type="application/json", HTTP_TRANSFER_ENCODING="chunked"
        )
        request.META.pop("CONTENT_LENGTH", None)
        request.META["wsgi.input"] = stream
        return Request(request), stream

    request, stream = chunked_request(b'{"task": "examples.echo"}')
    assert limits.json_body(request, limit=100) == {"task": "examples.echo"}

    request, stream = chunked_request(b'{"payload": "' + b"x" * 10_000_000 + b'"}')
    with pytest.raises(ApiError) as raised:
        limits.json_body(request, limit=1000)
    assert raised.value.status == 413
    assert stream.consumed == 1001


# --- pagination ---------------------------------------------------------------------


def test_cursor_pages_walk_every_job_once_newest_first(api: ApiClient) -> None:
    from jobs import lifecycle

    created = [lifecycle.submit(api.tenant, "examples.echo", {"i": i}).job.id for i in range(7)]
    seen, url, pages = [], f"{JOBS}?limit=3", 0
    while url:
        body = api.client.get(url, headers=api.headers).json()
        assert set(body) == {"results", "next"}
        seen += [row["id"] for row in body["results"]]
        url = body["next"]
        pages += 1
    expected = list(
        Job.objects.filter(tenant=api.tenant).order_by("-created_at", "-id").values_list("id", flat=True)
    )
    assert seen == [str(i) for i in expected]
    assert sorted(seen) == sorted(str(i) for i in created)
    assert pages == 3


def test_pages_are_stable_when_jobs_share_created_at(api: ApiClient) -> None:
    from jobs import lifecycle

    for i in range(5):
        lifecycle.submit(api.tenant, "examples.echo", {"i": i})
    # As rows inserted by one statement (a batch's children) do.
    Job.objects.update(created_at=timezone.now())
    assert Job.objects.values("created_at").distinct().count() == 1
    first = api.get(JOBS, limit=2).json()
    second = api.client.get(first["next"], headers=api.headers).json()
    third = api.client.get(second["next"], headers=api.headers).json()
    ids = [r["id"] for page in (first, second, third) for r in page["results"]]
    assert len(ids) == len(set(ids)) == 5
    assert third["next"] is None


@pytest.mark.parametrize("params", [{"cursor": "garbage"}, {"cursor": "WyJ4Il0"}, {"limit": "0"}, {"limit": "201"}, {"limit": "x"}])
def test_bad_cursor_or_limit_is_400(api: ApiClient, params: dict) -> None:
    assert_error(api.get(JOBS, **params), 400, "invalid_request")


# --- rate limit ---------------------------------------------------------------------


def test_create_calls_past_the_bucket_get_429_with_retry_after(
    api: ApiClient, tenant: Tenant
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(rate_limit_max=3, rate_limit_refill=1, rate_limit_refill_seconds=60)
    api.tenant.refresh_from_db()
    statuses = [api.post(JOBS, {"task": "examples.echo"}).status_code for _ in range(3)]
    assert statuses == [201, 201, 201]
    response = api.post(JOBS, {"task": "examples.echo"})
    error = assert_error(response, 429, "rate_limited")
    assert 1 <= int(response["Retry-After"]) <= 60
    assert error["retry_after"] == int(response["Retry-After"])
    assert Job.objects.count() == 3
    # Reads are not rate limited.
    assert api.get(JOBS).status_code == 200


def test_rate_limit_is_per_tenant(make_client: Callable[..., ApiClient], tenant_factory: Callable[..., Tenant]) -> None:
    small = make_client(tenant_factory(rate_limit_max=1, rate_limit_refill=1, rate_limit_refill_seconds=60))
    other = make_client()
    assert small.post(JOBS, {"task": "examples.echo"}).status_code == 201
    assert small.post(JOBS, {"task": "examples.echo"}).status_code == 429
    assert other.post(JOBS, {"task": "examples.echo"}).status_code == 201


def test_bucket_refills_over_time(tenant_factory: Callable[..., Tenant]) -> None:
    """Refill is continuous: an empty bucket answers 429, and allows again once refilled."""
    from jobs.api import ratelimit
    from tests.workers import wait_until

    tenant = tenant_factory(rate_limit_max=2, rate_limit_refill=1, rate_limit_refill_seconds=0.2)
    assert ratelimit.consume(tenant).allowed and ratelimit.consume(tenant).allowed
    assert not ratelimit.consume(tenant).allowed
    wait_until(lambda: ratelimit.consume(tenant).allowed, 10, what="a token to refill")


def test_rate_limiter_fails_open_when_redis_is_unreachable(
    api: ApiClient, tenant: Tenant, settings, caplog: pytest.LogCaptureFixture
) -> None:
    Tenant.objects.filter(pk=tenant.pk).update(rate_limit_max=1)
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    with caplog.at_level(logging.WARNING, logger="jobs.api.ratelimit"):
        statuses = [api.post(JOBS, {"task": "examples.echo"}).status_code for _ in range(3)]
    assert statuses == [201, 201, 201]
    assert "fail open" in caplog.text
    assert Job.objects.count() == 3


def test_post_to_an_unknown_api_path_is_a_json_404_not_a_csrf_page(api: ApiClient) -> None:
    assert_error(api.post("/api/v1/jobs/not-a-uuid/cancel"), 404, "not_found")


def test_schema_describes_the_error_answers_and_the_bearer_scheme() -> None:
    schema = Client().get("/api/schema/?format=json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "An API key from `create_api_key`."
    }
    create = schema["paths"]["/api/v1/jobs"]["post"]
    error_ref = {"$ref": "#/components/schemas/Error"}
    for code in ("400", "401", "409", "413", "415", "429"):
        assert create["responses"][code]["content"]["application/json"]["schema"] == error_ref
    assert "Retry-After" in create["responses"]["429"]["headers"]
    assert set(create["responses"]) >= {"200", "201"}
    for path in ("/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/cancel", "/api/v1/jobs/{job_id}/requeue"):
        for operation in schema["paths"][path].values():
            assert operation["responses"]["404"]["content"]["application/json"]["schema"] == error_ref
            assert operation["security"] == [{"bearerAuth": []}]
    error = schema["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"code", "message"}
