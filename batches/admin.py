"""The operator's console for batches and waitpoints.

Rows are read-only; the actions call batches.lifecycle (cancel, abort, recount,
complete, waitpoint completion) and the sweeper's own repairs, as the API and the
sweeper do. The actions need the model's `change` permission (no form can change
these rows: `change` here means "may operate on").
"""

from typing import Any
from uuid import UUID

from django.contrib import admin
from django.db import transaction
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from jobs import dashboard
from jobs.admin import ConsoleAdmin, StuckFilter, exact_search, link_to_job, short, timestamp
from jobs.console import (
    ActionReport,
    badge,
    confirm_first,
    count_per_row,
    diagnose,
    ids_of,
    operator,
    place_label,
    pretty_json,
    progress_bar,
)
from jobs.lifecycle import error_dict
from jobs.models import TERMINAL_STATUSES, Job

from . import lifecycle
from .models import Batch, BatchStatus, Waitpoint, WaitpointStatus, WaitpointType

CHILDREN_SHOWN = 20

for _name in ("batch_counter_drifted", "batch_callback_lost", "batch_unsealed_past_deadline", "batch_fail_fast_lost"):
    dashboard.PLACE_CHANGELISTS[_name] = "admin:batches_batch_changelist"
dashboard.PLACE_CHANGELISTS["waitpoint_past_timeout"] = "admin:batches_waitpoint_changelist"


def children_url(batch_id: UUID, status: str | None = None) -> str:
    url = reverse("admin:jobs_job_changelist") + f"?batch__id__exact={batch_id}"
    return url + (f"&status__exact={status}" if status else "")


def status_now(batch_id: UUID) -> str:
    """Why a close lost: what the batch is now."""
    return f"already {Batch.objects.get(id=batch_id).status}"


# The operator's abort and completion: batches.lifecycle has these transitions only
# as *_in_tx steps, so each runs here in its own transaction, as its callers there do.


@transaction.atomic(durable=True)
def abort_batch(batch_id: UUID, error: dict[str, str]) -> bool:
    return lifecycle.close_batch_in_tx(batch_id, BatchStatus.ABORTED, error)


@transaction.atomic(durable=True)
def complete_waitpoint(waitpoint_id: UUID, output: Any, is_error: bool) -> bool:
    return lifecycle.complete_waitpoint_in_tx(waitpoint_id, output, is_error=is_error)


# --- batch repair -------------------------------------------------------------------------


def recount_of(batch_id: UUID) -> dict[str, int]:
    return Job.objects.filter(batch_id=batch_id).order_by().aggregate(
        children=Count("id"),
        completed=Count("id", filter=Q(status__in=TERMINAL_STATUSES)),
        succeeded=Count("id", filter=Q(status="succeeded")),
        failed=Count("id", filter=Q(status="failed")),
        cancelled=Count("id", filter=Q(status="cancelled")),
    )


def repair_batch(batch: Batch, report: ActionReport, cache: dict[Any, Any]) -> None:
    """Diagnose one batch, name each cause, apply the matching fix (each one the
    function the normal path or the sweeper calls), or say nothing is wrong."""
    causes: list[str] = []
    counts = recount_of(batch.id)
    if batch.sealed and counts["children"] < batch.run_count and batch.status in lifecycle.OPEN_STATUSES:
        report.skip(
            f"children missing ({counts['children']} of {batch.run_count}), no safe automatic fix: "
            "abort it with an error"
        )
        return
    stored = {
        "completed": batch.completed_count, "succeeded": batch.succeeded_count,
        "failed": batch.failed_count, "cancelled": batch.cancelled_count,
    }
    if batch.status == BatchStatus.PROCESSING and any(stored[k] != counts[k] for k in stored):
        lifecycle.recount(batch.id)
        causes.append(f"counter drifted ({batch.completed_count} counted, {counts['completed']} done): recounted")
    # The sweeper's places that hold this batch, its waitpoint or one of its children.
    ids = {batch.id, batch.waitpoint_id} - {None}
    diagnosis = diagnose(batch.id, batch.tenant_id, cache, extra_ids=ids, owner_batch=batch.id)
    for place, row in diagnosis.rows:
        if place.name == "batch_counter_drifted" and causes:
            continue  # already recounted above
        if place.repair(row):
            causes.append(place_label(place.name))
    if lifecycle.complete_batch(batch.id):
        causes.append("finished and parent resumed")
    if causes:
        report.change("; ".join(causes))
    elif diagnosis.uncertain:
        report.skip(f"not fully diagnosed ({', '.join(diagnosis.uncertain)}): let the sweeper run")
    else:
        report.skip("nothing wrong")


