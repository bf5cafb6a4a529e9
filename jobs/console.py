"""Helpers shared by the operator's console (jobs/admin.py, batches/admin.py, the dashboard).

Display helpers (badges, progress bars), an admin paginator that never counts a large
table in full, the report every action gives back (how many rows changed, why the
others were skipped), the confirmation page of destructive actions, and "repair now":
a diagnosis of which sweeper place a job is stuck in, followed by that place's own
repair function. Nothing here moves a row by itself; the lifecycle and the sweeper do.
"""

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.paginator import Paginator
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F, Model, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst

from . import sweeper

logger = logging.getLogger("jobs.console")

# --- display -----------------------------------------------------------------------

BADGE_COLOURS = {
    # jobs
    "queued": "#6c757d",
    "dispatched": "#17a2b8",
    "running": "#0d6efd",
    "waiting": "#6f42c1",
    "succeeded": "#198754",
    "failed": "#dc3545",
    "cancelled": "#495057",
    # executions
    "timed_out": "#fd7e14",
    "lost": "#fd7e14",
    "suspended": "#6f42c1",
    # batches and waitpoints
    "pending": "#6c757d",
    "processing": "#0d6efd",
    "completed": "#198754",
    "aborted": "#dc3545",
}


def badge(value: str, label: str | None = None) -> SafeString:
    colour = BADGE_COLOURS.get(value, "#6c757d")
    return format_html(
        '<span class="bp-badge bp-{}" style="background:{};color:#fff;padding:2px 8px;'
        'border-radius:10px;font-size:11px;font-weight:600;white-space:nowrap">{}</span>',
        value, colour, label or value,
    )


def progress_bar(fraction: float | None) -> SafeString | str:
    if fraction is None:
        return "-"
    percent = max(0, min(100, round(fraction * 100)))
    return format_html(
        '<span class="bp-progress" title="{}%" style="display:inline-block;width:80px;height:8px;'
        'background:#e9ecef;border-radius:4px;vertical-align:middle;overflow:hidden">'
        '<span style="display:block;height:100%;width:{}%;background:#0d6efd"></span></span> {}%',
        percent, percent, percent,
    )


def pretty_json(value: Any) -> SafeString | str:
    if value is None:
        return "-"
    return format_html('<pre style="margin:0;white-space:pre-wrap">{}</pre>', json.dumps(value, indent=2)[:20000])


def count_per_row(rows: QuerySet[Any], field: str) -> Coalesce:
    """An annotation: how many of `rows` point at each listed row through `field`, as
    one correlated count per row (served by an index on `field`), not a GROUP BY over
    a join of the whole table."""
    counted = rows.filter(**{field: OuterRef("pk")}).order_by().values(field).annotate(n=Count("id")).values("n")
    return Coalesce(Subquery(counted), 0)


# --- dead letters ------------------------------------------------------------------


def dead_letter_q() -> Q:
    """Failed for good: attempts exhausted, or stalled more than allowed."""
    from .lifecycle import STALLED_MESSAGE

    return Q(status="failed") & (
        Q(attempts__gte=F("max_attempts")) | Q(error__type="Stalled") | Q(error__message=STALLED_MESSAGE)
    )


# --- paginator ----------------------------------------------------------------------

EXACT_COUNT_CAP = 10_000


