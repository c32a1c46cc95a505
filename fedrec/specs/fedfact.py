"""Spec of ``fedfact-post`` / ``local-post`` and ``fedfact-in``: Params, actions, config
and reply keys, state fields.

Server half :mod:`fedrec.strategies.fedfact`, client half :mod:`fedrec.clients.fedfact`;
both build on the classifier messages of :mod:`fedrec.specs.fedavg`.

- ``fedfact-post`` calibration round: the action ``query.fedfact_post`` (:data:`POST`)
  with the calibration config (:func:`pack_post` / :func:`unpack_post`: the pooled label x
  group counts ``(A, m)`` and the candidate global dual ``lam`` as arrays, the settings
  as scalars); reply :data:`GRAD_LAM` (``U_g`` floats), :data:`DUAL_VALUE`,
  :data:`HESS_LAM` (``U_g^2`` floats, when the server solver is Newton's),
  :data:`TRAIN_COUNTS` (the expected ``[a, y, yhat]`` counts of the client's rule on its
  train rows), :data:`MU_L1` and the example count. Its evaluation sends the same config
  with :data:`CALIBRATED` and the deployed (accepted) ``lam``.
- ``fedfact-in`` train round: the train config (:func:`pack_in` / :func:`unpack_in`);
  reply the trained shared model, :data:`DG_VALUES` (``U_g`` floats), :data:`W_ENSEMBLE`,
  :data:`MU_L1`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms.calibration import CALIBRATIONS
from fedrec.algorithms.fedfact import CRITERIA, OUTPUTS, SCOPES, SMOOTHINGS
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
    server_solver: str = key(
        "newton",
        "How the server moves lambda: newton (damped proximal Newton on the clients' "
        "summed gradients and Hessians, with an acceptance test on the dual objective; "
        "robust to any temperature and dataset) or gradient (one fixed proximal gradient "
        "step of size dual-lr per round, the paper's Algorithm 2).",
        choices=("newton", "gradient"),
    )
    dual_lr: float = key(
        0.6,
        "server-solver = gradient: step size on the global dual lambda.",
        check=lambda v: v > 0,
        check_doc="> 0",
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
    smoothing: str = key(
        "entropic",
        "Smoothed max in the dual objective H: entropic (beta * logsumexp(z / beta): "
        "convex, and its gradient is the constraint value of the randomized classifier "
        "softmax(M^T eta / beta), so the duals see exactly the rule that is deployed) or "
        "softmax-average (the paper's sum_j softmax(z / beta)_j z_j; not convex, and the "
        "hard classifier's gaps differ from what the duals see).",
        choices=SMOOTHINGS,
    )
    temperature: float = key(
        0.01,
        "beta: temperature of the smoothed max. Smaller: fewer randomized rows and an "
        "accuracy closer to the fair LP's; larger: a better-conditioned dual (the paper "
        "uses 0.1 with softmax-average).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    output: str = key(
        "randomized",
        "Deployed classifier: randomized (draw from softmax(M^T eta / beta), one seeded "
        "uniform per (run seed, client, row); with entropic smoothing its expected gaps "
        "are the ones the duals constrain) or argmax (deterministic, the paper's).",
        choices=OUTPUTS,
    )
    calibration: str = key(
        "auto",
        "Per-(group, client) isotonic re-calibration of the scores on the client's own "
        "train rows before calibrating: makes the label-free (plug-in) EOP/EO constraint "
        "values equal the label-based ones on those rows. auto: isotonic for eop/eo, none "
        "for dp (whose constraints do not involve labels).",
        choices=CALIBRATIONS,
    )
    post_rounds: int = key(
        30,
        "Calibration rounds after the FedAvg rounds.",
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
    history: int = key(
        1,
        "N_h: the deployed classifier is the uniform mixture (one seeded draw per test row) "
        "of the last N_h round classifiers h^t, exactly the ones whose train-set constraint "
        "values the duals saw, so its train-set gap is their average (paper: h-bar over "
        "the last N_h rounds, Table 6 grid {1, 2, 5, 10}; it uses 1). Raise it once the "
        "duals have settled: while they still rise, older rounds are less fair (Adult, "
        "3 clients, 10 rounds: DP gap 0.077 at N_h = 1, 0.108 at 5).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
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
SMOOTHING = "smoothing"
OUTPUT = "output"
CALIBRATION = "calibration"
WANT_HESSIAN = "want-hessian"  # the server's solver needs the clients' Hessians
CALIBRATED = "calibrated"  # evaluate with the calibrated classifier
DUAL_LR = "dual-lr"
ETA_W = "eta-w"
HISTORY = "history"
# reply metric keys (client -> server)
GRAD_LAM = "grad-lam"  # fedfact-post: gradient of the smooth part of H'_k w.r.t. lam
DUAL_VALUE = "dual-value"  # fedfact-post: F_k(lam) = min_mu H'_k(lam, mu) without xi_g
HESS_LAM = "hess-lam"  # fedfact-post: Hessian of F_k w.r.t. lam, (U_g * U_g,) row-major
TRAIN_COUNTS = "train-counts"  # fedfact-post: expected [a, y, yhat] counts on train rows
DG_VALUES = "dg-values"  # fedfact-in: the client's contributions to the global constraints
DL_MIX_MAX = "dl-mix-max"  # fedfact-in: max |local constraint| of the deployed mixture
W_ENSEMBLE = "w-ensemble"
MU_L1 = "mu-l1"
# aggregated metric keys and round-record field (server side)
LAMBDA_L1 = "lambda-l1"
TRAIN_GAP = "gap-on-train"  # constrained (subgroup) gap of the rule on the train rows, global
TRAIN_GAP_LOCAL = "gap-on-train-local-max"  # ... and the max over clients
TRAIN_GAP_PAIRWISE = "gap-on-train-pairwise"
TRAIN_ACCURACY = "accuracy-on-train"  # the rule's (expected) accuracy on the train rows
DUAL_OBJECTIVE = "dual-objective"
ACCEPTED = "accepted"
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
IN_HIST = "fedfact-in-h."  # fedfact-in: snapshot {slot}.{theta|phi}.{i}, {slot}.w, {slot}.dl


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
    smoothing: str = "entropic"
    output: str = "randomized"
    calibration: str = "none"
    want_hessian: bool = False

    @property
    def recalibrate(self) -> bool:
        """Whether scores are re-calibrated per (group, client) (``auto``: eop and eo)."""
        if self.calibration == "auto":
            return self.criterion in ("eop", "eo")
        return self.calibration == "isotonic"


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
    history: int = 1


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
        SMOOTHING: p.smoothing,
        OUTPUT: p.output,
        CALIBRATION: p.calibration,
        WANT_HESSIAN: p.server_solver == "newton",
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
        smoothing=str(config.get(SMOOTHING, "entropic")),
        output=str(config.get(OUTPUT, "randomized")),
        calibration=str(config.get(CALIBRATION, "none")),
        want_hessian=bool(config.get(WANT_HESSIAN, False)),
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
        HISTORY: p.history,
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
        history=int(config.get(HISTORY, 1)),
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


@dataclass(frozen=True)
class Snapshot:
    """One round classifier h^t of fedfact-in: theta^t, phi^t_k, w^t_k and its local
    constraint values on the client's train rows."""

    round: int
    theta: list[np.ndarray]
    phi: list[np.ndarray]
    w: float
    dl: np.ndarray


