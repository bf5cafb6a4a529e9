"""Batch and waitpoint shapes (docs/API.md, "Batches" and "Waitpoints")."""

from typing import Any

from django.conf import settings
from rest_framework import serializers

from batches.lifecycle import INLINE_ITEMS_MAX
from batches.models import Batch, BatchStatus, OnChildFailure, Waitpoint, WaitpointStatus, WaitpointType
from jobs.api.fields import StrictBooleanField, StrictCharField, StrictIntegerField, StrictSerializer
from jobs.api.pagination import paginated_serializer
from jobs.api.serializers import ErrorField, TimeoutField
from jobs.models import Job, JobStatus


class BatchCreateSerializer(StrictSerializer):
    task = StrictCharField(
        max_length=200, required=False, default="", allow_blank=True,
        help_text="the children's task; an item's own `task` overrides it",
    )
    run_count = StrictIntegerField(
        min_value=1, max_value=settings.BATCH_MAX_ITEMS, help_text="how many items the batch will receive"
    )
    idempotency_key = StrictCharField(max_length=255, min_length=1, required=False, allow_null=True, default=None)
    max_attempts = StrictIntegerField(
        min_value=1, max_value=settings.JOB_MAX_ATTEMPTS_LIMIT, required=False, allow_null=True, default=None
    )
    timeout_seconds = TimeoutField(
        max_value=settings.JOB_TIMEOUT_SECONDS_LIMIT, required=False, allow_null=True, default=None
    )
    on_child_failure = serializers.ChoiceField(choices=OnChildFailure.choices, required=False, default="continue")
    items = serializers.ListField(
        child=serializers.JSONField(), required=False, allow_null=True, default=None,
        max_length=INLINE_ITEMS_MAX,
        help_text=f"up to {INLINE_ITEMS_MAX} items shaped like phase-2 lines: the batch is filled and sealed at once",
    )


class BatchSerializer(serializers.ModelSerializer):
    status = serializers.ChoiceField(choices=BatchStatus.choices, read_only=True)
    on_child_failure = serializers.ChoiceField(choices=OnChildFailure.choices, read_only=True)
    parent = serializers.UUIDField(source="parent_id", read_only=True, allow_null=True)
    waitpoint = serializers.UUIDField(source="waitpoint_id", read_only=True, allow_null=True)

    class Meta:
        model = Batch
        fields = [
            "id", "task", "status", "sealed", "run_count", "enqueued_count", "completed_count",
            "succeeded_count", "failed_count", "cancelled_count", "on_child_failure", "idempotency_key",
            "parent", "waitpoint", "created_at", "sealed_at", "completed_at",
        ]
        read_only_fields = fields


class IntakeSerializer(serializers.Serializer):
    """The phase-2 answer."""

    id = serializers.UUIDField()
    sealed = serializers.BooleanField()
    enqueued_count = serializers.IntegerField()
    status = serializers.ChoiceField(choices=BatchStatus.choices)
    missing = serializers.IntegerField(required=False, help_text="only when not sealed: items still expected")


class BatchResultSerializer(serializers.ModelSerializer):
    index = serializers.IntegerField(source="batch_index", read_only=True)
    job = serializers.UUIDField(source="id", read_only=True)
    status = serializers.ChoiceField(choices=JobStatus.choices, read_only=True)
    result = serializers.JSONField(read_only=True, allow_null=True)
    error = ErrorField()

    class Meta:
        model = Job
        fields = ["index", "job", "status", "result", "error"]
        read_only_fields = fields


class WaitpointCreateSerializer(StrictSerializer):
    timeout_seconds = TimeoutField(
        max_value=settings.WAITPOINT_TIMEOUT_SECONDS_LIMIT, required=False, allow_null=True, default=None,
        help_text="default WAITPOINT_TOKEN_TIMEOUT_SECONDS; past it the waitpoint completes with a timeout error",
    )
    idempotency_key = StrictCharField(max_length=255, min_length=1, required=False, allow_null=True, default=None)


class WaitpointCompleteSerializer(StrictSerializer):
    output = serializers.JSONField(required=False, allow_null=True, default=None)
    is_error = StrictBooleanField(required=False, default=False)


class WaitpointSerializer(serializers.ModelSerializer):
    type = serializers.ChoiceField(choices=WaitpointType.choices, read_only=True)
    status = serializers.ChoiceField(choices=WaitpointStatus.choices, read_only=True)
    output = serializers.JSONField(read_only=True, allow_null=True)

    class Meta:
        model = Waitpoint
        fields = ["id", "type", "status", "output", "output_is_error", "idempotency_key", "completed_at", "timeout_at"]
        read_only_fields = fields


def intake_answer(result: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(result.batch_id), "sealed": result.sealed,
        "enqueued_count": result.enqueued_count, "status": result.status,
    }
    if not result.sealed:
        body["missing"] = result.missing
    return body


BatchResultPageSerializer = paginated_serializer(BatchResultSerializer, "BatchResultPage")
