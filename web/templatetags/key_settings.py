"""`{% key_settings_form key as form %}`: the key page's settings form, filled in, with the
registry's models to choose from (the page's view stays as it is)."""

from __future__ import annotations

from django import template

from billing.models import ApiKey
from inference.selectors import embedding_model_list
from web.forms import KeySettingsForm

register = template.Library()


@register.simple_tag
def key_settings_form(api_key: ApiKey) -> KeySettingsForm:
    """The settings form of one key."""
    names = list(embedding_model_list().values_list("name", flat=True))
    return KeySettingsForm.for_key(api_key, model_names=names)
