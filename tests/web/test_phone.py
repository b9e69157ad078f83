"""Issue 16, bug 8: the site on a phone (390×844, Playwright on Debian's chromium), judged by
element boxes: no page scrolls sideways, the navigation is one line with a menu, the key
table's limits and actions are on screen, and the snippet's Copy button covers none of its code.
Screenshots of every page go to var/test-artifacts/ (phone-*.png)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from billing.models import User
from tests.factories import ApiKeyFactory, EmbeddingModelFactory
from tests.web import test_browser as browser_tests
from tests.web.test_browser import PASSWORD, log_in, shot

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.django_db(transaction=True)

browser = browser_tests.browser
PHONE = {"width": 390, "height": 844}

# Elements that stick out of the viewport, unless a scrolling box (a wide table's wrapper, a
# code block) holds them: what a person would have to scroll the whole page sideways to see.
OFF_SCREEN = """() => {
  const width = document.documentElement.clientWidth;
  const scrolls = (el) => {
    for (let up = el.parentElement; up; up = up.parentElement) {
      const overflow = getComputedStyle(up).overflowX;
      if (overflow === "auto" || overflow === "scroll" || overflow === "hidden") return true;
    }
    return false;
  };
  const out = [];
  for (const el of document.body.querySelectorAll("*")) {
    const box = el.getBoundingClientRect();
    if (!box.width || !box.height) continue;
    if ((box.right > width + 1 || box.left < -1) && !scrolls(el)) {
      out.push(`${el.tagName.toLowerCase()}#${el.id}.${el.className}: ${box.left}..${box.right}`);
    }
  }
  return {out, scrollWidth: document.documentElement.scrollWidth, width};
}"""

# The boxes of a code block's text (its lines as laid out), page coordinates.
TEXT_BOXES = """(pre) => {
  const range = document.createRange();
  range.selectNodeContents(pre);
  return Array.from(range.getClientRects()).map((r) => ({x: r.x, y: r.y, width: r.width, height: r.height}));
}"""


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    refused = browser_tests.csp_violations(page)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("requestfailed", lambda r: errors.append(f"{r.url}: {r.failure}"))
    yield page
    context.close()
    assert not refused, refused
    assert not errors, errors


def assert_fits(page: Any, name: str) -> None:
    shot(page, f"phone-{name}")
    found = page.evaluate(OFF_SCREEN)
    assert found["scrollWidth"] <= found["width"], (name, found)
    assert not found["out"], (name, found["out"])


def inside_viewport(box: dict[str, float] | None) -> bool:
    return box is not None and box["x"] >= -1 and box["x"] + box["width"] <= PHONE["width"] + 1


def intersects(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["width"]
        and b["x"] < a["x"] + a["width"]
        and a["y"] < b["y"] + b["height"]
        and b["y"] < a["y"] + a["height"]
    )


def test_the_navigation_folds_into_one_line_with_a_menu(live_server: Any, phone: Any) -> None:
    EmbeddingModelFactory()
    User.objects.create_user(email="pocket@example.com", password=PASSWORD, is_staff=True)
    log_in(phone, live_server.url, "pocket@example.com")
    nav = phone.locator("header.site nav")
    brand = phone.locator("header.site .brand").bounding_box()
    toggle = phone.locator("header.site .nav-toggle")
    # One line: the brand and the Menu button side by side, the links folded away.
    assert toggle.is_visible()
    menu = toggle.bounding_box()
    assert brand and menu and abs(brand["y"] - menu["y"]) < brand["height"]
    assert (nav.bounding_box() or {})["height"] < 2.5 * menu["height"]
    assert not phone.locator("#site-links").is_visible()
    assert_fits(phone, "dashboard-menu-closed")

    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    links = phone.locator("#site-links a, #site-links button")
    assert links.count() >= 8
    for i in range(links.count()):
        assert links.nth(i).is_visible()
        assert inside_viewport(links.nth(i).bounding_box()), links.nth(i).inner_text()
    assert_fits(phone, "dashboard-menu-open")
    phone.locator("#site-links a", has_text="Pricing").click()
    phone.wait_for_url(f"{live_server.url}/pricing/")
    assert not phone.locator("#site-links").is_visible()


def test_on_a_desktop_the_links_show_without_a_menu(live_server: Any, browser: Any) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{live_server.url}/")
    assert not page.locator("header.site .nav-toggle").is_visible()
    links = page.locator("#site-links a")
    assert links.count() >= 6
    boxes = [links.nth(i).bounding_box() or {} for i in range(links.count())]
    middles = [box["y"] + box["height"] / 2 for box in boxes]
    assert max(middles) - min(middles) < 2  # one line
    context.close()


def test_the_key_table_limits_and_actions_are_on_screen(live_server: Any, phone: Any) -> None:
    EmbeddingModelFactory()
    user = User.objects.create_user(email="thumbs@example.com", password=PASSWORD)
    key = ApiKeyFactory(user=user, name="a rather long key name for a phone")
    log_in(phone, live_server.url, "thumbs@example.com")
    row = phone.locator(f"#keys tr[data-prefix='{key.prefix}']")
    for cell in row.locator("td").all():
        assert inside_viewport(cell.bounding_box()), cell.inner_text()
    limits = row.locator("td", has_text="RPM")
    assert limits.is_visible() and inside_viewport(limits.bounding_box())
    top_up = row.locator("a", has_text="Top up")
    assert top_up.is_visible() and inside_viewport(top_up.bounding_box())
    assert_fits(phone, "dashboard")
    row.locator("a").first.click()
    phone.wait_for_url(f"{live_server.url}/dashboard/keys/{key.pk}/")
    assert_fits(phone, "key-detail")


def test_the_copy_button_covers_none_of_the_snippet(live_server: Any, phone: Any) -> None:
    EmbeddingModelFactory()
    phone.goto(f"{live_server.url}/")
    snippet = phone.locator(".snippet:not([hidden])").first
    code = snippet.locator("pre")
    copy = snippet.locator(".copy")
    assert "curl" in (code.text_content() or "")
    copy_box = copy.bounding_box()
    assert copy_box and inside_viewport(copy_box)
    lines = code.evaluate(TEXT_BOXES)
    assert lines
    assert not [line for line in lines if intersects(copy_box, line)]
    assert_fits(phone, "playground")


@pytest.mark.parametrize("path", ["/models/", "/pricing/", "/rate-limits/", "/faq/"])
def test_the_visitor_pages_fit_a_phone(live_server: Any, phone: Any, path: str) -> None:
    EmbeddingModelFactory()
    phone.goto(f"{live_server.url}{path}")
    assert_fits(phone, path.strip("/"))
    for cell in phone.locator("table.stack td").all():
        assert inside_viewport(cell.bounding_box()), cell.inner_text()
