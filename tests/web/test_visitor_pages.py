"""Issue 16: the pages a visitor learns from (models, pricing, rate limits, FAQ) say what the
registry and the settings say, and follow them when they change: no figure is typed into a
template."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.test.html import Element, parse_html

from billing.models import AutoRecharge
from tests.factories import EmbeddingModelFactory

pytestmark = pytest.mark.django_db


class Page:
    """A rendered page with just enough CSS selection for these tests: descendant chains of
    tag, #id, .class and [attr] / [attr='value'] (the test venv has no HTML parser package;
    django.test.html parses)."""

    _SIMPLE = re.compile(r"([\w-]+)|#([\w-]+)|\.([\w-]+)|\[([\w-]+)(?:='([^']*)')?\]")

    def __init__(self, html: str) -> None:
        self.root = parse_html(html)

    @classmethod
    def _matches(cls, element: Element, simple: str) -> bool:
        attributes = dict(element.attributes)
        for tag, id_, class_, name, value in cls._SIMPLE.findall(simple):
            if tag and element.name != tag:
                return False
            if id_ and attributes.get("id") != id_:
                return False
            if class_ and class_ not in (attributes.get("class") or "").split():
                return False
            if name and (name not in attributes or (value and attributes[name] != value)):
                return False
        return True

    @staticmethod
    def _descendants(element: Element) -> list[Element]:
        found: list[Element] = []
        for child in element.children:
            if isinstance(child, Element):
                found.append(child)
                found.extend(Page._descendants(child))
        return found

    def select(self, selector: str) -> list[Element]:
        scope = [self.root]
        for simple in selector.split():
            matched: list[Element] = []
            for element in scope:
                matched.extend(e for e in self._descendants(element) if self._matches(e, simple))
            scope = list({id(e): e for e in matched}.values())
        return scope

    def select_one(self, selector: str) -> Element | None:
        found = self.select(selector)
        return found[0] if found else None

    def attrs(self, selector: str, name: str) -> list[str]:
        return [str(dict(e.attributes)[name]) for e in self.select(selector)]

    @staticmethod
    def text_of(element: Element | str) -> str:
        if isinstance(element, str):
            return element
        return " ".join(Page.text_of(child) for child in element.children)

    def get_text(self) -> str:
        return " ".join(self.text_of(self.root).split())


def page(client: Client, path: str) -> Page:
    response = client.get(path)
    assert response.status_code == 200, path
    return Page(response.content.decode())


def text(soup: Page, selector: str) -> str:
    found = soup.select_one(selector)
    assert found is not None, selector
    return " ".join(Page.text_of(found).split())


def test_the_models_page_lists_each_enabled_model_as_the_registry_has_it(client: Client) -> None:
    EmbeddingModelFactory()
    clip = EmbeddingModelFactory(
        name="jina-clip-v2",
        dimensions=1024,
        max_tokens=8192,
        matryoshka=True,
        tasks={"retrieval.query": "", "retrieval.passage": ""},
        modalities=["text", "image"],
        image_tile_size=512,
        tokens_per_tile=4000,
        price_per_million_tokens=Decimal("0.05"),
    )
    EmbeddingModelFactory(name="hidden-model", enabled=False)
    soup = page(client, "/models/")
    rows = soup.select("#models tbody tr[data-model]")
    assert [dict(row.attributes)["data-model"] for row in rows] == [
        "all-MiniLM-L6-v2",
        "jina-clip-v2",
    ]
    assert text(soup, "tr[data-model='jina-clip-v2'] .dimensions").startswith("1024")
    assert text(soup, "tr[data-model='jina-clip-v2'] .context") == "8,192"
    assert text(soup, "tr[data-model='jina-clip-v2'] .tasks") == "retrieval.passage retrieval.query"
    assert "text, image" in text(soup, "tr[data-model='jina-clip-v2'] .modalities")
    assert "4,000 tokens per 512px tile" in text(soup, "tr[data-model='jina-clip-v2'] .modalities")
    assert text(soup, "tr[data-model='jina-clip-v2'] .operations").split() == clip.operations
    assert text(soup, "tr[data-model='jina-clip-v2'] .price") == "$0.05"

    # A registry edit shows on the next view; a reranker lists only what it serves.
    clip.dimensions = 768
    clip.price_per_million_tokens = Decimal("0.12")
    clip.kind = clip.Kind.RERANKER
    clip.save()
    soup = page(client, "/models/")
    assert text(soup, "tr[data-model='jina-clip-v2'] .dimensions").startswith("768")
    assert text(soup, "tr[data-model='jina-clip-v2'] .price") == "$0.12"
    assert text(soup, "tr[data-model='jina-clip-v2'] .operations") == "rerank"


def test_pricing_shows_the_configured_packs_and_what_a_token_buys(
    client: Client, settings: Any
) -> None:
    EmbeddingModelFactory(
        name="jina-clip-v2", modalities=["text", "image"], image_tile_size=512, tokens_per_tile=4000
    )
    settings.TOKEN_PACKS = [
        {"id": "p-small", "name": "Starter", "tokens": 2_000_000, "amount": 300, "currency": "eur"},
        {"id": "p-big", "name": "Big", "tokens": 1_000_000_000, "amount": 5_000, "currency": "eur"},
    ]
    soup = page(client, "/pricing/")
    assert soup.attrs("#packs tr[data-pack]", "data-pack") == ["p-small", "p-big"]
    assert text(soup, "tr[data-pack='p-small']") == "Starter 2,000,000 €3.00 €1.50"
    assert text(soup, "tr[data-pack='p-big'] .per-million") == "€0.05"
    assert "EUR" in soup.get_text()
    # A 1024×768 image on 512px tiles: 2 × 2 tiles of 4,000 tokens (inference.image_tiles).
    assert (
        text(soup, "#token-prices tr[data-model='jina-clip-v2'] .image-tokens") == "16,000 tokens"
    )
    # The monthly cap's default is the model field's, in the packs' currency.
    cap = AutoRecharge._meta.get_field("monthly_cap_amount").default
    assert f"€{cap / 100:,.2f}" in soup.get_text()

    settings.TOKEN_PACKS = [
        {"id": "p-one", "name": "One", "tokens": 10_000_000, "amount": 100, "currency": "usd"}
    ]
    soup = page(client, "/pricing/")
    assert soup.attrs("#packs tr[data-pack]", "data-pack") == ["p-one"]
    assert text(soup, "tr[data-pack='p-one'] .per-million") == "$0.10"
    # Finer than a cent where a cent would round: $500 for 11 billion tokens.
    settings.TOKEN_PACKS = [
        {
            "id": "p-11b",
            "name": "11B",
            "tokens": 11_000_000_000,
            "amount": 50_000,
            "currency": "usd",
        }
    ]
    assert text(page(client, "/pricing/"), "tr[data-pack='p-11b'] .per-million") == "$0.0455"


def test_the_rate_limit_page_is_the_tiers_setting(client: Client, settings: Any) -> None:
    settings.RATE_LIMIT_TIERS = {
        "standard": {"rpm": 500, "tpm": 1_000_000, "concurrency": 10},
        "enterprise": {"rpm": 12_000, "tpm": 90_000_000, "concurrency": 200},
    }
    soup = page(client, "/rate-limits/")
    assert soup.attrs("#tiers tr[data-tier]", "data-tier") == [
        "standard",
        "enterprise",
    ]
    assert text(soup, "tr[data-tier='enterprise']") == "Enterprise 12,000 90,000,000 200"
    settings.RATE_LIMIT_TIERS = {"standard": {"rpm": 7, "tpm": 8, "concurrency": 9}}
    soup = page(client, "/rate-limits/")
    assert text(soup, "#tiers tbody") == "Standard 7 8 9"


def test_the_faq_answers_from_the_settings_and_the_image_models(
    client: Client, settings: Any
) -> None:
    EmbeddingModelFactory(
        name="jina-clip-v2", modalities=["text", "image"], image_tile_size=448, tokens_per_tile=300
    )
    settings.TRIAL_TOKENS = 1_234_567
    settings.VISITOR_TRIAL_TOKENS = 4_321
    soup = page(client, "/faq/")
    for anchor in ("tokens", "images", "failures", "auto-recharge", "trials"):
        assert soup.select_one(f"dt#{anchor}") is not None, anchor
    faq = text(soup, "#faq")
    assert "never charged" in faq
    assert "1,234,567 free tokens" in faq and "4,321 tokens" in faq
    # 1024×768 on 448px tiles: 3 × 2 tiles of 300 tokens.
    assert "448px tiles at 300 tokens each, so a 1024×768 image costs 1,800 tokens" in faq

    settings.TRIAL_TOKENS = 0
    settings.VISITOR_TRIAL_TOKENS = 0
    faq = text(page(client, "/faq/"), "#faq")
    assert "no free tokens" in faq and "trial key" not in faq


def test_every_page_links_the_visitor_pages_and_the_favicon_is_served(client: Client) -> None:
    soup = page(client, "/")
    nav = set(soup.attrs("header nav a", "href"))
    assert {"/models/", "/pricing/", "/faq/", "/docs/"} <= nav
    assert "/rate-limits/" in soup.attrs("footer a", "href")
    (icon,) = soup.attrs("link[rel='icon']", "href")
    # The test client serves no static files; the browser tests (live server) fetch it.
    assert icon == "/static/favicon.svg" and finders.find("favicon.svg")
    response = client.get("/favicon.ico")
    assert response.status_code == 302 and response["Location"] == icon
