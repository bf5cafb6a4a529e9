"""The operator's console for tenants, API keys, jobs, executions and events.

Job, execution and event rows are read-only here: they change only through the
lifecycle functions the actions call (the same ones the API and the sweeper call).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString
from django.utils.timesince import timesince

from . import lifecycle, registry
from .console import (
    NEXT_FIELD,
    ActionReport,
    EstimatedCountPaginator,
    badge,
    confirm_first,
    count_per_row,
    dead_letter_q,
    ids_of,
    operator,
    place_label,
    place_names,
    pretty_json,
    progress_bar,
    repair_now,
    stuck_ids,
)
from .models import ACTIVE_STATUSES, ApiKey, Execution, Job, JobEvent, Tenant


def short(value: object) -> str:
    return str(value)[:8]


def age(moment: Any) -> str:
    return timesince(moment, timezone.now()) if moment else "-"


def timestamp(field: str) -> Any:
    """A read-only column showing a time to the millisecond (leases live in seconds)."""

    @admin.display(description=field.replace("_", " "), ordering=field)
    def show(self: Any, obj: Any) -> str:
        value = getattr(obj, field)
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC" if value else "-"

    show.__name__ = f"{field}_exact"
    return show


def link_to_job(job_id: UUID | None) -> SafeString | str:
    if job_id is None:
        return "-"
    return format_html('<a href="{}">{}</a>', reverse("admin:jobs_job_change", args=[job_id]), short(job_id))


def parse_uuid(term: str) -> UUID | None:
    try:
        return UUID(term.strip())
    except ValueError:
        return None


def exact_search(queryset: QuerySet[Any], search_term: str, *id_fields: str) -> tuple[QuerySet[Any], bool]:
    """The idempotency key, or a UUID in any of `id_fields`: exact matches through
    indexes, never a LIKE scan of a large table."""
    term = search_term.strip()
    if not term:
        return queryset, False
    match = Q(idempotency_key=term)
    as_uuid = parse_uuid(term)
    if as_uuid is not None:
        for id_field in id_fields:
            match |= Q(**{id_field: as_uuid})
    return queryset.filter(match), False


# --- tenants and keys -----------------------------------------------------------------


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "concurrency_limit", "weight", "active_over_limit", "created_at"]
    list_editable = ["concurrency_limit", "weight"]
    search_fields = ["slug", "name", "=id"]
    readonly_fields = ["id", "dispatch_deficit", "created_at"]
    fields = [
        "id", "slug", "name", "concurrency_limit", "weight",
        "rate_limit_max", "rate_limit_refill", "rate_limit_refill_seconds", "dispatch_deficit", "created_at",
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Tenant]:
        # Counted per row on the partial active index.
        active = count_per_row(Job.objects.filter(status__in=ACTIVE_STATUSES), "tenant")
        return super().get_queryset(request).annotate(active=active)

    @admin.display(description="active / limit")
    def active_over_limit(self, obj: Tenant) -> str:
        return f"{getattr(obj, 'active', 0)} / {obj.concurrency_limit}"


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix_shown", "tenant", "name", "created_at", "last_used_at", "revoked"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter), "tenant"]
    list_select_related = ["tenant"]
    search_fields = ["prefix", "name", "tenant__slug"]
    actions = ["revoke_keys"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return ["tenant", "name"]
        return ["id", "tenant", "name", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None) -> list[str]:
        if obj is None:
            return []
        return ["id", "tenant", "prefix", "created_at", "last_used_at", "revoked_at"]

    @admin.display(description="prefix", ordering="prefix")
    def prefix_shown(self, obj: ApiKey) -> str:
        return f"{obj.prefix}…"

    @admin.display(description="revoked", boolean=True, ordering="revoked_at")
    def revoked(self, obj: ApiKey) -> bool:
        return obj.revoked_at is not None

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # Only the hash is stored: the plain key is shown this once and never again.
        created, plain = ApiKey.generate(obj.tenant, obj.name)
        obj.pk, obj.prefix, obj.key_hash, obj.created_at = created.pk, created.prefix, created.key_hash, created.created_at
        obj._state.adding = False
        self.message_user(
            request,
            format_html(
                "New API key for {}: <code id=\"bp-new-key\">{}</code> — copy it now, it is not shown again.",
                obj.tenant, plain,
            ),
            messages.WARNING,
        )

    @admin.action(description="Revoke selected API keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        report = ActionReport("Revoked", "API key", "API keys")
        report.skip("already revoked", rows=queryset.filter(revoked_at__isnull=False).count())
        # Conditional update: a key revoked twice keeps its first revocation time.
        report.change(rows=queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now()))
        report.send(self, request)


# --- jobs ----------------------------------------------------------------------------------


@contextmanager
def skipping_refused(report: ActionReport, refused: str) -> Iterator[None]:
    """A job the transition refuses (InvalidState "job is <status>") is skipped as
    "<refused>: <status>", one deleted meanwhile as "gone"."""
    try:
        yield
    except lifecycle.InvalidState as exc:
        report.skip(f"{refused}: {str(exc).removeprefix('job is ')}")
    except Job.DoesNotExist:
        report.skip("gone")


class TaskFilter(admin.SimpleListFilter):
    """Registered task names, not a DISTINCT over the whole job table."""

    title = "task"
    parameter_name = "task"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in registry.registered_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(task=self.value()) if self.value() else queryset


class StuckFilter(admin.SimpleListFilter):
    """Rows the sweeper's finders see in a stuck place right now (each capped at its
    chunk size): the same definition the sweeper acts on."""

    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("any", "in any stuck place")] + [(name, place_label(name)) for name in place_names()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if not value:
            return queryset
        return queryset.filter(pk__in=stuck_ids(None if value == "any" else value))


class DeadLetterFilter(admin.SimpleListFilter):
    title = "dead letter"
    parameter_name = "dead_letter"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "dead letter (failed after exhausting attempts)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return queryset.filter(dead_letter_q()) if self.value() == "yes" else queryset


class ReadOnlyMixin:
    """State changes only through actions; forms never write these rows.

    The object's page offers the same actions as buttons: they post to the
    changelist's action endpoint with this one row selected and come back here.
    """

    change_form_template = "admin/console/readonly_change_form.html"

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> Any:
        opts = self.model._meta  # type: ignore[attr-defined]
        actions = [
            (name, description % {"verbose_name_plural": opts.verbose_name_plural})
            for _, name, description in self.get_actions(request).values()  # type: ignore[attr-defined]
        ]
        extra = {
            "console_actions": actions,
            "console_object_id": object_id,
            "console_changelist": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            "console_next": request.get_full_path(),
        }
        return super().change_view(request, object_id, form_url, {**extra, **(extra_context or {})})  # type: ignore[misc]

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> Any:
        response = super().response_action(request, queryset)  # type: ignore[misc]
        next_url = request.POST.get(NEXT_FIELD, "")
        if isinstance(response, HttpResponseRedirect) and url_has_allowed_host_and_scheme(
            next_url, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            return HttpResponseRedirect(next_url)
        return response

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ConsoleAdmin(ReadOnlyMixin, admin.ModelAdmin):
    """A read-only list of a table that may be large (pages estimated past a cap, never
    a full count), and the columns the lists pick from."""

    list_per_page = 50
    paginator = EstimatedCountPaginator
    show_full_result_count = False

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: Any) -> str:
        return short(obj.pk)

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Any) -> SafeString:
        return badge(obj.status)

    @admin.display(description="age", ordering="created_at")
    def age(self, obj: Any) -> str:
        return age(obj.created_at)


class JobRowsAdmin(ConsoleAdmin):
    """Rows that belong to a job (executions, events): a job id in the search box finds them."""

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Any], bool]:
        as_uuid = parse_uuid(search_term)
        if as_uuid is not None:
            return queryset.filter(job_id=as_uuid), False
        return super().get_search_results(request, queryset, search_term)

    @admin.display(description="job")
    def job_link(self, obj: Any) -> SafeString | str:
        return link_to_job(obj.job_id)


class ExecutionInline(ReadOnlyMixin, admin.TabularInline):
    model = Execution
    extra = 0
    fields = ["attempt", "status_badge", "worker", "started_at_exact", "finished_at_exact", "error"]
    readonly_fields = fields
    ordering = ["started_at", "id"]
    started_at_exact = timestamp("started_at")
    finished_at_exact = timestamp("finished_at")

    @admin.display(description="status")
    def status_badge(self, obj: Execution) -> SafeString:
        return badge(obj.status)


class JobEventInline(ReadOnlyMixin, admin.TabularInline):
    model = JobEvent
    extra = 0
    fields = ["created_at_exact", "type", "attempt", "message"]
    readonly_fields = fields
    created_at_exact = timestamp("created_at")


@admin.register(Job)
class JobAdmin(ConsoleAdmin):
    list_display = [
        "short_id", "task", "tenant", "status_badge", "attempts_shown", "progress_shown", "age", "batch_link",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", StuckFilter, DeadLetterFilter, "tenant", TaskFilter]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    search_fields = ["idempotency_key"]
    search_help_text = "A job, batch or parent id, or an idempotency key (exact)."
    inlines = [ExecutionInline, JobEventInline]
    actions = ["cancel_jobs", "requeue_jobs", "repair_jobs"]
    fieldsets = [
        (None, {"fields": [
            "id", "tenant", "task", "status_badge", "attempts_shown", "stalled_count", "priority",
            "progress_shown", "error_shown", "result_shown",
        ]}),
        ("Times", {"fields": [
            "created_at_exact", "run_at_exact", "started_at_exact", "finished_at_exact", "updated_at_exact",
        ]}),
        ("Relations", {"fields": ["batch", "batch_index", "parent", "root", "waiting_for"]}),
        ("Payload", {"fields": ["payload_shown", "idempotency_key", "payload_hash"]}),
        ("Internal (fencing, lease, deadlines)", {"classes": ["collapse"], "fields": [
            "queue", "timeout_seconds", "dispatch_token", "dispatched_at_exact", "dispatch_deadline_exact",
            "lease_token", "lease_owner", "lease_expires_at_exact", "timeout_at_exact",
        ]}),
    ]
    readonly_fields = [
        "status_badge", "attempts_shown", "progress_shown", "error_shown", "result_shown", "payload_shown",
        "created_at_exact", "run_at_exact", "started_at_exact", "finished_at_exact", "updated_at_exact",
        "dispatched_at_exact", "dispatch_deadline_exact", "lease_expires_at_exact", "timeout_at_exact",
    ]
    created_at_exact = timestamp("created_at")
    run_at_exact = timestamp("run_at")
    started_at_exact = timestamp("started_at")
    finished_at_exact = timestamp("finished_at")
    updated_at_exact = timestamp("updated_at")
    dispatched_at_exact = timestamp("dispatched_at")
    dispatch_deadline_exact = timestamp("dispatch_deadline")
    lease_expires_at_exact = timestamp("lease_expires_at")
    timeout_at_exact = timestamp("timeout_at")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Job], search_term: str
    ) -> tuple[QuerySet[Job], bool]:
        return exact_search(queryset, search_term, "id", "batch_id", "parent_id")

    # --- columns

    @admin.display(description="attempts")
    def attempts_shown(self, obj: Job) -> str:
        return f"{obj.attempts} / {obj.max_attempts}"

    @admin.display(description="progress")
    def progress_shown(self, obj: Job) -> SafeString | str:
        return progress_bar(obj.progress)

    @admin.display(description="batch")
    def batch_link(self, obj: Job) -> SafeString | str:
        if obj.batch_id is None:
            return "-"
        url = reverse("admin:batches_batch_change", args=[obj.batch_id])
        return format_html('<a href="{}">{}</a> #{}', url, short(obj.batch_id), obj.batch_index)

    @admin.display(description="error")
    def error_shown(self, obj: Job) -> SafeString | str:
        return pretty_json(obj.error)

    @admin.display(description="result")
    def result_shown(self, obj: Job) -> SafeString | str:
        return pretty_json(obj.result)

    @admin.display(description="payload")
    def payload_shown(self, obj: Job) -> SafeString | str:
        return pretty_json(obj.payload)

    # --- permissions for actions

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.cancel_job")

    def has_requeue_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.requeue_job")

    def has_repair_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("jobs.repair_job")

    # --- actions

    @admin.action(description="Cancel selected jobs (and their unfinished children)", permissions=["cancel"])
    @confirm_first(
        title="Cancel jobs",
        warning="Cancel these jobs? Their unfinished child jobs are cancelled too; "
                "running handlers are told to stop and their results are refused.",
        reason_label="Reason (stored on each job's error and event)", reason_default="cancelled by operator",
    )
    def cancel_jobs(self, request: HttpRequest, queryset: QuerySet[Job], reason: str) -> None:
        report = ActionReport("Cancelled", "job", "jobs")
        for job_id in ids_of(queryset):
            with skipping_refused(report, "already finished"):
                moved = lifecycle.cancel(job_id, reason)
                if job_id in moved:
                    report.change("with unfinished children" if len(moved) > 1 else None)
                else:
                    report.skip("already cancelled")
        report.send(self, request)

    @admin.action(description="Requeue selected failed or cancelled jobs (fresh attempt budget)",
                  permissions=["requeue"])
    def requeue_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        report = ActionReport("Requeued", "job", "jobs")
        for job_id in ids_of(queryset):
            with skipping_refused(report, "not failed or cancelled"):
                lifecycle.requeue(job_id, f"requeued by operator ({operator(request)})")
                report.change()
        report.send(self, request)

    @admin.action(description="Repair now: diagnose where each job is stuck and apply that repair",
                  permissions=["repair"])
    def repair_jobs(self, request: HttpRequest, queryset: QuerySet[Job]) -> None:
        report = repair_now(queryset.select_related(None).only("id", "tenant_id").order_by("id"), ActionReport("Repaired", "job", "jobs"))
        report.send(self, request)


# --- executions and events ---------------------------------------------------------------


@admin.register(Execution)
class ExecutionAdmin(JobRowsAdmin):
    list_display = ["id", "job_link", "task", "attempt", "status_badge", "worker", "started_at", "duration"]
    list_filter = ["status"]
    list_select_related = ["job"]
    date_hierarchy = "started_at"
    ordering = ["-id"]  # insertion order through the primary key index, no sort of the table
    search_fields = ["worker"]
    search_help_text = "A job id (exact) or a worker name."

    @admin.display(description="task")
    def task(self, obj: Execution) -> str:
        return obj.job.task

    @admin.display(description="duration")
    def duration(self, obj: Execution) -> str:
        if obj.finished_at is None:
            return "-"
        return f"{(obj.finished_at - obj.started_at).total_seconds():.2f}s"


@admin.register(JobEvent)
class JobEventAdmin(JobRowsAdmin):
    list_display = ["id", "created_at", "type", "job_link", "tenant", "attempt", "message"]
    list_filter = ["type", "tenant"]
    list_select_related = ["tenant"]
    list_per_page = 100
    date_hierarchy = "created_at"
    ordering = ["-id"]
    search_fields = ["message"]
    search_help_text = "A job id (exact) or text in the message."
