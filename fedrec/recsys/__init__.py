"""Recommendation core (pure: numpy and torch, no Flower): splits, negatives, trainers, evaluation.

* :mod:`.splits`: :func:`leave_one_out`, :func:`ratio_split` -> :class:`UserData`;
  :func:`sample_negatives` (per user, explicit seed) and :func:`sample_negatives_rows` (batched);
* :mod:`.train`: centralised :func:`train_mf_bpr`, :func:`train_sasrec` and
  :func:`evaluate_full_ranking`.

Models live in :mod:`fedrec.models.recsys` and ranking/fairness metrics in
:mod:`fedrec.metrics.ranking`; each module's docstring documents its choices.
"""

from __future__ import annotations

from fedrec.recsys.splits import (
    Ragged,
    UserData,
    leave_one_out,
    ratio_split,
    sample_negatives,
    sample_negatives_rows,
)
from fedrec.recsys.train import (
    evaluate_full_ranking,
    mf_score_fn,
    sasrec_score_fn,
    train_mf_bpr,
    train_sasrec,
)

__all__ = [
    "Ragged",
    "UserData",
    "evaluate_full_ranking",
    "leave_one_out",
    "mf_score_fn",
    "ratio_split",
    "sample_negatives",
    "sample_negatives_rows",
    "sasrec_score_fn",
    "train_mf_bpr",
    "train_sasrec",
]
