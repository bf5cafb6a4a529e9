"""Settings for batchplatform. Every value comes from the environment (see docs/API.md)."""

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from .env import envbool, envint, envlist, envseconds, envstr

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DJANGO_DEBUG", False)
SECRET_KEY = envstr("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required unless DJANGO_DEBUG=1")
    SECRET_KEY = "insecure-development-key-only-used-with-DJANGO_DEBUG-1"
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    # The admin with the operator console and its operations dashboard (jobs/dashboard.py).
    "jobs.adminsite.ConsoleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_results",
    "jobs.apps.JobsConfig",
    "batches.apps.BatchesConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's and the API docs' static files under gunicorn (collectstatic).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "batchplatform.urls"
WSGI_APPLICATION = "batchplatform.wsgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Persistent connections with health checks: a Celery worker must not open a new
# Postgres connection per task (that alone costs ~4x throughput, see celery.py).
DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", "postgres://localhost:5432/batchplatform"),
        conn_max_age=None,
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"]["application_name"] = envstr("DATABASE_APPLICATION_NAME", "batchplatform")
# Server-side parameters let psycopg prepare the engine's hot statements (start,
# finish, dispatch) after a few runs: planning those CTEs cost more than running them.
DATABASES["default"]["OPTIONS"]["server_side_binding"] = envbool("DATABASE_SERVER_SIDE_BINDING", True)
DATABASES["default"]["OPTIONS"]["prepare_threshold"] = envint("DATABASE_PREPARE_THRESHOLD", 2, minimum=0)
if not DATABASES["default"].get("USER"):
    DATABASES["default"]["USER"] = envstr("PGUSER", "postgres")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Production hardening; `manage.py check --deploy` is clean with DEBUG off.
SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if not DEBUG and not SECURE_SSL_REDIRECT:
    # A TLS-terminating proxy in front does the redirect; tell `check --deploy` so.
    SILENCED_SYSTEM_CHECKS = ["security.W008"]

# --- Broker -------------------------------------------------------------------
REDIS_URL = envstr("REDIS_URL", "redis://localhost:6379/0")
# Prefix for every broker key, so several deployments (or test runs) share one Redis.
BROKER_KEY_PREFIX = envstr("BROKER_KEY_PREFIX", "")
CELERY_VISIBILITY_TIMEOUT = envseconds("CELERY_VISIBILITY_TIMEOUT", 3600)
CELERY_DEFAULT_QUEUE = envstr("CELERY_DEFAULT_QUEUE", "batchplatform")
CELERY_TASK_EVENTS = envbool("CELERY_TASK_EVENTS", True)

# --- Engine -------------------------------------------------------------------
TENANT_CONCURRENCY_LIMIT_DEFAULT = envint("TENANT_CONCURRENCY_LIMIT_DEFAULT", 10, minimum=1)
DISPATCH_DRR_QUANTUM = envint("DISPATCH_DRR_QUANTUM", 25, minimum=1)
DISPATCH_MAX_DEFICIT = envint("DISPATCH_MAX_DEFICIT", 100, minimum=1)
# Jobs dispatched or running across all tenants: the capacity fair dispatch shares.
# Set it near the total worker concurrency (x2 keeps workers fed between cycles).
DISPATCH_MAX_ACTIVE = envint("DISPATCH_MAX_ACTIVE", 200, minimum=1)
DISPATCH_INTERVAL_SECONDS = envseconds("DISPATCH_INTERVAL_SECONDS", 1)
DISPATCH_DEADLINE_SECONDS = envseconds("DISPATCH_DEADLINE_SECONDS", 300)
JOB_LEASE_SECONDS = envseconds("JOB_LEASE_SECONDS", 30)
JOB_LEASE_RENEW_SECONDS = envseconds("JOB_LEASE_RENEW_SECONDS", 15)
if JOB_LEASE_RENEW_SECONDS >= JOB_LEASE_SECONDS:
    raise ImproperlyConfigured("JOB_LEASE_RENEW_SECONDS must be shorter than JOB_LEASE_SECONDS")
STALLED_INTERVAL_SECONDS = envseconds("STALLED_INTERVAL_SECONDS", 10)
MAX_STALLED_COUNT = envint("MAX_STALLED_COUNT", 1, minimum=0)
# synchronous_commit for Celery worker connections (see jobs/signals.py): "off" trades
# a re-run of the last ~0.2 s of attempts after a Postgres crash for ~2x throughput.
WORKER_SYNCHRONOUS_COMMIT = envstr("WORKER_SYNCHRONOUS_COMMIT", "off")
if WORKER_SYNCHRONOUS_COMMIT not in ("on", "off", "local", "remote_write", "remote_apply"):
    raise ImproperlyConfigured("WORKER_SYNCHRONOUS_COMMIT must be on, off, local, remote_write or remote_apply")
