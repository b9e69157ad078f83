"""Forms of the pages (Django validates; the services write)."""

from __future__ import annotations

from django import forms
from django.contrib.auth import password_validation

from billing.models import Tier, User


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
