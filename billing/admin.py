from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from billing.models import ApiKey, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["prefix", "name", "user", "created_at", "last_used_at", "revoked_at"]
    search_fields = ["prefix", "name", "user__email"]
    readonly_fields = ["prefix", "digest", "created_at", "last_used_at"]
    list_filter = ["revoked_at"]

    def has_add_permission(self, request):  # type: ignore[no-untyped-def]
        # Keys are issued by the services (dashboard or `createkey`) so the plaintext is shown once.
        return False
