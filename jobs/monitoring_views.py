"""`/health/jobs` and `/metrics`: no auth, counts only (never ids or payloads)."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics, monitoring


@never_cache
@require_GET
def health_jobs(request: HttpRequest) -> JsonResponse:
    """200 when no sweeper place holds anything, else 503 (for load balancers and alerts)."""
    snap = monitoring.snapshot(tenants=False)
    body = {"healthy": snap.healthy, "stuck_jobs": snap.stuck_jobs, "stuck": snap.stuck}
    return JsonResponse(body, status=200 if snap.healthy else 503)


@never_cache
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(generate_latest(metrics.registry()), content_type=CONTENT_TYPE_LATEST)
