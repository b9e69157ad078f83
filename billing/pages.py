"""The billing pages: top-up with a saved card, auto-recharge settings, payments, and the Stripe
webhook endpoint. Views parse and render; billing.payments does the work."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core import signing
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from billing import payments, stripe_api, webhooks
from billing.models import ApiKey, Payment, User
from billing.selectors import api_key_list, last_days, usage_by_day
from embeddings_site.ip_limits import posts_limited_per_ip
from metering.lifecycle import limits_for
from metering.selectors import api_key_get_active


def _user(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User):  # login_required runs first; this keeps the type honest
        raise Http404
    return user


def _json_error(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": {"message": message}}, status=status)


def _payment_errors_as_json(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """The JSON endpoints the page's script calls answer a refusal with its reason: 400 for the
    buyer's mistakes, 503 when payments are off, 502 when Stripe cannot be reached."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        try:
            return view(request, *args, **kwargs)
        except payments.PaymentError as exc:
            return _json_error(str(exc))
        except stripe_api.StripeNotConfigured:
            return _json_error("Payments are not configured on this server.", 503)
        except stripe_api.StripeUnavailable as exc:
            return _json_error(f"Stripe is unavailable: {exc}", 502)

    return wrapped


@login_required
@require_GET
def billing_page(request: HttpRequest) -> HttpResponse:
    """Top up a key, set auto-recharge, list payments."""
    return _billing_page_render(request)


def _billing_page_render(
    request: HttpRequest,
    *,
    status: int = 200,
    refused_key: ApiKey | None = None,
    recharge_errors: list[str] | None = None,
) -> HttpResponse:
    user = _user(request)
    keys = list(api_key_list(user=user).filter(revoked_at__isnull=True))
    recharges = {key.pk: payments.auto_recharge_get(api_key=key) for key in keys}
    selected, key_refused = _key_to_preselect(request, user=user, keys=keys)
    context: dict[str, Any] = {
        "stripe_configured": stripe_api.is_configured(),
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "stripe_js_url": settings.STRIPE_JS_URL,
        "packs": payments.token_packs(),
        "keys": [(key, recharges[key.pk]) for key in keys],
        # The auto-recharge form that was refused, and why, shown on that form.
        "refused_key_pk": refused_key.pk if refused_key else None,
        "recharge_errors": recharge_errors or [],
        "selected_key": selected,
        "key_refused": key_refused,
        "cap_currency": payments.auto_recharge_cap_currency(),
        "payments": payments.payment_list(user=user),
        "card_label": user.card_label,
    }
    return render(request, "billing/billing.html", context, status=status)


def _key_to_preselect(request: HttpRequest, *, user: User, keys: list[ApiKey]) -> tuple[str, str]:
    """The `?key=` the page was linked with, if it is one of the user's active keys; else
    nothing is preselected (paying would credit a key the buyer did not pick) and a message
    says why."""
    wanted = request.GET.get("key", "")
    if not wanted or any(str(key.pk) == wanted for key in keys):
        return wanted, ""
    revoked = (
        ApiKey.objects.filter(pk=int(wanted), user=user).exclude(revoked_at=None).first()
        if wanted.isdigit()
        else None
    )
    if revoked is not None:
        return "", (
            f"Key {revoked.name} ({revoked.prefix}…) is revoked: it cannot be topped up. "
            "Choose another key below; its page can move its tokens to another key."
        )
    return "", "That link names none of your active keys. Choose a key below."


@login_required
@require_POST
@_payment_errors_as_json
def card_setup(request: HttpRequest) -> JsonResponse:
    """Start saving a card: a SetupIntent's client secret for Stripe.js."""
    client_secret = payments.card_setup_start(user=_user(request))
    return JsonResponse({"client_secret": client_secret})


