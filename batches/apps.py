from django.apps import AppConfig


class BatchesConfig(AppConfig):
    name = "batches"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Hook the fan-in into the engine's transitions and add the batch stuck
        places to its sweeper: `jobs` never imports `batches`."""
        from jobs import hooks, sweeper

        from . import lifecycle, repair

        hooks.on_jobs_terminal(lifecycle.count_terminal_children)
        hooks.on_job_requeued(lifecycle.uncount_requeued_child)
        for place in repair.PLACES:
            sweeper.register_place(place)
