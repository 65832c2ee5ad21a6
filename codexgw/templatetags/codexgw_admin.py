"""Template tags of the admin's own templates (``codexgw/templates/admin/``)."""

from __future__ import annotations

from django import template

from codexgw import model_key

register = template.Library()
# {% model_key_problem %}: why model calls cannot work, or None.
register.simple_tag(model_key.model_key_problem)
