"""The whole product walked as a person would, in Debian's chromium (Playwright), at a desktop's
size (1280x800) and a phone's (390x844, in the system's dark theme) (issue 16's acceptance).

A visitor reads the pages that explain the product, gets a trial key and embeds (a multilingual
example set), reranks and classifies in the playground, runs the page's fetch snippets with
Node, and looks the key's balance up in the key box; then signs up, follows the mailed link, creates keys, uses one in the playground, slices
the dashboard's usage, renames a key and moves tokens between two, opens billing (payments not
configured here), becomes staff and opens the staff page, and logs out.

Every page fails the test on a console error, an uncaught exception, a failed request or any
answer of 400 or more, and is saved as a screenshot under $TEST_ARTIFACTS_DIR
(var/test-artifacts/journey-<size>-<page>.png). Every page's body text must contrast with its
background at least 4.5:1 (WCAG AA), and on the dark pass the background must be dark.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command

from billing.models import ApiKey, User
from tests.factories import EmbeddingModelFactory
from tests.web.test_browser import (  # noqa: F401
    ARTIFACTS,
    PASSWORD,
    Problems,
    browser,
    csp_violations,
)

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = pytest.mark.django_db(transaction=True)

MODEL = "all-MiniLM-L6-v2"
PASSES = {
    "desktop": {"viewport": {"width": 1280, "height": 800}, "color_scheme": "light"},
    "phone": {
        "viewport": {"width": 390, "height": 844},
        "is_mobile": True,
        "has_touch": True,
        "color_scheme": "dark",
    },
}
# Answers of 400 or more that the journey provokes on purpose: none. (Listed here, by URL
# pattern, if a step ever means to provoke one.)
PROVOKED: tuple[str, ...] = ()

# The body's colours as the browser computes them, and their WCAG contrast ratio.
BODY_COLOURS = """() => {
  const parse = (css) => css.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const style = getComputedStyle(document.body);
  const bg = lum(parse(style.backgroundColor)), fg = lum(parse(style.color));
  return {bg, fg, ratio: (Math.max(bg, fg) + 0.05) / (Math.min(bg, fg) + 0.05)};
}"""

# Each heatmap cell's text against its own background.
HEAT_CONTRAST = """() => Array.from(document.querySelectorAll("#pg-heatmap-table td")).map((cell) => {
  const parse = (css) => css.match(/[\\d.]+/g).slice(0, 3).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const style = getComputedStyle(cell);
  const bg = lum(parse(style.backgroundColor)), fg = lum(parse(style.color));
  return (Math.max(bg, fg) + 0.05) / (Math.min(bg, fg) + 0.05);
})"""


# After the next frame: the rendering step that reports media query changes has run.
NEXT_FRAME = "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))"
CHART_COLOURS = """() => Object.values(Chart.instances).map((chart) => [
  chart.data.datasets[0].backgroundColor, chart.options.scales.y.grid.color])"""
HEAT_BACKGROUNDS = """() => Array.from(document.querySelectorAll("#pg-heatmap-table td"),
  (cell) => getComputedStyle(cell).backgroundColor)"""


def switch_theme(page: Any, scheme: str) -> None:
    """The system's theme changes while the page is open."""
    page.emulate_media(color_scheme=scheme)
    page.evaluate(NEXT_FRAME)


