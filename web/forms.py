"""Forms of the pages (Django validates; the services write)."""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.contrib.auth import password_validation

from billing.models import ApiKey, Tier, User


class SignUpForm(forms.Form):
    """E-mail and a password typed twice."""

    email = forms.EmailField(max_length=254)
    password1 = forms.CharField(label="Password", strip=False, widget=forms.PasswordInput)
    password2 = forms.CharField(label="Password again", strip=False, widget=forms.PasswordInput)

    def clean_email(self) -> str:
        # Whether the address has an account is not said here: see web.views.sign_up.
        return User.objects.normalize_email(self.cleaned_data["email"]).lower()

    def clean(self) -> dict[str, object]:
        data = super().clean() or {}
        first, second = data.get("password1"), data.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            try:
                password_validation.validate_password(str(first), User(email=data.get("email", "")))
            except forms.ValidationError as exc:
                self.add_error("password1", exc)
        return data


class KeyCreateForm(forms.Form):
    name = forms.CharField(max_length=100, initial="default")


class GrantForm(forms.Form):
    tokens = forms.IntegerField(min_value=1, max_value=10**15)
    note = forms.CharField(max_length=200, required=False)


class LimitsForm(forms.Form):
    """Blank fields leave the current override as it is."""

    tier = forms.ChoiceField(choices=Tier.choices)
    rpm = forms.IntegerField(min_value=1, required=False, label="Requests per minute")
    tpm = forms.IntegerField(min_value=1, required=False, label="Tokens per minute")
    concurrency = forms.IntegerField(min_value=1, required=False, label="Concurrent requests")


def _key_choices(keys: list[ApiKey]) -> list[tuple[str, str]]:
    return [(str(key.pk), f"{key.name} ({key.prefix}…), {key.balance:,} tokens") for key in keys]


class TokensMoveForm(forms.Form):
    """Move tokens from one key to another of the same user's active keys; blank moves all."""

    destination = forms.ChoiceField(label="To key")
    tokens = forms.IntegerField(
        min_value=1, max_value=2**63 - 1, required=False, label="Tokens (blank: all of them)"
    )

    def __init__(self, *args: object, destinations: list[ApiKey], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        cast(forms.ChoiceField, self.fields["destination"]).choices = _key_choices(destinations)


class KeyRevokeForm(forms.Form):
    """Revoke a key holding tokens: move them to another key first, or leave them on it."""

    move_to = forms.ChoiceField(label="Move its tokens to", required=False)
    leave_tokens = forms.BooleanField(required=False)

    def __init__(self, *args: object, destinations: list[ApiKey], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        choices = [("", "—"), *_key_choices(destinations)]
        cast(forms.ChoiceField, self.fields["move_to"]).choices = choices


class KeySettingsForm(forms.Form):
    """A key's name, expiry, allowed models and low-balance alert (blank: none)."""

    name = forms.CharField(max_length=100)
    expires_at = forms.DateTimeField(
        required=False,
        label="Expires at (UTC)",
        input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M", "%Y-%m-%d"],
        widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
        help_text="After this the API refuses the key. Blank: never.",
    )
    allowed_models = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked: every model.",
    )
    low_balance_alert_tokens = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=10**15,
        label="E-mail me when the balance falls below (tokens)",
        help_text="Blank: no alert.",
    )

    def __init__(self, *args: Any, model_names: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = cast(forms.MultipleChoiceField, self.fields["allowed_models"])
        field.choices = [(name, name) for name in model_names]

    @classmethod
    def for_key(cls, api_key: ApiKey, *, model_names: list[str]) -> KeySettingsForm:
        """The form filled in with the key's settings (its listed models stay choosable)."""
        return cls(
            initial={
                "name": api_key.name,
                "expires_at": api_key.expires_at,
                "allowed_models": list(api_key.allowed_models),
                "low_balance_alert_tokens": api_key.low_balance_alert_tokens,
            },
            model_names=sorted({*model_names, *api_key.allowed_models}),
        )
