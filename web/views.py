"""The pages: playground, sign-up, the user's dashboard and the staff dashboard.

Views parse and render; the services in billing do the writes.
"""

from __future__ import annotations

import csv
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import SetPasswordForm
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.utils.text import slugify
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from batch.selectors import batch_job_list
from billing.models import ApiKey, User
from billing.payments import auto_recharge_get, payment_list
from billing.selectors import USAGE_FIELDS, UsageSlice, api_key_list, ledger_entries, usage_by_day
from billing.services import (
    EmailVerificationError,
    TokensMoveRefused,
    VisitorTrialsExhausted,
    api_key_create,
    api_key_grant,
    api_key_name_unique,
    api_key_revoke,
    api_key_revoke_moving_tokens,
    api_key_set_limits,
    api_key_settings_update,
    api_key_tokens_move,
    user_email_verification_send,
    user_email_verification_token,
    user_email_verification_user,
    user_email_verify,
    user_sign_up,
    user_sign_up_repeated_send,
    user_suspend,
    visitor_trial_key_create,
)
from embeddings_site.ip_limits import client_ip, posts_limited_per_ip
from inference.selectors import embedding_model_list
from metering.lifecycle import limits_for
from web import selectors
from web.charts import bar_chart
from web.forms import (
    GrantForm,
    KeyCreateForm,
    KeyRevokeForm,
    KeySettingsForm,
    LimitsForm,
    SignUpForm,
    TokensMoveForm,
)
from web.usage_filters import GROUPS, STAFF_GROUPS, UsageSliceForm

# Where key_create once parked a new key's plaintext until the dashboard showed it. A session row
# is only signed, not encrypted, so it leaked the key for as long as the row lived; an entry left
# by that code is dropped unread.
_LEGACY_NEW_KEY = "new_key"


def _forget_legacy_new_key(request: HttpRequest) -> None:
    request.session.pop(_LEGACY_NEW_KEY, None)


def _user(request: HttpRequest) -> User:
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied
    return user


def staff_required(view: Any) -> Any:
    """Staff only: anonymous visitors are sent to log in, other users get 403."""

    @login_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied
        return view(request, *args, **kwargs)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


# --- Playground ------------------------------------------------------------------------------


@require_GET
def playground(request: HttpRequest) -> HttpResponse:
    """Try the API in the browser with one of your keys (or a visitor's trial key)."""
    models = [
        {
            "name": model.name,
            "dimensions": model.dimensions,
            "tasks": sorted((model.tasks or {}).keys()),
            "modalities": list(model.modalities or ["text"]),
            "price": float(model.price_per_million_tokens or 0),
            "max_tokens": model.max_tokens,
            "operations": model.operations,
        }
        for model in embedding_model_list()
    ]
    return render(
        request,
        "web/playground.html",
        {"models": models, "visitor_trials": settings.VISITOR_TRIAL_TOKENS > 0},
    )


@require_POST
@posts_limited_per_ip("IP_RATE_LIMIT_TRIAL_KEY")
def trial_key(request: HttpRequest) -> JsonResponse:
    """A key for the playground: a new key for a signed-in user, a trial key for a visitor."""
    if request.user.is_authenticated:
        return _playground_key_for_user(request)
    if settings.VISITOR_TRIAL_TOKENS > 0:
        try:
            api_key, plaintext = visitor_trial_key_create(client_ip=client_ip(request))
        except VisitorTrialsExhausted as exc:
            response = JsonResponse(
                {
                    "error": {
                        "code": "RATE_TRIAL_QUOTA_EXCEEDED",
                        "message": "This network has had its free trial keys for today. "
                        "Sign up for an account to get more tokens.",
                    }
                },
                status=429,
            )
            response["Retry-After"] = str(exc.retry_after)
            return response
    else:
        return JsonResponse({"error": {"message": "Sign up to get a key."}}, status=403)
    return JsonResponse({"key": plaintext, "prefix": api_key.prefix, "balance": api_key.balance})


