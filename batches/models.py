"""Batches (a chord of child jobs) and waitpoints (what a waiting job waits on)."""

import uuid

from django.db import models
from django.db.models import Q


class BatchStatus(models.TextChoices):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ABORTED = "aborted"


class OnChildFailure(models.TextChoices):
    CONTINUE = "continue"
    FAIL_FAST = "fail_fast"


class WaitpointType(models.TextChoices):
    BATCH = "batch"
    RUN = "run"
    TOKEN = "token"
    DATETIME = "datetime"


class WaitpointStatus(models.TextChoices):
    PENDING = "pending"
    COMPLETED = "completed"


class Waitpoint(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("jobs.Tenant", on_delete=models.CASCADE, related_name="waitpoints")
    type = models.CharField(max_length=16, choices=WaitpointType.choices)
    status = models.CharField(max_length=16, choices=WaitpointStatus.choices, default=WaitpointStatus.PENDING)
    output = models.JSONField(null=True, blank=True)
    output_is_error = models.BooleanField(default=False)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # The job whose handler created it, and the position of that wait in the handler:
    # on re-run, the same call finds the same waitpoint.
    owner_job = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.CASCADE, related_name="owned_waitpoints"
    )
    owner_seq = models.PositiveIntegerField(null=True, blank=True)
    # For a `run` waitpoint: the child job it waits for.
    run = models.ForeignKey("jobs.Job", null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    # No wait is unbounded: past this the sweeper completes it with a timeout error
    # (for a `datetime` waitpoint, this is the time it completes normally).
    timeout_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="waitpoint_idempotency_key_per_tenant",
            ),
            models.UniqueConstraint(
                fields=["owner_job", "owner_seq"],
                condition=Q(owner_job__isnull=False),
                name="waitpoint_unique_owner_seq",
            ),
        ]
        indexes = [
            models.Index(fields=["timeout_at"], name="waitpoint_pending_idx", condition=Q(status="pending")),
            models.Index(fields=["run"], name="waitpoint_run_idx", condition=Q(run__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.type} waitpoint {self.id}"


class Batch(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey("jobs.Tenant", on_delete=models.CASCADE, related_name="batches")
    task = models.CharField(max_length=200, blank=True, default="")
    status = models.CharField(max_length=16, choices=BatchStatus.choices, default=BatchStatus.PENDING)
    sealed = models.BooleanField(default=False)
    run_count = models.PositiveIntegerField()
    # The chord counter: incremented in the transaction of each child's terminal
    # transition, exactly once per child.
    enqueued_count = models.PositiveIntegerField(default=0)
    completed_count = models.PositiveIntegerField(default=0)
    succeeded_count = models.PositiveIntegerField(default=0)
    failed_count = models.PositiveIntegerField(default=0)
    cancelled_count = models.PositiveIntegerField(default=0)
    on_child_failure = models.CharField(
        max_length=16, choices=OnChildFailure.choices, default=OnChildFailure.CONTINUE
    )
    max_attempts = models.PositiveIntegerField(null=True, blank=True)
    timeout_seconds = models.FloatField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_hash = models.CharField(max_length=64, blank=True, default="")
    parent = models.ForeignKey(
        "jobs.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="child_batches"
    )
    waitpoint = models.OneToOneField(
        Waitpoint, null=True, blank=True, on_delete=models.SET_NULL, related_name="batch"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    sealed_at = models.DateTimeField(null=True, blank=True)
    seal_deadline = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "batches"
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="batch_idempotency_key_per_tenant",
            ),
        ]
        indexes = [
            models.Index(
                fields=["seal_deadline"], name="batch_open_idx", condition=Q(status__in=["pending", "processing"])
            ),
            models.Index(fields=["tenant", "-created_at"], name="batch_tenant_created_idx"),
        ]

    def __str__(self) -> str:
        return f"batch {self.id}"
