// The dashboards' charts, drawn with Chart.js (served from this site: static/vendor/chartjs/)
// from the server-drawn SVG charts (web/charts.py): each SVG bar carries its day and value, so
// the SVG is both the chart a browser without scripts shows and this script's data. A chart
// drawn here replaces its SVG; its labels keep their size on any screen, and hovering a day
// shows a tooltip with the day and the value.
// (No inline handlers or style attributes: the page's CSP refuses them; Chart.js sizes its canvas
// through the DOM, which the CSP allows.)
(function () {
  "use strict";
  const range = document.getElementById("usage-range");
  if (range) {
    // Typing a date means a custom range.
    ["usage-start", "usage-end"].forEach((id) => document.getElementById(id)?.addEventListener("change", () => { range.value = "custom"; }));
  }
  if (typeof window.Chart === "undefined") return;  // the SVG stays

  // The site's colours (site.css: light, or dark when the system is), read again when the
  // system's theme changes while the page is open.
  const palette = () => {
    const css = getComputedStyle(document.documentElement);
    return {
      accent: css.getPropertyValue("--accent").trim() || "#0b63ce",
      muted: css.getPropertyValue("--muted").trim() || "#5d6b7e",
      line: css.getPropertyValue("--line").trim() || "#dde2e9",
    };
  };
  const { accent, muted, line } = palette();
  const compact = new Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 2 });
  const exact = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });
  const shortDay = new Intl.DateTimeFormat("en", { month: "short", day: "numeric", timeZone: "UTC" });
  const longDay = new Intl.DateTimeFormat("en", { weekday: "short", year: "numeric", month: "short", day: "numeric", timeZone: "UTC" });
  const asDate = (iso) => new Date(`${iso}T00:00:00Z`);

  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.font.size = 12;
  Chart.defaults.color = muted;

  function draw(svg) {
    const bars = Array.from(svg.querySelectorAll("rect.bar"));
    if (!bars.length) return;
    const days = bars.map((bar) => bar.dataset.day);
    const values = bars.map((bar) => Number(bar.dataset.value));
    const unit = svg.dataset.unit || "";
    const box = document.createElement("div");
    box.className = "chart-canvas";
    const canvas = document.createElement("canvas");
    canvas.id = `${svg.id}-canvas`;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", svg.getAttribute("aria-label") || "");
    box.append(canvas);
    svg.before(box);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: days.map((day) => shortDay.format(asDate(day))),
        datasets: [{ label: unit, data: values, backgroundColor: accent, borderRadius: 2, maxBarThickness: 28 }],
      },
      options: {
        responsive: true,
        maintainAspectRatio: false,
        animation: false,
        interaction: { mode: "index", intersect: false },
        scales: {
          x: { grid: { display: false }, ticks: { maxRotation: 0, autoSkip: true, autoSkipPadding: 14, font: { size: 12 } } },
          y: {
            beginAtZero: true,
            grid: { color: line },
            border: { display: false },
            ticks: { maxTicksLimit: 5, precision: 0, font: { size: 12 }, callback: (value) => compact.format(value) },
          },
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            titleFont: { size: 13 },
            bodyFont: { size: 13 },
            callbacks: {
              title: (items) => longDay.format(asDate(days[items[0].dataIndex])),
              label: (item) => `${exact.format(item.parsed.y)} ${unit}`.trim(),
            },
          },
        },
      },
    });
    svg.setAttribute("hidden", "");
  }

  document.querySelectorAll("svg.chart[id]").forEach(draw);
  window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    const colours = palette();
    Chart.defaults.color = colours.muted;
    for (const chart of Object.values(Chart.instances)) {
      chart.data.datasets[0].backgroundColor = colours.accent;
      chart.options.scales.y.grid.color = colours.line;
      chart.options.scales.x.ticks.color = colours.muted;
      chart.options.scales.y.ticks.color = colours.muted;
      chart.update();
    }
  });
})();
