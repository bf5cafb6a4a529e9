"""A changelist of 100,000 jobs: a bounded number of queries and no full-table COUNT."""

import re
import time
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.urls import reverse

from jobs import sweeper
from jobs.models import Job, Tenant

# Transactional: the flush TRUNCATEs the 100,000 rows. Rolled back, they would stay
# behind as dead tuples that slow every later test's queries until autovacuum runs.
pytestmark = pytest.mark.django_db(transaction=True)

N = 100_000
MAX_QUERIES = 12

INSERT_SQL = """
INSERT INTO jobs_job (id, tenant_id, task, queue, status, payload, payload_hash, error, attempts, max_attempts,
                      stalled_count, priority, timeout_seconds, created_at, run_at, updated_at, finished_at,
                      lease_owner, progress, idempotency_key)
SELECT gen_random_uuid(), %(tenant)s, 'examples.echo', 'batchplatform',
       (ARRAY['queued', 'succeeded', 'failed', 'running'])[1 + i %% 4],
       jsonb_build_object('i', i), md5(i::text), NULL, 1, 3, 0, 0, 60,
       now() - make_interval(secs => i), now(), now(),
       CASE WHEN i %% 4 IN (1, 2) THEN now() - make_interval(secs => i) END,
       '', CASE WHEN i %% 10 = 0 THEN (i %% 100) / 100.0 END, 'key-' || i
FROM generate_series(1, %(n)s) AS i
"""


@pytest.fixture
def many_jobs(tenant: Tenant) -> Tenant:
    with connection.cursor() as cursor:
        cursor.execute(INSERT_SQL, {"tenant": tenant.id, "n": N})
    return tenant


def full_counts(queries: list[dict[str, Any]]) -> list[str]:
    """COUNT queries over jobs_job that are not capped by a LIMIT."""
    return [
        q["sql"] for q in queries
        if re.search(r"count\(", q["sql"], re.I) and "jobs_job" in q["sql"] and "LIMIT" not in q["sql"]
    ]


PAGES = [
    "",
    "?status__exact=failed",
    "?dead_letter=yes",
    "?task=examples.echo&o=-7",
    "?q=key-500",
    "?p=3",
    "?created_at__year={year}",
    "?stuck=any",
    "?stuck=running_lease_expired",
]


@pytest.mark.slow
def test_job_changelist_of_100000_rows_is_a_bounded_number_of_queries_without_a_full_count(
    admin_client: Client, many_jobs: Tenant, django_assert_max_num_queries: Any
) -> None:
    assert Job.objects.count() == N  # the setup, not the page
    for page in PAGES:
        url = reverse("admin:jobs_job_changelist") + page.format(year=time.gmtime().tm_year)
        url += ("&" if "?" in url else "?") + f"tenant__id__exact={many_jobs.id}"
        # The stuck filter asks each of the sweeper's places once (each in a savepoint
        # inside the test's transaction): a fixed cost per place, not per row.
        bound = MAX_QUERIES + (3 * len(sweeper.PLACES) if "stuck" in page else 0)

        with django_assert_max_num_queries(bound, info=url) as captured:
            response = admin_client.get(url)

        assert response.status_code == 200, (url, response.content[:2000])
        assert full_counts(captured.captured_queries) == [], url
        assert len(response.context["cl"].result_list) <= 50


@pytest.mark.slow
def test_unfiltered_changelist_after_analyze_uses_the_table_estimate_and_counts_nothing(
    admin_client: Client, many_jobs: Tenant, django_assert_max_num_queries: Any
) -> None:
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE jobs_job")

    with django_assert_max_num_queries(MAX_QUERIES) as captured:
        response = admin_client.get(reverse("admin:jobs_job_changelist"))

    assert response.status_code == 200
    assert not [q for q in captured.captured_queries if re.search(r"count\(", q["sql"], re.I)
                and "jobs_job" in q["sql"]]
    shown = response.context["cl"].result_count
    assert 0.8 * N <= shown <= 1.2 * N  # reltuples is an estimate
    assert len(response.context["cl"].result_list) == 50


@pytest.mark.slow
def test_job_page_of_a_job_among_100000_is_a_bounded_number_of_queries(
    admin_client: Client, many_jobs: Tenant, django_assert_max_num_queries: Any
) -> None:
    job = Job.objects.filter(tenant=many_jobs).first()
    assert job is not None
    with django_assert_max_num_queries(MAX_QUERIES):
        response = admin_client.get(reverse("admin:jobs_job_change", args=[job.id]))
    assert response.status_code == 200


@pytest.mark.slow
def test_event_and_execution_changelists_over_100000_rows_are_bounded_without_a_full_count(
    admin_client: Client, many_jobs: Tenant, django_assert_max_num_queries: Any
) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO jobs_jobevent (job_id, tenant_id, type, attempt, message, created_at) "
            "SELECT id, tenant_id, 'created', NULL, '', created_at FROM jobs_job"
        )
        cursor.execute(
            "INSERT INTO jobs_execution (job_id, attempt, status, worker, lease_token, started_at, finished_at) "
            "SELECT id, 1, 'succeeded', 'w1', gen_random_uuid(), created_at, created_at FROM jobs_job"
        )
    for url in ["/admin/jobs/jobevent/", "/admin/jobs/jobevent/?type__exact=created&p=5",
                "/admin/jobs/execution/", "/admin/jobs/execution/?status__exact=succeeded"]:
        with django_assert_max_num_queries(MAX_QUERIES, info=url) as captured:
            response = admin_client.get(url)
        assert response.status_code == 200, url
        counts = [q["sql"] for q in captured.captured_queries
                  if re.search(r"count\(", q["sql"], re.I) and "LIMIT" not in q["sql"]]
        assert counts == [], url
