"""The attribute classifier shared by LEGO and RAID: an MLP ``d -> h -> K`` (ReLU), batch-first.

``q_phi(a | e) = softmax(z)_a`` with logits ``z = W2 relu(W1 e + b1) + b2``; parameters
``phi = [W1 (h, d), b1 (h,), W2 (K, h), b2 (K,)]`` (``torch.nn.Linear`` layout, float32
as shipped; every computation runs in numpy float64 with analytic gradients, checked
against torch autograd in ``tests/test_lego_math.py``). LEGO fits it as the variational
estimator of vCLUB (:mod:`fedrec.algorithms.lego`), RAID's adversarial baseline as the
attribute adversary whose gradient it reverses (:mod:`fedrec.clients.raid`).

Batch-first
-----------
Every function takes embeddings ``X`` of shape ``(..., n, d)``: ``n`` samples (users) on
the second-to-last axis, any leading axes (a cohort of ``C`` clients: ``(C, n, d)``);
labels and masks have shape ``(...,  n)``. Products with the weights are ``np.matmul`` on
the stack, i.e. one BLAS call per ``(n, d)`` slice, and per-sample reductions run over
the slice's own axes, so a slice's numbers do not depend on what else is in the stack
(a cohort on one node gives what one node per client gives, bit for bit). Sums over the
samples (``*_sums``) reduce the ``n`` axis and keep the leading ones.

Cross-entropy ``CE_u = -log q(a_u | e_u)``; with ``delta_u = softmax(z_u) - onehot(a_u)``:

.. math::
    \\frac{\\partial CE_u}{\\partial W_2} = \\delta_u h_u^T, \\quad
    \\frac{\\partial CE_u}{\\partial W_1} = g_u e_u^T, \\quad
    g_u = (W_2^T \\delta_u) \\odot 1[W_1 e_u + b_1 > 0], \\quad
    \\frac{\\partial CE_u}{\\partial e_u} = W_1^T g_u

(ReLU'(0) = 0 as in torch). Training (:func:`classifier_step`) is one Adam step of
:mod:`fedrec.optim` on the summed gradients divided by their count (the gradient of the
mean CE), so summed per-client gradients give the centralized step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fedrec.errors import ConfigError

if TYPE_CHECKING:
    from fedrec.optim import AdamState

__all__ = [
    "DEFAULT_HIDDEN",
    "ce_input_grads",
    "check_embeddings",
    "check_labels",
    "check_mask",
    "check_params",
    "classifier_grad_sums",
    "classifier_init",
    "classifier_shapes",
    "classifier_step",
    "forward",
    "log_probs",
    "log_softmax",
    "logit_input_grad",
    "logit_param_grad_sums",
]

DEFAULT_HIDDEN = 64


# ------------------------------------------------------------------ input checks
def check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return v


def check_embeddings(name: str, x, *, like: np.ndarray | None = None) -> np.ndarray:
    """A finite float64 copy of a non-empty ``(..., n, d)`` array (``like``: same shape)."""
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a numeric (n, d) array") from None
    if a.ndim < 2 or a.shape[-2] == 0 or a.shape[-1] == 0:
        raise ConfigError(
            f"{name} must be a non-empty (n, d) array (or a stack (..., n, d)), got shape {a.shape}"
        )
    if like is not None and a.shape != like.shape:
        raise ConfigError(f"{name} must have shape {like.shape}, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ConfigError(f"{name} contains non-finite values")
    return a


def check_labels(
    name: str, labels, shape: tuple[int, ...], num_classes: int | None = None
) -> np.ndarray:
    """Integer class indices of shape ``shape`` (``(..., n)``) in ``[0, num_classes)``."""
    a = np.asarray(labels)
    if a.shape != tuple(shape):
        raise ConfigError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if a.dtype == bool or not (
        np.issubdtype(a.dtype, np.integer)
        or (
            np.issubdtype(a.dtype, np.floating)
            and np.all(np.isfinite(a))
            and np.all(a == np.round(a))
        )
    ):
        raise ConfigError(f"{name} must be integer class indices")
    a = a.astype(np.int64)
    if a.size and a.min() < 0:
        raise ConfigError(f"{name} must be in [0, K), got {a.min()}")
    if num_classes is not None and a.size and a.max() >= num_classes:
        raise ConfigError(f"{name} must be in [0, {num_classes}), got {a.max()}")
    return a


def check_mask(name: str, mask, shape: tuple[int, ...]) -> np.ndarray:
    """A bool mask of shape ``shape`` (``None``: all True)."""
    if mask is None:
        return np.ones(shape, dtype=bool)
    a = np.asarray(mask)
    if a.shape != tuple(shape) or a.dtype != bool:
        raise ConfigError(
            f"{name} must be a bool array of shape {tuple(shape)}, got {a.dtype} {a.shape}"
        )
    return a


def check_params(name: str, params, d: int | None = None) -> tuple[list[np.ndarray], int, int, int]:
    """Check ``[W1 (h,d), b1 (h,), W2 (K,h), b2 (K,)]``; float64 copies and ``(d, h, K)``."""
    if not isinstance(params, (list, tuple)) or len(params) != 4:
        raise ConfigError(f"{name} must be a list [W1, b1, W2, b2] of 4 arrays")
    W1, b1, W2, b2 = (np.asarray(p, dtype=np.float64) for p in params)
    if (
        W1.ndim != 2
        or W2.ndim != 2
        or b1.shape != (W1.shape[0],)
        or W2.shape[1] != W1.shape[0]
        or b2.shape != (W2.shape[0],)
    ):
        raise ConfigError(
            f"{name} has inconsistent shapes "
            f"{[np.shape(p) for p in params]}; expected (h,d), (h,), (K,h), (K,)"
        )
    if d is not None and W1.shape[1] != d:
        raise ConfigError(f"{name} expects embeddings of size {W1.shape[1]}, got d={d}")
    return [W1, b1, W2, b2], W1.shape[1], W1.shape[0], W2.shape[0]


# ------------------------------------------------------------------ the model
def classifier_shapes(
    d: int, num_classes: int, hidden: int = DEFAULT_HIDDEN
) -> tuple[tuple[int, ...], ...]:
    """Shapes of ``[W1, b1, W2, b2]``: ``(h, d), (h,), (K, h), (K,)``."""
    return ((hidden, d), (hidden,), (num_classes, hidden), (num_classes,))


def classifier_init(
    d: int, num_classes: int, hidden: int = DEFAULT_HIDDEN, seed: int = 0
) -> list[np.ndarray]:
    """Parameters ``[W1 (h,d), b1 (h,), W2 (K,h), b2 (K,)]`` (float32) of the MLP ``d->h->K``.

    ``torch.nn.Linear``'s default scheme, drawn from ``numpy.random.default_rng(seed)``:
    every entry ``~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (deterministic, framework-free).
    """
    d = check_count("d", d, 1)
    K = check_count("num_classes", num_classes, 2)
    h = check_count("hidden", hidden, 1)
    rng = np.random.default_rng(seed)
    b_in, b_h = 1.0 / np.sqrt(d), 1.0 / np.sqrt(h)
    out = [
        rng.uniform(-b_in, b_in, (h, d)),
        rng.uniform(-b_in, b_in, h),
        rng.uniform(-b_h, b_h, (K, h)),
        rng.uniform(-b_h, b_h, K),
    ]
    return [a.astype(np.float32) for a in out]


def forward(p64: Sequence[np.ndarray], X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pre-activations (..., n, h), hidden (..., n, h), logits (..., n, K))``."""
    W1, b1, W2, b2 = p64
    pre = np.matmul(X, W1.T) + b1
    hid = np.maximum(pre, 0.0)
    return pre, hid, np.matmul(hid, W2.T) + b2


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """``log softmax`` over the last axis (max-shifted)."""
    Z = Z - Z.max(axis=-1, keepdims=True)
    return Z - np.log(np.exp(Z).sum(axis=-1, keepdims=True))