def _playground_key_for_user(request: HttpRequest) -> JsonResponse:
    """A signed-in user's key for the playground: only on an explicit confirm (a click must not
    mint a key each time), named apart from their other keys, and said plainly when it has no
    tokens, with where to get some. A key's secret is shown once and never stored, so an
    existing key cannot be filled in for them: they paste it instead."""
    user = _user(request)
    if request.POST.get("confirm") != "1":
        return JsonResponse(
            {
                "error": {
                    "code": "CONFIRM_REQUIRED",
                    "message": "Paste one of your keys, or confirm to create a new one.",
                }
            },
            status=400,
        )
    api_key, plaintext = api_key_create(
        user=user, name=api_key_name_unique(user=user, name="playground")
    )
    body: dict[str, Any] = {
        "key": plaintext,
        "prefix": api_key.prefix,
        "name": api_key.name,
        "balance": api_key.balance,
        "key_url": reverse("key-detail", args=[api_key.pk]),
    }
    if api_key.balance <= 0:
        funded = [key for key in api_key_list(user=user) if key.is_active and key.balance > 0]
        body["top_up_url"] = f"{reverse('billing')}?key={api_key.pk}"
        body["message"] = (
            "It has 0 tokens, so the playground's requests with it would be refused. "
            + (
                f"Move tokens to it from {funded[0].name} ({funded[0].prefix}…) on that key's "
                "page, or top it up."
                if funded
                else "Top it up to use it."
            )
            + (
                " Verify your e-mail address to get your free trial tokens."
                if user.email_verified_at is None and settings.TRIAL_TOKENS > 0
                else ""
            )
        )
        if funded:
            body["move_url"] = reverse("key-detail", args=[funded[0].pk]) + "#move-tokens"
    return JsonResponse(body, status=201)


# --- Accounts --------------------------------------------------------------------------------


# The address the browser signed up with: its verification link signs this browser in.
_SIGNUP_EMAIL = "signup_email"


@require_http_methods(["GET", "POST"])
@posts_limited_per_ip("IP_RATE_LIMIT_SIGNUP")
def sign_up(request: HttpRequest) -> HttpResponse:
    """Create an account and mail the link that verifies its address.

    An address that already has an account gets a mail saying so instead; the page that follows
    is the same either way, so sign-up does not tell a stranger who has an account.
    """
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        email, password = form.cleaned_data["email"], form.cleaned_data["password1"]
        user = user_sign_up(email=email, password=password)
        if user is None:
            user_sign_up_repeated_send(
                email=email,
                login_url=request.build_absolute_uri(reverse("login")),
                reset_url=request.build_absolute_uri(reverse("password_reset")),
            )
        else:
            _send_verification(request, user)
        request.session[_SIGNUP_EMAIL] = email
        return redirect("signup-sent")
    return render(request, "registration/signup.html", {"form": form})


@require_GET
def sign_up_sent(request: HttpRequest) -> HttpResponse:
    """After sign-up: where the link went."""
    email = request.session.get(_SIGNUP_EMAIL)
    if not email:
        return redirect("signup")
    return render(
        request,
        "registration/signup_sent.html",
        {"email": email, "trial_tokens": settings.TRIAL_TOKENS},
    )


def _send_verification(request: HttpRequest, user: User) -> None:
    token = user_email_verification_token(user=user)
    url = request.build_absolute_uri(reverse("verify-email", kwargs={"token": token}))
    user_email_verification_send(user=user, verify_url=url)


