"""/api/v1/ batch and waitpoint routes (no trailing slashes, UUID ids)."""

from django.urls import path

from . import views

urlpatterns = [
    path("batches", views.BatchesView.as_view(), name="batches"),
    path("batches/<uuid:batch_id>", views.BatchDetailView.as_view(), name="batch-detail"),
    path("batches/<uuid:batch_id>/items", views.BatchItemsView.as_view(), name="batch-items"),
    path("batches/<uuid:batch_id>/results", views.BatchResultsView.as_view(), name="batch-results"),
    path("batches/<uuid:batch_id>/cancel", views.BatchCancelView.as_view(), name="batch-cancel"),
    path("waitpoints", views.WaitpointsView.as_view(), name="waitpoints"),
    path("waitpoints/<uuid:waitpoint_id>", views.WaitpointDetailView.as_view(), name="waitpoint-detail"),
    path("waitpoints/<uuid:waitpoint_id>/complete", views.WaitpointCompleteView.as_view(), name="waitpoint-complete"),
]