@login_required
@require_POST
@_payment_errors_as_json
def card_save(request: HttpRequest) -> JsonResponse:
    """Keep the card a SetupIntent confirmed in the browser."""
    user = _user(request)
    setup_intent_id = request.POST.get("setup_intent", "")
    if not setup_intent_id.startswith("seti_"):
        return _json_error("setup_intent is required.")
    payments.card_save(user=user, setup_intent_id=setup_intent_id)
    return JsonResponse({"card_label": user.card_label})


@login_required
@require_POST
@_payment_errors_as_json
def topup(request: HttpRequest) -> JsonResponse:
    """Buy a pack for a key with the saved card."""
    user = _user(request)
    key_id = request.POST.get("api_key", "")
    api_key = ApiKey.objects.filter(pk=int(key_id), user=user).first() if key_id.isdigit() else None
    if api_key is None:
        return _json_error("Choose one of your keys.")
    payment, client_secret = payments.topup_pay(
        user=user, api_key=api_key, pack_id=request.POST.get("pack", "")
    )
    return_url = reverse("payment-detail", args=[payment.pk])
    if payment.stripe_payment_intent_id:
        return_url = reverse("topup-return") + f"?payment_intent={payment.stripe_payment_intent_id}"
    return JsonResponse(
        {
            "payment": payment.pk,
            "status": payment.status,
            "message": payment.failure_message,
            "client_secret": client_secret,
            "return_url": return_url,
        }
    )


@login_required
@require_GET
def topup_return(request: HttpRequest) -> HttpResponse:
    """Where the browser lands after paying: settle the payment from Stripe's state."""
    intent_id = request.GET.get("payment_intent", "")
    if not intent_id.startswith("pi_"):
        raise Http404
    try:
        payment = payments.payment_return(user=_user(request), payment_intent_id=intent_id)
    except stripe_api.StripeUnavailable:
        payment = Payment.objects.filter(
            user=_user(request), stripe_payment_intent_id=intent_id
        ).first()
        messages.warning(request, "Stripe is slow to answer; this page will update shortly.")
    if payment is None:
        raise Http404
    return redirect("payment-detail", pk=payment.pk)


@login_required
@require_GET
def payment_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One payment; a payment waiting for authentication can be finished here."""
    payment = get_object_or_404(Payment.objects.select_related("api_key"), pk=pk, user=request.user)
    client_secret = ""
    if payment.status == Payment.Status.REQUIRES_ACTION and payment.stripe_payment_intent_id:
        try:
            intent = stripe_api.payment_intent_get(
                payment_intent_id=payment.stripe_payment_intent_id
            )
            client_secret = intent.client_secret if intent.status == "requires_action" else ""
        except (stripe_api.StripeUnavailable, stripe_api.StripeNotConfigured):
            client_secret = ""
    context = {
        "payment": payment,
        "client_secret": client_secret,
        "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
        "stripe_js_url": settings.STRIPE_JS_URL,
        "return_url": reverse("topup-return")
        + f"?payment_intent={payment.stripe_payment_intent_id or ''}",
    }
    return render(request, "billing/payment_detail.html", context)


# The columns' ranges: a value past them would fail in the database, after validation.
_THRESHOLD_MAX = 2**63 - 1  # AutoRecharge.threshold_tokens, a BigIntegerField
_CAP_MAX = Decimal(2**31 - 1) / 100  # AutoRecharge.monthly_cap_amount, in minor units


class AutoRechargeForm(forms.Form):
    """One key's auto-recharge settings as typed on the billing page; a blank number is 0."""

    enabled = forms.BooleanField(required=False)
    threshold_tokens = forms.CharField(required=False, strip=True, label="Recharge below")
    pack_id = forms.CharField(required=False, max_length=50)
    monthly_cap = forms.DecimalField(
        required=False,
        min_value=Decimal(0),
        max_value=_CAP_MAX,
        label="Monthly cap",
        error_messages={
            # DecimalField refuses inf and nan as "invalid".
            "invalid": "Enter an amount, such as 50 or 4.99.",
            "min_value": "The monthly cap cannot be negative.",
            "max_value": f"The monthly cap can be at most {_CAP_MAX:,}.",
        },
    )

    def clean_threshold_tokens(self) -> int:
        typed = self.cleaned_data["threshold_tokens"].replace(",", "").replace("_", "")
        if not typed:
            return 0
        if not typed.isascii() or not typed.isdigit() or int(typed) > _THRESHOLD_MAX:
            raise forms.ValidationError(
                f"Enter a whole number of tokens from 0 to {_THRESHOLD_MAX:,}."
            )
        return int(typed)

    def clean_monthly_cap(self) -> int:
        """The cap in minor units (cents)."""
        cap = self.cleaned_data["monthly_cap"]
        return 0 if cap is None else int((cap * 100).quantize(Decimal(1), ROUND_HALF_EVEN))


