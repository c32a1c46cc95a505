"""SISA's learned aggregator: softmax weights over the shard models, fitted federatedly.

RecEraser learns an attention network and UltraRE a logistic regression over the
sub-models' outputs; fedrec learns one weight per shard, ``alpha = softmax(theta)``, from
evidence every client computes on its own data and keeps private (a ``(rows, S)`` matrix):

- ``"logistic"`` (recommenders): row = one user, ``e[k] = s_k(valid item) - s_k(negative)``
  under shard ``k`` (the user's validation item against one sampled negative); the loss
  is BPR on the combined score, ``-log sigma(sum_k alpha_k e[k])``;
- ``"mixture"`` (classifiers): row = one training row, ``e[k] = p_k(y | x)``; the loss is
  the mixture's negative log-likelihood ``-log sum_k alpha_k e[k]``.

The server sums the clients' gradients with respect to ``theta`` (``S`` numbers and a row
count per client) and takes plain gradient steps on the mean. Pure numpy; no flwr import.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LOSSES", "aggregator_grad", "softmax"]

LOSSES = ("logistic", "mixture")


def softmax(theta: np.ndarray) -> np.ndarray:
    t = np.asarray(theta, dtype=np.float64)
    e = np.exp(t - t.max())
    return e / e.sum()


def aggregator_grad(evidence: np.ndarray, theta: np.ndarray, loss: str) -> tuple[np.ndarray, float]:
    """``(sum over rows of d loss / d theta, sum of the losses)`` for ``evidence`` (n, S)."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    E = np.asarray(evidence, dtype=np.float64)
    a = softmax(theta)
    if E.size == 0:
        return np.zeros_like(a), 0.0
    z = E @ a
    if loss == "logistic":
        total = float(np.logaddexp(0.0, -z).sum())
        dz = -0.5 * (1.0 - np.tanh(0.5 * z))  # d/dz -log sigma(z) = -(1 - sigma(z))
    else:
        z = np.maximum(z, 1e-12)
        total = float(-np.log(z).sum())
        dz = -1.0 / z
    g_alpha = E.T @ dz  # d loss / d alpha
    return a * (g_alpha - a @ g_alpha), total
