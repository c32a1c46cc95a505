"""LEGO: post-training multi-attribute unlearning of user embeddings (pure maths, no Flower).

Implements LEGO (Yu et al., ACM MM'25, arXiv 2510.20327) as described in
``reference/unlearning_attack.md`` §1: Step 1 *Embedding Calibration* (one run per
sensitive attribute ``t``) and Step 2 *Flexible Combination* of the calibrated matrices,
with dynamic add / withdraw requests. The paper's hyper-parameters are unpublished; every
default below marked **[X]** is our own choice (§1.6).

The maths is written so that a **federated** implementation (user embedding ``e_u``,
its backup ``e_u^0`` and its attributes ``a_u`` never leave client ``u``) computes
exactly the same numbers as the centralized drivers :func:`calibrate` / :func:`combine`:
every per-round quantity is a **sum of per-user terms**. A client evaluates the pure
functions below on its own rows; the server only adds the returned sums. The drivers
are nothing but loops over those functions, so a federated strategy can be checked
against them.

Shapes, dtypes, batch-first
---------------------------
``n`` users, embedding size ``d``, attribute ``t`` with ``K_t`` classes, ``k`` attributes.

- ``U0``, ``emb``, ``emb0``, calibrated matrices: ``(n, d)``, or a stack ``(..., n, d)``
  (a cohort of ``C`` clients with ``n`` users each: ``(C, n, d)``); results are
  **float64** (cast at the model boundary if the recommender stores float32).
- ``labels``: ``(..., n)`` integers in ``[0, K)``; ``mask``: ``(..., n)`` bool; per-row
  ``lr`` / ``eps``: ``(..., n)``; ``prior``: ``(K,)`` (one for everybody).
- Classifier parameters: ``[W1 (h, d), b1 (h,), W2 (K, h), b2 (K,)]`` of **float32**
  arrays, the estimator of :mod:`fedrec.algorithms.estimators` (``classifier_init``,
  ``classifier_grad_sums``, ``classifier_step`` are re-exported here).
- Sums over users (``*_sum``, ``*_sums``) reduce the ``n`` axis and keep the leading
  ones: a float for ``(n, d)``, an array of shape ``...`` for a stack.

Every function runs on a stack slice by slice: products with weights are ``np.matmul``
(one BLAS call per ``(n, d)`` slice), products with a vector (``z . prior``, ``g . alpha``)
are elementwise products and sums over the slice's own axes, the mixture ``U(alpha)``
is summed in attribute order. Hence a client's numbers do not depend on the other
clients of its stack: a cohort of clients on one node computes, bit for bit, what one
node per client computes.

vCLUB (reference §1.2)
----------------------
The variational classifier ``q_phi(a | e) = softmax(MLP(e))_a`` with the MLP
``d -> h -> K`` (ReLU, ``h = 64`` [X]) is fitted by maximum likelihood (eq. 6). With
``log q`` its log-probabilities:

- mini-batch form (eq. 7, :func:`vclub_batch`)::

      I_batch = 1/B sum_i [ log q(a_i|e_i) - 1/B sum_j log q(a_j|e_i) ]

- **prior form** (reference §1.9, :func:`vclub_prior_terms`), the one used everywhere in
  the optimisation::

      I_prior = 1/n sum_u m_u,   m_u = log q(a_u|e_u) - sum_a prior[a] log q(a|e_u)

Since ``1/B sum_j log q(a_j|e_i) = sum_a p_batch[a] log q(a|e_i)`` with ``p_batch`` the
empirical label frequencies of the batch, the two are **identical** when ``prior =
p_batch`` (e.g. the whole set as one batch with the empirical prior) and agree in
expectation for random batches. Why the prior form: the in-batch average couples user
``u`` to the *labels of other users*, which a client cannot see; the prior form needs
only the aggregate attribute distribution, which the server computes once from summed
one-hot counts (:func:`label_counts`, secure-aggregatable) and broadcasts. Each user's
term then depends on ``(e_u, a_u, phi, prior)`` only.

Consent mask
------------
``mask[u]`` marks users who agree to send attribute-dependent aggregates to the server:
only they contribute to the label counts (hence the prior), the classifier gradients,
the combination gradient and the reported MI sums (the others contribute exact zeros).
**Every** user (masked or not) calibrates its own embedding locally with its own label:
that reveals nothing.

Classifier training (federated Adam)
------------------------------------
One classifier update = ``classifier_grad_sums`` on every client (sum over the client's
consenting users of the gradient of the cross-entropy, their count and loss sum), the
server sums them, divides by the total count (the gradient of the mean CE) and applies
one Adam step (``classifier_step``: :func:`fedrec.optim.adam_step`, the formula of
``torch.optim.Adam`` without weight decay / amsgrad; the server keeps the
:class:`~fedrec.optim.AdamState`). Default ``lr_phi = 1e-3`` [X], ``n_phi = 5`` updates
per embedding step [X], plus ``warmup_phi = 100`` updates before the first embedding /
alpha step [X] so that ``q_phi`` is a decent classifier (the condition for vCLUB to be an
upper bound).

Step 1: Embedding Calibration (eq. 8-11)
----------------------------------------
Per attribute ``t``: ``U_t <- U0``, then ``steps`` (default 200 [X]) outer iterations of

1. ``n_phi`` classifier updates on ``(U_t, A_t)`` (consenting users);
2. :func:`calibration_step`: every user takes one step on its own row to lower its
   prior-form term ``m_u`` (``phi`` fixed), then projects it back to its ball.

Optimizer of the embedding step: **per-user Adam** (:func:`fedrec.optim.adam_moments` and
:func:`fedrec.optim.adam_direction` with a per-row step counter). Adam is elementwise, so
per-user Adam on the per-user terms is *exactly* centralized Adam on ``sum_u m_u`` over
the matrix, and it needs no global count or learning-rate scaling; the state
:class:`EmbAdamState` (``m, v`` of shape ``(..., n, d)``, ``t`` of shape ``(..., n)``) is
per row, so client ``u`` stores rows ``u`` (:meth:`EmbAdamState.take` /
:meth:`EmbAdamState.concat`). Note ``d m_u / d logits = onehot(a_u) - prior`` never
vanishes: the push on the embedding only stops because the classifier keeps being
refitted and because of the projection.

Full batch [X]: every user takes part in every classifier update and embedding step
(reference §1.6 suggests mini-batches of 256-1024; a federated run with all clients in
every round is the full-batch case, client sampling would be the mini-batch analogue).

Step size of the embedding step (:func:`embedding_lr`): ``lr`` may be a scalar or a
per-row array. The drivers use ``lr_u = lr_emb * eps_u / sqrt(d)`` (``lr_relative=True``,
default [X]): an Adam step moves a row by about ``lr_emb`` times its own ball radius,
whatever the scale of the embeddings; ``lr_emb = 1e-2`` [X]. With ``lr_relative=False``
``lr_emb`` is the absolute per-coordinate Adam step.

Projection (eq. 11), **per row** (the per-client variant of §1.3, [X])::

    e_u <- e_u^0 + delta_u * min(1, eps_u / ||delta_u||),   delta_u = e_u - e_u^0

eps semantics (:func:`eps_rows`): ``relative=True`` (default [X]) means ``eps_u = eps *
||e_u^0||`` (a fraction of the row's own norm): for a dot-product scorer every score of
user ``u`` then moves by at most ``eps * ||e_u^0|| * ||v_i||``, i.e. the same *relative*
utility budget for every user, and each client computes its radius from its own row
without any global statistic. ``relative=False`` uses ``eps`` as an absolute radius.
Rows with zero norm get radius 0 under the relative rule (they cannot move).

Step 2: Flexible Combination (eq. 12-13)
----------------------------------------
``alpha = softmax(alpha_tilde)``, ``U(alpha) = sum_t alpha_t U_t*`` (row-wise, so every
client mixes its own rows, :func:`mix`). All balls are convex and alpha is on the
simplex, hence ``||U(alpha)_u - e_u^0|| <= eps_u`` for every row. Starting from
``alpha_tilde = 0`` (uniform) [reference §1.6], ``steps`` (default 50 [X]) iterations of

1. ``n_phi`` classifier updates of **every** per-attribute estimator ``q_phi_t`` on
   ``(U(alpha), A_t)`` (fresh estimators, seeded per attribute, plus ``warmup_phi``
   updates before the first alpha step) [X];
2. :func:`combine_grad`: the gradient w.r.t. ``alpha_tilde`` of
   ``J = sum_t w_t sum_{u in mask_t} m_{t,u}(U(alpha)_u)`` with ``w_t = 1 / count_t``
   broadcast by the server, i.e. ``J = sum_t I_prior(U(alpha); A_t)`` (sum over
   attributes of the per-attribute mean); the server applies one Adam step on
   ``alpha_tilde`` (``lr = 0.03`` [X], its own :class:`~fedrec.optim.AdamState`).

The last iterate is returned. With one attribute the combination is ``U_1*`` (no steps).
The prior-form term is *linear in the logits* (``m_u = z_u[a_u] - prior . z_u``, the
log-partition cancels since the prior sums to 1), so for fixed estimators ``J`` is nearly
piecewise linear in ``alpha`` and pushes alpha towards a vertex; the estimators must keep
up with alpha for the step to follow ``max_phi J`` (Danskin), hence the small default
``lr``. A convex combination keeps ``(1 - alpha_t)`` of the information that the other
calibrations did not remove: Step 2 trades the attributes off, it does not remove all of
them at once (vCLUB values of different attributes are on different scales).
``history["mi"]`` holds in-sample vCLUB estimates of an estimator trained on the same
users: a diagnostic, not bounded by ``log K``. (Measurements: ``experiments/lego``.)

Dynamic requests (:class:`Lego`)
--------------------------------
``add(attr)`` runs Step 1 for ``attr`` only and re-solves Step 2 over all stored
calibrations; ``withdraw(attr)`` drops its calibration and re-solves Step 2. Stored
calibrations are never recomputed. All seeds are derived from ``(seed, attribute
name)`` (:func:`attr_seed`), not from the order of requests, so a sequence of requests
gives the same result as a fresh :class:`Lego` with the surviving attributes added in
the same order. Wall times of every operation are kept in ``Lego.timings``.

Baselines: :func:`gaussian_noise` (isotropic noise, for a matched budget use ``sigma_u =
eps_u / sqrt(d)``: expected norm ~ ``eps_u``) and :func:`max_row_shift` /
:func:`row_shifts` for the ball check.

Errors a user can cause raise :class:`fedrec.errors.ConfigError` with a one-line message
naming the argument. :mod:`fedrec.optim` is imported on first use (it imports torch for
its torch front ends; importing this module stays numpy-only).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.algorithms.estimators import (
    DEFAULT_HIDDEN,
    classifier_grad_sums,
    classifier_init,
    classifier_step,
    log_probs,
)
from fedrec.algorithms.estimators import (
    check_count as _count,
)
from fedrec.algorithms.estimators import (
    check_embeddings as _embeddings,
)
from fedrec.algorithms.estimators import (
    check_labels as _labels,
)
from fedrec.algorithms.estimators import (
    check_mask as _mask,
)
from fedrec.algorithms.estimators import (
    check_params as _params,
)
from fedrec.algorithms.estimators import (
    check_positive as _positive,
)
from fedrec.algorithms.estimators import (
    forward as _forward,
)
from fedrec.algorithms.estimators import (
    log_softmax as _log_softmax,
)
from fedrec.algorithms.estimators import (
    logit_input_grad as _logit_input_grad,
)
from fedrec.errors import ConfigError

if TYPE_CHECKING:
    from fedrec.optim import AdamState

__all__ = [
    "CalibrationResult",
    "CombinationResult",
    "EmbAdamState",
    "Lego",
    "attr_seed",
    "attribute_prior",
    "calibrate",
    "calibration_step",
    "classifier_grad_sums",
    "classifier_init",
    "classifier_step",
    "combine",
    "combine_grad",
    "embedding_lr",
    "eps_rows",
    "gaussian_noise",
    "label_counts",
    "log_probs",
    "max_row_shift",
    "mix",
    "project_rows",
    "row_shifts",
    "softmax",
    "vclub_batch",
    "vclub_prior_terms",
]

DEFAULT_CALIBRATE = {  # [X] defaults of calibrate(); the paper's are unpublished
    "steps": 200,
    "n_phi": 5,
    "warmup_phi": 100,
    "lr_phi": 1e-3,
    "lr_emb": 1e-2,
    "lr_relative": True,
    "hidden": DEFAULT_HIDDEN,
}
DEFAULT_COMBINE = {  # [X] defaults of combine()
    "steps": 50,
    "lr": 0.03,
    "n_phi": 5,
    "warmup_phi": 100,
    "lr_phi": 1e-3,
    "hidden": DEFAULT_HIDDEN,
}
_TINY = np.finfo(np.float64).tiny


# ------------------------------------------------------------------ validation helpers
def _rows(name: str, value, shape: tuple[int, ...], *, positive: bool = False) -> np.ndarray:
    """A scalar or per-row ``shape`` (``(..., n)``) non-negative (or positive) float ->
    float64 array of that shape."""
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or an array of shape {shape}") from None
    if a.ndim == 0:
        a = np.full(shape, float(a))
    if a.shape != tuple(shape):
        raise ConfigError(
            f"{name} must be a number or an array of shape {tuple(shape)}, got {a.shape}"
        )
    if not np.all(np.isfinite(a)) or (np.any(a <= 0) if positive else np.any(a < 0)):
        raise ConfigError(f"{name} must be {'> 0' if positive else '>= 0'} and finite")
    return a


def _prior(name: str, prior, num_classes: int) -> np.ndarray:
    try:
        p = np.array(prior, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a probability vector of length {num_classes}") from None
    if p.shape != (num_classes,):
        raise ConfigError(f"{name} must have shape ({num_classes},), got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or abs(p.sum() - 1.0) > 1e-6:
        raise ConfigError(f"{name} must be non-negative and sum to 1")
    return p


def _num_classes(name: str, labels, prior, num_classes) -> int:
    if num_classes is not None:
        return _count("num_classes", num_classes, 2)
    if prior is not None:
        return len(np.atleast_1d(prior))
    lab = np.asarray(labels)
    if lab.size == 0 or not np.issubdtype(lab.dtype, np.number):
        raise ConfigError(f"{name} must be a non-empty array of class indices")
    return max(int(np.max(lab)) + 1, 2)


def _matrix(name: str, x, *, like: np.ndarray | None = None) -> np.ndarray:
    """A 2-D ``(n, d)`` input of a centralized driver (stacks are for the pure steps)."""
    a = _embeddings(name, x, like=like)
    if a.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D (n, d) array, got shape {a.shape}")
    return a


# ------------------------------------------------------------------ eps, projection, baselines
def eps_rows(U0, eps, relative: bool = True) -> np.ndarray:
    """Per-row ball radii ``(..., n)``: ``eps * ||U0[u]||`` (relative) or ``eps`` (absolute).

    ``eps`` is a number or an ``(..., n)`` array, ``>= 0``.
    """
    U0 = _embeddings("U0", U0)
    e = _rows("eps", eps, U0.shape[:-1])
    return e * np.linalg.norm(U0, axis=-1) if relative else e


def embedding_lr(eps_r, lr_emb: float, d: int, relative: bool = True) -> np.ndarray:
    """Per-row step size of the embedding step ``(..., n)``: ``lr_emb * eps_u / sqrt(d)``
    (``relative``) or ``lr_emb``; floored at the smallest positive float (a radius-0 row
    cannot move anyway)."""
    eps_r = np.asarray(eps_r, dtype=np.float64)
    lr = lr_emb * eps_r / np.sqrt(d) if relative else np.full(eps_r.shape, float(lr_emb))
    return np.maximum(lr, _TINY)


def row_shifts(U, U0) -> np.ndarray:
    """``||U[u] - U0[u]||`` per row, shape ``(..., n)``."""
    U0 = _embeddings("U0", U0)
    U = _embeddings("U", U, like=U0)
    return np.linalg.norm(U - U0, axis=-1)


def max_row_shift(U, U0) -> float:
    """The largest row shift ``max_u ||U[u] - U0[u]||``."""
    return float(row_shifts(U, U0).max())


def _project(U: np.ndarray, U0: np.ndarray, r: np.ndarray) -> np.ndarray:
    delta = U - U0
    norm = np.linalg.norm(delta, axis=-1)
    scale = np.where(norm > r, r / np.maximum(norm, _TINY), 1.0)
    return U0 + delta * scale[..., None]


def project_rows(U, U0, eps) -> np.ndarray:
    """Project each row of ``U`` onto the ball of radius ``eps_u`` around ``U0[u]`` (eq. 11)."""
    U0 = _embeddings("U0", U0)
    U = _embeddings("U", U, like=U0)
    return _project(U, U0, _rows("eps", eps, U0.shape[:-1]))


def gaussian_noise(U, sigma, seed: int = 0) -> np.ndarray:
    """Baseline: ``U + sigma_u * N(0, I)`` (``sigma`` a number or ``(n,)``; numpy seed)."""
    U = _matrix("U", U)
    s = _rows("sigma", sigma, U.shape[:-1])
    rng = np.random.default_rng(seed)
    return U + s[:, None] * rng.standard_normal(U.shape)


# ------------------------------------------------------------------ prior
def label_counts(labels, num_classes: int, mask=None) -> np.ndarray:
    """One-hot counts ``(..., K)`` over the masked users of ``labels (..., n)``
    (summable across clients)."""
    K = _count("num_classes", num_classes, 2)
    lab = np.asarray(labels)
    if lab.ndim < 1:
        raise ConfigError(
            f"labels must be a (n,) array (or a stack (..., n)), got shape {lab.shape}"
        )
    y = _labels("labels", lab, lab.shape, K)
    m = _mask("mask", mask, lab.shape)
    return ((y[..., None] == np.arange(K)) & m[..., None]).sum(axis=-2).astype(np.int64)


def attribute_prior(labels, num_classes: int, mask=None) -> np.ndarray:
    """Empirical attribute distribution ``counts / counts.sum()`` over the masked users."""
    c = label_counts(labels, num_classes, mask)
    if c.ndim != 1:
        raise ConfigError(f"labels must be a 1-D (n,) array, got shape {np.shape(labels)}")
    if c.sum() == 0:
        raise ConfigError("mask selects no user: the attribute prior is undefined")
    return c / c.sum()


def _fit_rounds(params, state, emb, labels, mask, lr, rounds: int, losses: list | None = None):
    for _ in range(rounds):
        g, c, loss = classifier_grad_sums(params, emb, labels, mask)
        params, state = classifier_step(params, g, c, state, lr)
        if losses is not None and c:
            losses.append(loss / c)
    return params, state


# ------------------------------------------------------------------ vCLUB estimators
def _prior_dot(Z: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """``Z . prior`` over the last axis, elementwise then summed (no BLAS over the stack)."""
    return (Z * prior).sum(axis=-1)


def _terms_and_input_grad(
    p64: Sequence[np.ndarray], X: np.ndarray, y: np.ndarray, prior: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Prior-form terms ``m_u`` (..., n) and ``d m_u / d e_u`` (..., n, d).

    Because ``sum_a prior[a] = 1`` the log-partition cancels: ``m_u = z_u[a_u] - prior . z_u``
    with ``z_u`` the logits, so ``d m_u / d z_u = onehot(a_u) - prior`` (constant).
    """
    pre, _, Z = _forward(p64, X)
    yy = y[..., None]
    terms = np.take_along_axis(Z, yy, -1)[..., 0] - _prior_dot(Z, prior)
    dZ = -np.broadcast_to(prior, Z.shape).copy()
    np.put_along_axis(dZ, yy, np.take_along_axis(dZ, yy, -1) + 1.0, -1)
    return terms, _logit_input_grad(p64, pre, dZ)