@require_http_methods(["GET", "POST"])
@posts_limited_per_ip("IP_RATE_LIMIT_FORMS")
def verify_email(request: HttpRequest, token: str) -> HttpResponse:
    """Follow the mailed link: the address is verified and the first key gets the trial.

    Someone may have signed up with this address before its owner did, so a first verification
    from any browser but the one that signed up (or one signed in to the account) asks the
    mailbox's holder for a new password, which ends what the sign-up password made (sessions,
    keys). A GET changes nothing there, so a mail scanner following the link verifies nothing.
    """
    try:
        user = user_email_verification_user(token=token)
        signing_up_browser = request.session.get(_SIGNUP_EMAIL) == user.email or (
            request.user.is_authenticated and request.user.pk == user.pk
        )
        if user.email_verified_at is None and not signing_up_browser:
            form = SetPasswordForm(user, request.POST or None)
            if request.method != "POST" or not form.is_valid():
                return render(
                    request, "registration/verify_email_password.html", {"form": form, "user": user}
                )
            verification = user_email_verify(
                token=token, new_password=form.cleaned_data["new_password1"]
            )
            if user.is_active:
                login(
                    request, verification.user, backend="django.contrib.auth.backends.ModelBackend"
                )
        else:
            verification = user_email_verify(token=token)
            # The browser that signed up is signed in by its own link, once: when it verifies.
            if (
                verification.newly_verified
                and not request.user.is_authenticated
                and request.session.get(_SIGNUP_EMAIL) == user.email
                and user.is_active
            ):
                login(
                    request, verification.user, backend="django.contrib.auth.backends.ModelBackend"
                )
    except EmailVerificationError as exc:
        return render(
            request,
            "registration/verify_email_refused.html",
            {"reason": exc.message, "expired": exc.expired},
            status=400,
        )
    request.session.pop(_SIGNUP_EMAIL, None)
    return render(
        request,
        "registration/verify_email_done.html",
        {"verification": verification, "trial_tokens": settings.TRIAL_TOKENS},
    )


@login_required
@require_POST
@posts_limited_per_ip("IP_RATE_LIMIT_PASSWORD_RESET")
def verify_email_resend(request: HttpRequest) -> HttpResponse:
    """Mail the signed-in user a fresh verification link."""
    user = _user(request)
    if user.email_verified_at is not None:
        messages.info(request, f"{user.email} is already verified.")
    else:
        _send_verification(request, user)
        messages.success(request, f"We sent a new link to {user.email}.")
    return redirect("dashboard")


# --- The user's dashboard --------------------------------------------------------------------


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    """Keys, usage charts and payments of the signed-in user."""
    user = _user(request)
    _forget_legacy_new_key(request)
    usage, status = _usage_slice(request.GET, groups=GROUPS)
    rows = _usage_rows(usage_slice=usage.usage_slice, user=user)
    keys = [(key, limits_for(key)) for key in api_key_list(user=user)]
    jobs = [job for key, _ in keys for job in batch_job_list(api_key=key, limit=10)]
    context = {
        "keys": keys,
        "form": KeyCreateForm(),
        **_usage_context(usage, rows, query={}),
        "tokens_chart": _day_chart(
            rows, "charged_tokens", usage, title="Tokens per day", chart_id="chart-tokens"
        ),
        "requests_chart": _day_chart(
            rows, "requests", usage, title="Requests per day", chart_id="chart-requests"
        ),
        "errors_chart": _day_chart(
            rows, "errors", usage, title="Errors per day", chart_id="chart-errors"
        ),
        "by_endpoint": selectors.usage_totals(rows=rows, by="endpoint"),
        "endpoint_charts": _endpoint_charts(
            rows, chart_prefix="chart-endpoint", usage_slice=usage.usage_slice
        ),
        "by_model": selectors.usage_totals(rows=rows, by="model"),
        "by_key": selectors.usage_totals(rows=rows, by="api_key__prefix"),
        "payments": payment_list(user=user)[:10],
        "jobs": sorted(jobs, key=lambda job: job.created_at, reverse=True)[:10],
        "unverified_trial_tokens": (settings.TRIAL_TOKENS if user.email_verified_at is None else 0),
    }
    return render(request, "web/dashboard.html", context, status=status)


@login_required
@require_POST
@posts_limited_per_ip("IP_RATE_LIMIT_FORMS")
@never_cache
def key_create(request: HttpRequest) -> HttpResponse:
    """Issue a key and show its plaintext once, in this response."""
    _forget_legacy_new_key(request)
    form = KeyCreateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give the key a name of at most 100 characters.")
        return redirect("dashboard")
    api_key, plaintext = api_key_create(user=_user(request), name=form.cleaned_data["name"])
    # The plaintext lives only in this page: not in the session, a cookie, a log or the database,
    # and no-store keeps the browser from writing the page to its cache.
    return render(
        request, "web/key_created.html", {"key": api_key, "plaintext": plaintext}, status=201
    )


def _other_active_keys(api_key: ApiKey) -> list[ApiKey]:
    """The owner's other keys that can receive tokens."""
    return [
        key
        for key in api_key_list(user=api_key.user)
        if key.pk != api_key.pk and key.revoked_at is None
    ]


