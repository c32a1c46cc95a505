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
Per attribute ``t``: ``U_t <- U0``, then ``steps`` (default 200 [X]; fewer after the early
stop below) outer iterations of

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

Early stop of Step 1 (:func:`calibration_plateau`) [X]
------------------------------------------------------
A calibration stops after the first embedding step at which its vCLUB estimate
(``history["mi"]``, the mean of the consenting users' terms, which the server already
sums) has passed its peak and the best value of the last ``patience`` steps is not below
the best one between the peak and them by more than ``plateau_tol`` times the peak value
(defaults ``patience = 25`` steps, ``plateau_tol = 0.01``; ``patience = 0``: always
``steps`` steps). Why: the in-sample estimate is a race between the estimator (whose
refits raise it) and the embedding steps (which lower it). Before its peak the estimator
is still catching up (on planted data the estimate first rises for ~20 steps: a rule that
ignored the peak stopped before any unlearning); once the descent flattens the
embeddings chase the sample rather than the attribute, which is what flips held-out
attackers (README, "Held-out attackers below 0.5"). Measured on ML-100K with the
selection seeds 3 and 4 (``experiments/lego/select_defaults.py``, eps 0.5, not a
reported seed): each single calibration's own-attribute symmetric AUC (MLP and
logistic regression) is lower with the stop than after 200 steps in 6 of 6 cases (e.g.
gender, seed 4: 0.524 / 0.507 after 38 steps vs 0.644 / 0.575 after 200), and the
balanced combination's worst attribute too (0.579 vs 0.585 and 0.602). The rule is the
same in every request (full or dynamic), so it changes the schedule of both; it stops
attributes independently (in a federated request the stopped ones leave the messages).

Step 2: Flexible Combination (eq. 12-13)
----------------------------------------
``alpha = softmax(alpha_tilde)``, ``U(alpha) = sum_t alpha_t U_t*`` (row-wise, so every
client mixes its own rows, :func:`mix`). All balls are convex and alpha is on the
simplex, hence ``||U(alpha)_u - e_u^0|| <= eps_u`` for every row. Starting from
``alpha_tilde = 0`` (uniform) [reference §1.6], up to ``steps`` (default 50 [X])
iterations of

1. ``n_phi`` classifier updates of **every** per-attribute estimator ``q_phi_t`` on
   ``(U(alpha), A_t)`` (fresh estimators, seeded per attribute, plus ``warmup_phi``
   updates before the first alpha step) [X];
2. :func:`combine_grad`: the gradient w.r.t. ``alpha_tilde`` of
   ``J = sum_t w_t sum_{u in mask_t} m_{t,u}(U(alpha)_u)`` with ``w_t = c_t / count_t``
   broadcast by the server (:func:`balance_weights`), i.e. ``J = sum_t c_t Ibar_t`` with
   ``Ibar_t = I_prior(U(alpha); A_t)`` the per-attribute mean; the server applies one
   Adam step on ``alpha_tilde`` (``lr = 0.03`` [X], its own :class:`~fedrec.optim.AdamState`);
3. optional early stop (:func:`alpha_converged`): no alpha moved by ``tol`` or more over
   the last ``window`` steps (default ``tol = 0``: off [X]).

The last iterate is returned. With one attribute the combination is ``U_1*`` (no steps).