def vclub_prior_terms(params, emb, labels, prior) -> np.ndarray:
    """Prior-form per-user terms ``m_u = log q(a_u|e_u) - sum_a prior[a] log q(a|e_u)``
    ``(..., n)``."""
    E = _embeddings("emb", emb)
    p64, _, _, K = _params("params", params, E.shape[-1])
    y = _labels("labels", labels, E.shape[:-1], K)
    p = _prior("prior", prior, K)
    logq = _log_softmax(_forward(p64, E)[2])
    return np.take_along_axis(logq, y[..., None], -1)[..., 0] - _prior_dot(logq, p)


def vclub_batch(params, emb, labels) -> float:
    """Mini-batch vCLUB (eq. 7) on the batch ``(emb (n, d), labels)``: a float."""
    E = _matrix("emb", emb)
    p64, _, _, K = _params("params", params, E.shape[1])
    y = _labels("labels", labels, E.shape[:-1], K)
    logq = _log_softmax(_forward(p64, E)[2])
    positive = logq[np.arange(len(y)), y]
    cross = logq[:, y].mean(axis=1)  # 1/B sum_j log q(a_j | e_i)
    return float(np.mean(positive - cross))


# ------------------------------------------------------------------ Step 1
@dataclass
class EmbAdamState:
    """Per-row Adam state of the embedding step: ``m, v`` (..., n, d) and step counters
    ``t`` (..., n)."""

    m: np.ndarray
    v: np.ndarray
    t: np.ndarray

    @classmethod
    def zeros(cls, n: int, d: int) -> EmbAdamState:
        return cls(np.zeros((n, d)), np.zeros((n, d)), np.zeros(n, dtype=np.int64))

    def take(self, rows) -> EmbAdamState:
        """The state of a subset of rows (what one client stores)."""
        return EmbAdamState(self.m[rows].copy(), self.v[rows].copy(), self.t[rows].copy())

    @classmethod
    def concat(cls, states: Sequence[EmbAdamState]) -> EmbAdamState:
        return cls(
            np.concatenate([s.m for s in states]),
            np.concatenate([s.v for s in states]),
            np.concatenate([s.t for s in states]),
        )


