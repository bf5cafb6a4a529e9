from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import registry, signals  # noqa: F401  (connect Celery signals)

        registry.load_task_modules()
