"""The usage pages' query string: a date range (a preset or custom from/to) and a grouping,
read into a `UsageSlice`. The page and its CSV read the same parameters through this form, so
the CSV holds exactly what the page shows."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, cast

from django import forms
from django.http import QueryDict
from django.utils import timezone

from billing.selectors import UsageSlice, last_days

# A range of at most a year and a day: a leap year's every day, and no table without bound.
MAX_DAYS = 366
PRESETS: dict[str, str] = {
    "7d": "Last 7 days",
    "30d": "Last 30 days",
    "90d": "Last 90 days",
    "month": "This month",
    "custom": "Custom",
}
PRESET_DAYS = {"7d": 7, "30d": 30, "90d": 90}
GROUPS: dict[str, str] = {
    "day": "Day",
    "model": "Model",
    "key": "Key",
    "endpoint": "Endpoint",
}
STAFF_GROUPS: dict[str, str] = {**GROUPS, "user": "User"}


class UsageSliceForm(forms.Form):
    """range=7d|30d|90d|month|custom, start and end (YYYY-MM-DD, for custom), group."""

    range = forms.ChoiceField(choices=list(PRESETS.items()), required=False, label="Range")
    start = forms.DateField(required=False, label="From", input_formats=["%Y-%m-%d"])
    end = forms.DateField(required=False, label="To", input_formats=["%Y-%m-%d"])
    group = forms.ChoiceField(required=False, label="Group by")

    def __init__(self, data: QueryDict, *, groups: dict[str, str] = GROUPS) -> None:
        super().__init__(data)
        cast(forms.ChoiceField, self.fields["group"]).choices = list(groups.items())
        self.usage_slice = last_days(30)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        today = timezone.now().date()
        start, end = data.get("start"), data.get("end")
        preset = data.get("range") or ("custom" if start or end else "30d")
        group = data.get("group") or "day"
        if preset == "custom":
            if start is None or end is None:
                raise forms.ValidationError("A custom range needs both a From and a To date.")
            if end < start:
                raise forms.ValidationError("The To date is before the From date.")
            if end > today:
                raise forms.ValidationError(f"The To date is after today ({today:%Y-%m-%d}, UTC).")
            if (end - start).days + 1 > MAX_DAYS:
                raise forms.ValidationError(f"A range can be at most {MAX_DAYS} days long.")
        elif preset == "month":
            start, end = date(today.year, today.month, 1), today
        else:
            start, end = today - timedelta(days=PRESET_DAYS[preset] - 1), today
        data["range"] = preset
        self.usage_slice = UsageSlice(start=start, end=end, group=group)
        return data

    def error_text(self) -> str:
        """Every error of the form in one sentence per error, for a page or a CSV's 400."""
        lines = []
        for name, errors in self.errors.items():
            label = "" if name == "__all__" else f"{self.fields[name].label}: "
            lines += [f"{label}{error}" for error in errors]
        return " ".join(lines)