Balancing the attributes (``balance``; federated ``combine-balance``)
----------------------------------------------------------------------
The paper's eq. 12 minimises the **sum** of the attributes' MI. With in-sample vCLUB
estimates on different scales the sum is dominated by the attribute with the largest
estimate (occupation, 21 classes: ``Ibar`` 0.63 at ``U0`` on ML-100K seed 3 against
gender's 0.38, while the attackers read gender best: AUC 0.73 against 0.55); in the
seed-0 run of the previous release Step 2 gave alpha 0.62 to occupation and 0.045 to
gender, which kept its signal (attacker AUC 0.63). The options
change ``J`` (and nothing else; the per-attribute ``Ibar_t`` are the same sums):

- ``"sum"`` (the paper's): ``J = sum_t Ibar_t`` (``c_t = 1``).
- ``"normalized"`` (**default**): ``J = sum_t Ibar_t / s_t`` (``c_t = 1 / s_t``) with the
  scale ``s_t = H(p_t)`` (:func:`attribute_scale`), the entropy of the attribute's prior,
  i.e. each term is an estimate of ``I(U; A_t) / H(A_t)`` (the uncertainty coefficient,
  in ``[0, 1]``: the share of the attribute that the embeddings reveal). The server
  has ``p_t`` from the summed label counts, so ``s_t`` costs no message and does not
  depend on the request history (a dynamic request solves the same ``J`` as a full
  one). Measured alternatives (selection seeds 3 and 4, worst attribute's symmetric
  AUC over the MLP and logistic-regression attackers, eps 0.5): ``s_t`` = the Step-1
  estimate at ``U0`` was worse than ``H(p_t)`` in 4 of 4 runs (e.g. 0.645 vs 0.579):
  its ordering (age 0.86 > occupation 0.63 > gender 0.38) is not the attackers' (gender
  > age > occupation) while ``Ibar_t(U0) / H(p_t)`` (0.62, 0.50, 0.24) is; ``log K_t``
  behaved like ``H(p_t)`` (0.584 vs 0.585).
- ``"minmax"``: the worst attribute first. Step ``s`` uses ``c_t = pi_t / s_t`` with
  ``pi = softmax(r^{(s-1)} / temperature)`` and ``r^{(s-1)}_t = Ibar_t / s_t`` the
  normalised terms measured at the previous step (uniform ``pi`` at the first step):
  with ``r`` at the current point this is the gradient of the smooth maximum
  ``temperature * log sum_t exp(r_t / temperature)`` (``temperature = 0.1`` [X]; as it
  goes to 0, the subgradient of the largest term), and ``J`` reported is that smooth
  maximum. The weights lag one step because the server learns ``Ibar_t`` from the same
  message that carries the gradient sums (a primal-dual scheme; the message format
  and what leaves a client are those of ``"sum"``).

Default by measurement (selection seeds 3 and 4, ``experiments/lego/select_defaults.py``;
never the reported seeds 0-2): both balanced objectives beat ``"sum"`` in every run
(worst attribute 0.553-0.613 vs 0.644-0.679); with the Step-1 early stop (the default)
``"normalized"`` beat ``"minmax"`` on both seeds (0.579 / 0.579 vs 0.613 / 0.584), without
it ``"minmax"`` was better (0.553 / 0.586 vs 0.585 / 0.602), so the default is
``"normalized"``. The differences between the balanced options are within the
attackers' fold-to-fold spread (±0.03).

The prior-form vCLUB term is *linear in the logits* (``m_u = z_u[a_u] - prior . z_u``,
the log-partition cancels since the prior sums to 1), so for fixed estimators ``J`` is
nearly piecewise linear in ``alpha`` and pushes alpha towards a vertex; the estimators
must keep up with alpha for the step to follow ``max_phi J`` (Danskin), hence the small
default ``lr``. A convex combination keeps ``(1 - alpha_t)`` of the information that the
other calibrations did not remove: Step 2 trades the attributes off, it does not remove
all of them at once. ``history["mi"]`` holds in-sample vCLUB estimates of an estimator
trained on the same users: a diagnostic, not bounded by ``log K``. (Measurements:
``experiments/lego``.)

Dynamic requests (:class:`Lego`)
--------------------------------
``request({attr: labels})`` / ``add(attr)`` runs Step 1 for the new attributes only
and re-solves Step 2 over all stored calibrations; ``withdraw(attr)`` drops its
calibration and re-solves Step 2. Stored calibrations are never recomputed ("LEGO
bricks"); all seeds are derived from ``(seed, attribute name)`` (:func:`attr_seed`),
so a brick is the same whichever request computed it.

**Warm start of Step 2** (``warm_steps``, federated ``warm-combine-steps``; default 10
[X], one fifth of the cold budget): when the previous request ran Step 2 (two or more
attributes), the next one starts from it: ``alpha_tilde`` of the surviving attributes,
a new attribute's logit at the **mean of the previous logits** (:func:`initial_alpha_tilde`:
it joins with a weight comparable to the others', without presuming the outcome), the
previous estimators with their Adam states (they keep training; only a new attribute's
estimator is fresh and gets the ``warmup_phi`` updates, in messages that carry only it),
a fresh Adam state for ``alpha_tilde``, and ``warm_steps`` alpha steps (and the early stop,
if on). The objective ``J`` is the same as a full request's. **Trade-off:** the result
is no longer "a sequence of requests == a fresh request with the surviving attributes"
bit for bit (it holds with ``warm_steps = 0``, every Step 2 from scratch, the previous
behaviour). What holds instead (``tests/test_lego_math.py``): the warm add starts at the
previous solution and reaches the full request's refitted objective within 1%
(alpha itself is not identified: the objective is flat along much of the simplex);
on ML-100K (selection seeds) the warm add's worst-attribute AUC was within 0.035 of the
cold one's for 5, 10 and 25 steps. Per request, :attr:`Lego.timings` logs wall times,
steps and the messages the federated schedule needs (the strategy logs the same counts
and the upload).

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
    "BALANCES",
    "CalibrationResult",
    "CombinationResult",
    "EmbAdamState",
    "Lego",
    "attr_seed",
    "alpha_converged",
    "attribute_prior",
    "attribute_scale",
    "balance_weights",
    "balanced_objective",
    "calibrate",
    "calibration_plateau",
    "calibration_schedule",
    "calibration_step",
    "classifier_grad_sums",
    "classifier_init",
    "classifier_step",
    "combine",
    "combine_grad",
    "combine_messages",
    "embedding_lr",
    "entropy",
    "eps_rows",
    "gaussian_noise",
    "initial_alpha_tilde",
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

DEFAULT_CALIBRATE: dict[str, Any] = {  # [X] defaults of calibrate(); the paper's are unpublished
    "steps": 200,
    "n_phi": 5,
    "warmup_phi": 100,
    "lr_phi": 1e-3,
    "lr_emb": 1e-2,
    "lr_relative": True,
    "hidden": DEFAULT_HIDDEN,
    "patience": 25,
    "plateau_tol": 0.01,
}
DEFAULT_COMBINE: dict[str, Any] = {  # [X] defaults of combine()
    "steps": 50,
    "lr": 0.03,
    "n_phi": 5,
    "warmup_phi": 100,
    "lr_phi": 1e-3,
    "hidden": DEFAULT_HIDDEN,
    "balance": "normalized",
    "temperature": 0.1,
    "tol": 0.0,
    "window": 5,
}
#: [X] Step-2 steps of a warm-started (dynamic) request; 0 = Step 2 restarts from scratch.
DEFAULT_WARM_STEPS = 10
#: The Step-2 objectives (module docstring, "Balancing the attributes").
BALANCES = ("sum", "normalized", "minmax")
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


def calibration_plateau(mi: Sequence[float], patience: int, tol: float = 0.01) -> bool:
    """Early stop of Step 1 (module docstring, "Early stop of Step 1"): ``True`` when the
    vCLUB estimate has passed its peak and the best value of the last ``patience`` steps
    is not below the best one between the peak and them by more than ``tol`` times the
    peak value. ``mi`` is the history of one calibration (one value per embedding step,
    mean over the consenting users); ``patience = 0`` never stops."""
    if patience <= 0 or len(mi) <= patience:
        return False
    peak = int(np.argmax(mi))
    if len(mi) - peak <= patience:
        return False
    before, recent = min(mi[peak:-patience]), min(mi[-patience:])
    return bool(recent > before - tol * abs(mi[peak]))


def calibration_schedule(steps: int, n_phi: int, warmup_phi: int) -> list[tuple[bool, bool]]:
    """Messages ``(step, fit)`` of one federated calibration of ``steps`` embedding steps.

    The driver's operations ``warmup x fit, steps x (n_phi x fit, step)`` with every
    ``step`` merged into the following ``fit`` and the fits after the last step dropped
    (they change only the discarded estimator). A calibration stopped early after step
    ``s`` sends the first ``len(calibration_schedule(s, ...))`` messages of the full one.
    """
    ops = ["fit"] * warmup_phi + (["fit"] * n_phi + ["step"]) * steps
    while ops and ops[-1] == "fit":
        ops.pop()
    msgs, i = [], 0
    while i < len(ops):
        if ops[i] == "step":
            merged = i + 1 < len(ops) and ops[i + 1] == "fit"
            msgs.append((True, merged))
            i += 2 if merged else 1
        else:
            msgs.append((False, True))
            i += 1
    return msgs


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


def entropy(prior) -> float:
    """Entropy ``H(p) = -sum_a p_a log p_a`` (nats) of a probability vector."""
    p = np.asarray(prior, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def attribute_scale(prior) -> float:
    """The scale ``s_t`` of attribute ``t``'s term in the balanced Step-2 objectives: the
    entropy ``H(p_t)`` of its prior (the largest value ``I(U; A_t)`` can take; module
    docstring, "Balancing the attributes"), floored at the smallest positive float."""
    return max(entropy(prior), _TINY)


def _check_balance(balance) -> str:
    if balance not in BALANCES:
        raise ConfigError(f"balance must be one of {', '.join(BALANCES)}; got {balance!r}")
    return balance


def balance_weights(
    scales, balance: str = "sum", temperature: float = 0.1, previous=None
) -> np.ndarray:
    """Coefficients ``c_t`` of one Step-2 gradient: ``J = sum_t c_t Ibar_t`` (``Ibar_t`` the
    mean vCLUB term of attribute ``t``; the clients get ``weights = c_t / count_t``).

    ``"sum"``: ``c_t = 1``. ``"normalized"``: ``c_t = 1 / s_t`` (``scales``). ``"minmax"``:
    ``c_t = pi_t / s_t`` with ``pi = softmax(previous / temperature)``, ``previous`` the
    normalised terms ``r_t = Ibar_t / s_t`` of the previous alpha step (uniform ``pi``
    when ``None``); with ``previous`` at the current point this is the gradient of
    ``temperature * log sum_t exp(r_t / temperature)``.
    """
    _check_balance(balance)
    s = np.asarray(scales, dtype=np.float64)
    if s.ndim != 1 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ConfigError(f"scales must be a finite positive (k,) array, got {scales!r}")
    if balance == "sum":
        return np.ones(len(s))
    if balance == "normalized":
        return 1.0 / s
    temperature = _positive("temperature", temperature)
    if previous is None:
        pi = np.full(len(s), 1.0 / len(s))
    else:
        r = np.asarray(previous, dtype=np.float64)
        if r.shape != s.shape or not np.all(np.isfinite(r)):
            raise ConfigError(f"previous must be a finite array of shape {s.shape}")
        pi = softmax(r / temperature)
    return pi / s


def balanced_objective(means, scales, balance: str = "sum", temperature: float = 0.1) -> float:
    """The value of the Step-2 objective ``J`` at per-attribute mean terms ``means``:
    ``sum_t Ibar_t`` (``"sum"``), ``sum_t Ibar_t / s_t`` (``"normalized"``) or
    ``temperature * log sum_t exp(Ibar_t / (s_t temperature))`` (``"minmax"``)."""
    _check_balance(balance)
    m = np.asarray(means, dtype=np.float64)
    if balance == "sum":
        return float(m.sum())
    r = m / np.asarray(scales, dtype=np.float64)
    if balance == "normalized":
        return float(r.sum())
    z = r / _positive("temperature", temperature)
    return float(temperature * (z.max() + np.log(np.exp(z - z.max()).sum())))


# ------------------------------------------------------------------ drivers
def attr_seed(seed: int, attr: str) -> int:
    """A seed derived from ``(seed, attribute name)`` only (independent of request order)."""
    return int((int(seed) * 1_000_003 + zlib.crc32(str(attr).encode())) % (2**31))


@dataclass
class CalibrationResult:
    """Output of :func:`calibrate` for one attribute.

    ``U`` (n, d) float64 calibrated embeddings; ``params`` the final classifier
    ``q_phi_t``; ``history`` with ``"mi"`` (mean prior-form vCLUB of the masked users
    before each embedding step; its length is the number of steps run, fewer than
    ``steps`` after an early stop) and ``"ce"`` (mean CE of every classifier update);
    ``prior`` (K,), ``eps`` (n,) the absolute radii used, ``seconds`` the wall time.
    """

    U: np.ndarray
    params: list[np.ndarray]
    history: dict[str, list[float]]
    prior: np.ndarray = field(default_factory=lambda: np.zeros(0))
    eps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    seconds: float = 0.0

    @property
    def steps_run(self) -> int:
        """Embedding steps taken (``steps``, or fewer after an early stop)."""
        return len(self.history.get("mi", []))

    @property
    def scale(self) -> float:
        """``s_t`` of the balanced Step-2 objectives (:func:`attribute_scale`)."""
        return attribute_scale(self.prior)


@dataclass
class CombinationResult:
    """Output of :func:`combine`: ``alpha`` per attribute, ``U = U(alpha)`` (n, d), ``history``
    (``"objective"``: ``J`` per alpha step, ``"mi"``: per-attribute mean vCLUB terms,
    ``"alpha"``: alpha before each step, ``"weights"``: the coefficients ``c_t`` of each
    step), final ``alpha_tilde``, the estimators ``classifiers`` and their Adam states
    ``classifier_states`` (empty when no alpha step ran: nothing to warm-start from),
    ``scales`` (``s_t``), ``steps_run`` (alpha
    steps taken), ``warm`` (whether some estimators were warm-started), ``seconds``."""

    alpha: dict[str, float]
    U: np.ndarray
    history: dict[str, list]
    alpha_tilde: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classifiers: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: float = 0.0
    classifier_states: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    steps_run: int = 0
    warm: bool = False


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
    patience: int = DEFAULT_CALIBRATE["patience"],
    plateau_tol: float = DEFAULT_CALIBRATE["plateau_tol"],
    seed: int = 0,
    prior=None,
    num_classes: int | None = None,
) -> CalibrationResult:
    """Step 1 (Embedding Calibration) for one attribute, centralized, full batch.

    Loop (exactly the federated round sequence): ``warmup_phi`` classifier updates, then
    up to ``steps`` times [``n_phi`` classifier updates (:func:`classifier_grad_sums` +
    :func:`classifier_step`), one :func:`calibration_step` of every row], stopping after
    the first step at which :func:`calibration_plateau` (``patience``, ``plateau_tol``;
    ``patience = 0``: never) holds. ``eps`` and ``relative`` as in :func:`eps_rows`;
    ``lr_relative`` as in the module docstring; ``prior`` defaults to the empirical
    distribution over ``mask`` (:func:`attribute_prior`); ``num_classes`` defaults to
    ``len(prior)`` or ``max(labels) + 1``.
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
    patience = _count("patience", patience, 0)
    plateau_tol = _nonneg("plateau_tol", plateau_tol)
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
        if calibration_plateau(hist["mi"], patience, plateau_tol):
            break
    return CalibrationResult(U, params, hist, p, eps_r, time.perf_counter() - start)


def _nonneg(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if not np.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def initial_alpha_tilde(names: Sequence[str], previous: Mapping[str, float] | None) -> np.ndarray:
    """The starting ``alpha_tilde`` of Step 2 over ``names``: ``previous[t]`` where given
    (a warm start), the mean of the given ones for the others (a new attribute starts at
    the previous solution's mean logit), zeros when none is given (uniform alpha)."""
    prev = {} if previous is None else {t: float(v) for t, v in previous.items() if t in names}
    if not prev:
        return np.zeros(len(names))
    mean = float(np.mean(list(prev.values())))
    return np.array([prev.get(t, mean) for t in names], dtype=np.float64)


def alpha_converged(alphas: Sequence[Sequence[float]], tol: float, window: int) -> bool:
    """Early stop of Step 2: ``True`` when no alpha moved by ``tol`` or more over the last
    ``window`` alpha steps (``alphas``: alpha before the first step, then after each step;
    ``tol = 0`` never stops)."""
    if tol <= 0 or len(alphas) <= window:
        return False
    return bool(np.max(np.abs(np.asarray(alphas[-1]) - np.asarray(alphas[-1 - window]))) < tol)


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
    balance: str = DEFAULT_COMBINE["balance"],
    temperature: float = DEFAULT_COMBINE["temperature"],
    tol: float = DEFAULT_COMBINE["tol"],
    window: int = DEFAULT_COMBINE["window"],
    seed: int = 0,
    priors: Mapping[str, Any] | None = None,
    num_classes: Mapping[str, int] | None = None,
    scales: Mapping[str, float] | None = None,
    classifiers: Mapping[str, Sequence[np.ndarray]] | None = None,
    classifier_states: Mapping[str, Any] | None = None,
    alpha_tilde: Mapping[str, float] | None = None,
) -> CombinationResult:
    """Step 2 (Flexible Combination), centralized, full batch.

    ``calibrated`` maps every attribute to its ``(n, d)`` calibration or to its
    :class:`CalibrationResult` (which also gives its prior and its scale ``s_t``, see
    :func:`attribute_scale`); the order fixes the order of ``alpha``. ``labels`` (and the
    optional ``masks``, ``priors``, ``num_classes``, ``scales``) are keyed by attribute.
    ``balance`` (``"sum"``, ``"normalized"``, ``"minmax"``; the last two need a scale per
    attribute) and ``temperature`` choose the objective ``J`` (module docstring).

    Warm start (dynamic requests): ``classifiers`` / ``classifier_states`` may hold the
    estimators (and their Adam states) of *some* attributes; those are warm and skip the
    warm-up, the others start from ``classifier_init(..., seed=attr_seed(seed, "combine:"
    + t))`` with ``warmup_phi`` updates. ``alpha_tilde`` may give starting logits of some
    attributes (:func:`initial_alpha_tilde`). Loop: up to ``steps`` times [(first step
    only) ``warmup_phi`` updates of every cold estimator on ``U(alpha)``; ``n_phi``
    updates of every estimator; one :func:`combine_grad` with ``weights = c_t /
    count_t`` (:func:`balance_weights`); one server Adam step on ``alpha_tilde``],
    stopping early when :func:`alpha_converged` (``tol``, ``window``) holds. Returns the
    last iterate.
    """
    start = time.perf_counter()
    if not isinstance(calibrated, Mapping) or len(calibrated) == 0:
        raise ConfigError("calibrated must be a non-empty mapping {attribute: (n, d) matrix}")
    names = list(calibrated)
    results = {t: c for t, c in calibrated.items() if isinstance(c, CalibrationResult)}
    S = _stack([results[t].U if t in results else calibrated[t] for t in names])
    if S.ndim != 3:
        raise ConfigError(f"calibrated must hold 2-D (n, d) matrices, got shape {S.shape[1:]}")
    k, n, d = S.shape
    for name, mp in (
        ("labels", labels),
        ("masks", masks),
        ("priors", priors),
        ("num_classes", num_classes),
        ("scales", scales),
    ):
        if mp is None and name != "labels":
            continue
        if not isinstance(mp, Mapping) or any(t not in mp for t in names):
            raise ConfigError(f"{name} must be a mapping with an entry for every attribute {names}")
    for name, mp in (
        ("classifiers", classifiers),
        ("classifier_states", classifier_states),
        ("alpha_tilde", alpha_tilde),
    ):
        if mp is not None and (not isinstance(mp, Mapping) or any(t not in names for t in mp)):
            raise ConfigError(f"{name} must be a mapping over (some of) the attributes {names}")
    steps = _count("steps", steps, 0)
    n_phi = _count("n_phi", n_phi, 0)
    warmup_phi = _count("warmup_phi", warmup_phi, 0)
    window = _count("window", window, 1)
    tol = _nonneg("tol", tol)
    lr = _positive("lr", lr)
    lr_phi = _positive("lr_phi", lr_phi)
    balance = _check_balance(balance)
    temperature = _positive("temperature", temperature)
    ys, ms, ps, params = [], [], [], []
    inv = np.zeros(k)
    states: list[AdamState | None] = []
    warm = [classifiers is not None and t in classifiers for t in names]
    for i, t in enumerate(names):
        pr = priors[t] if priors is not None else (results[t].prior if t in results else None)
        K = _num_classes(
            f"labels[{t!r}]", labels[t], pr, None if num_classes is None else num_classes[t]
        )
        y = _labels(f"labels[{t!r}]", labels[t], (n,), K)
        m = _mask(f"masks[{t!r}]", None if masks is None else masks[t], (n,))
        ps.append(attribute_prior(y, K, m) if pr is None else _prior(f"priors[{t!r}]", pr, K))
        if warm[i]:
            assert classifiers is not None  # warm[i] implies it
            _, _, _, K0 = _params(f"classifiers[{t!r}]", classifiers[t], d)
            if K0 != K:
                raise ConfigError(f"classifiers[{t!r}] has {K0} classes, labels need {K}")
            params.append([np.asarray(a) for a in classifiers[t]])
            states.append(None if classifier_states is None else classifier_states.get(t))
        else:
            params.append(classifier_init(d, K, hidden, attr_seed(seed, "combine:" + t)))
            states.append(None)
        ys.append(y)
        ms.append(m)
        inv[i] = 1.0 / max(int(m.sum()), 1)
    if scales is not None:
        sc = np.array([float(scales[t]) for t in names])
        if not np.all(np.isfinite(sc)) or np.any(sc <= 0):
            raise ConfigError(f"scales must be finite and > 0, got {dict(zip(names, sc))}")
    else:
        sc = np.array([attribute_scale(p) for p in ps])
    at = initial_alpha_tilde(names, alpha_tilde)
    hist: dict[str, list] = {"objective": [], "mi": [], "alpha": [], "weights": []}
    steps_run = 0
    if k > 1:
        from fedrec.optim import adam_step

        alpha_state: AdamState | None = None
        previous = None
        alphas = [softmax(at).tolist()]
        for step in range(steps):
            Ua = mix(at, S)
            for i in range(k):
                rounds = n_phi + (warmup_phi if step == 0 and not warm[i] else 0)
                params[i], states[i] = _fit_rounds(
                    params[i], states[i], Ua, ys[i], ms[i], lr_phi, rounds
                )
            c = balance_weights(sc, balance, temperature, previous)
            g, mi = combine_grad(at, S, params, ys, ps, masks=ms, weights=c * inv)
            means = mi * inv
            previous = means / sc
            hist["alpha"].append(alphas[-1])
            hist["mi"].append(means.tolist())
            hist["weights"].append(c.tolist())
            hist["objective"].append(balanced_objective(means, sc, balance, temperature))
            (at,), alpha_state = adam_step([at], [g], alpha_state, lr)
            steps_run += 1
            alphas.append(softmax(at).tolist())
            if alpha_converged(alphas, tol, window):
                break
    alpha = softmax(at)
    U = mix(at, S) if k > 1 else S[0].copy()
    trained = steps_run > 0
    return CombinationResult(
        {t: float(a) for t, a in zip(names, alpha)},
        U,
        hist,
        at,
        dict(zip(names, params)) if trained else {},
        time.perf_counter() - start,
        dict(zip(names, states)) if trained else {},
        dict(zip(names, sc.tolist())),
        steps_run,
        any(warm),
    )


def combine_messages(steps_run: int, n_phi: int, warmup_phi: int, cold: int) -> int:
    """Messages of a federated Step 2 of ``steps_run`` alpha steps with ``cold``
    estimators to warm up (0 when fewer than two attributes are active), plus the
    ``lego_apply`` message."""
    if steps_run == 0:
        return 1
    return (warmup_phi if cold else 0) + steps_run * (n_phi + 1) + 1


_CAL_KEYS = set(DEFAULT_CALIBRATE)
_COMB_KEYS = set(DEFAULT_COMBINE) | {"warm_steps"}


class Lego:
    """Stateful LEGO with dynamic requests (reference §1.5, "LEGO bricks").

    ``Lego(U0, eps=..., relative=True, seed=0, calibrate_options={...}, combine_options={...})``;
    options are keyword arguments of :func:`calibrate` / :func:`combine` (see
    ``DEFAULT_CALIBRATE`` / ``DEFAULT_COMBINE``) plus ``combine_options["warm_steps"]``
    (default ``DEFAULT_WARM_STEPS``; 0 = every request re-solves Step 2 from scratch).

    - ``request({attr: labels, ...}, masks=None)``: one request unlearning more
      attributes: Step 1 for the new ones only (seed ``attr_seed(seed, attr)``), then
      Step 2 once; ``add(attr, labels, mask=None)`` is the one-attribute request.
    - ``withdraw(attr)``: drops that calibration and re-solves Step 2.
    - Step 2 warm-starts from the previous combination when it ran (two or more
      attributes before): previous ``alpha_tilde`` (a new attribute at the mean logit),
      previous estimators and Adam states, ``warm_steps`` alpha steps; only new
      estimators get the warm-up (module docstring, "Dynamic requests").
    - ``embeddings()`` is ``U(alpha)`` (``U0`` when no attribute is active).

    Attributes: ``calibrations`` (``{attr: CalibrationResult}``, never recomputed),
    ``combination`` (the last :class:`CombinationResult`, ``None`` when empty),
    ``calibrate_calls`` (Step-1 runs so far), ``timings`` (one dict per request: ``op``,
    ``attr`` (comma list), ``calibrate_s``, ``combine_s``, ``total_s``,
    ``calibration_steps`` ``{attr: steps run}``, ``combine_steps``, ``warm`` and
    ``messages`` ``{"calibrate", "combine"}``: the messages the federated schedule sends
    for that request); :meth:`cost_summary` compares the last request with a full run.
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
        comb = self._options("combine_options", combine_options, _COMB_KEYS)
        self.warm_steps = _count("warm_steps", comb.pop("warm_steps", DEFAULT_WARM_STEPS), 0)
        self.combine_options = comb
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

    def _recombine(self) -> tuple[float, int, int]:
        """Step 2 over the active attributes: ``(seconds, alpha steps, cold estimators)``."""
        start = time.perf_counter()
        if not self.calibrations:
            self.combination = None
            return time.perf_counter() - start, 0, 0
        prev = self.combination
        kw: dict[str, Any] = dict(self.combine_options)
        warm = [t for t in self.calibrations if prev is not None and t in prev.classifiers]
        if warm and self.warm_steps > 0:
            assert prev is not None  # warm implies it
            names = list(prev.alpha)
            kw.update(
                steps=self.warm_steps,
                classifiers={t: prev.classifiers[t] for t in warm},
                classifier_states={t: prev.classifier_states.get(t) for t in warm},
                alpha_tilde={t: float(prev.alpha_tilde[names.index(t)]) for t in warm},
            )
        else:
            warm = []
        self.combination = combine(self.calibrations, self.labels, self.masks, seed=self.seed, **kw)
        k = len(self.calibrations)
        return (
            time.perf_counter() - start,
            self.combination.steps_run,
            (k - len(warm)) if k > 1 else 0,
        )

    def _messages(self, steps_run: dict[str, int], comb_steps: int, cold: int) -> dict[str, int]:
        o = {**DEFAULT_CALIBRATE, **self.calibrate_options}
        c = {**DEFAULT_COMBINE, **self.combine_options}
        cal = 0
        if steps_run:  # the prior message, then the longest calibration's schedule
            cal = 1 + len(
                calibration_schedule(max(steps_run.values()), o["n_phi"], o["warmup_phi"])
            )
        return {
            "calibrate": cal,
            "combine": combine_messages(comb_steps, c["n_phi"], c["warmup_phi"], cold),
        }

    def request(self, labels: Mapping[str, Any], masks: Mapping[str, Any] | None = None) -> Lego:
        """Unlearn more attributes in one request: Step 1 for each of them (independent
        runs, each with its own seed), then Step 2 once over every active attribute."""
        if not isinstance(labels, Mapping) or not labels:
            raise ConfigError("labels must be a non-empty mapping {attribute: labels}")
        n = self.U0.shape[0]
        new = list(labels)
        for attr in new:
            if not isinstance(attr, str) or not attr:
                raise ConfigError(f"attr must be a non-empty string, got {attr!r}")
            if attr in self.calibrations:
                raise ConfigError(f"attr {attr!r} is already unlearned; withdraw it first")
        if masks is not None and (not isinstance(masks, Mapping) or set(masks) - set(new)):
            raise ConfigError(f"masks must be a mapping over (some of) the attributes {new}")
        ms = {a: _mask("mask", None if masks is None else masks.get(a), (n,)) for a in new}
        start = time.perf_counter()
        results = {
            a: calibrate(
                self.U0,
                labels[a],
                ms[a],
                eps=self.eps,
                relative=False,
                seed=attr_seed(self.seed, a),
                **self.calibrate_options,
            )
            for a in new
        }
        cal_s = time.perf_counter() - start
        for a in new:
            self.calibrate_calls += 1
            self.calibrations[a] = results[a]
            self.labels[a] = _labels("labels", labels[a], (n,))
            self.masks[a] = ms[a]
        comb_s, comb_steps, cold = self._recombine()
        steps_run = {a: r.steps_run for a, r in results.items()}
        self._log("add", new, cal_s, comb_s, steps_run, comb_steps, cold)
        return self

    def add(self, attr: str, labels, mask=None) -> Lego:
        """Unlearn one more attribute: Step 1 for ``attr`` only, then Step 2."""
        if not isinstance(attr, str) or not attr:
            raise ConfigError(f"attr must be a non-empty string, got {attr!r}")
        return self.request({attr: labels}, None if mask is None else {attr: mask})

    def withdraw(self, attr: str) -> Lego:
        """Stop unlearning ``attr``: drop its calibration and re-solve Step 2."""
        if attr not in self.calibrations:
            raise ConfigError(f"attr {attr!r} is not unlearned; active: {self.attributes}")
        del self.calibrations[attr], self.labels[attr], self.masks[attr]
        comb_s, comb_steps, cold = self._recombine()
        self._log("withdraw", [attr], 0.0, comb_s, {}, comb_steps, cold)
        return self

    def _log(self, op, attrs, cal_s, comb_s, steps_run, comb_steps, cold) -> None:
        self.timings.append(
            {
                "op": op,
                "attr": ",".join(attrs),
                "calibrate_s": cal_s,
                "combine_s": comb_s,
                "total_s": cal_s + comb_s,
                "calibration_steps": dict(steps_run),
                "combine_steps": comb_steps,
                "warm": bool(self.combination is not None and self.combination.warm),
                "messages": self._messages(steps_run, comb_steps, cold),
            }
        )

    def embeddings(self) -> np.ndarray:
        """The current unlearned user embeddings ``(n, d)`` (a copy)."""
        return self.U0.copy() if self.combination is None else self.combination.U.copy()

    def cost_summary(self) -> dict[str, float]:
        """Last request vs a full run over the active attributes (wall time).

        ``full_s`` = sum of the stored calibrations' wall times + the last combination's
        (a warm one understates a fresh Step 2: compare measured requests for the cost
        table); ``last_s`` = the last request's wall time; ``fraction = last_s / full_s``.
        """
        if not self.timings:
            return {"last_s": 0.0, "full_s": 0.0, "fraction": 0.0}
        last = self.timings[-1]["total_s"]
        full = sum(c.seconds for c in self.calibrations.values()) + (
            self.combination.seconds if self.combination is not None else 0.0
        )
        return {"last_s": last, "full_s": full, "fraction": last / full if full > 0 else 0.0}
