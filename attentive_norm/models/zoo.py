"""Imports every model module, so that each one's ``@register_model`` entry points are registered."""
