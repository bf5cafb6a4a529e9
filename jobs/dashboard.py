"""The operations dashboard, inside the admin site (staff only).

Per tenant: unfinished jobs by status and active/limit; every stuck place with its
count, linking to the filtered changelist; throughput and failures over the last hour;
the last repairs; a link to Flower. The page fetches its own body again every few
seconds as an HTML fragment, so it refreshes without a full page reload.

Every query here is bounded: unfinished counts go through the partial indexes of
their status, the last hour through the finished_at and event type indexes, and
stuck places through jobs.monitoring (each place's own SQL, the same the sweeper
acts on).
"""

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.db.models import Count
from django.db.models.functions import Now
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache

from . import console
from .models import EventType, Job, JobEvent, JobStatus, Tenant
from .monitoring import place_statuses

REFRESH_SECONDS = 5
UNFINISHED = [JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.WAITING]
FINISHED = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
LAST_REPAIRS = 15

# Which changelist lists a place's rows; batches/admin.py adds its places.
PLACE_CHANGELISTS: dict[str, str] = {}


def stuck_counts() -> dict[str, int | None]:
    """Rows in each stuck place now (None: counting it failed): the same numbers as
    monitor_jobs, /health/jobs and /metrics."""
    return {status.name: status.count for status in place_statuses()}


def _place_url(name: str) -> str:
    changelist = PLACE_CHANGELISTS.get(name, "admin:jobs_job_changelist")
    return reverse(changelist) + "?" + urlencode({"stuck": name})


def _tenant_rows() -> list[dict[str, Any]]:
    tenants = list(Tenant.objects.order_by("slug").values("id", "slug", "concurrency_limit", "weight"))
    counts: dict[tuple[Any, str], int] = {}
    # One grouped count per unfinished status, each served by that status's partial index.
    for status in UNFINISHED:
        for row in Job.objects.filter(status=status).order_by().values("tenant_id").annotate(n=Count("id")):
            counts[(row["tenant_id"], status)] = row["n"]
    hour_ago = Now() - timedelta(hours=1)
    for row in (
        Job.objects.filter(finished_at__gte=hour_ago).order_by().values("tenant_id", "status").annotate(n=Count("id"))
    ):
        counts[(row["tenant_id"], "last_hour_" + row["status"])] = row["n"]
    changelist = reverse("admin:jobs_job_changelist")
    out = []
    for tenant in tenants:
        by_status = {s: counts.get((tenant["id"], s), 0) for s in UNFINISHED}
        active = by_status[JobStatus.DISPATCHED] + by_status[JobStatus.RUNNING]
        out.append({
            **tenant,
            "by_status": [
                (s, n, f"{changelist}?{urlencode({'tenant__id__exact': tenant['id'], 'status__exact': s})}")
                for s, n in by_status.items()
            ],
            "active": active,
            "full": active >= tenant["concurrency_limit"],
            "succeeded": counts.get((tenant["id"], "last_hour_succeeded"), 0),
            "failed": counts.get((tenant["id"], "last_hour_failed"), 0),
            "cancelled": counts.get((tenant["id"], "last_hour_cancelled"), 0),
        })
    return out


def _throughput() -> dict[str, Any]:
    hour_ago = Now() - timedelta(hours=1)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT floor(extract(epoch FROM now() - finished_at) / 60)::int AS ago, status, count(*) "
            "FROM jobs_job WHERE finished_at >= now() - interval '1 hour' "
            "GROUP BY 1, 2"
        )
        rows = cursor.fetchall()
    per_minute = [{"succeeded": 0, "failed": 0} for _ in range(60)]
    totals = {s: 0 for s in FINISHED}
    for ago, status, n in rows:
        totals[status] = totals.get(status, 0) + n
        if 0 <= ago < 60 and status in ("succeeded", "failed"):
            per_minute[59 - ago][status] += n
    peak = max([m["succeeded"] + m["failed"] for m in per_minute] + [1])
    bars = [
        {"ok": round(48 * m["succeeded"] / peak), "bad": round(48 * m["failed"] / peak),
         "title": f"{59 - i} min ago: {m['succeeded']} ok, {m['failed']} failed"}
        for i, m in enumerate(per_minute)
    ]
    retries = JobEvent.objects.filter(type=EventType.RETRY_SCHEDULED, created_at__gte=hour_ago).count()
    return {"totals": totals, "per_minute_avg": round(totals["succeeded"] / 60, 1), "bars": bars, "retries": retries}


def _dead_letters() -> int:
    dead = Job.objects.filter(console.dead_letter_q())
    return dead.order_by()[: console.EXACT_COUNT_CAP + 1].count()


def snapshot() -> dict[str, Any]:
    counts = stuck_counts()
    places = [
        {"name": name, "label": console.place_label(name), "count": n, "failed": n is None,
         "url": _place_url(name)}
        for name, n in counts.items()
    ]
    repairs = list(
        JobEvent.objects.filter(type=EventType.REPAIRED)
        .order_by("-created_at", "-id")
        .select_related("tenant")[:LAST_REPAIRS]
    )
    with connection.cursor() as cursor:
        cursor.execute("SELECT now()")
        db_now = cursor.fetchone()[0]
    return {
        "tenants": _tenant_rows(),
        "places": places,
        "stuck_total": sum(p["count"] or 0 for p in places),
        "throughput": _throughput(),
        "dead_letters": _dead_letters(),
        "dead_letter_url": reverse("admin:jobs_job_changelist") + "?dead_letter=yes",
        "repairs": repairs,
        "db_now": db_now,
    }


class OperationsAdminSite(admin.AdminSite):
    site_header = "batchplatform console"
    site_title = "batchplatform"
    index_title = "Jobs, batches and tenants"

    def get_urls(self) -> list[URLPattern]:
        own = [
            path("operations/", self.admin_view(self.operations_view), name="operations"),
            path("operations/fragment/", self.admin_view(self.operations_fragment), name="operations-fragment"),
        ]
        return own + super().get_urls()  # type: ignore[return-value]

    def each_context(self, request: HttpRequest) -> dict[str, Any]:
        context = super().each_context(request)
        context["flower_url"] = settings.FLOWER_URL
        return context

    def _context(self, request: HttpRequest) -> dict[str, Any]:
        return {
            **self.each_context(request),
            **snapshot(),
            "title": "Operations",
            "refresh_seconds": REFRESH_SECONDS,
        }

    @method_decorator(never_cache)
    def operations_view(self, request: HttpRequest) -> HttpResponse:
        return TemplateResponse(request, "admin/operations/dashboard.html", self._context(request))

    @method_decorator(never_cache)
    def operations_fragment(self, request: HttpRequest) -> HttpResponse:
        return TemplateResponse(request, "admin/operations/fragment.html", self._context(request))