def logit_input_grad(p64: Sequence[np.ndarray], pre: np.ndarray, dZ: np.ndarray) -> np.ndarray:
    """Per-sample gradient w.r.t. the inputs ``(..., n, d)`` of a per-sample logit gradient
    ``dZ (..., n, K)``: ``((dZ W2) * 1[pre > 0]) W1``."""
    W1, _, W2, _ = p64
    return np.matmul(np.matmul(dZ, W2) * (pre > 0), W1)


def logit_param_grad_sums(
    p64: Sequence[np.ndarray], X: np.ndarray, pre: np.ndarray, hid: np.ndarray, dZ: np.ndarray
) -> list[np.ndarray]:
    """Gradients w.r.t. ``[W1, b1, W2, b2]`` of a per-sample logit gradient ``dZ``,
    summed over the samples (axis ``-2``): shapes ``(..., h, d), (..., h), (..., K, h),
    (..., K)``."""
    _, _, W2, _ = p64
    dpre = np.matmul(dZ, W2) * (pre > 0)
    return [
        np.matmul(np.swapaxes(dpre, -1, -2), X),
        dpre.sum(axis=-2),
        np.matmul(np.swapaxes(dZ, -1, -2), hid),
        dZ.sum(axis=-2),
    ]


def _ce_logit_grad(logq: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``softmax - onehot(y)`` per sample, from the log-probabilities."""
    dZ = np.exp(logq)
    yy = y[..., None]
    np.put_along_axis(dZ, yy, np.take_along_axis(dZ, yy, -1) - 1.0, -1)
    return dZ


def log_probs(params, emb) -> np.ndarray:
    """``log q_phi(a | e_u)`` for every row, shape ``(..., n, K)`` (float64)."""
    E = check_embeddings("emb", emb)
    p64, *_ = check_params("params", params, E.shape[-1])
    return log_softmax(forward(p64, E)[2])


def classifier_grad_sums(params, emb, labels, mask=None):
    """Client side of one classifier update: summed CE gradients of the masked samples.

    ``emb (..., n, d)``, ``labels (..., n)``, ``mask (..., n)`` bool (default all).
    Returns ``(grads, count, loss_sum)``: ``grads[i] = sum_{u in mask} d CE_u / d
    params[i]`` (float64, ``params[i]``'s shape with the leading axes of ``emb`` in front),
    the number of masked samples and ``sum_{u in mask} CE_u``. For a 2-D ``emb`` the count
    is an ``int`` and the loss a ``float``; with leading axes both are arrays of the
    leading shape (one value per slice). All three are additive over disjoint sets of
    samples. Unmasked samples contribute exact zeros.
    """
    E = check_embeddings("emb", emb)
    p64, _, _, K = check_params("params", params, E.shape[-1])
    y = check_labels("labels", labels, E.shape[:-1], K)
    m = check_mask("mask", mask, E.shape[:-1])
    pre, hid, Z = forward(p64, E)
    logq = log_softmax(Z)
    mf = m.astype(np.float64)
    loss = -(np.take_along_axis(logq, y[..., None], -1)[..., 0] * mf).sum(axis=-1)
    dZ = _ce_logit_grad(logq, y) * mf[..., None]
    grads = logit_param_grad_sums(p64, E, pre, hid, dZ)
    count = m.sum(axis=-1)
    if E.ndim == 2:
        return grads, int(count), float(loss)
    return grads, count.astype(np.int64), loss


def ce_input_grads(params, emb, labels) -> np.ndarray:
    """Per-sample ``d CE_u / d e_u``, shape ``(..., n, d)`` (float64).

    Pass ``emb[:, None, :]`` (one sample per slice) when row ``u``'s result must not depend
    on the other rows even through the BLAS kernel (a per-user hook in a cohort step).
    """
    E = check_embeddings("emb", emb)
    p64, _, _, K = check_params("params", params, E.shape[-1])
    y = check_labels("labels", labels, E.shape[:-1], K)
    pre, _, Z = forward(p64, E)
    return logit_input_grad(p64, pre, _ce_logit_grad(log_softmax(Z), y))


def classifier_step(
    params, grad_sums, count: int, state: AdamState | None, lr: float
) -> tuple[list[np.ndarray], AdamState]:
    """Server side of one classifier update: :func:`fedrec.optim.adam_step` on
    ``grad_sums / count`` (the gradient of the mean CE).

    ``count == 0`` (no consenting user) leaves params and state unchanged. (:mod:`fedrec.optim`
    is imported here, on first use: it imports torch for its torch front ends, and this
    module stays numpy-only at import.)
    """
    from fedrec.optim import AdamState, adam_step

    if state is None:
        state = AdamState.zeros(params)
    if count <= 0:
        return [np.asarray(p) for p in params], state
    return adam_step(
        params, [np.asarray(g, dtype=np.float64) / count for g in grad_sums], state, lr
    )
