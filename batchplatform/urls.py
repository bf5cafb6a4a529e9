"""Routes. API paths are exactly as docs/API.md writes them (no trailing slash under
/api/v1/). Apps add their API routes under ``api/v1/`` above the catch-all."""

from django.contrib import admin
from django.contrib.staticfiles import views as staticfiles_views
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from jobs.api import errors

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # The docs UI's own assets (drf-spectacular-sidecar), served by the app so /api/docs/
    # works offline under gunicorn with no static file server in front. Only that package.
    re_path(r"^static/(?P<path>drf_spectacular_sidecar/.+)$", staticfiles_views.serve, {"insecure": True}),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("batches.api.urls")),
    path("", include("jobs.urls")),
    # Last: any other /api/ path answers the JSON 404, even with DEBUG on (Django's
    # debug 404 page would be HTML).
    re_path(r"^api/", errors.json_404),
]

handler404 = "jobs.api.errors.handler404"
handler500 = "jobs.api.errors.handler500"