@login_required
@require_POST
def auto_recharge_save(request: HttpRequest, key_id: int) -> HttpResponse:
    """Save a key's auto-recharge form; a value out of range is a 400 page that says which."""
    api_key = get_object_or_404(ApiKey, pk=key_id, user=request.user, revoked_at__isnull=True)
    form = AutoRechargeForm(request.POST)
    if not form.is_valid():
        errors = [
            f"{form.fields[name].label or name}: {message}"
            for name, messages_ in form.errors.items()
            for message in messages_
        ]
        return _billing_page_render(
            request, status=400, refused_key=api_key, recharge_errors=errors
        )
    try:
        payments.auto_recharge_configure(
            api_key=api_key,
            enabled=form.cleaned_data["enabled"],
            threshold_tokens=form.cleaned_data["threshold_tokens"],
            pack_id=form.cleaned_data["pack_id"],
            monthly_cap_amount=form.cleaned_data["monthly_cap"],
        )
    except payments.PaymentError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Auto-recharge saved for {api_key.name or api_key.prefix}.")
    return redirect("billing")


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    """Stripe's deliveries (signed; no session, so no CSRF token)."""
    result = webhooks.stripe_webhook_receive(
        payload=request.body, signature=request.headers.get("Stripe-Signature", "")
    )
    return JsonResponse({"detail": result.detail}, status=result.status)


# --- The key box: balance and top-up by key, without an account ------------------------------

# The lookup hands the purchase step a signed token naming the key's id (never the key): it is
# good for this long, and only for the key box (its salt).
KEY_BOX_PURCHASE_SALT = "billing.key_box.purchase"
KEY_BOX_TOKEN_MAX_AGE = timedelta(minutes=30)
KEY_BOX_USAGE_DAYS = 7
# One answer for a key that is malformed, unknown, revoked, expired or whose owner is suspended.
KEY_BOX_REFUSAL = "No active API key matches what you entered. Check the key and try again."


def key_box_token(*, api_key: ApiKey) -> str:
    """The signed purchase token for a key that was just looked up."""
    return signing.dumps({"key": api_key.pk}, salt=KEY_BOX_PURCHASE_SALT)


def _key_box_token_key_id(token: str) -> int | None:
    """The key id a purchase token names, or None when it is forged, altered or too old."""
    try:
        data = signing.loads(token, salt=KEY_BOX_PURCHASE_SALT, max_age=KEY_BOX_TOKEN_MAX_AGE)
    except signing.BadSignature:  # SignatureExpired is one
        return None
    key_id = data.get("key") if isinstance(data, dict) else None
    return key_id if isinstance(key_id, int) else None


