"""Server- and client-side math of two group-fairness baselines (numpy only, no flwr).

Used by :mod:`fedrec.strategies.fairfed`, :mod:`fedrec.strategies.fedfb` and their
client halves :mod:`fedrec.clients.fairfed`, :mod:`fedrec.clients.fedfb`. Every function is
pure: the same inputs give the same outputs, and nothing here knows about messages.

Count layouts (as elsewhere in fedrec):

- confusion counts ``counts[a, y, yhat]``, shape ``(G, C, C)``
  (:func:`fedrec.metrics.confusion_counts`);
- label x group counts ``m[y, a]``, shape ``(C, G)`` (``ClientData.counts``, the
  handshake's ``train-counts``).

FairFed (Ezzeldin, Yan, He, Ferrara, Avestimehr; AAAI 2023,
https://arxiv.org/abs/2110.00857, Algorithm 1)
------------------------------------------------------------------------------
Per round ``t`` every participating client ``k`` evaluates the *global* model it
received on its own training rows and reports confusion counts. The server sums
them (the paper's secure-aggregated global metric: the global rate of a group is
the sum over clients of local numerators over the sum of local denominators, so
summing counts is exactly the paper's ``F_global = sum_k m_global,k``) and:

1. ``F`` is the paper's *signed* gap of a group rate between group 0 and group 1:
   SPD ``P(Yhat=1|A=0) - P(Yhat=1|A=1)`` (``metric="dp"``) or EOD
   ``P(Yhat=1|A=0,Y=1) - P(Yhat=1|A=1,Y=1)`` (``metric="eop"``, the paper's "EOD";
   ``metric="eo"`` adds the same gap of the false-positive rate). Generalisation
   (our choice; the paper has G = C = 2): ``F`` is the vector of ``r[0, c] - r[a, c]``
   for ``a = 1..G-1`` and ``c = 1`` if ``C == 2`` else every class ``c``.
2. ``Delta_k = max_i |F_global[i] - F_k[i]|`` (the paper's ``|F_global - F_k|`` when
   ``F`` is a scalar); if ``F_k`` is undefined (a group, or for EOD a group's
   positives, is absent at client ``k``) the paper uses the accuracy gap
   ``Delta_k = |Acc_k - Acc_global|`` and so do we (:func:`fairfed_deltas`).
3. ``w_k <- w_k - beta * (Delta_k - mean_j Delta_j)`` (mean over the participants),
   starting from the data share ``w_k^0 = n_k / n``; then ``w <- max(w, 0)`` and
   ``w <- w / sum(w)`` (:func:`fairfed_update_weights`). The paper's update keeps
   ``sum w`` unchanged and normalises; it does not say what happens when a weight
   turns negative (possible for large ``beta``): we clip at 0 before normalising, so
   the global model stays a convex combination of client models. Weights persist
   across rounds (the data share enters once, as the starting point, as in the
   paper's Algorithm 1 and Lizhngg/AdaFFed ``fedlearn/algorithm/FairFed.py``).
   declearn's ``FairfedAggregator`` instead starts from the raw ``n_k`` (so ``beta``
   acts on a different scale) and does not clip; we follow the paper.

Local debiasing (the paper's FairFed/RW): Kamiran & Calders (2012) reweighing of the
client's own rows, ``W(y, a) = P(Y=y) P(A=a) / P(Y=y, A=a)`` from the client's own
label x group counts (:func:`reweighing_weights`); the weights have mean 1 on the
client (rescaled to 1 if the client has an empty (label, group) cell), so the loss
scale is FedAvg's.

FedFB (Zeng, Chen, Lee 2021, "Improving Fairness via Federated Learning",
https://arxiv.org/abs/2110.15545; code ``yzeng58/Improving-Fairness-via-Federated-Learning``,
``FedFB/DP_server.py``: ``Server.FedFB`` and ``Client.fb2_update`` /
``Client.inference``), demographic parity, binary label, ``G >= 2`` groups
------------------------------------------------------------------------------
FairBatch-style reweighting whose weights ``lambda[y, z]`` are updated on the server
from global loss sums:

- ``m[y, z]`` global label x group counts, ``m_z = m[0, z] + m[1, z]``, ``n = sum m``.
- init ``lambda[y, z] = m_z / n`` (:func:`fedfb_init_lambda`); a training row in cell
  ``(y, z)`` gets weight ``lambda[y, z] / m_z`` in the reference (summed loss); we
  pass ``lambda[y, z] * n / m_z`` as ``sample_weight`` to the mean-normalised local
  loss (:func:`fedfb_cell_weights`): the same direction, mean 1 at initialisation,
  so round 1 equals FedAvg's objective. Client models are averaged with weights
  proportional to the sum of their rows' weights (the reference's ``nc``).
- after aggregation every client sends ``L_k[y, z]`` = summed cross-entropy of the
  new global model on its training rows of cell ``(y, z)``; ``L = sum_k L_k``.
- for ``z >= 1`` (:func:`fedfb_dp_direction`)::

      f_z = (L[1, 0] - L[0, 0]) / m_0 + (L[0, z] - L[1, z]) / m_z
            + m[0, 0] / m_0 - m[0, z] / m_z

  a loss surrogate of ``P(Yhat=1|Z=z) - P(Yhat=1|Z=0)`` (count of predicted
  positives in group z ~ ``m[1, z] - errors on y=1 + errors on y=0``, with the
  cross-entropy sums standing in for the error counts).
- step ``eta_t = alpha / sqrt(t)`` (``t`` = 1-based round; the reference's
  ``alpha / (round_ + 1) ** .5``) and (:func:`fedfb_update_lambda`)::

      lambda[0, 0] <- clip(lambda[0, 0] - eta_t * sum_{z>=1} f_z, 0, 2 m_0 / n)
      lambda[0, z] <- clip(lambda[0, z] + eta_t * f_z,           0, 2 m_z / n)   (z >= 1)
      lambda[1, z]  = 2 m_z / n - lambda[0, z]                                   (all z)

  i.e. a group whose positive rate is above group 0's gets more weight on its
  negatives (its positive rate goes down) and group 0 gets less weight on its
  negatives when the others are above it. Two documented deviations from the
  reference code: (a) the reference adds the constant ``m[0,0]/m_0 - m[0,z]/m_z``
  once *per client* while summing ``f_z`` over clients (so its weight grows with the
  number of clients); the derivation above needs it once, which we do; (b) the
  reference clips and completes every ``lambda[., z]`` with group 0's bound
  ``2 m_0 / n``; we use group z's own ``2 m_z / n``, which keeps
  ``lambda[0, z] + lambda[1, z] = 2 m_z / n`` as at initialisation (for two groups
  the reference changes group 1's total weight at the first update otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "FAIRFED_METRICS",
    "counts_accuracy",
    "fairfed_signed_gaps",
    "fairfed_deltas",
    "fairfed_update_weights",
    "fairfed_aggregation_weights",
    "reweighing_weights",
    "cell_sample_weights",
    "fedfb_init_lambda",
    "fedfb_cell_weights",
    "fedfb_dp_direction",
    "fedfb_step_size",
    "fedfb_update_lambda",
    "cell_loss_sums",
]

#: FairFed's fairness notions: demographic parity (SPD), equal opportunity (the
#: paper's EOD, TPR gap) and equalized odds (TPR and FPR gaps).
FAIRFED_METRICS = ("dp", "eop", "eo")


# --------------------------------------------------------------------------- helpers
def _as_counts(counts: np.ndarray) -> np.ndarray:
    arr = np.asarray(counts, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2] or arr.shape[0] < 1 or arr.shape[1] < 2:
        raise ValueError(f"confusion counts must have shape (G, C, C) with C >= 2, got {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("confusion counts must be non-negative")
    return arr


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast_shapes(np.shape(num), np.shape(den)), np.nan)
    np.divide(num, den, out=out, where=np.asarray(den) > 0)
    return out


def counts_accuracy(counts: np.ndarray) -> float:
    """Accuracy of a confusion-count tensor ``(G, C, C)`` (``nan`` if empty)."""
    c = _as_counts(counts)
    n = c.sum()
    return float(np.trace(c.sum(axis=0)) / n) if n > 0 else float("nan")


# --------------------------------------------------------------------------- FairFed
def fairfed_signed_gaps(counts: np.ndarray, metric: str = "dp") -> np.ndarray:
    """FairFed's signed fairness value(s) ``r[0, c] - r[a, c]`` of a count tensor.

    ``r`` is the selection rate ``P(Yhat=c|A=a)`` (``dp``), the true-positive rate
    ``P(Yhat=c|Y=c,A=a)`` (``eop``) or both TPR and FPR (``eo``); ``c = 1`` for
    binary labels, every class otherwise; ``a = 1..G-1``. Entries are ``nan`` where a
    rate is undefined (zero denominator). For G = C = 2 and ``dp`` this is the
    paper's SPD ``P(Yhat=1|A=0) - P(Yhat=1|A=1)`` (a 1-vector).
    """
    if metric not in FAIRFED_METRICS:
        raise ValueError(
            f"unknown FairFed metric {metric!r}; allowed: {', '.join(FAIRFED_METRICS)}"
        )
    c = _as_counts(counts)
    G, C = c.shape[0], c.shape[1]
    classes = [1] if C == 2 else list(range(C))
    n_a = c.sum(axis=(1, 2))  # (G,)
    pred = c.sum(axis=1)  # (G, C) predicted as class
    true = c.sum(axis=2)  # (G, C) label is class
    diag = np.diagonal(c, axis1=1, axis2=2)  # (G, C)
    rates = []
    if metric == "dp":
        rates.append(_ratio(pred, n_a[:, None]))
    else:
        rates.append(_ratio(diag, true))
        if metric == "eo":
            rates.append(_ratio(pred - diag, n_a[:, None] - true))
    out = [r[0, cl] - r[a, cl] for r in rates for a in range(1, G) for cl in classes]
    return np.asarray(out, dtype=np.float64)


def fairfed_deltas(local_counts: Sequence[np.ndarray], metric: str = "dp") -> np.ndarray:
    """``Delta_k`` of every client from its confusion counts of the global model.

    The global value comes from the summed counts. ``Delta_k = max |F_global - F_k|``
    over the entries defined globally; if client ``k``'s value is undefined on any of
    them (or none is defined globally), ``Delta_k = |Acc_k - Acc_global|`` (paper).
    """
    locs = [_as_counts(c) for c in local_counts]
    if not locs:
        return np.zeros(0)
    pooled = np.sum(locs, axis=0)
    f_glob = fairfed_signed_gaps(pooled, metric)
    acc_glob = counts_accuracy(pooled)
    keep = ~np.isnan(f_glob)
    out = np.empty(len(locs))
    for k, c in enumerate(locs):
        f_k = fairfed_signed_gaps(c, metric)[keep]
        if f_k.size and not np.isnan(f_k).any():
            out[k] = float(np.max(np.abs(f_glob[keep] - f_k)))
        else:
            acc_k = counts_accuracy(c)
            defined = not (math.isnan(acc_k) or math.isnan(acc_glob))
            out[k] = abs(acc_k - acc_glob) if defined else 0.0
    return out


def fairfed_update_weights(weights: np.ndarray, deltas: np.ndarray, beta: float) -> np.ndarray:
    """One FairFed step: ``w - beta (Delta - mean Delta)``, clipped at 0, normalised.

    ``weights`` and ``deltas`` are aligned (the participating clients). If clipping
    would leave no positive weight (impossible when the input weights are
    non-negative with a positive sum, since the step preserves the sum), the input
    weights are returned normalised.
    """
    w = np.asarray(weights, dtype=np.float64)
    d = np.asarray(deltas, dtype=np.float64)
    if w.shape != d.shape or w.ndim != 1:
        raise ValueError(f"weights {w.shape} and deltas {d.shape} must be aligned 1-D arrays")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if w.size == 0:
        return w
    new = np.maximum(w - beta * (d - d.mean()), 0.0)
    total = new.sum()
    if total <= 0:
        base = np.maximum(w, 0.0)
        return base / base.sum() if base.sum() > 0 else np.full(w.size, 1.0 / w.size)
    return new / total


def fairfed_aggregation_weights(
    weights: dict[int, float], clients: Sequence[int], sizes: dict[int, int]
) -> np.ndarray:
    """Weights of the participating ``clients`` (normalised among them).

    Falls back to their data shares if all their FairFed weights are 0.
    """
    w = np.asarray([weights[c] for c in clients], dtype=np.float64)
    if w.sum() <= 0:
        w = np.asarray([sizes[c] for c in clients], dtype=np.float64)
    return w / w.sum()


def reweighing_weights(label_group_counts: np.ndarray) -> np.ndarray:
    """Kamiran–Calders weights ``W[y, a] ∝ P(Y=y) P(A=a) / P(Y=y, A=a)``, shape ``(C, G)``.

    From one client's label x group counts ``m[y, a]``; empty cells get weight 0
    (they hold no rows). When no cell is empty the row-weighted mean of the raw
    ratios is exactly 1; otherwise (the empty cells' expected mass is lost) we
    rescale so that it is 1 again, keeping the local loss on FedAvg's scale.
    """
    m = np.asarray(label_group_counts, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"label x group counts must be 2-D (C, G), got shape {m.shape}")
    n = m.sum()
    if n <= 0:
        return np.zeros_like(m)
    expected = np.outer(m.sum(axis=1), m.sum(axis=0)) / n
    out = np.zeros_like(m)
    np.divide(expected, m, out=out, where=m > 0)
    return out * (n / float((out * m).sum()))


def cell_sample_weights(cell_weights: np.ndarray, y: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Per-row weights ``W[y_i, a_i]`` from a ``(C, G)`` table."""
    W = np.asarray(cell_weights, dtype=np.float64)
    return W[np.asarray(y, dtype=np.int64), np.asarray(a, dtype=np.int64)]


def cell_loss_sums(
    proba: np.ndarray, y: np.ndarray, a: np.ndarray, num_groups: int, eps: float = 1e-12
) -> np.ndarray:
    """Summed cross-entropy ``-log p(y_i|x_i)`` per (label, group) cell, shape ``(C, G)``."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    a = np.asarray(a, dtype=np.int64)
    ce = -np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0))
    out = np.zeros((proba.shape[1], num_groups), dtype=np.float64)
    np.add.at(out, (y, a), ce)
    return out


# --------------------------------------------------------------------------- FedFB
def _fedfb_counts(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != 2 or m.shape[1] < 2:
        raise ValueError(
            "FedFB (demographic parity) needs a binary label and >= 2 groups: "
            f"label x group counts of shape (2, G>=2), got {m.shape}"
        )
    if m.sum() <= 0:
        raise ValueError("FedFB: the label x group counts are all zero")
    return m


def fedfb_init_lambda(m: np.ndarray) -> np.ndarray:
    """Initial ``lambda[y, z] = m_z / n`` (both labels), shape ``(2, G)``."""
    m = _fedfb_counts(m)
    p_z = m.sum(axis=0) / m.sum()
    return np.vstack([p_z, p_z])


def fedfb_cell_weights(lam: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row weight of cell ``(y, z)``: ``lambda[y, z] * n / m_z`` (0 for empty groups)."""
    m = _fedfb_counts(m)
    lam = np.asarray(lam, dtype=np.float64)
    m_z = m.sum(axis=0)
    out = np.zeros_like(lam)
    np.divide(
        lam * m.sum(),
        np.broadcast_to(m_z, lam.shape),
        out=out,
        where=np.broadcast_to(m_z, lam.shape) > 0,
    )
    return out


def fedfb_dp_direction(loss_sums: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``f_z`` for every group (``f_0 = 0``; ``f_z = 0`` for empty groups), shape ``(G,)``.

    ``loss_sums[y, z]``: global summed cross-entropy of the current global model on
    the training rows of cell ``(y, z)``; ``m``: global label x group counts.
    """
    m = _fedfb_counts(m)
    L = np.asarray(loss_sums, dtype=np.float64)
    if L.shape != m.shape:
        raise ValueError(f"loss sums {L.shape} and counts {m.shape} must have the same shape")
    m_z = m.sum(axis=0)
    G = m.shape[1]
    f = np.zeros(G)
    if m_z[0] <= 0:
        return f
    base = (L[1, 0] - L[0, 0]) / m_z[0] + m[0, 0] / m_z[0]
    for z in range(1, G):
        if m_z[z] > 0:
            f[z] = base + (L[0, z] - L[1, z]) / m_z[z] - m[0, z] / m_z[z]
    return f


def fedfb_step_size(alpha: float, server_round: int) -> float:
    """``alpha / sqrt(t)`` for the 1-based round ``t`` (reference: ``alpha/(round_+1)**.5``)."""
    if server_round < 1:
        raise ValueError(f"server_round must be >= 1, got {server_round}")
    return float(alpha) / math.sqrt(server_round)


def fedfb_update_lambda(lam: np.ndarray, f: np.ndarray, m: np.ndarray, step: float) -> np.ndarray:
    """One FedFB (DP) update of ``lambda`` (see the module docstring); returns a new array."""
    m = _fedfb_counts(m)
    lam = np.array(lam, dtype=np.float64, copy=True)
    f = np.asarray(f, dtype=np.float64)
    G = m.shape[1]
    if lam.shape != (2, G) or f.shape != (G,):
        raise ValueError(f"lambda must be (2, {G}) and f ({G},), got {lam.shape} and {f.shape}")
    bound = 2.0 * m.sum(axis=0) / m.sum()  # 2 m_z / n
    for z in range(G):
        if m[:, z].sum() <= 0:
            continue
        move = -step * f[1:].sum() if z == 0 else step * f[z]
        lam[0, z] = min(max(lam[0, z] + move, 0.0), bound[z])
        lam[1, z] = bound[z] - lam[0, z]
    return lam
