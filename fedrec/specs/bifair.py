"""Spec of ``bifair``: Params, weights layout, config / metric keys, the outer-step reply.

Global weights (server -> client with every message): ``[Z (n_items, d_L), W1, b1, W2,
b2]``, the learnable item representations and the projector
(:mod:`fedrec.algorithms.bifair`). A train reply carries the projector only
(``[W1, b1, W2, b2]``); ``Z`` changes only in the outer step, on the server.

The outer-step query (``query.bifair_outer``) replies with :func:`pack_outer`: the
row-sparse hypergradient sum on ``Z`` and the per-group last-layer gradient sums, loss
sums and counts over the client's validation triples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.config import FRACTION, NON_NEGATIVE, POSITIVE, key
from fedrec.messages import RowSparse
from fedrec.specs import ranking
from fedrec.specs.fedmf import NUM_EXAMPLES, TRAIN_LOSS

__all__ = [
    "ALPHA",
    "BiFairParams",
    "ITEM_GROUP",
    "MULT",
    "NUM_EXAMPLES",
    "OUTER",
    "OUTER_BATCH",
    "P",
    "TRAIN_LOSS",
    "VAL_LOSS",
    "pack_outer",
    "unpack_outer",
]


@dataclass(frozen=True)
class BiFairParams:
    representation: str = key(
        "minilm",
        "Item representations Z0: minilm (all-MiniLM-L6-v2 text embeddings, extra 'llm'), "
        "hashing (tiny stand-in encoder), tfidf-svd (semantic control), svd-pop "
        "(prior-unfair control: SVD of a popularity-skewed corpus).",
        choices=("minilm", "hashing", "tfidf-svd", "svd-pop"),
    )
    repr_dim: int = key(
        64,
        "Dimension of hashing / tfidf-svd / svd-pop (minilm: 384).",
        check=lambda v: v >= 2,
        check_doc=">= 2",
    )
    dim: int = key(
        32, "User / projected item embedding dimension d.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    hidden: int = key(
        64, "Hidden width of the projector MLP.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    init_std: float = key(0.1, "Std of the user-embedding initialisation.", **POSITIVE)
    negatives: int = key(
        1, "Sampled negatives per positive.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    reg: float = key(0.0, "L2 on the batch's user embeddings.", **NON_NEGATIVE)
    users_per_client: int = key(
        48,
        "Users per logical client (silos; the projector is FedAvg'd over them).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    groups: str = key(
        "popularity",
        "Item groups of the balancing: popularity quantiles or primary genre.",
        choices=("popularity", "genre"),
    )
    num_groups: int = key(
        5, "Popularity quantiles (groups = popularity).", check=lambda v: v >= 2, check_doc=">= 2"
    )
    balance: str = key(
        "mgda",
        "Group weights w: mgda (min-norm point of the per-group gradients, smoothed), "
        "uniform (1/G: inverse-frequency re-weighting), none (interaction shares: plain).",
        choices=("mgda", "uniform", "none"),
    )
    inner_balancing: bool = key(
        True, "Use w in the inner (training) loss; false = plain inner loss (ablation)."
    )
    update_z: bool = key(True, "Outer step on Z (false = Z frozen at the LLM vectors).")
    outer_every: int = key(
        2, "Rounds between outer steps (S).", check=lambda v: v >= 1, check_doc=">= 1"
    )
    outer_lr: float = key(0.01, "Adam step size of the server's update of Z.", **POSITIVE)
    unroll_lr: float = key(0.1, "alpha of the one-step unrolled projector update.", **POSITIVE)
    prox: float = key(0.1, "rho of rho * ||Z - Z0||^2.", **NON_NEGATIVE)
    outer_batch: int = key(
        1024,
        "Training triples per client in the unrolled step.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    balance_momentum: float = key(0.5, "tau of w <- (1 - tau) w + tau w_mgda.", **FRACTION)
    mgda_normalize: str = key(
        "loss",
        "Normalisation of the per-group gradients before the min-norm solve (Sener & Koltun).",
        choices=("none", "l2", "loss", "loss+"),
    )
    rerank_lambda: float = key(
        0.0,
        "Post-hoc exposure-constrained re-ranking at evaluation (0 = off): the baseline.",
        **NON_NEGATIVE,
    )


# state field (private, never sent): the client's user embeddings
P = "P"
# query action: the outer step
OUTER = "bifair_outer"
# config keys (server -> client)
ITEM_GROUP = ranking.ITEM_GROUP  # (n_items,) int64 group label of every item
MULT = "group-mult"  # (G,) float64 multipliers a_g = w_g / pi_g
ALPHA = "unroll-lr"
OUTER_BATCH = "outer-batch"
# metric keys (client -> server)
VAL_LOSS = "val-loss"


def pack_outer(
    hyper: RowSparse, grad_sums: np.ndarray, loss_sums: np.ndarray, counts: np.ndarray
) -> list[np.ndarray]:
    """``[ids, rows, counts, grad_sums (G, n_last), loss_sums (G,), group_counts (G,)]``."""
    return [
        *hyper.to_arrays(),
        np.asarray(grad_sums, dtype=np.float64),
        np.asarray(loss_sums, dtype=np.float64),
        np.asarray(counts, dtype=np.float64),
    ]


def unpack_outer(arrays) -> tuple[RowSparse, np.ndarray, np.ndarray, np.ndarray]:
    return (
        RowSparse.from_arrays(arrays[:3]),
        np.asarray(arrays[3]),
        np.asarray(arrays[4]),
        np.asarray(arrays[5]),
    )
