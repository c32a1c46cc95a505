"""Classifier models (pure torch): registry, builder and weight helpers."""

from fedrec.models.classifiers import (
    MODELS,
    ModelInfo,
    build_model,
    get_weights,
    list_models,
    set_weights,
)

__all__ = ["MODELS", "ModelInfo", "build_model", "get_weights", "list_models", "set_weights"]
