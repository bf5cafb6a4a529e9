"""Batch and waitpoint endpoints (docs/API.md). Thin: read the body through
jobs.api.limits, validate, call one batches.lifecycle / intake function, serialise.
Every lookup is scoped to the key's tenant: another tenant's id is a 404."""

from uuid import UUID

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from batches import intake, lifecycle
from batches.models import Batch, BatchStatus, Waitpoint, WaitpointType
from jobs.api import limits, ratelimit
from jobs.api.errors import ApiError, error_responses, invalid_state, not_found
from jobs.api.pagination import PARAMETERS as PAGE_PARAMETERS
from jobs.api.pagination import KeysetPagination
from jobs.api.views import ApiView
from jobs.models import Job

from .body import body_pieces, client_socket
from .serializers import (
    BatchCreateSerializer,
    BatchResultPageSerializer,
    BatchResultSerializer,
    BatchSerializer,
    IntakeSerializer,
    WaitpointCompleteSerializer,
    WaitpointCreateSerializer,
    WaitpointSerializer,
    intake_answer,
)

NDJSON = "application/x-ndjson"
RESULTS = KeysetPagination(ordering=("batch_index",))
BATCH_ID = OpenApiParameter("batch_id", UUID, OpenApiParameter.PATH)
WAITPOINT_ID = OpenApiParameter("waitpoint_id", UUID, OpenApiParameter.PATH)


def item_error(error: intake.ItemError) -> ApiError:
    status = 413 if error.code == "payload_too_large" else 400
    return ApiError(status, error.code, f"line {error.line}: {error.message}", line=error.line)


class BatchMixin:
    request: Request

    def get_batch(self, batch_id: UUID) -> Batch:
        batch = Batch.objects.filter(pk=batch_id, tenant=self.tenant).first()  # type: ignore[attr-defined]
        if batch is None:
            raise not_found("batch")
        return batch


class BatchesView(ApiView):
    @extend_schema(
        operation_id="batches_create", summary="Create a batch (phase 1)",
        request=BatchCreateSerializer,
        responses={201: BatchSerializer, 200: BatchSerializer, **error_responses(400, 401, 409, 413, 415, 429)},
        description="201 with the new batch (sealed at once when `items` are given); 200 with the "
        "existing one for a reused idempotency key and the same request; 409 `idempotency_conflict` "
        "otherwise. A bad inline item: 400 `invalid_item` with its `line` (nothing is created).",
    )
    def post(self, request: Request) -> Response:
        tenant = self.tenant
        ratelimit.check(tenant)
        # Inline items are for small batches: the body may hold up to one NDJSON line's worth.
        data = limits.json_body(request, limit=max(settings.BATCH_ITEM_MAX_BYTES, settings.JOB_PAYLOAD_MAX_BYTES))
        serializer = BatchCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        try:
            created = lifecycle.create_batch(tenant, **serializer.validated_data)
        except intake.ItemError as exc:
            raise item_error(exc) from None
        return Response(BatchSerializer(created.batch).data, status=201 if created.created else 200)