JOB_MAX_ATTEMPTS_DEFAULT = envint("JOB_MAX_ATTEMPTS_DEFAULT", 10, minimum=1)
JOB_MAX_ATTEMPTS_LIMIT = envint("JOB_MAX_ATTEMPTS_LIMIT", 100, minimum=1)
JOB_RETRY_BASE_SECONDS = envseconds("JOB_RETRY_BASE_SECONDS", 2)
JOB_RETRY_MAX_SECONDS = envseconds("JOB_RETRY_MAX_SECONDS", 600)
JOB_TIMEOUT_SECONDS_DEFAULT = envseconds("JOB_TIMEOUT_SECONDS_DEFAULT", 900)
JOB_TIMEOUT_SECONDS_LIMIT = envseconds("JOB_TIMEOUT_SECONDS_LIMIT", 86400)
JOB_DELAY_SECONDS_LIMIT = envseconds("JOB_DELAY_SECONDS_LIMIT", 30 * 86400)
JOB_PAYLOAD_MAX_BYTES = envint("JOB_PAYLOAD_MAX_BYTES", 1_000_000, minimum=1)
BATCH_MAX_ITEMS = envint("BATCH_MAX_ITEMS", 100_000, minimum=1)
BATCH_ITEM_MAX_BYTES = envint("BATCH_ITEM_MAX_BYTES", 3_145_728, minimum=1)
BATCH_SEAL_TIMEOUT_SECONDS = envseconds("BATCH_SEAL_TIMEOUT_SECONDS", 3600)
# No wait is unbounded: default deadlines of token waitpoints and of batch/run waits.
WAITPOINT_TOKEN_TIMEOUT_SECONDS = envseconds("WAITPOINT_TOKEN_TIMEOUT_SECONDS", 86400)
WAITPOINT_BATCH_TIMEOUT_SECONDS = envseconds("WAITPOINT_BATCH_TIMEOUT_SECONDS", 86400)
WAITPOINT_TIMEOUT_SECONDS_LIMIT = envseconds("WAITPOINT_TIMEOUT_SECONDS_LIMIT", 30 * 86400)
RATE_LIMIT_MAX = envint("RATE_LIMIT_MAX", 1200, minimum=1)
RATE_LIMIT_REFILL = envint("RATE_LIMIT_REFILL", 100, minimum=1)
RATE_LIMIT_REFILL_SECONDS = envseconds("RATE_LIMIT_REFILL_SECONDS", 10)
STUCK_QUEUED_SECONDS = envseconds("STUCK_QUEUED_SECONDS", 300)
STUCK_RUNNING_SECONDS = envseconds("STUCK_RUNNING_SECONDS", 1800)
STUCK_EXECUTION_SECONDS = envseconds("STUCK_EXECUTION_SECONDS", 900)
STUCK_BATCH_SECONDS = envseconds("STUCK_BATCH_SECONDS", 900)
# Retention (jobs/retention.py, daily from beat and `manage.py prune_jobs`): finished
# jobs, closed executions and events of finished jobs older than these are deleted,
# RETENTION_CHUNK rows per transaction.
RETENTION_JOBS_SECONDS = envseconds("RETENTION_JOBS_SECONDS", 30 * 86400)
RETENTION_EXECUTIONS_SECONDS = envseconds("RETENTION_EXECUTIONS_SECONDS", 30 * 86400)
RETENTION_EVENTS_SECONDS = envseconds("RETENTION_EVENTS_SECONDS", 30 * 86400)
RETENTION_CHUNK = envint("RETENTION_CHUNK", 1000, minimum=1)
RETENTION_INTERVAL_SECONDS = envseconds("RETENTION_INTERVAL_SECONDS", 86400)
# /metrics histograms (dispatch latency, run time) cover attempts of this recent window.
METRICS_WINDOW_SECONDS = envseconds("METRICS_WINDOW_SECONDS", 300)
# Modules imported by workers and the API to register task handlers.
TASK_MODULES = envlist("TASK_MODULES", "jobs.examples,batches.examples")
# Crash points for fault-injection tests ("name=kill,other=raise"); inert when empty.
FAILPOINTS = envstr("FAILPOINTS", "")

# Linked from the operations dashboard; Flower itself runs behind FLOWER_BASIC_AUTH.
FLOWER_URL = envstr("FLOWER_URL", "http://127.0.0.1:5555/")

LOG_FORMAT = envstr("LOG_FORMAT", "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "jobs.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {"celery": {"level": "INFO"}},
}

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    # The common error shape for every DRF view, the schema endpoint included.
    "EXCEPTION_HANDLER": "jobs.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "batchplatform API",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    # Several components have a `status` with its own choices: name each enum (else
    # drf-spectacular warns, and `check --deploy` reports it).
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "ExecutionStatusEnum": "jobs.models.ExecutionStatus",
        "BatchStatusEnum": "batches.models.BatchStatus",
        "WaitpointStatusEnum": "batches.models.WaitpointStatus",
    },
}

CELERY_RESULT_BACKEND = "django-db"
CELERY_RESULT_EXTENDED = True
