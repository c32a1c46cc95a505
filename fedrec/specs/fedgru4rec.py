"""Spec of ``fedgru4rec`` (federated GRU4Rec): Params; the upload is ``fedsasrec``'s
(:func:`fedrec.specs.fedsasrec.pack_train`: touched item rows + the dense rest)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedrec.config import key
from fedrec.specs.fedsasrec import NUM_EXAMPLES, TRAIN_LOSS, dense_layout, pack_train, unpack_train

__all__ = [
    "NUM_EXAMPLES",
    "TRAIN_LOSS",
    "FedGRU4RecParams",
    "build_model",
    "dense_layout",
    "pack_train",
    "unpack_train",
]


@dataclass(frozen=True)
class FedGRU4RecParams:
    dim: int = key(
        64, "Hidden size d (= item embedding size).", check=lambda v: v >= 1, check_doc=">= 1"
    )
    max_len: int = key(
        50, "Most recent items a sequence keeps.", check=lambda v: v >= 2, check_doc=">= 2"
    )
    num_layers: int = key(1, "GRU layers.", check=lambda v: v >= 1, check_doc=">= 1")
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
    """The :class:`~fedrec.models.recsys.GRU4Rec` that ``p`` describes."""
    from fedrec.models.recsys import GRU4Rec

    return GRU4Rec(num_items, p.dim, p.max_len, p.num_layers, p.dropout, seed=seed)
