"""Imports every model module, so that each one's ``@register_model`` entry points are registered."""

from . import (
    aognet,  # noqa: F401
    cifar_resnet,  # noqa: F401
    densenet,  # noqa: F401
    mobilenetv2,  # noqa: F401
    resnet,  # noqa: F401
)
