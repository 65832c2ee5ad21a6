"""Template tags of the admin's own templates (``codexgw/templates/admin/``)."""

from __future__ import annotations

from django import template

from codexgw import model_key

register = template.Library()


@register.simple_tag
def model_key_problem() -> str | None:
    """``codexgw.model_key.model_key_problem()``: why model calls cannot work, or None."""
    return model_key.model_key_problem()
