"""The pages a visitor learns from: the models, the prices and packs, the rate-limit tiers and
the FAQ. Each figure on them is read from the registry or from settings when the page is drawn,
so a page cannot say what the API does not do (tests/web/test_visitor_pages.py changes a
setting or a registry row and sees the page follow)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.views.decorators.http import require_GET

from billing.models import AutoRecharge
from billing.payments import TokenPack, money, token_packs
from inference.image_tiles import tile_tokens
from inference.models import EmbeddingModel
from inference.selectors import embedding_model_list

# The picture the FAQ and the models page price, as Jina's pricing page does.
EXAMPLE_IMAGE = (1024, 768)


@dataclass(frozen=True)
class PackRow:
    """A pack on the pricing page: what it costs and what one million of its tokens costs."""

    pack: TokenPack
    per_million: str


@dataclass(frozen=True)
class ModelRow:
    """A registry model on the models page."""

    model: EmbeddingModel
    tasks: list[str]
    modalities: list[str]
    operations: list[str]
    price: Decimal
    example_image_tokens: int | None

    @property
    def price_text(self) -> str:
        """USD per million tokens without trailing zeros: "$0.05"."""
        return f"${self.price.normalize():f}"


def _per_million(pack: TokenPack) -> str:
    """What a million of the pack's tokens cost, to the cent or finer where cents would round
    it ($500 for 11 billion tokens: "$0.0455", not "$0.05")."""
    if not pack.tokens:
        return money(amount=0, currency=pack.currency)
    cents = Decimal(pack.amount) * 1_000_000 / pack.tokens
    if cents == cents.quantize(Decimal(1)):
        return money(amount=int(cents), currency=pack.currency)
    whole = money(amount=int(cents), currency=pack.currency)  # "$0.04": the symbol and layout
    finer = f"{cents / 100:.4f}".rstrip("0")
    return whole.replace(f"{int(cents) / 100:,.2f}", finer)


def _pack_rows() -> list[PackRow]:
    return [PackRow(pack=pack, per_million=_per_million(pack)) for pack in token_packs()]


def _image_tokens(model: EmbeddingModel) -> int | None:
    if not (model.accepts_images and model.image_tile_size and model.tokens_per_tile):
        return None
    width, height = EXAMPLE_IMAGE
    return tile_tokens(
        width=width,
        height=height,
        tile_size=model.image_tile_size,
        tokens_per_tile=model.tokens_per_tile,
    )


def _model_rows() -> list[ModelRow]:
    return [
        ModelRow(
            model=model,
            tasks=sorted((model.tasks or {}).keys()),
            modalities=list(model.modalities or ["text"]),
            operations=model.operations,
            price=model.price_per_million_tokens,
            example_image_tokens=_image_tokens(model),
        )
        for model in embedding_model_list()
    ]


def _tiers() -> list[tuple[str, dict[str, int]]]:
    return list(settings.RATE_LIMIT_TIERS.items())


def _monthly_cap_default() -> str:
    cap = AutoRecharge._meta.get_field("monthly_cap_amount").default
    packs = token_packs()
    return money(amount=int(cap), currency=packs[0].currency if packs else "usd")


def _common() -> dict[str, object]:
    return {
        "example_image": EXAMPLE_IMAGE,
        "trial_tokens": settings.TRIAL_TOKENS,
        "visitor_trial_tokens": settings.VISITOR_TRIAL_TOKENS,
        "visitor_trials_per_day": settings.VISITOR_TRIALS_PER_IP_PER_DAY,
        "rate_window_seconds": settings.RATE_LIMIT_WINDOW_SECONDS,
    }


@require_GET
def models_page(request: HttpRequest) -> HttpResponse:
    """The enabled models of the registry: size, context, tasks, modalities, operations, price."""
    return render(request, "pages/models.html", {**_common(), "rows": _model_rows()})


@require_GET
def pricing_page(request: HttpRequest) -> HttpResponse:
    """The token packs on sale and what a token buys on each model."""
    return render(
        request,
        "pages/pricing.html",
        {
            **_common(),
            "packs": _pack_rows(),
            "rows": _model_rows(),
            "monthly_cap": _monthly_cap_default(),
        },
    )


@require_GET
def rate_limits_page(request: HttpRequest) -> HttpResponse:
    """The rate-limit tiers: requests and tokens per minute, requests at once."""
    return render(request, "pages/rate_limits.html", {**_common(), "tiers": _tiers()})


@require_GET
def faq_page(request: HttpRequest) -> HttpResponse:
    """Tokens and usage, images as tiles, failed requests, auto-recharge, trials."""
    image_models = [row for row in _model_rows() if row.example_image_tokens is not None]
    return render(
        request,
        "pages/faq.html",
        {**_common(), "image_models": image_models, "monthly_cap": _monthly_cap_default()},
    )


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on their own: the site's SVG icon (a temporary
    redirect: its hashed static name changes with the icon)."""
    return HttpResponseRedirect(static("favicon.svg"))