def _key_box_key(plaintext: str) -> ApiKey | None:
    """The key for a pasted plaintext, read fresh (its balance now), if the API would take it."""
    found = api_key_get_active(key=plaintext.strip())
    if found is None:
        return None
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(pk=found.pk, revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None or (api_key.expires_at is not None and api_key.expires_at <= timezone.now()):
        return None
    return api_key


def _key_box_usage(api_key: ApiKey) -> list[dict[str, Any]]:
    """The key's last days by day and endpoint, as the dashboards count them (usage_by_day),
    days with requests only, newest first."""
    rows = usage_by_day(
        api_key=api_key, usage_slice=last_days(KEY_BOX_USAGE_DAYS), by=("endpoint",)
    )
    return sorted(
        (row for row in rows if row["requests"]),
        key=lambda row: (row["day"], row["endpoint"]),
        reverse=True,
    )


def _key_box_render(
    request: HttpRequest, *, api_key: ApiKey | None = None, refusal: str = "", status: int = 200
) -> HttpResponse:
    context: dict[str, Any] = {"refusal": refusal, "api_key": api_key}
    if api_key is not None:
        context.update(
            {
                "limits": limits_for(api_key),
                "usage": _key_box_usage(api_key),
                "usage_days": KEY_BOX_USAGE_DAYS,
                "purchase_token": key_box_token(api_key=api_key),
                "token_minutes": int(KEY_BOX_TOKEN_MAX_AGE.total_seconds() // 60),
                "packs": payments.token_packs(),
                "stripe_configured": stripe_api.is_configured(),
                "publishable_key": settings.STRIPE_PUBLISHABLE_KEY,
                "stripe_js_url": settings.STRIPE_JS_URL,
            }
        )
    return render(request, "billing/key_box.html", context, status=status)


@never_cache  # no-store: the answer names a key's balance; no cache keeps it
@sensitive_post_parameters("key")
@require_http_methods(["GET", "POST"])
@posts_limited_per_ip("IP_RATE_LIMIT_KEY_LOOKUP")
def key_box(request: HttpRequest) -> HttpResponse:
    """Paste a key (in the POST body only) to see its balance, limits and recent usage, and buy
    a pack for it, without an account."""
    if request.method != "POST":
        return _key_box_render(request)
    api_key = _key_box_key(request.POST.get("key", ""))
    if api_key is None:
        return _key_box_render(request, refusal=KEY_BOX_REFUSAL, status=400)
    return _key_box_render(request, api_key=api_key)


def _key_box_token_refused() -> JsonResponse:
    return _json_error("This page is too old or was altered. Enter the key again.")


@never_cache
@require_POST
@posts_limited_per_ip("IP_RATE_LIMIT_FORMS")
@_payment_errors_as_json
def key_box_pay(request: HttpRequest) -> JsonResponse:
    """Buy a pack for the key a purchase token names, with a card Stripe.js just collected."""
    key_id = _key_box_token_key_id(request.POST.get("token", ""))
    if key_id is None:
        return _key_box_token_refused()
    payment, client_secret = payments.key_box_pay(
        api_key_id=key_id,
        pack_id=request.POST.get("pack", ""),
        payment_method_id=request.POST.get("payment_method", ""),
    )
    return JsonResponse(_key_box_payment_json(payment, client_secret=client_secret))


@never_cache
@require_POST
@posts_limited_per_ip("IP_RATE_LIMIT_FORMS")
@_payment_errors_as_json
def key_box_settle(request: HttpRequest) -> JsonResponse:
    """After Stripe.js's authentication: settle the payment of the token's key from Stripe."""
    key_id = _key_box_token_key_id(request.POST.get("token", ""))
    if key_id is None:
        return _key_box_token_refused()
    intent_id = request.POST.get("payment_intent", "")
    payment = (
        payments.key_box_payment_settle(api_key_id=key_id, payment_intent_id=intent_id)
        if intent_id.startswith("pi_")
        else None
    )
    if payment is None:
        return _json_error("No such payment for this key.", 404)
    return JsonResponse(_key_box_payment_json(payment, client_secret=""))


def _key_box_payment_json(payment: Payment, *, client_secret: str) -> dict[str, Any]:
    balance = ApiKey.objects.filter(pk=payment.api_key_id).values_list("balance", flat=True).first()
    return {
        "status": payment.status,
        "message": payment.failure_message,
        "tokens": payment.credited_tokens,
        "balance": balance,
        "client_secret": client_secret,
        "payment_intent": payment.stripe_payment_intent_id or "",
        # Stripe's receipt, when it has one: the buyer has no account here to find it in.
        "receipt_url": payment.receipt_url,
    }