def save_snapshot(state: MutableMapping[str, np.ndarray], slot: int, snap: Snapshot) -> None:
    pre = f"{IN_HIST}{slot}."
    state[pre + "round"] = np.array([snap.round], dtype=np.int64)
    state[pre + "w"] = np.array([snap.w], dtype=np.float64)
    state[pre + "dl"] = np.asarray(snap.dl, dtype=np.float64).ravel()
    for name, arrays in (("theta", snap.theta), ("phi", snap.phi)):
        for i, arr in enumerate(arrays):
            state[f"{pre}{name}.{i}"] = arr


def load_snapshots(state: Mapping[str, np.ndarray], keep: int | None = None) -> list[Snapshot]:
    """The stored snapshots of the latest ``keep`` rounds (all if None), oldest first."""
    slots: dict[int, dict[str, Any]] = {}
    for k, v in state.items():
        if k.startswith(IN_HIST):
            slot, field = k[len(IN_HIST) :].split(".", 1)
            slots.setdefault(int(slot), {})[field] = v
    snaps = []
    for f in slots.values():

        def arrays(name: str, f=f) -> list[np.ndarray]:
            keys = sorted(
                (k for k in f if k.startswith(name + ".")), key=lambda k: int(k.split(".")[1])
            )
            return [f[k] for k in keys]

        snaps.append(
            Snapshot(int(f["round"][0]), arrays("theta"), arrays("phi"), float(f["w"][0]), f["dl"])
        )
    snaps.sort(key=lambda s: s.round)
    return snaps if keep is None else snaps[-keep:]
