from django.contrib.auth import views as auth_views
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from embeddings_site.ip_limits import posts_limited_per_ip as _limit
from web import pages, views

urlpatterns = [
    path("", views.playground, name="playground"),
    path("playground/key", views.trial_key, name="playground-key"),
    path("accounts/signup/", views.sign_up, name="signup"),
    path("accounts/signup/sent/", views.sign_up_sent, name="signup-sent"),
    path("accounts/verify/<str:token>/", views.verify_email, name="verify-email"),
    path("accounts/verify/", views.verify_email_resend, name="verify-email-resend"),
    path(
        "accounts/login/",
        _limit("IP_RATE_LIMIT_LOGIN")(auth_views.LoginView.as_view()),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password-reset/",
        _limit("IP_RATE_LIMIT_PASSWORD_RESET")(auth_views.PasswordResetView.as_view()),
        name="password_reset",
    ),
    path(
        "accounts/password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(),
        name="password_reset_done",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        _limit("IP_RATE_LIMIT_PASSWORD_RESET")(auth_views.PasswordResetConfirmView.as_view()),
        name="password_reset_confirm",
    ),
    path(
        "accounts/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(),
        name="password_reset_complete",
    ),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/keys", views.key_create, name="key-create"),
    path("dashboard/keys/<int:pk>/", views.key_detail, name="key-detail"),
    path("dashboard/keys/<int:pk>/revoke", views.key_revoke, name="key-revoke"),
    path("dashboard/keys/<int:pk>/move", views.key_tokens_move, name="key-tokens-move"),
    path("dashboard/keys/<int:pk>/settings", views.key_settings, name="key-settings"),
    path("dashboard/usage.csv", views.usage_csv, name="usage-csv"),
    path("staff/", views.staff_dashboard, name="staff"),
    path("staff/keys/<int:pk>/grant", views.staff_key_grant, name="staff-key-grant"),
    path("staff/keys/<int:pk>/limits", views.staff_key_limits, name="staff-key-limits"),
    path("staff/keys/<int:pk>/revoke", views.staff_key_revoke, name="staff-key-revoke"),
    path("staff/users/<int:pk>/suspend", views.staff_user_suspend, name="staff-user-suspend"),
    # The pages a visitor learns from (web/pages.py), and the icon browsers ask for.
    path("models/", pages.models_page, name="models"),
    path("pricing/", pages.pricing_page, name="pricing"),
    path("rate-limits/", pages.rate_limits_page, name="rate-limits"),
    path("faq/", pages.faq_page, name="faq"),
    path("favicon.ico", pages.favicon, name="favicon"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
]