def calibration_step(
    params, emb, emb0, labels, prior, lr, eps, *, opt_state: EmbAdamState | None = None, mask=None
):
    """One embedding step of Step 1 for the given rows (client side; eq. 10 then eq. 11).

    Every row ``u`` takes one per-user Adam step on ``m_u`` (prior-form vCLUB term, with
    ``params`` fixed), learning rate ``lr`` (number or ``(..., n)``), and is projected onto
    the ball of radius ``eps`` (number or ``(..., n)``, **absolute**; see :func:`eps_rows`)
    around ``emb0[u]``. Row ``u``'s update depends on row ``u``'s data only:

    .. math::
        g_u = \\nabla_{e_u} m_u, \\quad (m, v) \\leftarrow \\mathrm{adam\\_moments}(m, v, g),
        \\quad e_u \\leftarrow \\Pi_{B(e_u^0, \\epsilon_u)}(e_u + \\mathrm{adam\\_direction}
        (m, v, t_u, lr_u))

    ``emb``, ``emb0``: ``(..., n, d)``; ``labels``, ``mask``: ``(..., n)``.
    Returns ``(new_emb (..., n, d) float64, new_opt_state, mi_sum)`` where ``mi_sum`` is
    the sum of ``m_u`` at the *input* embeddings over the rows selected by ``mask``
    (default all): a float for ``(n, d)``, an array ``(...)`` for a stack.
    """
    from fedrec.optim import adam_direction, adam_moments

    E = _embeddings("emb", emb)
    E0 = _embeddings("emb0", emb0, like=E)
    rows = E.shape[:-1]
    d = E.shape[-1]
    p64, _, _, K = _params("params", params, d)
    y = _labels("labels", labels, rows, K)
    p = _prior("prior", prior, K)
    lr_r = _rows("lr", lr, rows, positive=True)
    eps_r = _rows("eps", eps, rows)
    m = _mask("mask", mask, rows)
    if opt_state is None:
        opt_state = EmbAdamState(
            np.zeros(E.shape), np.zeros(E.shape), np.zeros(rows, dtype=np.int64)
        )
    if opt_state.m.shape != E.shape or opt_state.v.shape != E.shape or opt_state.t.shape != rows:
        raise ConfigError(f"opt_state must hold rows of shape {E.shape}")
    terms, g = _terms_and_input_grad(p64, E, y, p)
    mi_sum = np.where(m, terms, 0.0).sum(axis=-1)
    t = opt_state.t + 1
    m1, v1 = adam_moments(opt_state.m, opt_state.v, g)
    new = _project(E + adam_direction(m1, v1, t[..., None], lr_r[..., None]), E0, eps_r)
    return new, EmbAdamState(m1, v1, t), (float(mi_sum) if E.ndim == 2 else mi_sum)


