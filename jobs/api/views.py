"""Job endpoints (docs/API.md, "Jobs"), and ``ApiView``, the base of every API view.

Views are thin: read the body through ``limits``, validate with a serializer, call
one engine function, serialise the row. Every query is scoped to the key's tenant,
so another tenant's job is a 404 exactly like an unknown id. Errors are raised, never
built here (errors.py turns them into the common shape).
"""

from typing import Any
from uuid import UUID

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import lifecycle
from jobs.models import Job, Tenant

from . import limits, ratelimit
from .auth import BearerKeyAuthentication, HasApiKey, tenant_of
from .errors import error_responses, exception_handler, not_found
from .pagination import PARAMETERS as PAGE_PARAMETERS
from .pagination import KeysetPagination
from .serializers import (
    ExecutionPageSerializer,
    ExecutionSerializer,
    JobCreateSerializer,
    JobListFilterSerializer,
    JobPageSerializer,
    JobSerializer,
)


class AlwaysJSON(BaseContentNegotiation):
    """The API speaks JSON whatever the Accept header says (no 406, no HTML)."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


class ApiView(APIView):
    """Bearer-key auth, tenant scoping, JSON only, the common error shape."""

    authentication_classes = [BearerKeyAuthentication]
    permission_classes = [HasApiKey]
    # Bodies are read by jobs.api.limits (size first); the parser is for the schema.
    parser_classes = [JSONParser]
    renderer_classes = [JSONRenderer]
    content_negotiation_class = AlwaysJSON

    def get_exception_handler(self) -> Any:
        return exception_handler

    @property
    def tenant(self) -> Tenant:
        return tenant_of(self.request)


JOB_LIST = KeysetPagination(ordering=("-created_at", "-id"))
EXECUTION_LIST = KeysetPagination(ordering=("id",))
JOB_ID = OpenApiParameter("job_id", UUID, OpenApiParameter.PATH)
RETRY_AFTER = OpenApiParameter(
    "Retry-After", int, OpenApiParameter.HEADER, response=[429], description="seconds until a create call is allowed"
)


class JobsView(ApiView):
    """Jobs of the key's tenant."""

    @extend_schema(
        operation_id="jobs_list",
        summary="List jobs, newest first",
        parameters=[
            OpenApiParameter("status", str, enum=[s for s, _ in JobListFilterSerializer().fields["status"].choices.items()]),
            OpenApiParameter("task", str),
            OpenApiParameter("batch", UUID),
            *PAGE_PARAMETERS,
        ],
        responses={200: JobPageSerializer, **error_responses(400, 401)},
    )
    def get(self, request: Request) -> Response:
        filters = JobListFilterSerializer(data=request.query_params.dict())
        filters.is_valid(raise_exception=True)
        queryset = Job.objects.filter(tenant=self.tenant)
        for name in ("status", "task"):
            if name in filters.validated_data:
                queryset = queryset.filter(**{name: filters.validated_data[name]})
        if "batch" in filters.validated_data:
            queryset = queryset.filter(batch_id=filters.validated_data["batch"])
        return JOB_LIST.paginated_response(request, queryset, JobSerializer)

    @extend_schema(
        operation_id="jobs_create",
        summary="Submit a job",
        request=JobCreateSerializer,
        parameters=[RETRY_AFTER],
        responses={
            201: OpenApiResponse(JobSerializer, description="created"),
            200: OpenApiResponse(JobSerializer, description="the existing job of this idempotency key"),
            **error_responses(400, 401, 409, 413, 415, 429),
        },
        description="201 with the new job; 200 with the existing job when the idempotency key "
        "was used before with the same task and payload; 409 `idempotency_conflict` when it "
        "was used with another. Counts against the tenant's create rate limit.",
    )
    def post(self, request: Request) -> Response:
        tenant = self.tenant
        ratelimit.check(tenant)
        serializer = JobCreateSerializer(data=limits.json_body(request))
        serializer.is_valid(raise_exception=True)
        submitted = lifecycle.submit(tenant, **serializer.validated_data)
        job = Job.objects.get(pk=submitted.job.pk)  # the row as committed: dispatch state, database times
        return Response(JobSerializer(job).data, status=201 if submitted.created else 200)


class JobMixin:
    request: Request

    def get_job(self, job_id: UUID) -> Job:
        job = Job.objects.filter(pk=job_id, tenant=tenant_of(self.request)).first()
        if job is None:
            raise not_found("job")
        return job


class JobDetailView(JobMixin, ApiView):
    """One job."""

    @extend_schema(
        operation_id="jobs_retrieve", summary="Get a job", parameters=[JOB_ID],
        responses={200: JobSerializer, **error_responses(401, 404)},
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        return Response(JobSerializer(self.get_job(job_id)).data)


class JobExecutionsView(JobMixin, ApiView):
    """One job's executions (attempts)."""

    @extend_schema(
        operation_id="jobs_executions", summary="A job's attempts, in start order",
        parameters=[JOB_ID, *PAGE_PARAMETERS],
        responses={200: ExecutionPageSerializer, **error_responses(400, 401, 404)},
    )
    def get(self, request: Request, job_id: UUID) -> Response:
        job = self.get_job(job_id)
        return EXECUTION_LIST.paginated_response(request, job.executions.all(), ExecutionSerializer)


class JobCancelView(JobMixin, ApiView):
    """Cancel a job tree."""

    @extend_schema(
        operation_id="jobs_cancel", summary="Cancel a job and every unfinished job below it",
        parameters=[JOB_ID], request=None,
        responses={200: JobSerializer, **error_responses(401, 404, 409)},
        description="Again on a cancelled job: 200, unchanged. A succeeded or failed job: 409 `invalid_state`.",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = self.get_job(job_id)
        lifecycle.cancel(job.id, reason="cancelled via the API")
        job.refresh_from_db()
        return Response(JobSerializer(job).data)


class JobRequeueView(JobMixin, ApiView):
    """Requeue a finished job."""

    @extend_schema(
        operation_id="jobs_requeue", summary="Queue a failed or cancelled job again, with a fresh budget",
        parameters=[JOB_ID], request=None,
        responses={200: JobSerializer, **error_responses(401, 404, 409)},
        description="From `failed` or `cancelled` only; otherwise 409 `invalid_state`.",
    )
    def post(self, request: Request, job_id: UUID) -> Response:
        job = self.get_job(job_id)
        lifecycle.requeue(job.id, reason="requeued via the API")
        job.refresh_from_db()
        return Response(JobSerializer(job).data)