class Journey:
    """One pass: the page, everything it did wrong, and a screenshot and colour check per page."""

    def __init__(self, name: str, page: Any, base: str) -> None:
        self.name, self.page, self.base = name, page, base
        self.dark = PASSES[name]["color_scheme"] == "dark"
        self.problems = Problems(page, provoked=PROVOKED).found
        self.pages: list[str] = []

    def goto(self, path: str, shot: str) -> None:
        self.page.goto(f"{self.base}{path}")
        self.seen(shot)

    def seen(self, shot: str) -> None:
        """The page as it is now: its screenshot, and its body text readable in this theme."""
        self.page.wait_for_load_state("load")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(
            path=str(ARTIFACTS / f"journey-{self.name}-{shot}.png"), full_page=True
        )
        self.pages.append(shot)
        if "/docs/" in self.page.url:
            return  # Redoc draws its own page in its own (light) colours
        width = self.page.evaluate(
            "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[0] <= width[1], f"{shot} scrolls sideways: {width}"
        colours = self.page.evaluate(BODY_COLOURS)
        assert colours["ratio"] >= 4.5, (shot, colours)
        if self.dark:
            assert colours["bg"] < 0.05 < 0.5 < colours["fg"], (shot, colours)
        else:
            assert colours["bg"] > 0.8 > 0.1 > colours["fg"], (shot, colours)

    def click_nav(self, name: str) -> None:
        """A navigation link, as a person reaches it: on a phone behind the Menu button."""
        toggle = self.page.locator("header.site .nav-toggle")
        if toggle.is_visible():
            toggle.click()
        self.page.locator("#site-links").get_by_role("link", name=name, exact=True).click()


@pytest.fixture(params=list(PASSES))
def journey(request: pytest.FixtureRequest, browser: Any, live_server: Any) -> Iterator[Journey]:  # noqa: F811
    context = browser.new_context(**PASSES[request.param])
    page = context.new_page()
    page.set_default_timeout(90_000)
    refused = csp_violations(page)
    walk = Journey(request.param, page, live_server.url)
    yield walk
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"
    assert not walk.problems, walk.problems


def snippet_body(code: str) -> Any:
    """The JSON a fetch snippet sends (it is written out as the page sends it)."""
    match = re.search(r"body: JSON\.stringify\((.*)\),\n\}\);", code, re.S)
    assert match, code
    return json.loads(match.group(1))


def run_and_compare_fetch(page: Any, base: str, path: str, key: str) -> str:
    """Run the operation in the page, and check its fetch snippet sends the same request, with
    the key read from the environment, never written in."""
    page.locator(".tab[data-tab=fetch]").click()
    with page.expect_request(lambda r: r.url.endswith(path) and r.method == "POST") as sent:
        page.click("#pg-run")
    code = page.text_content("#snippet-fetch") or ""
    assert key not in code and "process.env.EMBEDDINGS_API_KEY" in code
    assert f'fetch("{base}{path}"' in code
    assert snippet_body(code) == sent.value.post_data_json
    return code


def run_with_node(code: str, key: str) -> Any:
    """A fetch snippet's printed answer, run as written by Node with the key in the environment
    (None where Node is not installed: the request it sends is checked by run_and_compare_fetch
    either way)."""
    node = shutil.which("node")
    if node is None:
        return None
    ran = subprocess.run(
        [node, "--input-type=module", "-"],
        input=code,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ.get("PATH", ""), "EMBEDDINGS_API_KEY": key},
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    return json.loads(ran.stdout)


def test_the_whole_journey_without_an_error(journey: Journey, settings: Any) -> None:
    settings.TRIAL_TOKENS = 1_000_000
    EmbeddingModelFactory()
    page, base = journey.page, journey.base

    # --- a visitor reads about the product --------------------------------------------------
    journey.goto("/", "playground-visitor")
    for path, heading, shot in (
        ("/models/", "Models", "models"),
        ("/pricing/", "Pricing", "pricing"),
        ("/rate-limits/", "Rate limits", "rate-limits"),
        ("/faq/", "Frequently asked", "faq"),
    ):
        journey.goto(path, shot)
        assert heading.lower() in (page.text_content("h1") or "").lower(), path
        if path == "/models/":
            assert MODEL in (page.text_content("main") or "")
    journey.goto("/docs/", "docs")
    page.wait_for_selector("redoc h1, .api-content h1, [role=navigation]")

    # --- the playground with a visitor's trial key ----------------------------------------
    journey.goto("/", "playground")
    page.click("#pg-get-key")
    page.wait_for_selector("#pg-key-note:has-text('tokens')")
    visitor_key = page.input_value("#pg-key")
    assert visitor_key.startswith("jina_")

    page.select_option("#pg-examples", "multilingual")
    texts = [page.input_value(f"#pg-inputs li:nth-child({i}) textarea") for i in range(1, 7)]
    assert texts[1].startswith("Das Wetter") and "天气" in texts[2] and "公園" in texts[3]
    assert "English-only model" in (page.text_content("#pg-examples-note") or "")
    page.select_option("#pg-model", MODEL)
    code = run_and_compare_fetch(page, base, "/v1/embeddings", visitor_key)
    page.wait_for_selector("#pg-heatmap-table")
    cells = page.locator("#pg-heatmap-table td")
    assert cells.count() == 36
    assert min(page.evaluate(HEAT_CONTRAST)) >= 4.5
    journey.seen("playground-multilingual")
    if journey.dark:  # the system turns light and dark again: the cells follow, readable
        dark_cells = page.evaluate(HEAT_BACKGROUNDS)
        switch_theme(page, "light")
        assert page.evaluate(HEAT_BACKGROUNDS) != dark_cells
        assert min(page.evaluate(HEAT_CONTRAST)) >= 4.5
        switch_theme(page, "dark")
        assert page.evaluate(HEAT_BACKGROUNDS) == dark_cells
    page_answer = json.loads(page.text_content("#pg-response") or "{}")

    # The snippet, run as written with Node, gets the answer the page got.
    answer = run_with_node(code, visitor_key)
    if answer is not None:
        assert answer["usage"] == page_answer["usage"] and len(answer["data"]) == 6

    page.click("#pg-tab-rerank")
    page.select_option("#pg-rerank-model", MODEL)
    code = run_and_compare_fetch(page, base, "/v1/rerank", visitor_key)
    page.wait_for_selector("#pg-ranking-list")
    answer = run_with_node(code, visitor_key)
    if answer is not None:
        assert answer == json.loads(page.text_content("#pg-response") or "{}")
    assert "cheetah" in (page.text_content("#pg-ranking-list li:first-child") or "")
    journey.seen("playground-rerank")
    # The multilingual example: the page sends the example's four passages, as its snippet does.
    page.select_option("#pg-rerank-examples", "multilingual")
    assert "multilingual model" in (page.text_content("#pg-rerank-examples-note") or "")
    code = run_and_compare_fetch(page, base, "/v1/rerank", visitor_key)
    assert len(snippet_body(code)["documents"]) == 4 and "猎豹" in code
    page.wait_for_selector("#pg-ranking-list li:nth-child(4)")
    journey.seen("playground-rerank-multilingual")

    page.click("#pg-tab-classify")
    page.select_option("#pg-classify-model", MODEL)
    code = run_and_compare_fetch(page, base, "/v1/classify", visitor_key)
    page.wait_for_selector("#pg-labels-list")
    answer = run_with_node(code, visitor_key)
    if answer is not None:
        assert answer == json.loads(page.text_content("#pg-response") or "{}")
    predictions = page.locator("#pg-labels-list section").evaluate_all(
        "(sections) => sections.map((s) => s.dataset.prediction)"
    )
    assert predictions == ["Sports", "Finance"]
    journey.seen("playground-classify")
    page.select_option("#pg-classify-examples", "multilingual")
    code = run_and_compare_fetch(page, base, "/v1/classify", visitor_key)
    assert len(snippet_body(code)["input"]) == 3 and "Stürmer" in code
    page.wait_for_selector("#pg-labels-list section:nth-child(3)")
    journey.seen("playground-classify-multilingual")

    # --- the key box: the trial key's balance, looked up without an account ------------------
    journey.click_nav("Key balance")
    page.wait_for_url(f"{base}/billing/key/")
    journey.seen("key-box")
    page.fill("#key-box-key", visitor_key)
    page.click("#key-box-lookup button[type=submit]")
    page.wait_for_selector("#key-box-result")
    assert visitor_key not in page.url
    trial = ApiKey.objects.get(prefix=page.get_attribute("#key-box-result", "data-key-prefix"))
    shown = int(page.get_attribute("#key-box-balance", "data-balance") or -1)
    assert shown == trial.balance < settings.VISITOR_TRIAL_TOKENS
    journey.seen("key-box-result")

    # --- sign up, and the mailed link signs this browser in ---------------------------------
    email = f"journey-{journey.name}@example.com"
    page.goto(f"{base}/accounts/signup/")
    journey.seen("signup")
    page.fill("#id_email", email)
    page.fill("#id_password1", PASSWORD)
    page.fill("#id_password2", PASSWORD)
    page.click("#signup-form button[type=submit]")
    page.wait_for_url(f"{base}/accounts/signup/sent/")
    assert email in (page.text_content("#signup-sent") or "")
    journey.seen("signup-sent")
    link = re.search(r"https?://\S+/accounts/verify/\S+/", mail.outbox[-1].body)
    assert link is not None and mail.outbox[-1].to == [email]
    page.goto(link.group(0))
    assert "is verified" in (page.text_content("#verify-email-done") or "")
    journey.seen("email-verified")

    # --- keys: one to use, one to move tokens to ----------------------------------------------
    journey.click_nav("Dashboard")
    page.wait_for_url(f"{base}/dashboard/")
    journey.seen("dashboard-empty")
    page.fill("#key-create input[name=name]", "journey")
    page.click("#key-create button[type=submit]")
    key = (page.text_content("#new-key-value") or "").strip()
    assert key.startswith("jina_")
    journey.seen("key-created")
    user = User.objects.get(email=email)
    main_key = ApiKey.objects.get(user=user, name="journey")
    assert main_key.balance == settings.TRIAL_TOKENS

    page.click("[data-use-in-playground]")
    page.wait_for_url(f"{base}/")
    assert page.input_value("#pg-key") == key
    page.select_option("#pg-model", MODEL)
    run_and_compare_fetch(page, base, "/v1/embeddings", key)
    page.wait_for_selector("#pg-heatmap-table")
    used = int(page.get_attribute("#pg-usage", "data-total-tokens") or 0)
    assert used > 0
    journey.seen("playground-signed-in")

    journey.click_nav("Dashboard")
    page.wait_for_url(f"{base}/dashboard/")
    page.fill("#key-create input[name=name]", "spare")
    page.click("#key-create button[type=submit]")
    page.wait_for_selector("#new-key-value")
    page.click("#to-dashboard")
    page.wait_for_url(f"{base}/dashboard/")
    spare = ApiKey.objects.get(user=user, name="spare")
    row = page.locator(f"#keys tr[data-prefix='{main_key.prefix}'] .balance")
    assert int(row.get_attribute("data-balance") or 0) == settings.TRIAL_TOKENS - used
    journey.seen("dashboard")
    if journey.dark:  # Chart.js draws in the theme's colours, and follows a change of it
        assert page.evaluate(CHART_COLOURS)[0] == ["#5aa2ff", "#2f3a47"]
        switch_theme(page, "light")
        assert {tuple(c) for c in page.evaluate(CHART_COLOURS)} == {("#0b63ce", "#dde2e9")}
        switch_theme(page, "dark")

    # The usage, sliced: the last 7 days by model, then by endpoint; the CSV says the same.
    page.select_option("#usage-range", "7d")
    page.select_option("#usage-group", "model")
    page.click("#usage-slice button[type=submit]")
    page.wait_for_url(re.compile(r".*range=7d.*group=model"))
    assert MODEL in (page.text_content("main") or "")
    journey.seen("dashboard-7d-by-model")
    csv_url = page.get_attribute("#usage-csv", "href") or ""
    csv = page.request.get(f"{base}{csv_url}" if csv_url.startswith("/") else csv_url)
    assert csv.status == 200 and MODEL in csv.text()
    page.select_option("#usage-range", "30d")
    page.select_option("#usage-group", "endpoint")
    page.click("#usage-slice button[type=submit]")
    page.wait_for_url(re.compile(r".*range=30d.*group=endpoint"))
    journey.seen("dashboard-30d-by-endpoint")

    # --- a key's page: rename it, and move tokens to the spare key ----------------------------
    page.locator(f"#keys tr[data-prefix='{main_key.prefix}'] td:first-child a").click()
    page.wait_for_url(re.compile(rf".*/dashboard/keys/{main_key.pk}/.*"))
    journey.seen("key")
    page.fill("#key-settings-form input[name=name]", "journey-renamed")
    page.click("#key-settings-form button[type=submit]")
    page.wait_for_selector("ul.messages li.success")
    assert "journey-renamed" in (page.text_content("h1") or "")
    journey.seen("key-renamed")
    page.select_option("#move-tokens-form select[name=destination]", str(spare.pk))
    page.fill("#move-tokens-form input[name=tokens]", "12345")
    page.click("#move-tokens-form button[type=submit]")
    page.wait_for_selector("ul.messages li.success")
    journey.seen("key-moved")
    assert int(page.get_attribute("#key-balance", "data-balance") or 0) == (
        settings.TRIAL_TOKENS - used - 12345
    )
    spare.refresh_from_db()
    assert spare.balance == 12345
    assert "12,345" in (page.text_content("#ledger") or "")

    # --- billing: payments are not configured on this server, and the page says how ----------
    journey.click_nav("Billing")
    page.wait_for_selector("#stripe-not-configured")
    journey.seen("billing")

    # --- staff ------------------------------------------------------------------------------
    User.objects.filter(pk=user.pk).update(is_staff=True)
    page.reload()
    journey.click_nav("Staff")
    page.wait_for_url(f"{base}/staff/")
    assert email in (page.text_content("main") or "")
    journey.seen("staff")

    # --- log out: the playground forgets the key ---------------------------------------------
    toggle = page.locator("header.site .nav-toggle")
    if toggle.is_visible():
        toggle.click()
    page.locator("#site-links").get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{base}/")
    assert page.input_value("#pg-key") == ""
    assert page.locator("#site-links a[href='/accounts/login/']").count() == 1
    journey.seen("logged-out")
    assert len(journey.pages) >= 25
    # Every token the journey spent or moved is in the ledger, each key's balance its sum.
    call_command("ledger_check")
