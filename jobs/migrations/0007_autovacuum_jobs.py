"""Vacuum and analyse the hot job tables early.

Every job passes through three or four row versions (queued, dispatched, running,
finished); the dispatcher's counts and claims walk partial indexes whose dead entries
only vacuum removes, and a bulk-loaded backlog needs fresh statistics for the
dispatcher's plans. Postgres's defaults (20% dead rows, 10% for analyse, throttled)
let a busy table drift for minutes.
"""

from django.db import migrations

TABLES = ("jobs_job", "jobs_execution", "jobs_tenant", "batches_batch")
OPTIONS = (
    "autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, "
    "autovacuum_vacuum_cost_delay = 0"
)


class Migration(migrations.Migration):
    dependencies = [("jobs", "0006_job_created_index"), ("batches", "0002_initial")]

    operations = [
        migrations.RunSQL(
            sql=[f"ALTER TABLE {t} SET ({OPTIONS})" for t in TABLES],
            reverse_sql=[
                f"ALTER TABLE {t} RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor, "
                "autovacuum_vacuum_cost_delay)"
                for t in TABLES
            ],
        )
    ]
