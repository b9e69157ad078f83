from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Accounts, keys and billing"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Metering knows nothing of payments: payments asks to hear of each debit.
        from billing.alerts import low_balance_after_debit
        from billing.tasks import auto_recharge_after_debit
        from metering.hooks import after_debit_register

        after_debit_register(auto_recharge_after_debit)
        after_debit_register(low_balance_after_debit)
