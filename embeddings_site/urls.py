from django.contrib import admin
from django.urls import include, path, re_path

from billing import pages as billing_pages
from embeddings_site.ip_limits import posts_limited_per_ip
from embeddings_site.metrics import metrics_view
from inference import health
from inference.views import EmbeddingCreateApi, ModelDetailApi, ModelListApi
from inference.worker_api import WorkerHeartbeatApi

# Sign-in forms are limited per client IP.
admin.site.login = posts_limited_per_ip("IP_RATE_LIMIT_LOGIN")(admin.site.login)  # type: ignore[method-assign]

# /v1 routes take an optional trailing slash: clients differ, and a redirect would drop a POST body.
urlpatterns = [
    re_path(r"^v1/embeddings/?$", EmbeddingCreateApi.as_view(), name="embeddings-create"),
    re_path(r"^v1/models/?$", ModelListApi.as_view(), name="models-list"),
    re_path(r"^v1/models/(?P<model_id>.+?)/?$", ModelDetailApi.as_view(), name="models-detail"),
    path("", include("inference.rerank_urls")),
    path("", include("inference.tokenize_urls")),
    path("", include("classifiers.urls")),
    path("", include("batch.urls")),
    path("internal/workers", WorkerHeartbeatApi.as_view(), name="workers-heartbeat"),
    path("metrics", metrics_view, name="metrics"),
    path("health", health.health, name="health"),
    path("live", health.live, name="live"),
    path("ready", health.ready, name="ready"),
    path("admin/", admin.site.urls),
    path("billing/", billing_pages.billing_page, name="billing"),
    path("billing/card/setup", billing_pages.card_setup, name="card-setup"),
    path("billing/card/save", billing_pages.card_save, name="card-save"),
    path("billing/topup", billing_pages.topup, name="topup"),
    path("billing/topup/return", billing_pages.topup_return, name="topup-return"),
    path("billing/payments/<int:pk>/", billing_pages.payment_detail, name="payment-detail"),
    path(
        "billing/keys/<int:key_id>/auto-recharge",
        billing_pages.auto_recharge_save,
        name="auto-recharge-save",
    ),
    path("billing/stripe/webhook", billing_pages.stripe_webhook, name="stripe-webhook"),
    path("billing/key/", billing_pages.key_box, name="key-box"),
    path("billing/key/pay", billing_pages.key_box_pay, name="key-box-pay"),
    path("billing/key/settle", billing_pages.key_box_settle, name="key-box-settle"),
    path("", include("web.urls")),
]

handler400 = "embeddings_site.errors.handler400"
handler403 = "embeddings_site.errors.handler403"
handler404 = "embeddings_site.errors.handler404"
handler500 = "embeddings_site.errors.handler500"