def _chosen_key(keys: list[ApiKey], pk: str) -> ApiKey | None:
    return next((key for key in keys if str(key.pk) == pk), None)


@login_required
@require_http_methods(["GET", "POST"])
def key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke one of your keys. A key that holds tokens asks first: move them to another of
    your keys (one ledger transfer, with the revocation) or leave them on the revoked key."""
    user = _user(request)
    api_key = get_object_or_404(ApiKey, pk=pk, user=user)
    destinations = _other_active_keys(api_key)
    form = KeyRevokeForm(
        request.POST if request.method == "POST" else None, destinations=destinations
    )
    if api_key.revoked_at is not None:
        messages.info(request, f"Key {api_key.prefix}… is already revoked.")
        return redirect("key-detail", pk=api_key.pk)
    if request.method == "POST" and form.is_valid():
        destination = _chosen_key(destinations, form.cleaned_data["move_to"])
        if destination is not None:
            try:
                moved = api_key_revoke_moving_tokens(
                    user=user, api_key=api_key, destination=destination
                )
            except TokensMoveRefused as exc:
                messages.error(request, exc.message)
                return redirect("key-revoke", pk=api_key.pk)
            messages.success(
                request,
                f"Key {api_key.prefix}… is revoked; {moved:,} tokens moved to "
                f"{destination.name} ({destination.prefix}…).",
            )
            return redirect("dashboard")
        if api_key.balance <= 0 or form.cleaned_data["leave_tokens"]:
            api_key_revoke(api_key=api_key)
            api_key.refresh_from_db(fields=["balance"])
            left = (
                f" Its {api_key.balance:,} tokens stay on it; its page can still move them."
                if api_key.balance > 0
                else ""
            )
            messages.success(request, f"Key {api_key.prefix}… is revoked.{left}")
            return redirect("dashboard")
    return render(
        request,
        "web/key_revoke.html",
        {"key": api_key, "form": form, "destinations": destinations},
        status=200 if request.method == "GET" else 400,
    )


@login_required
@require_POST
def key_tokens_move(request: HttpRequest, pk: int) -> HttpResponse:
    """Move tokens from one of your keys (revoked ones too) to another active one."""
    user = _user(request)
    source = get_object_or_404(ApiKey, pk=pk, user=user)
    destinations = _other_active_keys(source)
    form = TokensMoveForm(request.POST, destinations=destinations)
    if not form.is_valid():
        messages.error(request, "Choose one of your active keys and a whole number of tokens.")
        return redirect("key-detail", pk=source.pk)
    destination = _chosen_key(destinations, form.cleaned_data["destination"])
    if destination is None:
        messages.error(request, "Choose one of your active keys.")
        return redirect("key-detail", pk=source.pk)
    try:
        moved = api_key_tokens_move(
            user=user, source=source, destination=destination, tokens=form.cleaned_data["tokens"]
        )
    except TokensMoveRefused as exc:
        messages.error(request, exc.message)
    else:
        messages.success(
            request,
            f"Moved {moved:,} tokens from {source.prefix}… to "
            f"{destination.name} ({destination.prefix}…).",
        )
    return redirect("key-detail", pk=source.pk)


@login_required
@require_GET
def key_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One key: balance, limits, ledger history, usage by endpoint and by model."""
    api_key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    usage, status = _usage_slice(request.GET, groups=GROUPS)
    rows = _usage_rows(usage_slice=usage.usage_slice, api_key=api_key)
    page = Paginator(ledger_entries(api_key=api_key).select_related("usage"), 50).get_page(
        request.GET.get("page")
    )
    destinations = _other_active_keys(api_key)
    context = {
        "key": api_key,
        "destinations": destinations,
        "move_form": TokensMoveForm(destinations=destinations),
        "limits": limits_for(api_key),
        "recharge": auto_recharge_get(api_key=api_key),
        "jobs": list(batch_job_list(api_key=api_key, limit=20)),
        "ledger": page,
        **_usage_context(usage, rows, query={"key": str(api_key.pk)}),
        "by_endpoint": selectors.usage_totals(rows=rows, by="endpoint"),
        "endpoint_charts": _endpoint_charts(
            rows, chart_prefix="chart-key-endpoint", usage_slice=usage.usage_slice
        ),
        "by_model": selectors.usage_totals(rows=rows, by="model"),
        "tokens_chart": _day_chart(
            rows, "charged_tokens", usage, title="Tokens per day", chart_id="chart-key-tokens"
        ),
    }
    return render(request, "web/key_detail.html", context, status=status)