class BatchDetailView(BatchMixin, ApiView):
    @extend_schema(
        operation_id="batches_retrieve", summary="Get a batch", parameters=[BATCH_ID],
        responses={200: BatchSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, batch_id: UUID) -> Response:
        return Response(BatchSerializer(self.get_batch(batch_id)).data)


class BatchItemsView(BatchMixin, ApiView):
    @extend_schema(
        operation_id="batches_items", summary="Stream items (phase 2, NDJSON)", parameters=[BATCH_ID],
        # The NDJSON body is described below rather than as a request schema: the
        # schema test's client (schemathesis) has no serializer for application/x-ndjson.
        request=None,
        responses={200: IntakeSerializer, **error_responses(400, 401, 404, 409, 413, 415)},
        description="Body: `Content-Type: application/x-ndjson`, with a Content-Length or chunked. "
        'Each line `{"payload": any, "task"?: str, "index"?: int}`. Children are queued as '
        "lines arrive; the batch is sealed when all `run_count` items are in. A short stream answers "
        "`sealed: false` with `missing`; send again (received indexes are skipped). A bad line: 400 "
        "`invalid_item` with its `line` (the lines before it are kept); a line over "
        "BATCH_ITEM_MAX_BYTES: 413. A cancelled or aborted batch: 409 `batch_closed`.",
    )
    def post(self, request: Request, batch_id: UUID) -> Response:
        limits.require_media_type(request, NDJSON)
        batch = self.get_batch(batch_id)
        try:
            lines = intake.LineSplitter(body_pieces(request))
            socket_idle = intake.socket_idle(client_socket(request))
            result = intake.add_items(
                batch.id, intake.read_lines(lines), idle=lambda: lines.at_boundary and socket_idle()
            )
        except lifecycle.BatchClosed as exc:
            raise ApiError(409, "batch_closed", f"batch is {exc.args[0]}; it takes no more items") from None
        if result.error is not None:
            raise item_error(result.error)
        return Response(intake_answer(result))


class BatchResultsView(BatchMixin, ApiView):
    @extend_schema(
        operation_id="batches_results", summary="The children's results, in index order",
        parameters=[BATCH_ID, *PAGE_PARAMETERS],
        responses={200: BatchResultPageSerializer, **error_responses(400, 401, 404)},
    )
    def get(self, request: Request, batch_id: UUID) -> Response:
        batch = self.get_batch(batch_id)
        children = Job.objects.filter(batch=batch).only("id", "batch_index", "status", "result", "error")
        return RESULTS.paginated_response(request, children, BatchResultSerializer)


class BatchCancelView(BatchMixin, ApiView):
    @extend_schema(
        operation_id="batches_cancel", summary="Cancel a batch", parameters=[BATCH_ID], request=None,
        responses={200: BatchSerializer, **error_responses(401, 404, 409)},
        description="Unfinished children are cancelled (running ones stop at their next heartbeat), "
        "the batch is `cancelled` and its waitpoint completed with an error. Again: 200, unchanged. "
        "A completed batch: 409 `invalid_state`.",
    )
    def post(self, request: Request, batch_id: UUID) -> Response:
        batch = self.get_batch(batch_id)
        lifecycle.cancel_batch(batch.id, "cancelled via the API")
        batch.refresh_from_db()
        if batch.status == BatchStatus.COMPLETED:
            raise invalid_state("batch is completed")
        return Response(BatchSerializer(batch).data)


class WaitpointMixin:
    request: Request

    def get_waitpoint(self, waitpoint_id: UUID) -> Waitpoint:
        waitpoint = Waitpoint.objects.filter(pk=waitpoint_id, tenant=self.tenant).first()  # type: ignore[attr-defined]
        if waitpoint is None:
            raise not_found("waitpoint")
        return waitpoint


class WaitpointsView(ApiView):
    @extend_schema(
        operation_id="waitpoints_create", summary="Create a token waitpoint",
        request=WaitpointCreateSerializer,
        responses={201: WaitpointSerializer, 200: WaitpointSerializer, **error_responses(400, 401, 413, 415, 429)},
        description="A job waits on it with `wait_for_token` (e.g. `examples.wait_token`); another "
        "service completes it. Same idempotency key: 200 and the existing waitpoint.",
    )
    def post(self, request: Request) -> Response:
        tenant = self.tenant
        ratelimit.check(tenant)
        serializer = WaitpointCreateSerializer(data=limits.json_body(request))
        serializer.is_valid(raise_exception=True)
        waitpoint, created = lifecycle.create_waitpoint(tenant.id, WaitpointType.TOKEN, **serializer.validated_data)
        return Response(WaitpointSerializer(waitpoint).data, status=201 if created else 200)


class WaitpointDetailView(WaitpointMixin, ApiView):
    @extend_schema(
        operation_id="waitpoints_retrieve", summary="Get a waitpoint", parameters=[WAITPOINT_ID],
        responses={200: WaitpointSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, waitpoint_id: UUID) -> Response:
        return Response(WaitpointSerializer(self.get_waitpoint(waitpoint_id)).data)


class WaitpointCompleteView(WaitpointMixin, ApiView):
    @extend_schema(
        operation_id="waitpoints_complete", summary="Complete a token waitpoint",
        parameters=[WAITPOINT_ID], request=WaitpointCompleteSerializer,
        responses={200: WaitpointSerializer, **error_responses(400, 401, 404, 409, 413, 415)},
        description="The jobs waiting on it are queued again. Already completed: 409 `invalid_state`, "
        "output unchanged.",
    )
    def post(self, request: Request, waitpoint_id: UUID) -> Response:
        waitpoint = self.get_waitpoint(waitpoint_id)
        serializer = WaitpointCompleteSerializer(data=limits.json_body(request))
        serializer.is_valid(raise_exception=True)
        done = lifecycle.complete_token(
            self.tenant.id, waitpoint.id, serializer.validated_data["output"],
            is_error=serializer.validated_data["is_error"],
        )
        return Response(WaitpointSerializer(done).data)

