from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django_ratelimit.decorators import ratelimit

from inference import health
from inference.views import EmbeddingCreateApi, ModelDetailApi, ModelListApi
from inference.worker_api import WorkerHeartbeatApi

# Sign-in forms are limited per client IP.
admin.site.login = ratelimit(  # type: ignore[method-assign]
    key="ip", rate=lambda group, request: settings.IP_RATE_LIMIT_LOGIN, method="POST", block=True
)(admin.site.login)

# /v1 routes take an optional trailing slash: clients differ, and a redirect would drop a POST body.
urlpatterns = [
    re_path(r"^v1/embeddings/?$", EmbeddingCreateApi.as_view(), name="embeddings-create"),
    re_path(r"^v1/models/?$", ModelListApi.as_view(), name="models-list"),
    re_path(r"^v1/models/(?P<model_id>.+?)/?$", ModelDetailApi.as_view(), name="models-detail"),
    path("internal/workers", WorkerHeartbeatApi.as_view(), name="workers-heartbeat"),
    path("health", health.health, name="health"),
    path("live", health.live, name="live"),
    path("ready", health.ready, name="ready"),
    path("admin/", admin.site.urls),
]

handler400 = "embeddings_site.errors.handler400"
handler403 = "embeddings_site.errors.handler403"
handler404 = "embeddings_site.errors.handler404"
handler500 = "embeddings_site.errors.handler500"
