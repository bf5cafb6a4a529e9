"""Unauthenticated operational routes: health (and metrics). One line per route."""

from django.urls import path

from . import health, monitoring_views

urlpatterns = [
    path("health/", health.live, name="health-live"),
    path("health/ready", health.ready, name="health-ready"),
    path("health/jobs", monitoring_views.health_jobs, name="health-jobs"),
    path("metrics", monitoring_views.metrics_view, name="metrics"),
]