def _endpoint_charts(
    rows: list[dict[str, Any]], *, chart_prefix: str, usage_slice: UsageSlice
) -> list[tuple[str, Any]]:
    """Requests per day, one chart per endpoint that had any (tokens and errors are in the
    endpoint table beside them)."""
    endpoints = sorted({row["endpoint"] for row in rows})
    return [
        (
            endpoint,
            bar_chart(
                bars=selectors.usage_bars(
                    rows=[row for row in rows if row["endpoint"] == endpoint],
                    field="requests",
                    usage_slice=usage_slice,
                ),
                title=f"Requests per day, {endpoint}",
                unit="requests",
                chart_id=f"{chart_prefix}-{slugify(endpoint)}",
                width=_CARD_WIDTH,
            ),
        )
        for endpoint in endpoints
    ]


# --- Usage you can slice: a range and a grouping, the same rows on the page and in its CSV ---

# Server-drawn charts in a card are drawn about a card wide, so that their labels are not scaled
# down (they are what a browser without scripts sees; static/charts.js draws the rest).
_CARD_WIDTH = 300

_UNITS = {"charged_tokens": "tokens", "requests": "requests", "errors": "errors"}


def _day_chart(
    rows: list[dict[str, Any]], field: str, usage: UsageSliceForm, *, title: str, chart_id: str
) -> Any:
    """A card's chart of `field` per day over the page's range."""
    return bar_chart(
        bars=selectors.usage_bars(rows=rows, field=field, usage_slice=usage.usage_slice),
        title=title,
        unit=_UNITS[field],
        chart_id=chart_id,
        width=_CARD_WIDTH,
    )


def _usage_slice(params: QueryDict, *, groups: dict[str, str]) -> tuple[UsageSliceForm, int]:
    """The page's range and grouping from its query string: 400 with the form's message (and the
    last 30 days shown) when a parameter is wrong."""
    form = UsageSliceForm(params, groups=groups)
    return form, 200 if form.is_valid() else 400


def _usage_rows(
    *,
    usage_slice: UsageSlice,
    user: User | None = None,
    api_key: ApiKey | None = None,
) -> list[dict[str, Any]]:
    """The usage rows behind a page (a user's, a key's, or everyone's when neither is given),
    split by every field its tables and charts group by."""
    by: tuple[str, ...] = ("endpoint", "model", "api_key__prefix")
    if user is None and api_key is None:
        by += ("api_key__user__email",)
    return usage_by_day(user=user, api_key=api_key, usage_slice=usage_slice, by=by)


def _usage_params(usage: UsageSliceForm, **extra: str) -> dict[str, str]:
    """The query string of the range shown (the default one when the asked one was wrong)."""
    usage_slice = usage.usage_slice
    return {
        "range": usage.cleaned_data.get("range") or "30d" if usage.is_valid() else "30d",
        "start": usage_slice.start.isoformat(),
        "end": usage_slice.end.isoformat(),
        "group": usage_slice.group,
        **extra,
    }


def _usage_context(
    usage: UsageSliceForm, rows: list[dict[str, Any]], *, query: dict[str, str]
) -> dict[str, Any]:
    """The range form, the grouped table and the link to the same table as CSV."""
    params = _usage_params(usage, **query)
    return {
        "usage_form": usage,
        "usage_error": "" if usage.is_valid() else usage.error_text(),
        "usage_slice": usage.usage_slice,
        "usage_params": params,
        "usage_group_label": STAFF_GROUPS[usage.usage_slice.group],
        "usage_table": selectors.usage_table(rows=rows, usage_slice=usage.usage_slice),
        "usage_csv_url": f"{reverse('usage-csv')}?{urlencode(params)}",
    }


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _text_400(message: str) -> HttpResponse:
    return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")


