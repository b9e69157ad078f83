"""The dashboards' charts in a real browser (issue 16, bug 6): Chart.js served by this site draws
the dashboard's, a key's and the staff page's charts with axes and tooltips, labels at a readable
size on a desktop and on a phone (390x844), revenue over the same days as usage, and no console
error or failed request; the playground's heatmap shows cosine 0 in a neutral colour.

Screenshots go to var/test-artifacts/ (charts-*.png)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from billing.models import ApiKey, Payment, User
from metering.ledger import usage_admit, usage_succeed
from metering.usage import usage_rollup_day
from tests.factories import ApiKeyFactory
from tests.web.test_browser import (  # noqa: F401
    PASSWORD,
    Problems,
    browser,
    csp_violations,
    log_in,
    shot,
)

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
VIEWPORTS = {
    "desktop": {"viewport": {"width": 1280, "height": 900}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
}
# Smallest label, in CSS pixels, a person reads without zooming.
MIN_LABEL_PX = 10


def served(api_key: ApiKey, *, tokens: int, ago: int = 0) -> None:
    usage = usage_admit(api_key=api_key, model="all-MiniLM-L6-v2", text_tokens=tokens)
    usage_succeed(usage=usage, latency_ms=2)
    if ago:
        when = timezone.now() - timedelta(days=ago)
        type(usage).objects.filter(pk=usage.pk).update(created_at=when, finished_at=when)
        usage_rollup_day(day=when.date())


@pytest.fixture
def accounts() -> dict[str, Any]:
    """A user with a month of usage and a payment today, and a staff member."""
    api_key = ApiKeyFactory(user__email="charts@example.com")
    user = api_key.user
    user.set_password(PASSWORD)
    user.save()
    for ago, tokens in ((0, 1234), (2, 500), (9, 2000), (25, 50)):
        served(api_key, tokens=tokens, ago=ago)
    Payment.objects.create(
        user=user,
        api_key=api_key,
        pack_id="pack-1b",
        tokens=10**9,
        amount=2500,
        currency="usd",
        status=Payment.Status.SUCCEEDED,
        credited_tokens=10**9,
        idempotency_key="charts-today",
    )
    User.objects.create_user(email="charts-ops@example.com", password=PASSWORD, is_staff=True)
    return {"key": api_key}


@pytest.fixture(params=list(VIEWPORTS))
def screen(request: pytest.FixtureRequest, browser: Any) -> Iterator[tuple[str, Any, Problems]]:  # noqa: F811
    context = browser.new_context(**VIEWPORTS[request.param])
    page = context.new_page()
    page.set_default_timeout(60_000)
    problems = Problems(page)
    refused = csp_violations(page)
    yield request.param, page, problems
    context.close()
    assert not refused, f"the Content-Security-Policy refused: {refused}"
    assert not problems.found, problems.found


# Chart.js's own view of each chart on the page: how many bars, and the smallest label on either
# axis in CSS pixels (its font size times how far the page scales the canvas).
CHARTS_ON_PAGE = """() => Array.from(document.querySelectorAll("canvas[id^=chart-]")).map((canvas) => {
  const chart = Chart.getChart(canvas);
  const scale = canvas.getBoundingClientRect().width / chart.width;
  const sizes = ["x", "y"].map((axis) => chart.scales[axis].options.ticks.font.size * scale);
  return {
    id: canvas.id,
    bars: chart.data.datasets[0].data.length,
    labels: chart.data.labels.length,
    ticks: chart.scales.x.ticks.length,
    minFont: Math.min(...sizes),
    svgHidden: document.getElementById(canvas.id.replace(/-canvas$/, "")).hasAttribute("hidden"),
  };
})"""

# Where on the screen the last bar of a chart is (the page scrolled to it first).
LAST_BAR = """(id) => {
  const canvas = document.getElementById(id);
  canvas.scrollIntoView({block: "center"});
  const chart = Chart.getChart(canvas);
  const bars = chart.getDatasetMeta(0).data;
  const bar = bars[bars.length - 1];
  const box = canvas.getBoundingClientRect();
  return {x: box.left + bar.x, y: box.top + (bar.y + bar.base) / 2};
}"""

TOOLTIP = """(id) => {
  const tooltip = Chart.getChart(document.getElementById(id)).tooltip;
  if (!tooltip || !tooltip.opacity || !tooltip.body) return null;
  return [...tooltip.title, ...tooltip.body.flatMap((item) => item.lines)].join(" | ");
}"""


def hover_last_bar(page: Any, chart_id: str) -> str:
    """Move the mouse over the chart's last bar (today) and read the tooltip Chart.js shows."""
    point = page.evaluate(LAST_BAR, chart_id)
    page.mouse.move(point["x"], point["y"])
    # Chart.js draws the tooltip on its next animation frame: ask until it is there.
    for _ in range(100):
        text = page.evaluate(TOOLTIP, chart_id)
        if text:
            return str(text)
        page.wait_for_timeout(50)
    raise AssertionError(f"no tooltip on {chart_id}")


def charts(page: Any) -> dict[str, dict[str, Any]]:
    page.wait_for_selector("canvas[id^=chart-]")
    return {chart["id"]: chart for chart in page.evaluate(CHARTS_ON_PAGE)}


def readable(found: dict[str, dict[str, Any]]) -> None:
    for chart in found.values():
        assert chart["minFont"] >= MIN_LABEL_PX, chart
        assert chart["ticks"] >= 2, chart  # at least the first and a later day are labelled
        assert chart["svgHidden"], chart