def table_estimate(table: str) -> int:
    """Postgres's own row estimate (kept by ANALYZE/autovacuum); -1 if never analysed."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [table])
        row = cursor.fetchone()
    return int(row[0]) if row else -1


def plan_estimate(queryset: QuerySet[Any]) -> int:
    sql, params = queryset.order_by().query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str):
        plan = json.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


class EstimatedCountPaginator(Paginator):
    """Counts exactly up to EXACT_COUNT_CAP rows, and estimates beyond.

    An unfiltered changelist of a large table takes pg_class.reltuples (no scan at
    all); anything else counts at most CAP + 1 rows and, past that, takes the
    planner's estimate. So a page load never counts 100,000 rows; past the cap the
    total and the page count shown are approximate.
    """

    @cached_property
    def count(self) -> int:  # type: ignore[override]
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return len(queryset)
        unfiltered = not queryset.query.where
        if unfiltered:
            estimate = table_estimate(queryset.model._meta.db_table)
            if estimate > EXACT_COUNT_CAP:
                return estimate
        capped = queryset.order_by()[: EXACT_COUNT_CAP + 1].count()
        if capped <= EXACT_COUNT_CAP:
            return capped
        estimate = table_estimate(queryset.model._meta.db_table) if unfiltered else -1
        if estimate < 0:  # never analysed, or filtered: the planner's own guess
            estimate = plan_estimate(queryset)
        return max(estimate, capped)


# --- action reports -------------------------------------------------------------------


@dataclass
class ActionReport:
    """What an action did: rows changed, and each skipped row's reason, counted."""

    done: str  # past tense, e.g. "Cancelled"
    one: str  # e.g. "job"
    many: str  # e.g. "jobs"
    changed: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)

    def change(self, note: str | None = None, rows: int = 1) -> None:
        self.changed += rows
        if note:
            self.notes[note] += 1

    def skip(self, reason: str, rows: int = 1) -> None:
        if rows:  # a zero count would still print as "Skipped 0: ..."
            self.skipped[reason] += rows

    def try_each(self, ids: Iterable[Any], move: Callable[[Any], bool], lost: Callable[[Any], str]) -> None:
        """Run `move`, a transition that returns whether it won, on each id in turn: a win
        counts as changed, a loss is skipped with `lost(id)`, read after the loss."""
        for pk in ids:
            if move(pk):
                self.change()
            else:
                self.skip(lost(pk))

    @staticmethod
    def _tally(counter: Counter[str]) -> str:
        return "; ".join(f"{reason} ({n})" for reason, n in sorted(counter.items()))

    def messages(self) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        noun = self.one if self.changed == 1 else self.many
        text = f"{self.done} {self.changed} {noun}."
        if self.notes:
            text = f"{self.done} {self.changed} {noun}: {self._tally(self.notes)}."
        out.append((messages.SUCCESS if self.changed else messages.INFO, text))
        if self.skipped:
            count = sum(self.skipped.values())
            out.append((messages.WARNING, f"Skipped {count}: {self._tally(self.skipped)}."))
        return out

    def send(self, modeladmin: admin.ModelAdmin, request: HttpRequest) -> None:
        for level, text in self.messages():
            modeladmin.message_user(request, text, level)


def ids_of(queryset: QuerySet[Any]) -> QuerySet[Any]:
    """The selected rows' ids, in id order: an action moves them one by one in this order."""
    return queryset.order_by("id").values_list("id", flat=True)


# --- confirmation pages ----------------------------------------------------------------

CONFIRM_SHOWN = 100
NEXT_FIELD = "_console_next"  # where an action started from an object's page returns to


def confirmed(request: HttpRequest) -> bool:
    return request.POST.get("confirm") == "yes"


def confirm_page(
    modeladmin: admin.ModelAdmin,
    request: HttpRequest,
    queryset: QuerySet[Any],
    *,
    title: str,
    warning: str,
    reason_label: str | None = None,
    reason_default: str = "",
) -> TemplateResponse:
    """The intermediate page of a destructive action; posting it runs the action."""
    opts = modeladmin.model._meta
    objects: Sequence[Model] = list(queryset[:CONFIRM_SHOWN])
    total = queryset.count()
    context = {
        **modeladmin.admin_site.each_context(request),
        "title": title,
        "warning": warning,
        "opts": opts,
        "objects": objects,
        "more": max(0, total - len(objects)),
        "total": total,
        "action": request.POST.get("action", ""),
        "selected": request.POST.getlist(ACTION_CHECKBOX_NAME),
        "select_across": request.POST.get("select_across", "0"),
        "checkbox_name": ACTION_CHECKBOX_NAME,
        "next_field": NEXT_FIELD,
        "next": request.POST.get(NEXT_FIELD, ""),
        "reason_label": reason_label,
        "reason_default": reason_default,
        "model_name": capfirst(opts.verbose_name_plural),
    }
    return TemplateResponse(request, "admin/console/confirm_action.html", context)


def reason_from(request: HttpRequest, default: str) -> str:
    reason = (request.POST.get("reason") or "").strip()
    return (reason or default)[:1000]


def operator(request: HttpRequest) -> str:
    return getattr(request.user, "get_username", lambda: "operator")()


Action = Callable[[Any, HttpRequest, QuerySet[Any]], TemplateResponse | None]


