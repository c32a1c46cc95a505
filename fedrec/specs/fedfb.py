"""Spec of ``fedfb``: Params, the FairBatch cell weights, the loss-collection phase.

Server half :mod:`fedrec.strategies.fedfb`, client half :mod:`fedrec.clients.fedfb`; both
build on the classifier messages of :mod:`fedrec.specs.fedavg`.

- train: config :data:`CELL_WEIGHTS` (the row weight of every (label, group) cell, a
  ``(C, G)`` float64 array); the reply adds :data:`WEIGHT_SUM`;
- ``query.fedfb_losses`` (:data:`LOSSES`): reply :data:`LOSS_SUMS`, the summed
  cross-entropy of the global model per (label, group) cell (``C * G`` floats, flat).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.config import NON_NEGATIVE, key


@dataclass(frozen=True)
class FedFBParams:
    alpha: float = key(
        0.3,
        "FedFB step size of the FairBatch weight update "
        "(alpha / sqrt(round)); 0 = fixed weights (FedAvg).",
        **NON_NEGATIVE,
    )
    criterion: str = key("dp", "Fairness criterion: dp (demographic parity).", choices=("dp",))


# train config key (server -> client)
CELL_WEIGHTS = "fedfb-cell-weights"
# train reply metric key: the sum of the client's row weights (its aggregation weight)
WEIGHT_SUM = "weight-sum"
# extra phase after aggregation (query action) and its reply metric key
LOSSES = "fedfb_losses"
LOSS_SUMS = "loss-sums"
# round-record fields (server side)
LAMBDA = "fedfb_lambda"
DIRECTION = "fedfb_f"


def pack_cell_weights(weights: np.ndarray) -> dict[str, Any]:
    """The train config: cell weights ``(C, G)`` as a float64 array."""
    return {CELL_WEIGHTS: np.asarray(weights, dtype=np.float64)}


def unpack_cell_weights(
    config: Mapping[str, Any], num_classes: int, num_groups: int
) -> np.ndarray | None:
    """Cell weights ``(C, G)`` float64 from a train config, or None if absent."""
    raw = config.get(CELL_WEIGHTS)
    if raw is None:
        return None
    W = np.asarray(raw, dtype=np.float64)
    if W.size != num_classes * num_groups:
        raise ValueError(
            f"{CELL_WEIGHTS}: expected {num_classes * num_groups} values (C x G), got {W.size}"
        )
    return W.reshape(num_classes, num_groups)


def pack_loss_sums(sums: np.ndarray) -> np.ndarray:
    """Per-cell loss sums ``(C, G)`` as sent: flat float64."""
    return np.asarray(sums, dtype=np.float64).ravel()


def unpack_loss_sums(metrics: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(metrics[LOSS_SUMS], dtype=np.float64).reshape(shape)
