"""Health endpoints (no auth): liveness and readiness.

``/health/`` answers while the process serves. ``/health/ready`` checks the
dependencies for real: Postgres (``SELECT 1``) and the broker (Redis ``PING``, short
timeouts, so a dead broker answers 503 quickly instead of hanging the probe), and
names the ones that failed. Failure details go to the log, not to the response.
"""

import logging

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

logger = logging.getLogger("jobs.health")

BROKER_TIMEOUT_SECONDS = 1.0


@require_safe  # GET and HEAD (some probes send HEAD)
def live(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        logger.warning("readiness: database check failed", exc_info=True)
        return False


def broker_ok() -> bool:
    client = redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=BROKER_TIMEOUT_SECONDS, socket_connect_timeout=BROKER_TIMEOUT_SECONDS
    )
    try:
        return bool(client.ping())
    except redis.RedisError:
        logger.warning("readiness: broker check failed", exc_info=True)
        return False
    finally:
        client.close()


@require_safe  # GET and HEAD (some probes send HEAD)
def ready(request: HttpRequest) -> JsonResponse:
    checks = {"database": database_ok(), "broker": broker_ok()}
    failed = [name for name, ok in checks.items() if not ok]
    body = {
        "status": "unavailable" if failed else "ok",
        "checks": {name: "ok" if ok else "failed" for name, ok in checks.items()},
        "failed": failed,
    }
    return JsonResponse(body, status=503 if failed else 200)
