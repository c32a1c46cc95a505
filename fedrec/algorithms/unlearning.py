"""The math of the federated unlearning methods (pure numpy; no flwr import).

- :func:`calibrate` — FedEraser's update calibration (Liu et al., IWQoS 2021): a retained
  client's calibration update keeps the **direction** of its new update and the
  **magnitude** of the update it sent in the original run, ``U~ = |U_old| * U_new /
  |U_new|``. Norms are taken per array for dense updates (the paper's per-layer norm) and,
  for row-sparse uploads (FedMF's item rows), per row: each item row is a parameter group
  of its own. A row present only in the new update keeps its new value (nothing stored
  to calibrate it with); a row only in the old update is dropped (the client did not
  touch it this time).
- :func:`graddiff_upload` — the gradient-ascent upload of a forgetting client: its
  ascent on the forget data, taken as the negated descent delta (for one mini-batch
  this *is* the ascent step), plus its descent on the data it keeps (GradDiff).
- :func:`bpr_influence_stats` / :func:`influence_step` — one Newton (influence-function)
  step for MF-BPR: removing the forget triples from the objective moves ``Q`` by
  ``H_ret^{-1} g_forget`` (Koh & Liang 2017; the survey's reverse unlearning, §5.2), with
  ``g_forget`` the summed gradient of the forget triples' BPR loss and ``H_ret`` the
  summed Hessian of the retained triples. For BPR the Hessian w.r.t. one item row is
  ``sigma(x)(1 - sigma(x)) p p^T`` per triple; fedrec keeps its diagonal (``d`` numbers per
  row, summable over clients like any upload; the full ``d x d`` blocks would cost
  ``d`` times the traffic) plus a damping term, the usual choice for non-convex models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedrec.messages import RowSparse

__all__ = [
    "bpr_influence_stats",
    "calibrate",
    "calibrate_rows",
    "graddiff_upload",
    "influence_step",
]


def calibrate(
    old: Sequence[np.ndarray], new: Sequence[np.ndarray], eps: float = 1e-12
) -> list[np.ndarray]:
    """Dense FedEraser calibration, per array: ``|old| * new / |new|``."""
    out = []
    for o, n in zip(old, new):
        o64, n64 = np.asarray(o, np.float64), np.asarray(n, np.float64)
        nn = float(np.linalg.norm(n64))
        out.append(n64 * (float(np.linalg.norm(o64)) / nn) if nn > eps else np.zeros_like(n64))
    return out


def calibrate_rows(old: RowSparse, new: RowSparse, eps: float = 1e-12) -> RowSparse:
    """Row-sparse FedEraser calibration (module docstring): rows of ``new`` rescaled to the
    norm of the same row in ``old``."""
    rows = np.asarray(new.rows, dtype=np.float64)
    old_ids = np.asarray(old.ids, dtype=np.int64)
    new_ids = np.asarray(new.ids, dtype=np.int64)
    order = np.argsort(old_ids, kind="stable")
    pos = np.searchsorted(old_ids[order], new_ids)
    pos = np.minimum(pos, max(len(old_ids) - 1, 0))
    match = old_ids[order][pos] == new_ids if len(old_ids) else np.zeros(len(new_ids), dtype=bool)
    old_norm = np.zeros(len(new_ids))
    if len(old_ids):
        old_rows = np.asarray(old.rows, dtype=np.float64).reshape(len(old_ids), -1)
        old_norm[match] = np.linalg.norm(old_rows[order][pos[match]], axis=1)
    new_norm = np.linalg.norm(rows.reshape(len(new_ids), -1), axis=1)
    scale = np.ones(len(new_ids))
    scale[match] = np.where(
        new_norm[match] > eps, old_norm[match] / np.maximum(new_norm[match], eps), 0.0
    )
    out = rows * scale.reshape((-1,) + (1,) * (rows.ndim - 1))
    return RowSparse(new_ids, out.astype(np.asarray(new.rows).dtype), new.counts)


def graddiff_upload(forget: RowSparse, retain: RowSparse) -> RowSparse:
    """``retain - forget`` per row; a row's count is the larger of the two (the users of
    one client that touched it, counted once)."""
    ids = np.union1d(np.asarray(forget.ids), np.asarray(retain.ids)).astype(np.int64)
    shape = (len(ids),) + np.shape(retain.rows if len(retain.ids) else forget.rows)[1:]
    rows = np.zeros(shape, dtype=np.float64)
    counts = np.zeros(len(ids), dtype=np.int64)
    for sign, up in ((-1.0, forget), (1.0, retain)):
        k = np.searchsorted(ids, np.asarray(up.ids))
        rows[k] += sign * np.asarray(up.rows, dtype=np.float64)
        counts[k] = np.maximum(counts[k], np.asarray(up.counts, dtype=np.int64))
    return RowSparse(ids, rows.astype(np.float32), counts)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def bpr_influence_stats(
    p: np.ndarray, Q: np.ndarray, pos: np.ndarray, neg: np.ndarray
) -> tuple[RowSparse, RowSparse]:
    """Summed BPR gradient and Hessian diagonal w.r.t. the item rows, for one user with
    embedding ``p`` (d,) and triples ``(pos[k], neg[k])``.

    ``loss = sum_k -log sigma(p . (q_pos - q_neg))``; returns ``(grad, hdiag)`` as
    row-sparse sums over the touched rows (``counts`` = triples per row).
    """
    p = np.asarray(p, dtype=np.float64)
    pos, neg = np.asarray(pos, dtype=np.int64), np.asarray(neg, dtype=np.int64)
    Q64 = np.asarray(Q, dtype=np.float64)
    x = (Q64[pos] - Q64[neg]) @ p
    s = _sigmoid(x)
    g = (1.0 - s)[:, None] * p[None, :]  # d loss / d q_neg; d loss / d q_pos = -g
    h = (s * (1.0 - s))[:, None] * (p * p)[None, :]
    ids = np.concatenate([pos, neg])
    grad = RowSparse.from_contributions(ids, np.concatenate([-g, g]), dtype=np.float64)
    hdiag = RowSparse.from_contributions(ids, np.concatenate([h, h]), dtype=np.float64)
    return grad, hdiag


def influence_step(
    Q: np.ndarray,
    grads: Sequence[RowSparse],
    hessians: Sequence[RowSparse],
    damping: float,
    scale: float = 1.0,
) -> tuple[np.ndarray, int]:
    """``Q + scale * (H_ret + damping)^{-1} g_forget`` on the rows the forget triples touch
    (diagonal ``H``); returns the new ``Q`` and the number of rows moved."""
    if damping <= 0:
        raise ValueError("influence damping must be > 0")
    g, gc = RowSparse.accumulate(grads, Q.shape[0], Q.shape[1:])
    h, _ = RowSparse.accumulate(hessians, Q.shape[0], Q.shape[1:])
    rows = gc > 0
    newQ = np.asarray(Q).copy()
    step = scale * g[rows] / (h[rows] + damping)
    newQ[rows] = (np.asarray(Q, np.float64)[rows] + step).astype(newQ.dtype)
    return newQ, int(rows.sum())
