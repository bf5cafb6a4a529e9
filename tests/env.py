"""Loaded with `-p tests.env` before Django: test defaults for every process.

Worker subprocesses inherit this environment, so the test process and its workers
agree on leases and deadlines. Values already set in the environment win.
"""

import os
import uuid

TEST_ENV = {
    "DJANGO_SECRET_KEY": "test-only-secret-key-not-for-production-" + "x" * 20,
    "DJANGO_ALLOWED_HOSTS": "*",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/batchplatform",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    # A private prefix for every broker key of this test session.
    "BROKER_KEY_PREFIX": f"bptest-{uuid.uuid4().hex[:12]}:",
    "JOB_LEASE_SECONDS": "2",
    "JOB_LEASE_RENEW_SECONDS": "0.5",
    "STALLED_INTERVAL_SECONDS": "0.5",
    "DISPATCH_INTERVAL_SECONDS": "0.25",
    "DISPATCH_DEADLINE_SECONDS": "3",
    "JOB_RETRY_BASE_SECONDS": "0.5",
    "JOB_RETRY_MAX_SECONDS": "5",
    "CELERY_VISIBILITY_TIMEOUT": "3600",
    "LOG_LEVEL": "WARNING",
    "TASK_MODULES": "jobs.examples,batches.examples,tests.tasks",
}

for key, value in TEST_ENV.items():
    os.environ.setdefault(key, value)
