"""/api/v1/ job routes. No trailing slashes (docs/API.md); ids are UUIDs, so a
malformed id matches nothing and answers the JSON 404."""

from django.urls import path

from . import views

urlpatterns = [
    path("jobs", views.JobsView.as_view(), name="jobs"),
    path("jobs/<uuid:job_id>", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/executions", views.JobExecutionsView.as_view(), name="job-executions"),
    path("jobs/<uuid:job_id>/cancel", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/requeue", views.JobRequeueView.as_view(), name="job-requeue"),
]
