"""Spec of ``ufo``: Params, stages, config / metric keys and the packing of extra models.

Global weights: the item-token LM's parameter arrays (:mod:`fedrec.recsys.item_lm`), in
``fedrec.models.get_weights`` order. Other models travel in the config as arrays named
``<prefix>.<k>`` (:func:`pack_model` / :func:`unpack_model`): the opponent ``pi_t``
(``opp``), the original fine-tuned model ``pi_ref`` (``ref``) and, for the covariance
diagnostic, the pre-trained model (``pre``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.config import NON_NEGATIVE, POSITIVE, key
from fedrec.specs import ranking

__all__ = ["UFOParams", "pack_model", "unpack_model"]


@dataclass(frozen=True)
class UFOParams:
    d_model: int = key(64, "Width of the item-token transformer.", check=lambda v: v >= 2)
    n_layers: int = key(2, "Transformer blocks.", check=lambda v: v >= 1, check_doc=">= 1")
    n_heads: int = key(2, "Attention heads (must divide d-model).", check=lambda v: v >= 1)
    context: int = key(50, "Context length in tokens (<bos> + items).", check=lambda v: v >= 3)
    users_per_client: int = key(
        24, "Federated users per silo.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    public_fraction: float = key(
        0.3,
        "Share of users who form the server's pre-training population (not evaluated).",
        check=lambda v: 0 <= v < 1,
        check_doc="in [0, 1)",
    )
    pretrain_skew: float = key(
        1.0, "gamma of the popularity-skewed pre-training chain (0 = unbiased).", **NON_NEGATIVE
    )
    pretrain_epochs: int = key(8, "Server pre-training epochs.", check=lambda v: v >= 0)
    pretrain_lr: float = key(3e-3, "Adam step size of pre-training.", **POSITIVE)
    sft_rounds: int = key(
        10, "Federated fine-tuning rounds (FedAvg, next-item loss).", check=lambda v: v >= 1
    )
    sft_weighting: str = key(
        "none",
        "SFT loss weights: none, or inverse (inverse group frequency: the re-weighting baseline).",
        choices=("none", "inverse"),
    )
    corrector: str = key(
        "ufo",
        "After SFT: ufo (self-play toward the proxy fair distribution with the geometric "
        "mixture), sprec (self-play SFT + DPO: true next item vs the previous model's top "
        "prediction), none (fine-tuning only).",
        choices=("ufo", "sprec", "none"),
    )
    iterations: int = key(3, "Self-play iterations (max).", check=lambda v: v >= 0)
    iteration_rounds: int = key(
        2, "Federated rounds per iteration.", check=lambda v: v >= 1, check_doc=">= 1"
    )
    alpha: float = key(
        0.5,
        "Geometric mixture pi_t^alpha pi_ref^(1-alpha) of the opponent's samples.",
        check=lambda v: 0 <= v <= 1,
        check_doc="in [0, 1]",
    )
    serve_alpha: float = key(
        1.0,
        "The served policy is pi_theta^a pi_ref^(1-a) (1 = the corrected model alone).",
        check=lambda v: 0 <= v <= 1,
        check_doc="in [0, 1]",
    )
    beta: float = key(0.1, "SPIN / DPO temperature.", **POSITIVE)
    prompts_per_user: int = key(8, "Self-play prompts per user per round.", check=lambda v: v >= 1)
    negatives: int = key(4, "Opponent samples per prompt (distributional).", check=lambda v: v >= 1)
    fair_targets: str = key(
        "horizon",
        "Fair targets y+: horizon (drawn among the user's next `horizon` items, weighted "
        "toward under-exposed groups) or next (the true next item, with the prompts "
        "resampled toward under-exposed groups: the SFT targets reweighted to the fair "
        "distribution).",
        choices=("horizon", "next"),
    )
    horizon: int = key(
        10,
        "Fair targets are drawn from the user's next `horizon` items after the prompt.",
        check=lambda v: v >= 1,
    )
    fair_power: float = key(
        1.0, "Exponent of the fair target weights (GP/GR)^power.", **NON_NEGATIVE
    )
    judge_tol: float = key(
        0.05,
        "The judger stops the self-play when TV(GP, GR@10) on validation falls below this.",
        **NON_NEGATIVE,
    )
    groups: str = key(
        "popularity",
        "Item groups of the fair distribution: popularity quantiles or primary genre.",
        choices=("popularity", "genre"),
    )
    num_groups: int = key(5, "Popularity quantiles.", check=lambda v: v >= 2, check_doc=">= 2")
    rerank_lambda: float = key(
        0.0, "Post-hoc exposure re-ranking at evaluation (the baseline; 0 = off).", **NON_NEGATIVE
    )
    corrector_lr: float = key(1e-3, "Adam step size of the corrector.", **POSITIVE)
    corrector_batch: int = key(
        0,
        "Mini-batch of the self-play stage (0 = train.batch-size). A centralized run can "
        "match a federation's optimizer steps per round with batch-size x silos.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )


# stages (train config STAGE)
SFT, UFO, SPREC, HOLD = "sft", "ufo", "sprec", "hold"
STAGE = "stage"
ITEM_GROUP = ranking.ITEM_GROUP  # (n_items,) int64 group label of every item
ITEM_WEIGHT = "item-weight"  # (n_items,) SFT loss weights (re-weighting baseline)
FAIR_W = "fair-w"  # (G,) fair target weights of the judger
SERVE = "serve-alpha"
# queries
JUDGE = "ufo_judge"  # top-K group exposure on validation prompts -> counts (G,)
MASS = "ufo_mass"  # per-user group mass of the pre-trained and the fine-tuned model
HIST = "ufo_hist"  # group histogram of the SFT targets (the ideal GP)
# metric keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
MARGIN = "judger-margin"
COUNTS = "group-counts"


def pack_model(prefix: str, weights: list[np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": np.asarray(a) for k, a in enumerate(weights)}


def unpack_model(prefix: str, config: Mapping[str, Any]) -> list[np.ndarray] | None:
    out, k = [], 0
    while f"{prefix}.{k}" in config:
        out.append(np.asarray(config[f"{prefix}.{k}"]))
        k += 1
    return out or None