# --- batches --------------------------------------------------------------------------------


@admin.register(Batch)
class BatchAdmin(ConsoleAdmin):
    list_display = [
        "short_id", "task", "tenant", "status_badge", "sealed", "progress_shown", "outcome", "age", "parent_link",
    ]
    list_display_links = ["short_id"]
    list_filter = ["status", StuckFilter, "sealed", "on_child_failure", "tenant"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    search_fields = ["idempotency_key"]
    search_help_text = "A batch or parent job id, or an idempotency key (exact)."
    actions = ["cancel_batches", "repair_batches", "abort_batches"]
    fieldsets = [
        (None, {"fields": [
            "id", "tenant", "task", "status_badge", "sealed", "progress_shown", "outcome", "on_child_failure",
            "children_shown",
        ]}),
        ("Times", {"fields": [
            "created_at_exact", "sealed_at_exact", "seal_deadline_exact", "completed_at_exact", "updated_at_exact",
        ]}),
        ("Relations", {"fields": ["parent", "waitpoint"]}),
        ("Internal", {"classes": ["collapse"], "fields": [
            "run_count", "enqueued_count", "completed_count", "succeeded_count", "failed_count", "cancelled_count",
            "max_attempts", "timeout_seconds", "idempotency_key", "request_hash",
        ]}),
    ]
    readonly_fields = [
        "status_badge", "progress_shown", "outcome", "children_shown", "created_at_exact", "sealed_at_exact",
        "seal_deadline_exact", "completed_at_exact", "updated_at_exact",
    ]
    created_at_exact = timestamp("created_at")
    sealed_at_exact = timestamp("sealed_at")
    seal_deadline_exact = timestamp("seal_deadline")
    completed_at_exact = timestamp("completed_at")
    updated_at_exact = timestamp("updated_at")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Batch], search_term: str
    ) -> tuple[QuerySet[Batch], bool]:
        return exact_search(queryset, search_term, "id", "parent_id")

    @admin.display(description="progress")
    def progress_shown(self, obj: Batch) -> SafeString | str:
        fraction = obj.completed_count / obj.run_count if obj.run_count else 1.0
        return format_html("{} <span>{} / {}</span>", progress_bar(fraction), obj.completed_count, obj.run_count)

    @admin.display(description="ok / failed / cancelled")
    def outcome(self, obj: Batch) -> str:
        return f"{obj.succeeded_count} / {obj.failed_count} / {obj.cancelled_count}"

    @admin.display(description="parent")
    def parent_link(self, obj: Batch) -> SafeString | str:
        return link_to_job(obj.parent_id)

    @admin.display(description="children")
    def children_shown(self, obj: Batch) -> SafeString:
        """The first few children and links to the rest, never all of them on one page."""
        first = list(
            Job.objects.filter(batch_id=obj.id).order_by("batch_index")
            .only("id", "batch_index", "status", "attempts", "max_attempts")[:CHILDREN_SHOWN]
        )
        rows = format_html_join(
            "", '<tr><td>#{}</td><td><a href="{}">{}</a></td><td>{}</td><td>{} / {}</td></tr>',
            (
                (j.batch_index, reverse("admin:jobs_job_change", args=[j.id]), short(j.id), badge(j.status),
                 j.attempts, j.max_attempts)
                for j in first
            ),
        )
        links = format_html_join(
            " · ", '<a href="{}">{}</a>',
            [(children_url(obj.id), "all children")]
            + [(children_url(obj.id, s), s) for s in ("queued", "running", "failed", "cancelled")],
        )
        return format_html(
            '<p id="bp-children-links">{} (showing the first {} by index)</p>'
            "<table><thead><tr><th>index</th><th>job</th><th>status</th><th>attempts</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            links, len(first), rows,
        )

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("batches.change_batch")

    @admin.action(description="Cancel selected batches (their unfinished children too)", permissions=["operate"])
    @confirm_first(
        title="Cancel batches",
        warning="Cancel these batches? Unfinished children are cancelled and each batch's "
                "waitpoint is completed with an error, so a waiting parent goes on.",
        reason_label="Reason", reason_default="batch cancelled by operator",
    )
    def cancel_batches(self, request: HttpRequest, queryset: QuerySet[Batch], reason: str) -> None:
        report = ActionReport("Cancelled", "batch", "batches")
        report.try_each(ids_of(queryset), lambda batch_id: lifecycle.cancel_batch(batch_id, reason), status_now)
        report.send(self, request)

    @admin.action(description="Abort selected batches with an error (the parent goes on)", permissions=["operate"])
    @confirm_first(
        title="Abort batches",
        warning="Abort these batches? Unfinished children are cancelled and each batch's "
                "waitpoint is completed with this error, so a waiting parent resumes and sees it.",
        reason_label="Error message", reason_default="aborted by operator",
    )
    def abort_batches(self, request: HttpRequest, queryset: QuerySet[Batch], reason: str) -> None:
        error = error_dict("BatchAborted", reason)
        report = ActionReport("Aborted", "batch", "batches")
        report.try_each(ids_of(queryset), lambda batch_id: abort_batch(batch_id, error), status_now)
        report.send(self, request)

    @admin.action(description="Repair: diagnose each batch (counter, callback, seal, children, parent) and fix it",
                  permissions=["operate"])
    def repair_batches(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        report = ActionReport("Repaired", "batch", "batches")
        cache: dict[Any, Any] = {}
        for batch in queryset.order_by("id"):
            repair_batch(batch, report, cache)
        report.send(self, request)


# --- waitpoints -----------------------------------------------------------------------------


@admin.register(Waitpoint)
class WaitpointAdmin(ConsoleAdmin):
    list_display = ["short_id", "type", "status_badge", "tenant", "owner_link", "waiting", "timeout_at", "age"]
    list_display_links = ["short_id"]
    list_filter = ["status", "type", StuckFilter, "output_is_error", "tenant"]
    list_select_related = ["tenant"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    search_fields = ["idempotency_key"]
    search_help_text = "A waitpoint or owner job id, or an idempotency key (exact)."
    actions = ["complete_waitpoints", "complete_waitpoints_with_error"]
    fields = [
        "id", "tenant", "type", "status_badge", "output_shown", "output_is_error", "owner_job", "owner_seq", "run",
        "created_at_exact", "timeout_at_exact", "completed_at_exact", "idempotency_key",
    ]
    readonly_fields = ["status_badge", "output_shown", "created_at_exact", "timeout_at_exact", "completed_at_exact"]
    created_at_exact = timestamp("created_at")
    timeout_at_exact = timestamp("timeout_at")
    completed_at_exact = timestamp("completed_at")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Waitpoint]:
        # Counted per row on the partial waiting index.
        waiting = count_per_row(Job.objects.filter(status="waiting"), "waiting_for")
        return super().get_queryset(request).annotate(waiting_count=waiting)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Waitpoint], search_term: str
    ) -> tuple[QuerySet[Waitpoint], bool]:
        return exact_search(queryset, search_term, "id", "owner_job_id")

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: Waitpoint) -> SafeString:
        label = "completed (error)" if obj.status == WaitpointStatus.COMPLETED and obj.output_is_error else None
        return badge("failed" if label else obj.status, label)

    @admin.display(description="owner job")
    def owner_link(self, obj: Waitpoint) -> SafeString | str:
        return link_to_job(obj.owner_job_id)

    @admin.display(description="jobs waiting")
    def waiting(self, obj: Waitpoint) -> int:
        return getattr(obj, "waiting_count", 0)

    @admin.display(description="output")
    def output_shown(self, obj: Waitpoint) -> SafeString | str:
        return pretty_json(obj.output)

    def has_operate_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("batches.change_waitpoint")

    def _complete(self, request: HttpRequest, queryset: QuerySet[Waitpoint], output: Any, is_error: bool) -> None:
        report = ActionReport("Completed", "waitpoint", "waitpoints")
        # A batch's waitpoint completes when its batch closes, never by hand.
        by_batch = queryset.filter(type=WaitpointType.BATCH)
        report.skip("a batch's waitpoint: cancel or abort the batch instead", rows=by_batch.count())
        report.try_each(
            ids_of(queryset.exclude(type=WaitpointType.BATCH)),
            lambda waitpoint_id: complete_waitpoint(waitpoint_id, output, is_error),
            lambda waitpoint_id: "already completed",
        )
        report.send(self, request)

    @admin.action(description="Complete selected waitpoints (waiting jobs resume)", permissions=["operate"])
    def complete_waitpoints(self, request: HttpRequest, queryset: QuerySet[Waitpoint]) -> None:
        self._complete(request, queryset, {"completed_by": operator(request)}, is_error=False)

    @admin.action(description="Complete selected waitpoints with an error", permissions=["operate"])
    @confirm_first(
        title="Complete waitpoints with an error",
        warning="Complete these waitpoints with an error? The jobs waiting on them resume and see it.",
        reason_label="Error message", reason_default="completed with an error by operator",
    )
    def complete_waitpoints_with_error(self, request: HttpRequest, queryset: QuerySet[Waitpoint], reason: str) -> None:
        self._complete(request, queryset, error_dict("CompletedByOperator", reason), is_error=True)
