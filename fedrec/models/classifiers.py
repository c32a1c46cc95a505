"""Classifier models (pure torch) and weight (de)serialization helpers.

Every model maps a float32 feature matrix ``(batch, in_dim)`` to **logits**
``(batch, num_classes)``; probabilities come from a softmax. Binary tasks use two
logits as well (``num_classes=2``), so the same cross-entropy training, prediction
and fairness code serves binary and multi-class problems. For ``logreg`` with two
classes this is an over-parameterised (but equivalent) form of ordinary logistic
regression: only the difference of the two logit rows matters.

Initialisation is deterministic for a given ``seed``: the model is built on the CPU
inside :func:`torch.random.fork_rng` after seeding the CPU generator, so the global
torch RNG state of the caller is left untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from fedrec.errors import ConfigError

__all__ = [
    "MODELS",
    "ModelInfo",
    "build_model",
    "get_weights",
    "list_models",
    "set_weights",
]

# (type, default, doc) for each hyper-parameter a model accepts.
ParamSpec = tuple[type, Any, str]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: ``builder(in_dim, num_classes, **params) -> nn.Module``."""

    name: str
    description: str
    builder: Callable[..., nn.Module]
    params: dict[str, ParamSpec] = field(default_factory=dict)


def _build_logreg(in_dim: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_dim, num_classes)


def _build_mlp(
    in_dim: int, num_classes: int, *, hidden: int, layers: int, dropout: float
) -> nn.Module:
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules.append(nn.Linear(width, hidden))
        modules.append(nn.ReLU())
        if dropout > 0.0:
            modules.append(nn.Dropout(dropout))
        width = hidden
    modules.append(nn.Linear(width, num_classes))
    return nn.Sequential(*modules)


MODELS: dict[str, ModelInfo] = {
    "logreg": ModelInfo(
        name="logreg",
        description=(
            "Multinomial (softmax) logistic regression: one nn.Linear(in_dim, num_classes) "
            "producing logits; binary tasks use 2 logits."
        ),
        builder=_build_logreg,
        params={},
    ),
    "mlp": ModelInfo(
        name="mlp",
        description=(
            "Multi-layer perceptron: `layers` x [Linear(., hidden), ReLU, Dropout(dropout)] "
            "followed by Linear(hidden, num_classes) producing logits."
        ),
        builder=_build_mlp,
        params={
            "hidden": (int, 64, "width of each hidden layer (>= 1)"),
            "layers": (int, 1, "number of hidden layers (>= 1)"),
            "dropout": (float, 0.0, "dropout probability after each hidden ReLU, in [0, 1)"),
        },
    ),
}


def list_models() -> list[ModelInfo]:
    """All registered models, sorted by name."""
    return [MODELS[name] for name in sorted(MODELS)]


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _coerce_param(model: str, key: str, spec: ParamSpec, value: Any) -> Any:
    typ = spec[0]
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(
                f"model {model!r} parameter {key!r} must be an integer, got {value!r}"
            )
        return int(value)
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise ConfigError(f"model {model!r} parameter {key!r} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, typ):  # pragma: no cover - no other types registered yet
        raise ConfigError(
            f"model {model!r} parameter {key!r} must be {typ.__name__}, got {value!r}"
        )
    return value


def _validate_params(name: str, info: ModelInfo, params: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(info.params))
    if unknown:
        allowed = ", ".join(sorted(info.params)) or "(none)"
        raise ConfigError(
            f"unknown parameter {unknown[0]!r} for model {name!r}; allowed: {allowed}"
        )
    resolved = {key: spec[1] for key, spec in info.params.items()}
    for key, value in params.items():
        resolved[key] = _coerce_param(name, key, info.params[key], value)
    if name == "mlp":
        if resolved["hidden"] < 1:
            raise ConfigError(
                f"model 'mlp' parameter 'hidden' must be >= 1, got {resolved['hidden']}"
            )
        if resolved["layers"] < 1:
            raise ConfigError(
                f"model 'mlp' parameter 'layers' must be >= 1, got {resolved['layers']}"
            )
        if not 0.0 <= resolved["dropout"] < 1.0:
            raise ConfigError(
                f"model 'mlp' parameter 'dropout' must be in [0, 1), got {resolved['dropout']}"
            )
    return resolved


def build_model(name: str, in_dim: int, num_classes: int, *, seed: int, **params: Any) -> nn.Module:
    """Build model ``name`` with a deterministic initialisation derived from ``seed``.

    Unknown model names, unknown or ill-typed parameters, and invalid dimensions raise
    :class:`~fedrec.errors.ConfigError`. The caller's global torch RNG state is not
    modified.
    """
    info = MODELS.get(name)
    if info is None:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    in_dim = _check_positive_int("in_dim", in_dim)
    num_classes = _check_positive_int("num_classes", num_classes, minimum=2)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    resolved = _validate_params(name, info, params)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))  # CPU generator only; restored on exit
        model = info.builder(in_dim, num_classes, **resolved)
    return model.float()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Copies of every ``state_dict`` entry, in ``state_dict`` order.

    Floating-point tensors are returned as float32 arrays; non-floating buffers (none
    in the registered models) keep their dtype.
    """
    out: list[np.ndarray] = []
    for tensor in model.state_dict().values():
        array = tensor.detach().cpu().numpy()
        if tensor.is_floating_point():
            out.append(np.array(array, dtype=np.float32, copy=True))
        else:
            out.append(np.array(array, copy=True))
    return out


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Copy ``weights`` (in ``state_dict`` order) into ``model`` in place.

    A wrong number of arrays or a shape mismatch raises ``ValueError`` naming the
    offending tensor; the model is left unchanged in that case.
    """
    state = model.state_dict()
    if len(weights) != len(state):
        raise ValueError(
            f"expected {len(state)} weight arrays ({', '.join(state)}), got {len(weights)}"
        )
    arrays = []
    for (key, tensor), w in zip(state.items(), weights):
        array = np.asarray(w)
        if tuple(array.shape) != tuple(tensor.shape):
            raise ValueError(
                f"shape mismatch for tensor {key!r}: model has {tuple(tensor.shape)}, "
                f"got {tuple(array.shape)}"
            )
        arrays.append(array)
    with torch.no_grad():
        for tensor, array in zip(state.values(), arrays):
            tensor.copy_(torch.as_tensor(np.ascontiguousarray(array)).to(dtype=tensor.dtype))