@login_required
@require_GET
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The usage table of the dashboard, of a key's page (key=) or of the staff page (scope=all;
    with table=revenue, its revenue per day) as CSV: the same parameters, the same rows."""
    user = _user(request)
    revenue = request.GET.get("table") == "revenue"
    everyone = request.GET.get("scope") == "all" or revenue
    if (everyone or revenue) and not user.is_staff:
        raise PermissionDenied
    usage = UsageSliceForm(request.GET, groups=STAFF_GROUPS if everyone else GROUPS)
    if not usage.is_valid():
        return _text_400(usage.error_text())
    usage_slice = usage.usage_slice
    key_id = request.GET.get("key", "")
    api_key = None
    if key_id and not everyone:
        if not key_id.isdigit():
            return _text_400("key: give the number of one of your keys.")
        api_key = get_object_or_404(ApiKey, pk=int(key_id), user=user)
    name = f"{usage_slice.start:%Y-%m-%d}-to-{usage_slice.end:%Y-%m-%d}"
    if revenue:
        header = ["day", "currency", "payments", "amount"]
        lines: list[list[Any]] = [
            [row["day"].isoformat(), row["currency"], row["payments"], f"{row['amount'] / 100:.2f}"]
            for row in selectors.revenue_by_day(usage_slice=usage_slice)
        ]
        name = f"revenue-{name}"
    else:
        rows = _usage_rows(
            usage_slice=usage_slice, user=None if everyone else user, api_key=api_key
        )
        header = [usage_slice.group, *USAGE_FIELDS, "error_rate"]
        lines = [
            [
                entry["group"].isoformat() if usage_slice.group == "day" else entry["group"],
                *(entry[field] for field in USAGE_FIELDS),
                f"{entry['error_rate']:.4f}",
            ]
            for entry in selectors.usage_table(rows=rows, usage_slice=usage_slice)
        ]
        name = f"usage-{name}-by-{usage_slice.group}"
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{name}.csv"'
    writer = csv.writer(response)
    writer.writerow(header)
    writer.writerows([_csv_cell(cell) for cell in line] for line in lines)
    return response


# --- Staff -----------------------------------------------------------------------------------


@staff_required
@require_GET
def staff_dashboard(request: HttpRequest) -> HttpResponse:
    """Totals across users, revenue, top users, error rates, workers; key and user actions."""
    usage, status = _usage_slice(request.GET, groups=STAFF_GROUPS)
    usage_slice = usage.usage_slice
    rows = _usage_rows(usage_slice=usage_slice)
    # A request refused before its model was resolved has none: it is in the totals as
    # "(no model)", not charted as a model of its own.
    models = sorted({row["model"] for row in rows if row["model"]})
    revenue = selectors.revenue_by_day(usage_slice=usage_slice)
    currencies = sorted({row["currency"] for row in revenue})
    query = request.GET.get("q", "").strip()
    context = {
        "activity": selectors.key_activity(),
        **_usage_context(usage, rows, query={"scope": "all"}),
        "tokens_chart": bar_chart(
            bars=selectors.usage_bars(rows=rows, field="charged_tokens", usage_slice=usage_slice),
            title="Tokens per day, all models",
            unit="tokens",
            chart_id="chart-all-tokens",
        ),
        "model_charts": [
            (
                model,
                bar_chart(
                    bars=selectors.usage_bars(
                        rows=[row for row in rows if row["model"] == model],
                        field="charged_tokens",
                        usage_slice=usage_slice,
                    ),
                    title=f"Tokens per day, {model}",
                    unit="tokens",
                    chart_id=f"chart-model-{index}",
                    width=_CARD_WIDTH,
                ),
            )
            for index, model in enumerate(models)
        ],
        "revenue_charts": [
            (
                currency.upper(),
                sum(row["amount"] for row in revenue if row["currency"] == currency) / 100,
                bar_chart(
                    bars=selectors.revenue_bars(
                        rows=revenue, currency=currency, usage_slice=usage_slice
                    ),
                    title=f"Revenue per day ({currency.upper()})",
                    unit=currency.upper(),
                    chart_id=f"chart-revenue-{currency}",
                ),
            )
            for currency in currencies
        ],
        "totals": selectors.usage_totals(rows=rows, by="model"),
        "revenue": revenue,
        "revenue_csv_url": f"{reverse('usage-csv')}?"
        + urlencode(_usage_params(usage, scope="all", table="revenue")),
        "by_endpoint": selectors.usage_totals(rows=rows, by="endpoint"),
        "endpoint_charts": _endpoint_charts(
            rows, chart_prefix="chart-all-endpoint", usage_slice=usage_slice
        ),
        "top_users": selectors.usage_totals(rows=rows, by="api_key__user__email")[:10],
        "workers": selectors.workers_by_model(),
        "query": query,
        "keys": selectors.key_search(query=query)[:25],
        "grant_form": GrantForm(),
        "limits_form": LimitsForm(),
    }
    return render(request, "web/staff.html", context, status=status)


def _back_to_staff(query: str) -> HttpResponse:
    return redirect(f"{reverse('staff')}?{urlencode({'q': query})}")


@staff_required
@require_POST
def staff_key_grant(request: HttpRequest, pk: int) -> HttpResponse:
    """Grant tokens to a key."""
    api_key = get_object_or_404(ApiKey, pk=pk)
    form = GrantForm(request.POST)
    if form.is_valid():
        note = form.cleaned_data["note"] or f"granted by {request.user}"
        api_key_grant(api_key=api_key, tokens=form.cleaned_data["tokens"], note=note)
        messages.success(
            request, f"Granted {form.cleaned_data['tokens']:,} tokens to {api_key.prefix}…."
        )
    else:
        messages.error(request, "Tokens must be a positive whole number.")
    return _back_to_staff(api_key.prefix)


@staff_required
@require_POST
def staff_key_limits(request: HttpRequest, pk: int) -> HttpResponse:
    """Change a key's tier and limits."""
    api_key = get_object_or_404(ApiKey, pk=pk)
    form = LimitsForm(request.POST)
    if form.is_valid():
        api_key_set_limits(
            api_key=api_key,
            tier=form.cleaned_data["tier"],
            rpm=form.cleaned_data["rpm"],
            tpm=form.cleaned_data["tpm"],
            concurrency=form.cleaned_data["concurrency"],
        )
        messages.success(request, f"Limits of {api_key.prefix}… saved.")
    else:
        messages.error(request, "Limits must be positive whole numbers.")
    return _back_to_staff(api_key.prefix)