def confirm_first(
    *, title: str, warning: str, reason_label: str, reason_default: str
) -> Callable[[Callable[[Any, HttpRequest, QuerySet[Any], str], None]], Action]:
    """A destructive action asks first (goes under `@admin.action`): the first post
    shows the confirmation page and changes nothing; the confirmed post runs the
    action with the operator's reason, or `reason_default`, signed with their name."""

    def decorate(action: Callable[[Any, HttpRequest, QuerySet[Any], str], None]) -> Action:
        @functools.wraps(action)
        def run(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
            if not confirmed(request):
                return confirm_page(
                    modeladmin, request, queryset, title=title, warning=warning,
                    reason_label=reason_label, reason_default=reason_default,
                )
            action(modeladmin, request, queryset, f"{reason_from(request, reason_default)} ({operator(request)})")
            return None

        return run

    return decorate


# --- stuck places -----------------------------------------------------------------------

PLACE_LABELS = {
    "running_too_long": "running past its timeout (worker did not end it)",
    "running_lease_expired": "running with an expired lease (worker gone)",
    "dispatched_message_lost": "dispatched but never started (message lost)",
    "execution_left_running": "execution left running after the job moved on",
    "queued_not_dispatched": "queued and ready too long while its tenant has free slots",
    "waiting_waitpoint_done": "waiting, but its waitpoint is completed (parent not resumed)",
    "batch_counter_drifted": "batch counter drifted from a recount of its children",
    "batch_callback_lost": "batch callback lost (every child counted, batch still processing)",
    "batch_unsealed_past_deadline": "batch unsealed past its seal deadline",
    "batch_fail_fast_lost": "fail-fast batch still open after a child failed",
    "waitpoint_past_timeout": "waitpoint pending past its timeout",
}


def place_label(name: str) -> str:
    if name in PLACE_LABELS:
        return PLACE_LABELS[name]
    place = next((p for p in sweeper.PLACES if p.name == name), None)
    return getattr(place, "description", "") or name.replace("_", " ")


def place_names() -> list[str]:
    return [place.name for place in sweeper.PLACES]


def uuids_in(rows: Iterable[tuple[object, ...]]) -> set[UUID]:
    """Every id a finder's rows carry: the stuck row's own id, and for some places the
    job it belongs to (an execution's job, a batch's parent)."""
    return {value for row in rows for value in row if isinstance(value, UUID)}


def stuck_ids(place_name: str | None = None) -> set[UUID]:
    """Ids in one stuck place (or any): finders cap each place at sweeper.CHUNK rows."""
    ids: set[UUID] = set()
    for place in sweeper.PLACES:
        if place_name in (None, place.name):
            ids |= uuids_in(find_rows(place, None) or [])
    return ids


# --- repair now ------------------------------------------------------------------------------


def find_rows(place: sweeper.Place, tenant_id: UUID | None) -> list[tuple[object, ...]] | None:
    """A place's rows, or None if its finder failed (the other places still count)."""
    try:
        with transaction.atomic():  # a savepoint: a failed finder must not poison the caller's transaction
            return list(place.find(tenant_id))
    except DatabaseError:
        logger.exception("finder of stuck place %s failed", place.name)
        return None


@dataclass(frozen=True)
class Diagnosis:
    places: list[str]
    rows: list[tuple[sweeper.Place, tuple[object, ...]]]
    uncertain: list[str]  # places whose finder failed or hit its row cap without showing this id


def diagnose(
    object_id: UUID,
    tenant_id: UUID | None,
    cache: dict[Any, Any] | None = None,
    *,
    extra_ids: set[UUID] | None = None,
    owner_batch: UUID | None = None,
) -> Diagnosis:
    """Which stuck places hold this row, by the sweeper's own finders: a row of a
    place matches if it carries this id (or one of `extra_ids`, e.g. a batch's
    waitpoint), or, with `owner_batch`, the id of one of that batch's children."""
    from .models import Job

    cache = {} if cache is None else cache
    ids = {object_id} | (extra_ids or set())
    rows: list[tuple[sweeper.Place, tuple[object, ...]]] = []
    uncertain: list[str] = []
    for place in sweeper.PLACES:
        key = (place.name, tenant_id)
        if key not in cache:
            cache[key] = find_rows(place, tenant_id)
        if cache[key] is None:
            uncertain.append(place.name)
            continue
        wanted = ids
        if owner_batch is not None and cache[key]:
            candidates = uuids_in(cache[key]) - ids
            wanted = ids | set(Job.objects.filter(batch_id=owner_batch, id__in=candidates).values_list("id", flat=True))
        found = [row for row in cache[key] if any(isinstance(v, UUID) and v in wanted for v in row)]
        rows.extend((place, row) for row in found)
        if not found and len(cache[key]) >= sweeper.CHUNK:
            uncertain.append(place.name)
    return Diagnosis(places=sorted({p.name for p, _ in rows}), rows=rows, uncertain=uncertain)


def repair_now(objects: Iterable[Any], report: ActionReport) -> ActionReport:
    """For each row: name the place it is stuck in and apply that place's repair, or
    say nothing is wrong. The repair is the sweeper's, the same one it runs itself."""
    cache: dict[Any, Any] = {}
    for obj in objects:
        diagnosis = diagnose(obj.pk, obj.tenant_id, cache)
        if not diagnosis.rows:
            if diagnosis.uncertain:
                report.skip(f"not diagnosed: {', '.join(diagnosis.uncertain)} could not be searched "
                            f"(finder failed, or over {sweeper.CHUNK} rows stuck there): let the sweeper run")
            else:
                report.skip("nothing wrong")
            continue
        fixed = [place.name for place, row in diagnosis.rows if place.repair(row)]
        if fixed:
            report.change("; ".join(place_label(name) for name in sorted(set(fixed))))
        else:
            report.skip(f"{', '.join(place_label(n) for n in diagnosis.places)}: moved on before the repair")
    return report
