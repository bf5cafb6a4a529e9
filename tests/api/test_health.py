"""/health/ and /health/ready: the real dependencies, no key needed."""

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_live_answers_ok() -> None:
    response = Client().get("/health/")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_checks_postgres_and_the_broker() -> None:
    response = Client().get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}, "failed": []}


def test_ready_is_503_naming_the_broker_when_redis_is_unreachable(settings) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = Client().get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["broker"]
    assert body["checks"] == {"database": "ok", "broker": "failed"}


def test_ready_is_503_naming_the_database_when_postgres_refuses(settings) -> None:
    from django.db import connections
    from django.db.utils import ConnectionHandler

    # A second connection handler whose default database does not exist: the check
    # opens a real connection and Postgres refuses it.
    broken = dict(connections["default"].settings_dict, NAME="bp_api_no_such_database")
    handler = ConnectionHandler({"default": broken})
    from jobs import health

    original = health.connection
    health.connection = handler["default"]
    try:
        response = Client().get("/health/ready")
    finally:
        health.connection = original
        handler["default"].close()
    assert response.status_code == 503
    assert response.json()["failed"] == ["database"]


def test_docs_page_and_its_assets_are_served_without_a_cdn() -> None:
    client = Client()
    page = client.get("/api/docs/").content.decode()
    assert "cdn" not in page.lower() and "unpkg" not in page.lower()
    asset = client.get("/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")
    assert asset.status_code == 200
    assert client.get("/static/other/../../settings.py").status_code == 404


def test_probes_may_use_head_but_not_post() -> None:
    client = Client()
    assert client.head("/health/").status_code == 200
    assert client.head("/health/ready").status_code == 200
    assert client.post("/health/ready").status_code == 405