@staff_required
@require_POST
def staff_key_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    """Revoke any key."""
    api_key = get_object_or_404(ApiKey, pk=pk)
    api_key_revoke(api_key=api_key)
    messages.success(request, f"Key {api_key.prefix}… is revoked.")
    return _back_to_staff(api_key.prefix)


@staff_required
@require_POST
def staff_user_suspend(request: HttpRequest, pk: int) -> HttpResponse:
    """Suspend or restore a user (not yourself)."""
    user = get_object_or_404(User, pk=pk)
    if user.pk == request.user.pk:
        messages.error(request, "You cannot suspend yourself.")
    else:
        suspend = request.POST.get("action", "suspend") == "suspend"
        user_suspend(user=user, suspended=suspend)
        messages.success(request, f"{user.email} is {'suspended' if suspend else 'restored'}.")
    return _back_to_staff(user.email)


@login_required
@require_POST
def key_settings(request: HttpRequest, pk: int) -> HttpResponse:
    """Rename one of your keys and set its expiry, allowed models and low-balance alert."""
    api_key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    names = list(embedding_model_list().values_list("name", flat=True))
    form = KeySettingsForm(request.POST, model_names=sorted({*names, *api_key.allowed_models}))
    if not form.is_valid():
        field, errors = next(iter(form.errors.items()))
        label = form.fields[field].label if field in form.fields else None
        messages.error(request, f"{label or field.replace('_', ' ').capitalize()}: {errors[0]}")
        return redirect("key-detail", pk=pk)
    data = form.cleaned_data
    api_key_settings_update(
        api_key=api_key,
        name=data["name"],
        expires_at=data["expires_at"],
        allowed_models=list(data["allowed_models"]),
        low_balance_alert_tokens=data["low_balance_alert_tokens"],
    )
    messages.success(request, f"Key {api_key.prefix}… is saved.")
    return redirect("key-detail", pk=pk)
