"""Spec of ``lego``: Params, query actions, config / metric keys, state field, array layouts.

A LEGO request runs as ``query.<action>`` phases (:mod:`fedrec.strategies.lego`, client
half :mod:`fedrec.clients.lego`). Every message names the attributes it concerns and
their client state slots (:func:`request_config`); the estimators ``phi_t`` travel as
one flat float32 vector per attribute (:func:`pack_classifiers`, layout
:func:`classifier_layout`: ``[W1 (h, d), b1 (h,), W2 (K_t, h), b2 (K_t,)]``), the
clients' gradient sums come back as one flat float64 vector per client, the attributes'
layouts end to end (:func:`pack_grad_sums`). Priors, ``alpha_tilde`` and the weights
travel as numpy arrays (the ``config-arrays`` record), never as ConfigRecord lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.algorithms import lego as L
from fedrec.algorithms.estimators import classifier_shapes
from fedrec.config import key
from fedrec.messages import FlatLayout
from fedrec.specs.fedmf import NUM_EXAMPLES, FedMFParams, P

__all__ = [
    "ACTIONS",
    "ALPHA_TILDE",
    "APPLY",
    "ATTRS",
    "CALIBRATE",
    "COMBINE",
    "COUNT",
    "COUNTS",
    "FIT",
    "FIT_ATTRS",
    "FedLegoParams",
    "G_ALPHA",
    "LOSS",
    "MI",
    "MODE",
    "MODE_FIT",
    "MODE_GRAD",
    "NUM_EXAMPLES",
    "P",
    "PRIOR",
    "SLOTS",
    "STATE",
    "STEP",
    "WEIGHTS",
    "classifier_layout",
    "pack_classifiers",
    "pack_grad_sums",
    "prior_key",
    "request_config",
    "unpack_classifiers",
    "unpack_grad_sums",
    "unpack_request",
]


@dataclass(frozen=True)
class FedLegoParams(FedMFParams):
    attributes: str = key(
        "gender,age_bucket,occupation",
        "First unlearning request: comma "
        "list of categorical user attributes of the dataset (ml-100k: gender, "
        "age_bucket, occupation; synthetic-rec: gender), calibrated in "
        "parallel, then combined.",
    )
    add_attributes: str = key(
        "",
        "Second (dynamic) request: attributes added after the first; "
        "only they are calibrated, the combination is solved again. "
        "Empty = no second request.",
    )
    withdraw_attributes: str = key(
        "",
        "Third request: attributes (of the first two) no longer "
        "to unlearn; their calibrations are dropped and the "
        "combination is solved again. Empty = no third request.",
    )
    eps: float = key(
        0.2,
        "Relative per-row ball radius: every user embedding stays within "
        "eps * ||e_u^0|| of its original (0 = no change).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    steps: int = key(
        200,
        "Step 1: embedding steps per calibration (T).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    n_phi: int = key(
        5,
        "Estimator updates per embedding step (Step 1) and per alpha step "
        "(Step 2); each is one message.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    warmup_phi: int = key(
        100,
        "Estimator updates before the first embedding / alpha step.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    lr_phi: float = key(
        1e-3,
        "Adam step size of the estimators q_phi (server side).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    lr_emb: float = key(
        1e-2,
        "Per-user Adam step of the embedding step, relative to the "
        "row's ball: lr_u = lr-emb * eps_u / sqrt(d).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    hidden: int = key(
        64,
        "Hidden units of the estimators (MLP d -> hidden -> K, ReLU).",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    calibrate_patience: int = key(
        L.DEFAULT_CALIBRATE["patience"],
        "Step 1 early stop: a calibration stops once its vCLUB estimate has not "
        "improved (by calibrate-tol of its first value) for this many embedding "
        "steps; 0 = always run all steps.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    calibrate_tol: float = key(
        L.DEFAULT_CALIBRATE["plateau_tol"],
        "Step 1 early stop: the improvement that counts, as a fraction of the "
        "calibration's first vCLUB estimate.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    combine_steps: int = key(
        50, "Step 2: Adam steps on alpha_tilde.", check=lambda v: v >= 0, check_doc=">= 0"
    )
    combine_lr: float = key(
        0.03, "Step 2: Adam step size on alpha_tilde.", check=lambda v: v > 0, check_doc="> 0"
    )
    combine_balance: str = key(
        L.DEFAULT_COMBINE["balance"],
        "Step 2 objective: sum (sum of the attributes' mean vCLUB terms, the "
        "paper's eq. 12), normalized (each divided by the entropy of its "
        "attribute) or minmax (a smooth maximum of the normalised terms).",
        choices=L.BALANCES,
    )
    combine_temperature: float = key(
        L.DEFAULT_COMBINE["temperature"],
        "Step 2, minmax: temperature of the smooth maximum (smaller = closer to "
        "the worst attribute alone).",
        check=lambda v: v > 0,
        check_doc="> 0",
    )
    combine_tol: float = key(
        L.DEFAULT_COMBINE["tol"],
        "Step 2 early stop: stop once no alpha moved by this much over "
        "combine-window steps; 0 = always run all steps.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    combine_window: int = key(
        L.DEFAULT_COMBINE["window"],
        "Step 2 early stop: the window (alpha steps) of combine-tol.",
        check=lambda v: v >= 1,
        check_doc=">= 1",
    )
    warm_combine_steps: int = key(
        L.DEFAULT_WARM_STEPS,
        "Step 2 of a dynamic request (add / withdraw after a combination): "
        "alpha steps from the previous solution and estimators; 0 = restart "
        "Step 2 from scratch (combine-steps).",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    consent_fraction: float = key(
        1.0,
        "Share of users whose labels train the shared estimators "
        "and enter the prior and alpha gradients (each user draws "
        "its consent from a seed; every user calibrates its own "
        "embedding).",
        check=lambda v: 0 < v <= 1,
        check_doc="in (0, 1]",
    )


# ------------------------------------------------------------------ query actions
PRIOR = "lego_prior"  # Step 1 starts: reset the slots, reply label counts
CALIBRATE = "lego_calibrate"  # Step 1: embedding step and/or estimator gradient sums
COMBINE = "lego_combine"  # Step 2: estimator gradient sums or alpha-gradient sums
APPLY = "lego_apply"  # P <- U(alpha); slots not named become free
ACTIONS = (PRIOR, CALIBRATE, COMBINE, APPLY)

# ------------------------------------------------------------------ config keys (server -> client)
ATTRS = "attrs"  # comma list of the message's attributes (every action)
SLOTS = "slots"  # comma list of their state slots, same order (every action)
STEP = "step"  # calibrate: take one embedding step first (bool)
FIT = "fit"  # calibrate: reply the estimators' gradient sums (bool)
MODE = "mode"  # combine: MODE_FIT or MODE_GRAD
MODE_FIT, MODE_GRAD = "fit", "grad"
FIT_ATTRS = "fit-attrs"  # combine fit: comma list of the attributes whose estimators
# travel and get gradient sums (default: all); U(alpha) always mixes every slot named
ALPHA_TILDE = "alpha-tilde"  # combine, apply: (k,) float64
WEIGHTS = "weights"  # combine grad: (k,) float64, c_t / count_t (the balance's coefficients)


def prior_key(attr: str) -> str:
    """Config key of attribute ``attr``'s prior ``(K,)`` float64 (calibrate with a step,
    combine grad)."""
    return f"prior.{attr}"


# ------------------------------------------------------------------ metric keys (client -> server)
COUNTS = "counts"  # prior: (sum_t K_t,) int64 one-hot counts of consenting users
COUNT = "count"  # fit: (k,) int64 consenting users per attribute
LOSS = "loss"  # fit: (k,) float64 summed CE per attribute
MI = "mi"  # step, grad: (k,) float64 summed vCLUB terms
G_ALPHA = "g-alpha"  # grad: (k,) float64 summed dJ / d alpha_tilde
# NUM_EXAMPLES (fedmf's "num-examples"): consenting users of the client

# ------------------------------------------------------------------ state field (private)
# (n_users, d + S * (3d + 1)) float64: U0, then per slot [U_t | m | v | t] (clients/lego.py)
STATE = "lego"


# ------------------------------------------------------------------ packing
def request_config(attrs: Sequence[str], slots: Sequence[int]) -> dict[str, Any]:
    """The ``attrs`` / ``slots`` entries every LEGO message carries."""
    if len(attrs) != len(slots):
        raise ValueError(f"{len(attrs)} attributes but {len(slots)} slots")
    return {ATTRS: ",".join(attrs), SLOTS: ",".join(str(int(s)) for s in slots)}


def unpack_request(config: Mapping[str, Any]) -> tuple[list[str], list[int]]:
    """Inverse of :func:`request_config`: ``(attrs, slots)``."""
    attrs = [a for a in str(config.get(ATTRS, "")).split(",") if a]
    slots = [int(x) for x in str(config.get(SLOTS, "")).split(",") if x]
    if len(slots) != len(attrs):
        raise ValueError(f"lego: {len(attrs)} attributes but {len(slots)} slots")
    return attrs, slots


def classifier_layout(d: int, hidden: int, num_classes: int) -> FlatLayout:
    """Flat layout of one estimator ``[W1 (h, d), b1 (h,), W2 (K, h), b2 (K,)]``."""
    return FlatLayout(classifier_shapes(d, num_classes, hidden))


def pack_classifiers(
    params: Sequence[Sequence[np.ndarray]], layouts: Sequence[FlatLayout]
) -> list[np.ndarray]:
    """The broadcast estimators: one flat float32 vector per attribute."""
    return [lay.pack(p, np.float32) for p, lay in zip(params, layouts, strict=True)]


def unpack_classifiers(
    weights: Sequence[np.ndarray], layouts: Sequence[FlatLayout]
) -> list[list[np.ndarray]]:
    """Inverse of :func:`pack_classifiers`: ``[W1, b1, W2, b2]`` (float32 views) per attribute."""
    if len(weights) != len(layouts):
        raise ValueError(f"expected {len(layouts)} estimator vectors, got {len(weights)}")
    return [lay.unpack(np.asarray(w)) for w, lay in zip(weights, layouts)]


def pack_grad_sums(
    grads: Sequence[Sequence[np.ndarray]], layouts: Sequence[FlatLayout]
) -> np.ndarray:
    """Gradient sums of the attributes' estimators as one float64 vector per client.

    ``grads[t]`` holds ``[dW1, db1, dW2, db2]`` with the layout's shapes, optionally with
    the same leading (cohort) axes in front; returns ``(..., sum_t size_t)``."""
    parts = []
    for g, lay in zip(grads, layouts, strict=True):
        for a, s in zip(g, lay.shapes, strict=True):
            a = np.asarray(a, dtype=np.float64)
            lead = a.shape[: a.ndim - len(s)]
            if a.shape[len(lead) :] != s:
                raise ValueError(f"gradient of shape {a.shape} where the layout has {s}")
            parts.append(a.reshape(lead + (-1,)))
    return np.concatenate(parts, axis=-1)


def unpack_grad_sums(flat: np.ndarray, layouts: Sequence[FlatLayout]) -> list[list[np.ndarray]]:
    """Inverse of :func:`pack_grad_sums`: ``[dW1, db1, dW2, db2]`` per attribute."""
    flat = np.asarray(flat)
    total = sum(lay.size for lay in layouts)
    if flat.shape[-1] != total:
        raise ValueError(f"gradient vector of length {flat.shape[-1]}; the layouts need {total}")
    out, off = [], 0
    for lay in layouts:
        out.append(lay.unpack(flat[..., off : off + lay.size]))
        off += lay.size
    return out
