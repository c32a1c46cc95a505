"""Spec of ``fedsasrec`` (federated SASRec): Params and the train upload."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.config import key
from fedrec.messages import FlatLayout


@dataclass(frozen=True)
class FedSASRecParams:
    dim: int = key(64, "Hidden size d.", check=lambda v: v >= 1, check_doc=">= 1")
    max_len: int = key(
        50, "Most recent items a sequence keeps.", check=lambda v: v >= 2, check_doc=">= 2"
    )
    num_blocks: int = key(2, "Self-attention blocks.", check=lambda v: v >= 0, check_doc=">= 0")
    num_heads: int = key(
        1, "Attention heads (must divide dim).", check=lambda v: v >= 1, check_doc=">= 1"
    )
    dropout: float = key(0.2, "Dropout rate.", check=lambda v: 0 <= v < 1, check_doc="in [0, 1)")
    users_per_client: int = key(
        1,
        "Users per logical client (1 = one client per user).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    server_optimizer: str = key(
        "adam",
        "adam: FedAdam on the FedAvg pseudo-gradient; sgd: FedAvg with server-lr.",
        choices=("adam", "sgd"),
    )
    server_lr: float = key(0.01, "Server learning rate.", check=lambda v: v > 0, check_doc="> 0")


def build_model(p: Any, num_items: int, seed: int = 0):
    """The :class:`~fedrec.models.recsys.SASRec` that ``p`` describes (the server seeds its
    initial model; clients load the global weights into theirs)."""
    from fedrec.errors import ConfigError
    from fedrec.models.recsys import SASRec

    if p.dim % p.num_heads:
        raise ConfigError(
            f"config key 'strategy.params.num-heads': {p.num_heads} does not divide dim={p.dim}"
        )
    return SASRec(num_items, p.dim, p.max_len, p.num_blocks, p.num_heads, p.dropout, seed=seed)


# metric keys of the train reply
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"


def dense_layout(weights: list[np.ndarray]) -> FlatLayout:
    """Layout of every parameter but the item embedding (``weights[0]``), in model order:
    the flat vector of non-embedding deltas a client uploads."""
    return FlatLayout.of(weights[1:])


def pack_train(
    item_ids: np.ndarray, item_sums: np.ndarray, dense_sum: np.ndarray
) -> list[np.ndarray]:
    """Train upload: ``[touched item ids (k,) int64 (0-based, without the padding row),
    their example-weighted delta sums (k, d) float32, the example-weighted sum of the
    flat non-embedding deltas (:func:`dense_layout`)]``."""
    return [
        np.asarray(item_ids, dtype=np.int64),
        np.asarray(item_sums, dtype=np.float32),
        np.asarray(dense_sum),
    ]


def unpack_train(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids, item_sums, dense = arrays
    return np.asarray(ids, dtype=np.int64), item_sums, dense
