"""Job input and output shapes (docs/API.md, "Jobs").

Input serializers validate types and bounds (limits from settings, read at import
so the schema shows them) and write nothing; the engine (``lifecycle.submit``)
re-checks bounds against the live settings and what only it can know (the task is
registered, the payload's canonical size).
"""

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from jobs.models import Execution, ExecutionStatus, Job, JobStatus

from .fields import StrictCharField, StrictFloatField, StrictIntegerField, StrictSerializer
from .pagination import paginated_serializer

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000


@extend_schema_field(
    {"type": "number", "format": "double", "minimum": 0, "exclusiveMinimum": True,
     "maximum": settings.JOB_TIMEOUT_SECONDS_LIMIT}
)
class TimeoutField(StrictFloatField):
    """Seconds, > 0 (the schema says so: a timeout of 0 is not a timeout)."""

    def to_internal_value(self, data: Any) -> float:
        value = super().to_internal_value(data)
        if value <= 0:
            raise serializers.ValidationError("Must be greater than 0.")
        return value


class JobCreateSerializer(StrictSerializer):
    task = StrictCharField(max_length=200, help_text="a registered task name, e.g. `examples.echo`")
    payload = serializers.JSONField(required=False, allow_null=True, default=None, help_text="any JSON")
    idempotency_key = StrictCharField(
        max_length=255, min_length=1, required=False, allow_null=True, default=None,
        help_text="same key and same task and payload: the existing job (200)",
    )
    max_attempts = StrictIntegerField(
        min_value=1, max_value=settings.JOB_MAX_ATTEMPTS_LIMIT, required=False, allow_null=True, default=None,
        help_text="default: the task's, else JOB_MAX_ATTEMPTS_DEFAULT",
    )
    timeout_seconds = TimeoutField(
        max_value=settings.JOB_TIMEOUT_SECONDS_LIMIT, required=False, allow_null=True, default=None, help_text="per attempt; default: the task's, else the platform's"
    )
    priority = StrictIntegerField(
        min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False, default=0,
        help_text="higher runs first within the tenant",
    )
    delay_seconds = StrictFloatField(
        min_value=0, max_value=settings.JOB_DELAY_SECONDS_LIMIT, required=False, default=0,
        help_text="run no earlier than this many seconds from now",
    )


class JobListFilterSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=JobStatus.choices, required=False)
    task = serializers.CharField(max_length=200, required=False)
    batch = serializers.UUIDField(required=False)
    # Pagination parameters, validated by the paginator.
    cursor = serializers.CharField(required=False)
    limit = serializers.CharField(required=False)


class JobErrorSerializer(serializers.Serializer):
    type = serializers.CharField(help_text="the exception class, or Cancelled, Stalled, TimeoutError, WorkerLost")
    message = serializers.CharField()


def error_value(value: Any) -> dict[str, str] | None:
    if not value:
        return None
    if not isinstance(value, dict):
        return {"type": "Error", "message": str(value)}
    return {"type": str(value.get("type", "Error")), "message": str(value.get("message", ""))}


@extend_schema_field(JobErrorSerializer(allow_null=True))
class ErrorField(serializers.Field):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("read_only", True)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> dict[str, str] | None:
        return error_value(value)

    def get_attribute(self, instance: Any) -> Any:
        # Null errors must still reach to_representation (DRF skips None otherwise).
        return getattr(instance, self.source)


class JobSerializer(serializers.ModelSerializer):
    error = ErrorField(help_text="the last attempt's error, or null")
    batch = serializers.UUIDField(source="batch_id", read_only=True, allow_null=True)
    parent = serializers.UUIDField(source="parent_id", read_only=True, allow_null=True)
    root = serializers.UUIDField(source="root_id", read_only=True, allow_null=True)
    status = serializers.ChoiceField(choices=JobStatus.choices, read_only=True)
    payload = serializers.JSONField(read_only=True, allow_null=True)
    result = serializers.JSONField(read_only=True, allow_null=True)
    progress = serializers.FloatField(read_only=True, allow_null=True, min_value=0, max_value=1)

    class Meta:
        model = Job
        fields = [
            "id", "task", "status", "payload", "result", "error", "attempts", "max_attempts",
            "stalled_count", "priority", "idempotency_key", "batch", "batch_index", "parent", "root",
            "progress", "created_at", "run_at", "started_at", "finished_at", "updated_at",
        ]
        read_only_fields = fields


class ExecutionSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=ExecutionStatus.choices, read_only=True)
    error = ErrorField()

    class Meta:
        model = Execution
        fields = ["attempt", "status", "worker", "started_at", "finished_at", "error"]
        read_only_fields = fields


JobPageSerializer = paginated_serializer(JobSerializer, "JobPage")
ExecutionPageSerializer = paginated_serializer(ExecutionSerializer, "ExecutionPage")
