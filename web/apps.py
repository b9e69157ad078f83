from django.apps import AppConfig


class WebConfig(AppConfig):
    """The pages people use: playground, accounts, dashboards."""

    name = "web"
    default_auto_field = "django.db.models.BigAutoField"
