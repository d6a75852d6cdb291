"""Name → model class registry, in the style of ``torchvision.models``."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Class decorator: ``@register_model("gru")``; a second model under the same name is an error."""

    def wrap(cls):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered by {_MODELS[name].__module__}")
        _MODELS[name] = cls
        cls.registry_name = name
        return cls

    return wrap


def model_class(name: str) -> Callable[..., nn.Module]:
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; registered: {list_models()}")
    return _MODELS[name]


def get_model(name: str, **cfg) -> nn.Module:
    return model_class(name)(**cfg)


def list_models() -> list[str]:
    return sorted(_MODELS)