# ------------------------------------------------------------------ Step 2
def softmax(alpha_tilde) -> np.ndarray:
    """``alpha = softmax(alpha_tilde)`` over the last axis (float64)."""
    a = np.asarray(alpha_tilde, dtype=np.float64)
    z = np.exp(a - a.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _stack(calibrated) -> np.ndarray:
    """The calibrated matrices as one ``(k, ..., n, d)`` float64 array."""
    if isinstance(calibrated, Mapping):
        calibrated = list(calibrated.values())
    if len(calibrated) == 0:
        raise ConfigError("calibrated must hold at least one (n, d) matrix")
    first = _embeddings("calibrated[0]", calibrated[0])
    return np.stack(
        [first]
        + [_embeddings(f"calibrated[{i}]", c, like=first) for i, c in enumerate(calibrated[1:], 1)]
    )


def _alpha_tilde(alpha_tilde, k: int) -> np.ndarray:
    a = np.array(alpha_tilde, dtype=np.float64)
    if a.shape != (k,) or not np.all(np.isfinite(a)):
        raise ConfigError(f"alpha_tilde must be a finite array of shape ({k},), got {a.shape}")
    return a


def _mix(alpha: np.ndarray, S: np.ndarray) -> np.ndarray:
    """``sum_t alpha_t S[t]``, summed in attribute order (elementwise, no BLAS)."""
    out = alpha[0] * S[0]
    for a, s in zip(alpha[1:], S[1:]):
        out = out + a * s
    return out


def mix(alpha_tilde, calibrated) -> np.ndarray:
    """``U(alpha) = sum_t softmax(alpha_tilde)_t U_t*`` (row-wise), shape ``(..., n, d)``.

    ``calibrated``: ``k`` matrices ``(..., n, d)`` (a sequence, a mapping, or a stacked
    ``(k, ..., n, d)`` array).
    """
    S = _stack(calibrated)
    return _mix(softmax(_alpha_tilde(alpha_tilde, S.shape[0])), S)


def combine_grad(
    alpha_tilde, calibrated, params, labels, priors, *, masks=None, weights=None
) -> tuple[np.ndarray, np.ndarray]:
    """Client side of one Step-2 update: gradient sums w.r.t. ``alpha_tilde``.

    ``calibrated``, ``params``, ``labels``, ``priors`` (and ``masks``, ``weights``) are
    sequences over the ``k`` attributes (same order as ``alpha_tilde``); calibrated
    matrices ``(..., n, d)``, labels and masks ``(..., n)``. Objective of these rows:
    ``J = sum_t weights[t] * sum_{u in masks[t]} m_{t,u}(U(alpha)_u)`` with ``weights``
    default 1 (the drivers use ``1 / count_t``):

    .. math::
        \\frac{\\partial J}{\\partial \\tilde\\alpha} = \\alpha \\odot (g - \\alpha \\cdot g),
        \\quad g_t = \\sum_u \\langle G_u, U^*_{t,u} \\rangle, \\quad
        G_u = \\sum_t w_t 1[u \\in mask_t] \\nabla_{e} m_{t,u}(U(\\alpha)_u)

    Returns ``(dJ/d alpha_tilde (..., k), mi_sums (..., k))`` with ``mi_sums[t] =
    sum_{u in masks[t]} m_{t,u}`` (unweighted); both are additive over disjoint sets of
    users.
    """
    S = _stack(calibrated)
    k = S.shape[0]
    rows, d = S.shape[1:-1], S.shape[-1]
    a = _alpha_tilde(alpha_tilde, k)
    for name, seq in (("params", params), ("labels", labels), ("priors", priors)):
        if len(seq) != k:
            raise ConfigError(f"{name} must have one entry per attribute ({k}), got {len(seq)}")
    if masks is None:
        masks = [None] * k
    if weights is None:
        weights = np.ones(k)
    if len(masks) != k:
        raise ConfigError(f"masks must have one entry per attribute ({k}), got {len(masks)}")
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (k,) or not np.all(np.isfinite(w)):
        raise ConfigError(f"weights must be a finite array of shape ({k},)")
    alpha = softmax(a)
    Ua = _mix(alpha, S)
    G = np.zeros(S.shape[1:])  # dJ / dU(alpha)
    mi = []
    for t in range(k):
        p64, _, _, K = _params(f"params[{t}]", params[t], d)
        y = _labels(f"labels[{t}]", labels[t], rows, K)
        pr = _prior(f"priors[{t}]", priors[t], K)
        m = _mask(f"masks[{t}]", masks[t], rows)
        terms, gx = _terms_and_input_grad(p64, Ua, y, pr)
        mi.append(np.where(m, terms, 0.0).sum(axis=-1))
        G = G + w[t] * (gx * m[..., None])
    g_alpha = np.stack([(G * s).sum(axis=-1).sum(axis=-1) for s in S], axis=-1)  # dJ / d alpha
    return alpha * (g_alpha - (g_alpha * alpha).sum(axis=-1, keepdims=True)), np.stack(mi, axis=-1)


# ------------------------------------------------------------------ drivers
def attr_seed(seed: int, attr: str) -> int:
    """A seed derived from ``(seed, attribute name)`` only (independent of request order)."""
    return int((int(seed) * 1_000_003 + zlib.crc32(str(attr).encode())) % (2**31))


@dataclass
class CalibrationResult:
    """Output of :func:`calibrate` for one attribute.

    ``U`` (n, d) float64 calibrated embeddings; ``params`` the final classifier
    ``q_phi_t``; ``history`` with ``"mi"`` (mean prior-form vCLUB of the masked users
    before each embedding step) and ``"ce"`` (mean CE of every classifier update);
    ``prior`` (K,), ``eps`` (n,) the absolute radii used, ``seconds`` the wall time.
    """

    U: np.ndarray
    params: list[np.ndarray]
    history: dict[str, list[float]]
    prior: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0


@dataclass
class CombinationResult:
    """Output of :func:`combine`: ``alpha`` per attribute, ``U = U(alpha)`` (n, d), ``history``
    (``"objective"``: ``sum_t`` mean vCLUB per alpha step, ``"mi"``: per-attribute means,
    ``"alpha"``: alpha before each step), final ``alpha_tilde``, ``classifiers``, ``seconds``."""

    alpha: dict[str, float]
    U: np.ndarray
    history: dict[str, list]
    alpha_tilde: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classifiers: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0


def calibrate(
    U0,
    labels,
    mask=None,
    *,
    eps,
    relative: bool = True,
    steps: int = 200,
    n_phi: int = 5,
    warmup_phi: int = 100,
    lr_phi: float = 1e-3,
    lr_emb: float = 1e-2,
    lr_relative: bool = True,
    hidden: int = DEFAULT_HIDDEN,
    seed: int = 0,
    prior=None,
    num_classes: int | None = None,
) -> CalibrationResult:
    """Step 1 (Embedding Calibration) for one attribute, centralized, full batch.

    Loop (exactly the federated round sequence): ``warmup_phi`` classifier updates, then
    ``steps`` times [``n_phi`` classifier updates (:func:`classifier_grad_sums` +
    :func:`classifier_step`), one :func:`calibration_step` of every row]. ``eps`` and
    ``relative`` as in :func:`eps_rows`; ``lr_relative`` as in the module docstring;
    ``prior`` defaults to the empirical distribution over ``mask`` (:func:`attribute_prior`);
    ``num_classes`` defaults to ``len(prior)`` or ``max(labels) + 1``.
    """
    start = time.perf_counter()
    U0 = _matrix("U0", U0)
    n, d = U0.shape
    K = _num_classes("labels", labels, prior, num_classes)
    y = _labels("labels", labels, (n,), K)
    m = _mask("mask", mask, (n,))
    steps = _count("steps", steps, 0)
    n_phi = _count("n_phi", n_phi, 0)
    warmup_phi = _count("warmup_phi", warmup_phi, 0)
    lr_phi = _positive("lr_phi", lr_phi)
    lr_emb = _positive("lr_emb", lr_emb)
    eps_r = eps_rows(U0, eps, relative)
    p = attribute_prior(y, K, m) if prior is None else _prior("prior", prior, K)
    lr_r = embedding_lr(eps_r, lr_emb, d, lr_relative)
    hist: dict[str, list[float]] = {"mi": [], "ce": []}
    params = classifier_init(d, K, hidden, seed)
    state = None
    U = U0.copy()
    emb_state = None
    params, state = _fit_rounds(params, state, U, y, m, lr_phi, warmup_phi, hist["ce"])
    count = int(m.sum())
    for _ in range(steps):
        params, state = _fit_rounds(params, state, U, y, m, lr_phi, n_phi, hist["ce"])
        U, emb_state, mi_sum = calibration_step(
            params, U, U0, y, p, lr_r, eps_r, opt_state=emb_state, mask=m
        )
        hist["mi"].append(mi_sum / max(count, 1))
    return CalibrationResult(U, params, hist, p, eps_r, time.perf_counter() - start)


def combine(
    calibrated: Mapping[str, Any],
    labels: Mapping[str, Any],
    masks: Mapping[str, Any] | None = None,
    *,
    steps: int = 50,
    lr: float = 0.03,
    n_phi: int = 5,
    warmup_phi: int = 100,
    lr_phi: float = 1e-3,
    hidden: int = DEFAULT_HIDDEN,
    seed: int = 0,
    priors: Mapping[str, Any] | None = None,
    num_classes: Mapping[str, int] | None = None,
    classifiers: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> CombinationResult:
    """Step 2 (Flexible Combination), centralized, full batch.

    ``calibrated``, ``labels`` (and optional ``masks``, ``priors``, ``num_classes``,
    ``classifiers`` = warm starts) are keyed by attribute name; the order of
    ``calibrated`` fixes the order of ``alpha``. Estimators start from ``classifiers[t]``
    or ``classifier_init(..., seed=attr_seed(seed, "combine:" + t))``. Loop: ``warmup_phi``
    updates of every estimator on ``U(alpha)``, then ``steps`` times [``n_phi`` updates of
    every estimator on ``U(alpha)``, one :func:`combine_grad` with ``weights = 1/count_t``,
    one server Adam step on ``alpha_tilde``]. Returns the last iterate.
    """
    start = time.perf_counter()
    if not isinstance(calibrated, Mapping) or len(calibrated) == 0:
        raise ConfigError("calibrated must be a non-empty mapping {attribute: (n, d) matrix}")
    names = list(calibrated)
    S = _stack([calibrated[t] for t in names])
    if S.ndim != 3:
        raise ConfigError(f"calibrated must hold 2-D (n, d) matrices, got shape {S.shape[1:]}")
    k, n, d = S.shape
    for name, mp in (
        ("labels", labels),
        ("masks", masks),
        ("priors", priors),
        ("num_classes", num_classes),
        ("classifiers", classifiers),
    ):
        if mp is None and name != "labels":
            continue
        if not isinstance(mp, Mapping) or any(t not in mp for t in names):
            raise ConfigError(f"{name} must be a mapping with an entry for every attribute {names}")
    steps = _count("steps", steps, 0)
    n_phi = _count("n_phi", n_phi, 0)
    warmup_phi = _count("warmup_phi", warmup_phi, 0)
    lr = _positive("lr", lr)
    lr_phi = _positive("lr_phi", lr_phi)
    ys, ms, ps, params, w = [], [], [], [], np.zeros(k)
    states: list[AdamState | None] = []
    for i, t in enumerate(names):
        pr = None if priors is None else priors[t]
        K = _num_classes(
            f"labels[{t!r}]", labels[t], pr, None if num_classes is None else num_classes[t]
        )
        y = _labels(f"labels[{t!r}]", labels[t], (n,), K)
        m = _mask(f"masks[{t!r}]", None if masks is None else masks[t], (n,))
        ps.append(attribute_prior(y, K, m) if pr is None else _prior(f"priors[{t!r}]", pr, K))
        if classifiers is not None:
            _, _, _, K0 = _params(f"classifiers[{t!r}]", classifiers[t], d)
            if K0 != K:
                raise ConfigError(f"classifiers[{t!r}] has {K0} classes, labels need {K}")
            params.append([np.asarray(a) for a in classifiers[t]])
        else:
            params.append(classifier_init(d, K, hidden, attr_seed(seed, "combine:" + t)))
        states.append(None)
        ys.append(y)
        ms.append(m)
        w[i] = 1.0 / max(int(m.sum()), 1)
    alpha_tilde = np.zeros(k)
    hist: dict[str, list] = {"objective": [], "mi": [], "alpha": []}
    if k > 1:
        from fedrec.optim import adam_step

        alpha_state: AdamState | None = None
        for step in range(steps):
            Ua = mix(alpha_tilde, S)
            rounds = n_phi + (warmup_phi if step == 0 else 0)
            for i in range(k):
                params[i], states[i] = _fit_rounds(
                    params[i], states[i], Ua, ys[i], ms[i], lr_phi, rounds
                )
            g, mi = combine_grad(alpha_tilde, S, params, ys, ps, masks=ms, weights=w)
            hist["alpha"].append(softmax(alpha_tilde).tolist())
            hist["mi"].append((mi * w).tolist())
            hist["objective"].append(float((mi * w).sum()))
            (alpha_tilde,), alpha_state = adam_step([alpha_tilde], [g], alpha_state, lr)
    alpha = softmax(alpha_tilde)
    U = mix(alpha_tilde, S) if k > 1 else S[0].copy()
    return CombinationResult(
        {t: float(a) for t, a in zip(names, alpha)},
        U,
        hist,
        alpha_tilde,
        dict(zip(names, params)),
        time.perf_counter() - start,
    )


_CAL_KEYS = {"steps", "n_phi", "warmup_phi", "lr_phi", "lr_emb", "lr_relative", "hidden"}
_COMB_KEYS = {"steps", "lr", "n_phi", "warmup_phi", "lr_phi", "hidden"}


class Lego:
    """Stateful LEGO with dynamic requests (reference §1.5, "LEGO bricks").

    ``Lego(U0, eps=..., relative=True, seed=0, calibrate_options={...}, combine_options={...})``;
    options are keyword arguments of :func:`calibrate` / :func:`combine` (see
    ``DEFAULT_CALIBRATE`` / ``DEFAULT_COMBINE``). ``add(attr, labels, mask=None)`` runs
    Step 1 for ``attr`` only (seed ``attr_seed(seed, attr)``) and re-solves Step 2;
    ``withdraw(attr)`` drops that calibration and re-solves Step 2; ``embeddings()`` is
    ``U(alpha)`` (``U0`` when no attribute is active). Attributes:

    - ``calibrations``: ``{attr: CalibrationResult}`` (never recomputed);
    - ``combination``: the last :class:`CombinationResult` (``None`` when empty);
    - ``calibrate_calls``: number of Step-1 runs so far;
    - ``timings``: one dict per request ``{"op", "attr", "calibrate_s", "combine_s",
      "total_s"}``; :meth:`cost_summary` compares the last request with a full run.
    """

    def __init__(
        self,
        U0,
        *,
        eps,
        relative: bool = True,
        seed: int = 0,
        calibrate_options: Mapping[str, Any] | None = None,
        combine_options: Mapping[str, Any] | None = None,
    ):
        self.U0 = _matrix("U0", U0)
        self.eps = eps_rows(self.U0, eps, relative)
        self.seed = int(seed)
        self.calibrate_options = self._options("calibrate_options", calibrate_options, _CAL_KEYS)
        self.combine_options = self._options("combine_options", combine_options, _COMB_KEYS)
        self.calibrations: dict[str, CalibrationResult] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.masks: dict[str, np.ndarray] = {}
        self.combination: CombinationResult | None = None
        self.calibrate_calls = 0
        self.timings: list[dict[str, Any]] = []

    @staticmethod
    def _options(name: str, opts, allowed: set[str]) -> dict[str, Any]:
        opts = dict(opts or {})
        bad = sorted(set(opts) - allowed)
        if bad:
            raise ConfigError(f"{name} has unknown key(s) {bad}; allowed: {sorted(allowed)}")
        return opts

    @property
    def attributes(self) -> list[str]:
        return list(self.calibrations)

    @property
    def alpha(self) -> dict[str, float]:
        return {} if self.combination is None else dict(self.combination.alpha)

    def _recombine(self) -> float:
        start = time.perf_counter()
        if not self.calibrations:
            self.combination = None
        else:
            self.combination = combine(
                {t: c.U for t, c in self.calibrations.items()},
                self.labels,
                self.masks,
                seed=self.seed,
                priors={t: c.prior for t, c in self.calibrations.items()},
                **self.combine_options,
            )
        return time.perf_counter() - start

    def add(self, attr: str, labels, mask=None) -> Lego:
        """Unlearn one more attribute: Step 1 for ``attr`` only, then Step 2."""
        if not isinstance(attr, str) or not attr:
            raise ConfigError(f"attr must be a non-empty string, got {attr!r}")
        if attr in self.calibrations:
            raise ConfigError(f"attr {attr!r} is already unlearned; withdraw it first")
        n = self.U0.shape[0]
        m = _mask("mask", mask, (n,))
        start = time.perf_counter()
        res = calibrate(
            self.U0,
            labels,
            m,
            eps=self.eps,
            relative=False,
            seed=attr_seed(self.seed, attr),
            **self.calibrate_options,
        )
        cal_s = time.perf_counter() - start
        self.calibrate_calls += 1
        self.calibrations[attr] = res
        self.labels[attr] = _labels("labels", labels, (n,))
        self.masks[attr] = m
        comb_s = self._recombine()
        self.timings.append(
            {
                "op": "add",
                "attr": attr,
                "calibrate_s": cal_s,
                "combine_s": comb_s,
                "total_s": cal_s + comb_s,
            }
        )
        return self

    def withdraw(self, attr: str) -> Lego:
        """Stop unlearning ``attr``: drop its calibration and re-solve Step 2."""
        if attr not in self.calibrations:
            raise ConfigError(f"attr {attr!r} is not unlearned; active: {self.attributes}")
        del self.calibrations[attr], self.labels[attr], self.masks[attr]
        comb_s = self._recombine()
        self.timings.append(
            {
                "op": "withdraw",
                "attr": attr,
                "calibrate_s": 0.0,
                "combine_s": comb_s,
                "total_s": comb_s,
            }
        )
        return self

    def embeddings(self) -> np.ndarray:
        """The current unlearned user embeddings ``(n, d)`` (a copy)."""
        return self.U0.copy() if self.combination is None else self.combination.U.copy()

    def cost_summary(self) -> dict[str, float]:
        """Last request vs a full run over the active attributes.

        ``full_s`` = sum of the stored calibrations' wall times + the last combination's;
        ``last_s`` = the last request's wall time; ``fraction = last_s / full_s``.
        """
        if not self.timings:
            return {"last_s": 0.0, "full_s": 0.0, "fraction": 0.0}
        last = self.timings[-1]["total_s"]
        full = sum(c.seconds for c in self.calibrations.values()) + (
            self.combination.seconds if self.combination is not None else 0.0
        )
        return {"last_s": last, "full_s": full, "fraction": last / full if full > 0 else 0.0}
