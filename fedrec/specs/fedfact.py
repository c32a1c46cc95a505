"""Spec of ``fedfact-post`` / ``local-post`` and ``fedfact-in``: Params, actions, config
and reply keys, state fields.

Server half :mod:`fedrec.strategies.fedfact`, client half :mod:`fedrec.clients.fedfact`;
both build on the classifier messages of :mod:`fedrec.specs.fedavg`.

- ``fedfact-post`` calibration round: the action ``query.fedfact_post`` (:data:`POST`)
  with the calibration config (:func:`pack_post` / :func:`unpack_post`: the pooled label x
  group counts ``(A, m)`` and the global dual ``lam`` as arrays, the settings as scalars);
  reply :data:`GRAD_LAM` (``U_g`` floats), :data:`MU_L1` and the example count. Its
  evaluation sends the same config with :data:`CALIBRATED`.
- ``fedfact-in`` train round: the train config (:func:`pack_in` / :func:`unpack_in`);
  reply the trained shared model, :data:`DG_VALUES` (``U_g`` floats), :data:`W_ENSEMBLE`,
  :data:`MU_L1`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms.fedfact import CRITERIA, SCOPES
from fedrec.config import key


@dataclass(frozen=True)
class FedFactPostParams:
    criterion: str = key(
        "dp",
        "Fairness criterion: demographic parity, equal opportunity, equalized odds.",
        choices=CRITERIA,
    )
    scope: str = key(
        "both",
        "Constraints: global (pooled population), local (every client's own distribution) or both.",
        choices=SCOPES,
    )
    xi_global: float = key(
        0.01,
        "xi_g: allowed global disparity (subgroup form).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    xi_local: float = key(
        0.01,
        "xi_k: allowed local disparity on every client.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    dual_bound: float = key(
        5.0, "B_d: radius of the L1 ball of the duals.", check=lambda v: v > 0, check_doc="> 0"
    )
    dual_lr: float = key(
        0.6, "Server step size on the global dual lambda.", check=lambda v: v > 0, check_doc="> 0"
    )
    inner_solver: str = key(
        "lbfgs",
        "How a client minimises H'_k over its local dual mu_k "
        "each round: lbfgs (quasi-Newton to near optimality; robust when "
        "a client has a small group) or prox (R fixed proximal steps, the "
        "paper's Algorithm 2 literally).",
        choices=("lbfgs", "prox"),
    )
    local_lr: float = key(
        0.01,
        "prox: client step size on mu_k (curvature grows like "
        "1/p_k^2; scale with the client's share).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    local_steps: int = key(
        20,
        "R: steps on mu_k per calibration round (lbfgs: iteration cap / 10).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    temperature: float = key(
        0.05,
        "beta: smoothing of the max in H (soft-max-weighted "
        "average). The paper uses 0.1; fedrec defaults to 0.05 because the "
        "hard classifier's gaps sit above xi by a smoothing bias that "
        "grows with beta (Adult, 10 rounds: Dg 0.031 / Dl 0.049 at 0.1 vs "
        "0.009 / 0.026 at 0.05).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    post_rounds: int = key(
        10,
        "Calibration rounds after the FedAvg rounds (paper: <= 10).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )


@dataclass(frozen=True)
class FedFactInParams:
    criterion: str = key("dp", "Fairness criterion.", choices=CRITERIA)
    scope: str = key("both", "Constraints: global, local or both.", choices=SCOPES)
    xi_global: float = key(
        0.01, "xi_g: allowed global disparity.", check=lambda v: v >= 0, check_doc=">= 0"
    )
    xi_local: float = key(
        0.01, "xi_k: allowed local disparity.", check=lambda v: v >= 0, check_doc=">= 0"
    )
    dual_bound: float = key(
        5.0, "B_d: radius of the L1 ball of the duals.", check=lambda v: v > 0, check_doc="> 0"
    )
    dual_lr: float = key(
        0.05,
        "eta_d: dual ascent step (global; the local step on client "
        "k is eta_d * min_a p_{a,k}, its smallest group share).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    eta_w: float = key(
        0.3,
        "eta_w: exponentiated-gradient rate of the ensemble weight (paper grid {0.03, 0.3}).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )


# query action of a fedfact-post calibration round
POST = "fedfact_post"
# config keys (server -> client)
POOLED_COUNTS = "pooled-counts"  # (A, m) int64 array: the pooled train counts n[a, y]
LAM = "lam"  # (U_g,) float64 array: the global dual (absent when there is none)
CRITERION = "criterion"
SCOPE = "scope"
XI_GLOBAL = "xi-global"
XI_LOCAL = "xi-local"
DUAL_BOUND = "dual-bound"
LOCAL_LR = "local-lr"
LOCAL_STEPS = "local-steps"
TEMPERATURE = "temperature"
INNER_SOLVER = "inner-solver"
CALIBRATED = "calibrated"  # evaluate with the calibrated classifier
DUAL_LR = "dual-lr"
ETA_W = "eta-w"
# reply metric keys (client -> server)
GRAD_LAM = "grad-lam"  # fedfact-post: gradient of the smooth part of H'_k w.r.t. lam
DG_VALUES = "dg-values"  # fedfact-in: the client's contributions to the global constraints
W_ENSEMBLE = "w-ensemble"
MU_L1 = "mu-l1"
# aggregated metric keys and round-record field (server side)
LAMBDA_L1 = "lambda-l1"
MU_L1_MEAN = "mu-l1-mean"
CONSTRAINT_MAX = "constraint-max"
W_ENSEMBLE_MEAN = "w-ensemble-mean"
STAGE = "stage"
STAGE_TRAIN, STAGE_POST = "train", "post"
# state fields (private, never sent)
POST_MU = "fedfact-mu"  # fedfact-post: the local dual mu_k, (U_l,) float64
IN_MU = "fedfact-in-mu"  # fedfact-in: the local dual mu_k, (U_l,) float64
IN_W = "fedfact-in-w"  # fedfact-in: the ensemble weight w_k, (1,) float64
IN_PHI = "fedfact-in-phi."  # fedfact-in: the private model phi_k, one field per array


@dataclass(frozen=True)
class PostConfig:
    """The settings of a fedfact-post calibration round (and calibrated evaluation)."""

    pooled: np.ndarray
    criterion: str
    scope: str
    xi_global: float
    xi_local: float
    dual_bound: float
    local_lr: float
    local_steps: int
    temperature: float
    inner_solver: str
    lam: np.ndarray
    calibrated: bool = False


@dataclass(frozen=True)
class InConfig:
    """The settings of a fedfact-in train round."""

    pooled: np.ndarray
    criterion: str
    scope: str
    xi_local: float
    dual_bound: float
    dual_lr: float
    eta_w: float
    lam: np.ndarray


def _with_lam(cfg: dict[str, Any], lam: np.ndarray) -> dict[str, Any]:
    if np.size(lam):
        cfg[LAM] = np.asarray(lam, dtype=np.float64)
    return cfg


def _lam(config: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(config.get(LAM, np.zeros(0)), dtype=np.float64)


def _pooled(config: Mapping[str, Any]) -> np.ndarray:
    pooled = np.asarray(config[POOLED_COUNTS], dtype=np.int64)
    if pooled.ndim != 2:
        raise ValueError(f"{POOLED_COUNTS}: expected an (A, m) array, got shape {pooled.shape}")
    return pooled


def pack_post(
    p: FedFactPostParams, scope: str, pooled: np.ndarray, lam: np.ndarray, calibrated: bool = False
) -> dict[str, Any]:
    """The config of a calibration round (``calibrated``: of its evaluation)."""
    cfg: dict[str, Any] = {
        POOLED_COUNTS: np.asarray(pooled, dtype=np.int64),
        CRITERION: p.criterion,
        SCOPE: scope,
        XI_GLOBAL: p.xi_global,
        XI_LOCAL: p.xi_local,
        DUAL_BOUND: p.dual_bound,
        LOCAL_LR: p.local_lr,
        LOCAL_STEPS: p.local_steps,
        TEMPERATURE: p.temperature,
        INNER_SOLVER: p.inner_solver,
    }
    if calibrated:
        cfg[CALIBRATED] = True
    return _with_lam(cfg, lam)


def unpack_post(config: Mapping[str, Any]) -> PostConfig:
    return PostConfig(
        pooled=_pooled(config),
        criterion=str(config[CRITERION]),
        scope=str(config[SCOPE]),
        xi_global=float(config[XI_GLOBAL]),
        xi_local=float(config[XI_LOCAL]),
        dual_bound=float(config[DUAL_BOUND]),
        local_lr=float(config[LOCAL_LR]),
        local_steps=int(config[LOCAL_STEPS]),
        temperature=float(config[TEMPERATURE]),
        inner_solver=str(config.get(INNER_SOLVER, "prox")),
        lam=_lam(config),
        calibrated=bool(config.get(CALIBRATED, False)),
    )


def is_calibrated(config: Mapping[str, Any]) -> bool:
    """Whether an evaluate config asks for the calibrated classifier."""
    return bool(config.get(CALIBRATED, False))


def pack_in(p: FedFactInParams, pooled: np.ndarray, lam: np.ndarray) -> dict[str, Any]:
    """The config of a fedfact-in train round."""
    cfg: dict[str, Any] = {
        POOLED_COUNTS: np.asarray(pooled, dtype=np.int64),
        CRITERION: p.criterion,
        SCOPE: p.scope,
        XI_LOCAL: p.xi_local,
        DUAL_BOUND: p.dual_bound,
        DUAL_LR: p.dual_lr,
        ETA_W: p.eta_w,
    }
    return _with_lam(cfg, lam)


def unpack_in(config: Mapping[str, Any]) -> InConfig:
    return InConfig(
        pooled=_pooled(config),
        criterion=str(config[CRITERION]),
        scope=str(config[SCOPE]),
        xi_local=float(config[XI_LOCAL]),
        dual_bound=float(config[DUAL_BOUND]),
        dual_lr=float(config[DUAL_LR]),
        eta_w=float(config[ETA_W]),
        lam=_lam(config),
    )


def pack_duals(values: np.ndarray) -> np.ndarray:
    """A dual-sized vector as sent (float64; ``[0.]`` when empty)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return v if v.size else np.zeros(1)


def load_phi(state: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """The private model phi_k from a client's state (None before its first round)."""
    keys = sorted((k for k in state if k.startswith(IN_PHI)), key=lambda k: int(k[len(IN_PHI) :]))
    return [state[k] for k in keys] if keys else None


def save_phi(state: MutableMapping[str, np.ndarray], arrays: list[np.ndarray]) -> None:
    for i, arr in enumerate(arrays):
        state[f"{IN_PHI}{i}"] = arr
