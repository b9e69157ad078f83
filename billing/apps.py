from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Accounts, keys and billing"
    default_auto_field = "django.db.models.BigAutoField"
