"""Spec of ``fairfed``: Params, the train config key, the train reply's confusion counts.

Server half :mod:`fedrec.strategies.fairfed`, client half :mod:`fedrec.clients.fairfed`;
both build on the classifier messages of :mod:`fedrec.specs.fedavg`. The train reply adds
:data:`COUNTS`: the ``(G, C, C)`` confusion counts of the received global model on the
client's training rows (flat int64, with ``num-groups`` / ``num-classes``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms.fair_baselines import FAIRFED_METRICS
from fedrec.config import NON_NEGATIVE, key
from fedrec.specs import fedavg as base


@dataclass(frozen=True)
class FairFedParams:
    beta: float = key(
        1.0,
        "FairFed fairness budget: step of the aggregation-weight update "
        "w_k -= beta (Delta_k - mean Delta); 0 = FedAvg weights.",
        **NON_NEGATIVE,
    )
    metric: str = key(
        "dp",
        "Fairness notion of the weight update: dp (statistical parity "
        "difference), eop (equal opportunity / TPR gap, the paper's EOD), "
        "eo (TPR and FPR gaps).",
        choices=FAIRFED_METRICS,
    )
    local_debias: bool = key(
        True,
        "Local debiasing by Kamiran–Calders reweighing of the "
        "client's (label, group) cells (FairFed/RW).",
    )


# train config key (server -> client): Kamiran–Calders reweighing on/off
LOCAL_DEBIAS = "fairfed-local-debias"
# train reply metric key (client -> server)
COUNTS = "fairfed-counts"
# aggregated train metric keys and round-record field (server side)
TRAIN_GAP = "fairfed-train-gap"
DELTA_MEAN = "fairfed-delta-mean"
WEIGHT_MIN = "fairfed-weight-min"
WEIGHT_MAX = "fairfed-weight-max"
WEIGHTS = "fairfed_weights"


def pack_counts(counts: np.ndarray, num_groups: int, num_classes: int) -> dict[str, Any]:
    """The train reply's extra metrics for confusion counts ``(G, C, C)``."""
    return {
        COUNTS: base.pack_confusion(counts),
        base.NUM_GROUPS: int(num_groups),
        base.NUM_CLASSES: int(num_classes),
    }


def unpack_counts(metrics: Mapping[str, Any]) -> np.ndarray:
    """Confusion counts ``(G, C, C)`` int64 from a train reply."""
    return base.unpack_confusion(metrics, COUNTS)
