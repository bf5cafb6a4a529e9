"""Tenants, API keys, jobs, executions and events: the engine's rows.

Postgres is the only source of truth: a tenant's running count is a count of these
rows in an active state, and every active row carries a deadline.
"""

import hashlib
import secrets
import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Now


def default_concurrency_limit() -> int:
    return settings.TENANT_CONCURRENCY_LIMIT_DEFAULT


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200, blank=True)
    concurrency_limit = models.PositiveIntegerField(default=default_concurrency_limit)
    weight = models.PositiveIntegerField(default=1, help_text="Share of dispatch relative to other tenants.")
    # Null means the platform default (RATE_LIMIT_*).
    rate_limit_max = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_refill = models.PositiveIntegerField(null=True, blank=True)
    rate_limit_refill_seconds = models.FloatField(null=True, blank=True)
    # Deficit round robin state; losing it only makes one round less fair.
    dispatch_deficit = models.FloatField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug


class DispatchCursor(models.Model):
    """The deficit-round-robin pointer: the tenant whose turn it is (one row)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    tenant = models.ForeignKey(Tenant, null=True, on_delete=models.SET_NULL, related_name="+")


class ApiKey(models.Model):
    """A bearer key. Only its SHA-256 is stored; the prefix finds the row."""

    PREFIX_LENGTH = 12

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=200, blank=True)
    prefix = models.CharField(max_length=PREFIX_LENGTH, unique=True, editable=False)
    key_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.tenant})"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

    @classmethod
    def generate(cls, tenant: Tenant, name: str = "") -> tuple["ApiKey", str]:
        """Create a key; the plain key is returned once and never stored."""
        key = "bp_" + secrets.token_urlsafe(32)
        api_key = cls.objects.create(
            tenant=tenant, name=name, prefix=key[: cls.PREFIX_LENGTH], key_hash=cls.hash_key(key)
        )
        return api_key, key


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.DISPATCHED, JobStatus.RUNNING)
UNFINISHED_STATUSES = (JobStatus.QUEUED, JobStatus.DISPATCHED, JobStatus.RUNNING, JobStatus.WAITING)
TERMINAL_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Job(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="jobs")
    task = models.CharField(max_length=200)
    queue = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default=JobStatus.QUEUED)
    payload = models.JSONField(null=True, blank=True)
    payload_hash = models.CharField(max_length=64)
    result = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField()
    stalled_count = models.PositiveIntegerField(default=0)
    priority = models.IntegerField(default=0, help_text="Higher runs first within a tenant.")
    timeout_seconds = models.FloatField()
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    batch = models.ForeignKey(
        "batches.Batch", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    batch_index = models.PositiveIntegerField(null=True, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children"
    )
    # The top job of the tree; itself for a top-level job. Cancelling it cancels all.
    root = models.ForeignKey("self", null=True, on_delete=models.SET_NULL, related_name="+")
    progress = models.FloatField(null=True, blank=True)
    # Database time (rule 5): a job is ready when run_at <= now() in Postgres.
    created_at = models.DateTimeField(db_default=Now())
    run_at = models.DateTimeField(db_default=Now())
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)
    # Fencing: a delivery whose dispatch token is no longer current does nothing.
    dispatch_token = models.UUIDField(null=True, blank=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    dispatch_deadline = models.DateTimeField(null=True, blank=True)
    # The current attempt's lease: only its holder may renew it or write a result.
    lease_token = models.UUIDField(null=True, blank=True)
    lease_owner = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    timeout_at = models.DateTimeField(null=True, blank=True)
    # The waitpoint a `waiting` job is suspended on.
    waiting_for = models.ForeignKey(
        "batches.Waitpoint", null=True, blank=True, on_delete=models.SET_NULL, related_name="waiting_jobs"
    )

    class Meta:
        # Operator actions in the admin (jobs/admin.py), each granted separately.
        permissions = [
            ("cancel_job", "Can cancel jobs"),
            ("requeue_job", "Can requeue failed or cancelled jobs"),
            ("repair_job", "Can repair stuck jobs"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="job_idempotency_key_per_tenant",
            ),
            models.UniqueConstraint(
                fields=["batch", "batch_index"],
                condition=Q(batch__isnull=False),
                name="job_unique_batch_index",
            ),
        ]
        indexes = [
            # The dispatcher: a tenant's ready work in dispatch order.
            models.Index(
                fields=["tenant", "-priority", "run_at", "created_at"],
                name="job_queued_idx",
                condition=Q(status="queued"),
            ),
            # Active counts per tenant and the sweeper's deadline scans.
            models.Index(
                fields=["tenant", "status"],
                name="job_active_idx",
                condition=Q(status__in=["dispatched", "running"]),
            ),
            models.Index(fields=["lease_expires_at"], name="job_running_lease_idx", condition=Q(status="running")),
            models.Index(fields=["dispatch_deadline"], name="job_dispatched_idx", condition=Q(status="dispatched")),
            models.Index(fields=["waiting_for"], name="job_waiting_idx", condition=Q(status="waiting")),
            models.Index(fields=["tenant", "-created_at"], name="job_tenant_created_idx"),
            models.Index(fields=["-created_at"], name="job_created_idx"),  # admin list, date hierarchy
            models.Index(fields=["root"], name="job_root_idx"),
            models.Index(fields=["batch", "status"], name="job_batch_status_idx"),
            models.Index(fields=["finished_at"], name="job_finished_idx", condition=Q(finished_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return f"{self.task} {self.id}"


class ExecutionStatus(models.TextChoices):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    LOST = "lost"
    CANCELLED = "cancelled"
    SUSPENDED = "suspended"


class Execution(models.Model):
    """One attempt of a job, written in the transaction that starts it."""

    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="executions")
    attempt = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=ExecutionStatus.choices, default=ExecutionStatus.RUNNING)
    worker = models.CharField(max_length=255, blank=True, default="")
    lease_token = models.UUIDField()
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)

    class Meta:
        # Not unique on (job, attempt): a requeue starts a fresh budget at attempt 1
        # and keeps the earlier executions. Rows are ordered by id (start order).
        indexes = [
            models.Index(fields=["job", "id"], name="execution_job_idx"),
            models.Index(fields=["started_at"], name="execution_open_idx", condition=Q(status="running")),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.job_id} attempt {self.attempt}"


class EventType(models.TextChoices):
    CREATED = "created"
    DISPATCHED = "dispatched"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY_SCHEDULED = "retry_scheduled"
    TIMED_OUT = "timed_out"
    STALLED = "stalled"
    LOCK_EXTENSION_FAILED = "lock_extension_failed"
    REDISPATCHED = "redispatched"
    CANCELLED = "cancelled"
    REQUEUED = "requeued"
    SUSPENDED = "suspended"
    RESUMED = "resumed"
    STALE_RESULT_REFUSED = "stale_result_refused"
    REPAIRED = "repaired"


class JobEvent(models.Model):
    id = models.BigAutoField(primary_key=True)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    type = models.CharField(max_length=32, choices=EventType.choices)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    message = models.TextField(blank=True, default="")
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [
            models.Index(fields=["job", "id"], name="event_job_idx"),
            models.Index(fields=["type", "-created_at"], name="event_type_idx"),
            models.Index(fields=["created_at"], name="event_created_idx"),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.type} {self.job_id}"


class EventTally(models.Model):
    """Events already deleted by the pruner, by type (and reason for `repaired`).

    `/metrics` counters are counts of JobEvent rows plus these tallies, so pruning
    old events never makes a counter go down (jobs/retention.py adds to them in the
    transaction that deletes the rows).
    """

    key = models.CharField(max_length=300, primary_key=True)  # "<type>" or "repaired:<reason>"
    count = models.BigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.key}={self.count}"
