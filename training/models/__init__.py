"""The model zoo: every recommender behind `training.base.Recommender`, looked up by name.

Modules are imported only when a model is asked for, so `import training` never pulls in torch
(SASRec) or implicit's native code; `get_model_class("sasrec")` imports it on demand.
"""

from __future__ import annotations

import importlib

from training.base import Recommender

# name -> (module, class). The order is the order `make train` and the benchmarks show them in.
_REGISTRY: dict[str, tuple[str, str]] = {
    "popular": ("training.models.popular", "Popular"),
    "als": ("training.models.implicit_models", "ALS"),
    "bpr": ("training.models.implicit_models", "BPR"),
    "itemknn": ("training.models.implicit_models", "ItemKNN"),
    "ease": ("training.models.ease", "EASE"),
    "sasrec": ("training.models.sasrec", "SASRec"),
    "bought-together": ("training.models.bought_together", "BoughtTogether"),
    "repeat-blend": ("training.models.blend", "RepeatBlend"),
    "tifu": ("training.models.tifu", "TIFUKNN"),
    "next-basket": ("training.models.next_basket", "NextBasket"),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model_class(name: str) -> type[Recommender]:
    """The Recommender subclass registered as `name` (see MODEL_NAMES); imports its module lazily."""
    try:
        module_name, class_name = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"model {name!r} is not available: {exc}") from exc
    klass = getattr(module, class_name)
    if getattr(klass, "name", None) != name:
        raise TypeError(
            f"{module_name}.{class_name}.name is {getattr(klass, 'name', None)!r}, expected {name!r}"
        )
    return klass
