"""The model zoo: the paper's networks (BN baselines and AN variants) behind one registry."""

from .registry import create_model, get_model_entrypoint, list_models, register_model

__all__ = ["create_model", "get_model_entrypoint", "list_models", "register_model"]
