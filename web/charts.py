"""Charts as server-rendered SVG, readable without a script and in tests: every bar carries its
day and value as data attributes and a tooltip. In the browser, static/charts.js reads those bars
and draws the same chart with Chart.js (axes, tooltips, labels at a fixed size on any screen),
hiding the SVG; without scripts the SVG is the chart."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from html import escape

from django.utils.safestring import SafeString, mark_safe


@dataclass(frozen=True)
class Bar:
    """One day's value."""

    day: date
    value: float


def _compact(value: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if value != int(value) else f"{int(value)}"


def bar_chart(
    *,
    bars: list[Bar],
    title: str,
    unit: str = "",
    chart_id: str = "",
    width: int = 640,
    height: int = 200,
) -> SafeString:
    """A bar chart of one value per day, with a y-axis maximum and first/last day labels.

    Draw it about as wide (`width`) as the box it is shown in: the SVG scales to fit, and its
    labels with it."""
    left, right, top, bottom = 44, 8, 10, 24
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((bar.value for bar in bars), default=0) or 1
    slot = plot_w / max(len(bars), 1)
    bar_w = max(slot * 0.72, 1)
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" data-unit="{escape(unit)}" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="axis"/>',
        f'<text x="{left - 6}" y="{top + 8}" class="label" text-anchor="end">{_compact(peak)}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" class="label" text-anchor="end">0</text>',
    ]
    for index, bar in enumerate(bars):
        h = plot_h * bar.value / peak
        x = left + index * slot + (slot - bar_w) / 2
        value = int(bar.value) if bar.value == int(bar.value) else bar.value
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{max(h, 0):.1f}" data-day="{bar.day.isoformat()}" data-value="{value}">'
            f"<title>{bar.day.isoformat()}: {value:,} {escape(unit)}</title></rect>"
        )
    if bars:
        parts.append(
            f'<text x="{left}" y="{height - 6}" class="label">{bars[0].day:%b %d}</text>'
            f'<text x="{width - right}" y="{height - 6}" class="label" text-anchor="end">'
            f"{bars[-1].day:%b %d}</text>"
        )
    parts.append("</svg>")
    return mark_safe("".join(parts))  # noqa: S308 — every interpolated string is escaped above
