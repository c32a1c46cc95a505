"""Differential privacy: mechanisms and the accountant (pure, no flwr).

- :mod:`fedrec.privacy.accountant` -- ε(δ) from dp-accounting (RDP or PLD), one-shot
  (:func:`epsilon`, :func:`epsilon_curve`, :func:`gaussian_ldp_epsilon`,
  :func:`noise_for_epsilon`) or per run (:class:`Accountant`).
- :mod:`fedrec.privacy.mechanisms` -- row-wise central Gaussian with fixed or adaptive
  clipping (client-level DP) and local Gaussian (local DP), numpy only.
- :mod:`fedrec.privacy.dpsgd` -- sample-level DP-SGD of a client's local training through
  Opacus (imports torch; loaded on first use of :func:`dp_sgd_train`).
"""

from __future__ import annotations

from typing import Any

from fedrec.privacy.accountant import (
    ACCOUNTANTS,
    Accountant,
    epsilon,
    epsilon_curve,
    gaussian_ldp_epsilon,
    noise_for_epsilon,
)
from fedrec.privacy.mechanisms import (
    AdaptiveClip,
    adaptive_noise_params,
    central_gaussian,
    central_stdv,
    classic_gaussian_stdv,
    local_gaussian,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "AdaptiveClip",
    "DPTrainResult",
    "adaptive_noise_params",
    "central_gaussian",
    "central_stdv",
    "classic_gaussian_stdv",
    "dp_sgd_train",
    "epsilon",
    "epsilon_curve",
    "gaussian_ldp_epsilon",
    "local_gaussian",
    "noise_for_epsilon",
]


def __getattr__(name: str) -> Any:
    if name in ("dp_sgd_train", "DPTrainResult"):
        from fedrec.privacy import dpsgd

        return getattr(dpsgd, name)
    raise AttributeError(f"module 'fedrec.privacy' has no attribute {name!r}")
