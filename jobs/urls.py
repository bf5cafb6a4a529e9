from django.urls import path

from . import health

urlpatterns = [
    path("health/", health.live, name="health-live"),
]