def test_the_dashboard_draws_readable_charts_with_tooltips(
    live_server: Any, screen: tuple[str, Any, Problems], accounts: dict[str, Any]
) -> None:
    name, page, _ = screen
    log_in(page, live_server.url, "charts@example.com")
    page.goto(f"{live_server.url}/dashboard/")
    found = charts(page)
    assert {"chart-tokens-canvas", "chart-requests-canvas", "chart-errors-canvas"} <= set(found)
    assert all(chart["bars"] == 30 for chart in found.values())
    readable(found)
    tooltip = hover_last_bar(page, "chart-tokens-canvas")
    assert re.search(r"1,234 tokens", tooltip), tooltip
    assert timezone.now().strftime("%b") in tooltip  # the day, spelled out
    shot(page, f"charts-dashboard-{name}")

    # A week, grouped by day, and the key's own page.
    page.select_option("#usage-range", "7d")
    page.click("#usage-slice button[type=submit]")
    page.wait_for_url(re.compile(r"range=7d"))
    found = charts(page)
    assert found["chart-tokens-canvas"]["bars"] == 7
    assert page.locator("#usage-table tbody tr").count() == 7
    readable(found)
    shot(page, f"charts-dashboard-7-days-{name}")

    page.goto(f"{live_server.url}/dashboard/keys/{accounts['key'].pk}/?range=90d")
    found = charts(page)
    assert found["chart-key-tokens-canvas"]["bars"] == 90
    readable(found)
    assert "1,234 tokens" in hover_last_bar(page, "chart-key-tokens-canvas")
    shot(page, f"charts-key-90-days-{name}")


def test_staff_charts_show_revenue_over_the_same_days_as_usage(
    live_server: Any, screen: tuple[str, Any, Problems], accounts: dict[str, Any]
) -> None:
    name, page, _ = screen
    log_in(page, live_server.url, "charts-ops@example.com")
    page.goto(f"{live_server.url}/staff/")
    found = charts(page)
    # One day of payments, drawn over the same 30 days as the tokens (bug 6).
    assert found["chart-revenue-usd-canvas"]["bars"] == found["chart-all-tokens-canvas"]["bars"]
    assert found["chart-revenue-usd-canvas"]["bars"] == 30
    readable(found)
    assert "25 USD" in hover_last_bar(page, "chart-revenue-usd-canvas")
    assert "1,234 tokens" in hover_last_bar(page, "chart-all-tokens-canvas")
    shot(page, f"charts-staff-{name}")


def test_without_scripts_the_dashboards_svg_labels_stay_readable(
    live_server: Any,
    browser: Any,  # noqa: F811
    accounts: dict[str, Any],
) -> None:
    """The server-drawn SVG is what a browser without scripts shows: its labels in the
    dashboard's three cards are not scaled down to a few pixels."""
    for name, options in VIEWPORTS.items():
        context = browser.new_context(**options, java_script_enabled=False)
        page = context.new_page()
        log_in(page, live_server.url, "charts@example.com")
        page.goto(f"{live_server.url}/dashboard/")
        sizes = page.evaluate(
            """() => ["chart-tokens", "chart-requests", "chart-errors"].map((id) => {
              const svg = document.getElementById(id);
              const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
              const label = svg.querySelector("text.label");
              return parseFloat(getComputedStyle(label).fontSize) * scale;
            })"""
        )
        assert min(sizes) >= MIN_LABEL_PX, (name, sizes)
        shot(page, f"charts-dashboard-no-script-{name}")
        context.close()


def heat_colour_source() -> str:
    """playground.js's heatColour function, as written (it is a self-contained function)."""
    source = (ROOT / "embeddings_site" / "static" / "playground.js").read_text()
    match = re.search(r"^( *)function heatColour\(value\) \{\n.*?^\1\}", source, re.M | re.S)
    assert match, "playground.js has no heatColour function"
    return match.group(0)


def rgb(page: Any, value: float) -> tuple[int, ...]:
    """The colour heatColour gives a cosine, as the browser computes it."""
    css = page.evaluate(
        f"""(value) => {{
          const cell = document.createElement("div");
          document.body.append(cell);
          cell.style.background = ({heat_colour_source()})(value).background;
          return getComputedStyle(cell).backgroundColor;
        }}""",
        value,
    )
    return tuple(int(part) for part in re.findall(r"\d+", css)[:3])


def test_the_heatmap_shows_unrelated_pairs_in_a_neutral_colour(browser: Any) -> None:  # noqa: F811
    page = browser.new_page()
    try:
        red, green, blue = rgb(page, 0.0)
        assert max(red, green, blue) - min(red, green, blue) <= 4  # grey: no hue
        assert min(red, green, blue) >= 230  # and light
        for similar in (0.5, 0.9, 1.0):
            red, green, blue = rgb(page, similar)
            assert blue > red + 40, similar  # related pairs are blue
        red, green, blue = rgb(page, -0.8)
        assert red > blue + 40  # opposite ones red
        assert sum(rgb(page, 0.9)) < sum(rgb(page, 0.3))  # deeper the more related
    finally:
        page.close()


def test_the_chart_library_is_the_pinned_release_with_its_licence() -> None:
    """The committed Chart.js is the version the Makefile's `vendor` step fetches."""
    makefile = (ROOT / "Makefile").read_text()
    pinned = re.search(r"^CHARTJS_VERSION \?= (\S+)$", makefile, re.M)
    assert pinned
    vendor = ROOT / "embeddings_site" / "static" / "vendor" / "chartjs"
    header = (vendor / "chart.umd.min.js").read_text()[:200]
    assert f"Chart.js v{pinned.group(1)}" in header and "MIT License" in header
    assert "MIT License" in (vendor / "LICENSE.md").read_text()
