r"""Building blocks of UFO (arXiv 2511.18342; Zhang et al. 2025, "UFO: Unfair-to-Fair
Evolving Mitigates Unfairness in LLM-based Recommender Systems via Self-Play Fine-tuning")
and of the baselines it is compared with: the pure math (torch for the losses and the
sampler, numpy for the rest; no flwr import).

**What the paper says.** Item-side unfairness of an LLM recommender comes both from
pre-training and from supervised fine-tuning (SFT), which amplifies it. UFO casts its
mitigation as a two-player game played by one model: the *judger* tells the current
model's (unfair) recommendations from fair targets, the *corrector* moves the model
towards the fair targets while keeping its recommendation quality; alternating the two
roles over self-play iterations removes the unfairness.

**What is reconstructed here** (the paper's exact losses are not all public; these are
the choices of fedrec). The game is SPIN's (Chen et al. 2024, "Self-Play Fine-Tuning
Converts Weak Language Models to Strong Language Models"): at iteration ``t`` the
previous model :math:`\pi_{t}` (the *old* policy) generates negatives
:math:`y^- \sim \pi_t(\cdot \mid x)` (:func:`sample_from_logprobs`), the positives
:math:`y^+` are fair targets drawn from the user's held positives with probabilities
tilted towards under-exposed item groups (:func:`fair_group_weights`,
:func:`sample_fair_targets`), and the new model :math:`\pi_\theta` minimises

.. math::
    \mathcal{L}(\theta) = \frac{1}{\sum_i v_i} \sum_i v_i\, \frac{1}{m} \sum_{j=1}^{m}
    \log\big(1 + \exp(-\beta\, r_{ij})\big),\qquad
    r_{ij} = \big[\log \pi_\theta(y^+_i) - \log \pi_t(y^+_i)\big]
           - \big[\log \pi_\theta(y^-_{ij}) - \log \pi_t(y^-_{ij})\big]

(:func:`spin_loss`; :math:`\log(1+e^{-z})` is ``softplus(-z)``). The judger's score is
the mean margin :math:`\beta\, \bar r` (:func:`judger_margin`); at
:math:`\pi_\theta = \pi_t` every margin is 0 and the loss is exactly :math:`\log 2`: the
judger cannot tell the fair targets from the model's own recommendations, SPIN's fixed
point. :func:`geometric_mixture` interpolates two policies geometrically (e.g. the
current and the pre-trained/reference model when generating negatives).

**Baselines** of the comparison: self-play DPO with a *fixed* reference model
(SPRec-style, :func:`dpo_loss`); post-hoc exposure-constrained re-ranking
(:func:`exposure_rerank`); per-item inverse group-frequency loss re-weighting
(IFairLRS-style, :func:`inverse_frequency_weights`).

References
----------
.. [1] Zhang, J., Li, Y., Feng, X., Ren, Z., Zhang, L. and Chen, C. "UFO: Unfair-to-Fair
    Evolving Mitigates Unfairness in LLM-based Recommender Systems via Self-Play
    Fine-tuning", arXiv 2511.18342, 2025.
.. [2] Chen, Z., Deng, Y., Yuan, H., Ji, K. and Gu, Q. "Self-Play Fine-Tuning Converts
    Weak Language Models to Strong Language Models", ICML 2024.
.. [3] Rafailov, R. et al. "Direct Preference Optimization: Your Language Model is
    Secretly a Reward Model", NeurIPS 2023.
.. [4] Gao, C. et al. "SPRec: Self-Play to Debias LLM-based Recommendation", WWW 2025
    (arXiv 2412.09243).
.. [5] Jiang, M. et al. "Item-side Fairness of Large Language Model-based Recommendation
    System" (IFairLRS), WWW 2024.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.errors import ConfigError

__all__ = [
    "dpo_loss",
    "exposure_rerank",
    "fair_group_weights",
    "geometric_mixture",
    "inverse_frequency_from_counts",
    "inverse_frequency_weights",
    "judger_margin",
    "sample_fair_targets",
    "sample_from_logprobs",
    "spin_loss",
]


# ------------------------------------------------------------------ validation helpers
def _number(
    name: str, value: Any, lo: float, hi: float = np.inf, *, open_lo: bool = False
) -> float:
    """``float(value)`` if it is a real number in ``[lo, hi]`` (``(lo, hi]`` if
    ``open_lo``), else a one-line ConfigError."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)
        ok = np.isfinite(v) and (v > lo if open_lo else v >= lo) and v <= hi
    if not ok:
        lo_s = ("(" if open_lo else "[") + f"{lo:g}"
        hi_s = "inf)" if hi == np.inf else f"{hi:g}]"
        raise ConfigError(f"{name} must be a number in {lo_s}, {hi_s}; got {value!r}")
    return float(value)


def _count(name: str, value: Any, lo: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _array(name: str, value: Any, ndim: int, dtype: Any = np.float64) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be an array, got {type(value).__name__}") from exc
    if arr.ndim != ndim:
        raise ConfigError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if dtype is np.int64:
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise ConfigError(f"{name} must hold integers, got dtype {arr.dtype}")
        return arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise ConfigError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr.astype(dtype)


def _labels(name: str, value: Any, n_groups: int) -> np.ndarray:
    g = _array(name, value, 1, np.int64)
    if g.size and (g.min() < 0 or g.max() >= n_groups):
        raise ConfigError(
            f"{name} must hold group labels in [0, {n_groups}), got range [{g.min()}, {g.max()}]"
        )
    return g


# ------------------------------------------------------------------ policies and losses
def geometric_mixture(logp_cur: torch.Tensor, logp_ref: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""Log-probabilities of the geometric mixture of two categorical policies.

    .. math::
        \pi_{\mathrm{mix}}(y) = \frac{\pi_{\mathrm{cur}}(y)^{\alpha}\,
        \pi_{\mathrm{ref}}(y)^{1-\alpha}}{\sum_{y'} \pi_{\mathrm{cur}}(y')^{\alpha}\,
        \pi_{\mathrm{ref}}(y')^{1-\alpha}},\qquad
        \log \pi_{\mathrm{mix}} = \mathrm{log\_softmax}\big(\alpha \log \pi_{\mathrm{cur}}
        + (1-\alpha) \log \pi_{\mathrm{ref}}\big)

    over the last axis. Both inputs may be logits or log-probabilities: each is first
    normalised with ``log_softmax``. ``alpha = 1`` returns ``log_softmax(logp_cur)`` and
    ``alpha = 0`` ``log_softmax(logp_ref)`` exactly (so ``-inf`` entries of the unused
    policy do not produce ``0 * -inf = nan``).

    Parameters
    ----------
    logp_cur, logp_ref : torch.Tensor (..., V)
        The current and reference policies (same shape).
    alpha : float
        The weight of the current policy, in ``[0, 1]``.

    Returns
    -------
    logp_mix : torch.Tensor (..., V)
        Normalised log-probabilities (``logsumexp`` over the last axis is 0).
    """
    a = _number("alpha", alpha, 0.0, 1.0)
    if logp_cur.shape != logp_ref.shape:
        raise ConfigError(
            f"logp_cur and logp_ref must have the same shape, got {tuple(logp_cur.shape)} "
            f"and {tuple(logp_ref.shape)}"
        )
    cur = F.log_softmax(logp_cur, dim=-1)
    ref = F.log_softmax(logp_ref, dim=-1)
    if a == 1.0:
        return cur
    if a == 0.0:
        return ref
    return F.log_softmax(a * cur + (1.0 - a) * ref, dim=-1)


def _margins(
    logp_pos: torch.Tensor,
    logp_pos_old: torch.Tensor,
    logp_neg: torch.Tensor,
    logp_neg_old: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``beta * (Δpos - Δneg)`` of shape ``(n, m)`` (``m = 1`` for 1-D negatives)."""
    b = _number("beta", beta, 0.0, open_lo=True)
    if logp_pos.shape != logp_pos_old.shape:
        raise ConfigError(
            f"logp_pos and logp_pos_old must have the same shape, got "
            f"{tuple(logp_pos.shape)} and {tuple(logp_pos_old.shape)}"
        )
    if logp_neg.shape != logp_neg_old.shape:
        raise ConfigError(
            f"logp_neg and logp_neg_old must have the same shape, got "
            f"{tuple(logp_neg.shape)} and {tuple(logp_neg_old.shape)}"
        )
    if logp_neg.dim() not in (1, 2) or logp_neg.shape[0] == 0:
        raise ConfigError(
            f"logp_neg must have shape (n,) or (n, m) with n >= 1, got {tuple(logp_neg.shape)}"
        )
    n = logp_neg.shape[0]
    if logp_pos.shape not in (torch.Size([n]), logp_neg.shape):
        raise ConfigError(
            f"logp_pos must have shape ({n},) or {tuple(logp_neg.shape)} (that of logp_neg), "
            f"got {tuple(logp_pos.shape)}"
        )
    d_pos = logp_pos - logp_pos_old
    d_neg = logp_neg - logp_neg_old
    if d_neg.dim() == 1:
        d_neg = d_neg[:, None]
    if d_pos.dim() == 1:
        d_pos = d_pos[:, None]
    return b * (d_pos - d_neg)


def spin_loss(
    logp_pos: torch.Tensor,
    logp_pos_old: torch.Tensor,
    logp_neg: torch.Tensor,
    logp_neg_old: torch.Tensor,
    beta: float = 0.1,
    weights: torch.Tensor | Sequence[float] | np.ndarray | None = None,
) -> torch.Tensor:
    r"""The SPIN self-play loss (logistic loss of the log-ratio margin).

    .. math::
        \mathcal{L} = \frac{\sum_i v_i\, \ell_i}{\sum_i v_i},\qquad
        \ell_i = \frac{1}{m} \sum_{j=1}^{m} \mathrm{softplus}\big(-\beta\, r_{ij}\big),\qquad
        r_{ij} = \big(\log \pi_\theta(y^+_i) - \log \pi_{t}(y^+_i)\big)
               - \big(\log \pi_\theta(y^-_{ij}) - \log \pi_{t}(y^-_{ij})\big)

    with :math:`\mathrm{softplus}(z) = \log(1 + e^z)`, ``v = 1`` unless ``weights`` are
    given. At :math:`\pi_\theta = \pi_t` the loss is exactly :math:`\log 2`; descending it
    raises :math:`\log \pi_\theta(y^+)` and lowers :math:`\log \pi_\theta(y^-)`.

    Parameters
    ----------
    logp_pos, logp_pos_old : torch.Tensor (n,) or (n, m)
        Log-probabilities of the positives under the trained and the old (opponent)
        policy; ``(n, m)`` pairs positive ``(i, j)`` with negative ``(i, j)``.
    logp_neg, logp_neg_old : torch.Tensor (n,) or (n, m)
        The same for the negatives, ``m`` per prompt.
    beta : float
        The inverse temperature, ``> 0``.
    weights : array-like (n,), optional
        Non-negative per-prompt weights with a positive sum.

    Returns
    -------
    loss : torch.Tensor, scalar
    """
    r = _margins(logp_pos, logp_pos_old, logp_neg, logp_neg_old, beta)
    per_prompt = F.softplus(-r).mean(dim=1)
    if weights is None:
        return per_prompt.mean()
    v = torch.as_tensor(weights, dtype=per_prompt.dtype, device=per_prompt.device)
    if v.shape != per_prompt.shape:
        raise ConfigError(f"weights must have shape ({per_prompt.shape[0]},), got {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()) or float(v.sum()) <= 0:
        raise ConfigError("weights must be finite, non-negative and have a positive sum")
    return (v * per_prompt).sum() / v.sum()


def dpo_loss(
    logp_pos: torch.Tensor,
    logp_pos_ref: torch.Tensor,
    logp_neg: torch.Tensor,
    logp_neg_ref: torch.Tensor,
    beta: float = 0.1,
    weights: torch.Tensor | Sequence[float] | np.ndarray | None = None,
) -> torch.Tensor:
    r"""The DPO loss with a *fixed* reference model (the SPRec-style self-play baseline).

    .. math::
        \mathcal{L} = \frac{\sum_i v_i\, \ell_i}{\sum_i v_i},\qquad
        \ell_i = \frac{1}{m} \sum_{j} \mathrm{softplus}\Big(-\beta \big[
        (\log \pi_\theta(y^+_i) - \log \pi_{\mathrm{ref}}(y^+_i))
        - (\log \pi_\theta(y^-_{ij}) - \log \pi_{\mathrm{ref}}(y^-_{ij}))\big]\Big)

    The formula is :func:`spin_loss`'s; only the meaning of the second policy differs
    (DPO's reference stays the SFT model, SPIN's opponent is the previous iterate).
    Arguments as in :func:`spin_loss`.
    """
    return spin_loss(logp_pos, logp_pos_ref, logp_neg, logp_neg_ref, beta, weights)


def judger_margin(
    logp_pos: torch.Tensor,
    logp_pos_old: torch.Tensor,
    logp_neg: torch.Tensor,
    logp_neg_old: torch.Tensor,
    beta: float = 0.1,
    weights: torch.Tensor | Sequence[float] | np.ndarray | None = None,
) -> float:
    r"""The judger's discrimination score: the mean margin :math:`\beta\, r` (detached).

    .. math::
        \bar r_\beta = \frac{\sum_i v_i\, \frac{1}{m}\sum_j \beta\, r_{ij}}{\sum_i v_i}

    with :math:`r_{ij}` as in :func:`spin_loss`. ``0`` (loss :math:`\log 2`): positives
    and negatives are indistinguishable; large and positive: the trained policy separates
    the fair targets from the old policy's outputs.

    Returns
    -------
    margin : float
    """
    with torch.no_grad():
        r = _margins(logp_pos, logp_pos_old, logp_neg, logp_neg_old, beta).mean(dim=1)
        if weights is None:
            return float(r.mean())
        v = torch.as_tensor(weights, dtype=r.dtype, device=r.device)
        if v.shape != r.shape or bool((v < 0).any()) or float(v.sum()) <= 0:
            raise ConfigError(
                f"weights must have shape ({r.shape[0]},), be non-negative and have a positive sum"
            )
        return float((v * r).sum() / v.sum())


# ------------------------------------------------------------------ fair targets
def fair_group_weights(
    gp: Any, gr: Any, power: float = 1.0, max_weight: float = 10.0
) -> np.ndarray:
    r"""Per-group target weights: the ratio of a group's reference share to its share of
    the recommendations, clipped.

    .. math::
        w_g = \begin{cases}
        \mathrm{clip}\Big(\big(gp_g / \max(gr_g, 10^{-12})\big)^{p},\ 0,\ w_{\max}\Big)
        & gp_g > 0 \\
        0 & gp_g = 0
        \end{cases}

    :math:`w_g > 1` for an under-exposed group (recommended less than its reference share):
    fine-tuning targets are tilted towards it (:func:`sample_fair_targets`).

    Parameters
    ----------
    gp : array-like (G,)
        Non-negative reference share of every group (e.g. its share of the users'
        interactions, the fair target).
    gr : array-like (G,)
        Non-negative share of every group in the current model's recommendations.
    power : float
        The exponent :math:`p`, ``>= 0``.
    max_weight : float
        The clip :math:`w_{\max}`, ``> 0``.

    Returns
    -------
    w : ndarray (G,), float64
    """
    p_ = _array("gp", gp, 1)
    r_ = _array("gr", gr, 1)
    if p_.shape != r_.shape or p_.size == 0:
        raise ConfigError(
            f"gp and gr must be non-empty and of one shape, got {p_.shape}, {r_.shape}"
        )
    for name, a in (("gp", p_), ("gr", r_)):
        if not np.all(np.isfinite(a)) or np.any(a < 0):
            raise ConfigError(f"{name} must be finite and non-negative")
    pw = _number("power", power, 0.0)
    mx = _number("max_weight", max_weight, 0.0, open_lo=True)
    with np.errstate(over="ignore"):
        w = np.clip((p_ / np.maximum(r_, 1e-12)) ** pw, 0.0, mx)
    w[p_ == 0] = 0.0
    return w


def sample_fair_targets(
    candidates: Any,
    candidate_groups: Any,
    group_weights: Any,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    r"""Draw ``n`` fine-tuning targets for one user, tilted towards under-exposed groups.

    .. math::
        P(c_i) = \frac{w_{g(c_i)}}{\sum_{j} w_{g(c_j)}}
        \quad\text{(uniform, } 1/|C|\text{, if every } w_{g(c_j)} = 0\text{)}

    over the user's candidate positives :math:`C = (c_1, \dots, c_{|C|})`, with
    replacement (a candidate listed twice counts twice).

    Parameters
    ----------
    candidates : array-like (c,), int
        The user's candidate positive item ids.
    candidate_groups : array-like (c,), int
        The group label of every candidate (aligned with ``candidates``).
    group_weights : array-like (G,)
        Non-negative group weights (e.g. :func:`fair_group_weights`).
    n : int
        The number of draws, ``>= 0``.
    rng : numpy.random.Generator

    Returns
    -------
    targets : ndarray (n,), int64
        Item ids drawn from ``candidates``.
    """
    c = _array("candidates", candidates, 1, np.int64)
    gw = _array("group_weights", group_weights, 1)
    if not np.all(np.isfinite(gw)) or np.any(gw < 0):
        raise ConfigError("group_weights must be finite and non-negative")
    g = _labels("candidate_groups", candidate_groups, gw.shape[0])
    if g.shape != c.shape:
        raise ConfigError(
            f"candidate_groups must have one label per candidate ({c.shape[0]}), got {g.shape[0]}"
        )
    k = _count("n", n, 0)
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    if c.size == 0:
        raise ConfigError("candidates is empty: no positive to draw a target from")
    p = gw[g]
    total = p.sum()
    p = np.full(c.size, 1.0 / c.size) if total <= 0 else p / total
    return c[rng.choice(c.size, size=k, replace=True, p=p)].astype(np.int64)


def sample_from_logprobs(
    logp: torch.Tensor,
    n: int,
    generator: torch.Generator,
    exclude: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Draw ``n`` next items per row from :math:`\mathrm{softmax}(\ell)` with excluded
    items removed.

    .. math::
        P(y = v \mid \text{row } r) = \frac{\exp(\ell_{rv})\, [v \notin X_r]}
        {\sum_{u \notin X_r} \exp(\ell_{ru})}

    ``logp`` may be log-probabilities or logits (the softmax normalises). The excluded
    ids :math:`X_r` get :math:`-\infty`. A row is drawn **without** replacement
    (``torch.multinomial(replacement=False)``) when ``n`` is at most its number of
    allowed items (positive probability after the float64 softmax), and with
    replacement otherwise. Deterministic for a given ``generator`` state: the rows
    without and with replacement are drawn in two calls, in that order. The generator
    must live on ``logp``'s device.

    Parameters
    ----------
    logp : torch.Tensor (rows, V)
        Log-probabilities or logits.
    n : int
        Draws per row, ``>= 0``.
    generator : torch.Generator
    exclude : optional
        Per-row sequences of excluded item ids (``rows`` entries, each array-like of ints
        in ``[0, V)``), or a boolean mask ``(rows, V)`` (``True`` = excluded).

    Returns
    -------
    items : torch.LongTensor (rows, n)
    """
    if logp.dim() != 2:
        raise ConfigError(f"logp must be 2-D (rows, V), got shape {tuple(logp.shape)}")
    k = _count("n", n, 0)
    rows, V = logp.shape
    scores = logp.detach().to(torch.float64).clone()
    if bool(torch.isnan(scores).any()):
        raise ConfigError("logp must not contain NaN")
    if exclude is not None:
        is_mask = (isinstance(exclude, torch.Tensor) and exclude.dtype == torch.bool) or (
            isinstance(exclude, np.ndarray) and exclude.dtype == np.bool_
        )
        if is_mask:
            mask = torch.as_tensor(exclude, device=scores.device)
            if mask.shape != scores.shape:
                raise ConfigError(
                    f"exclude mask must have shape {tuple(scores.shape)}, got {tuple(mask.shape)}"
                )
        else:
            if len(exclude) != rows:
                raise ConfigError(
                    f"exclude must hold one sequence of item ids per row ({rows}), got "
                    f"{len(exclude)}"
                )
            ids = [torch.as_tensor(np.asarray(e, dtype=np.int64).ravel()) for e in exclude]
            r_idx = torch.cat(
                [torch.full((len(e),), i, dtype=torch.long) for i, e in enumerate(ids)]
                + [torch.zeros(0, dtype=torch.long)]
            )
            c_idx = torch.cat([*ids, torch.zeros(0, dtype=torch.long)])
            if c_idx.numel() and (int(c_idx.min()) < 0 or int(c_idx.max()) >= V):
                raise ConfigError(f"exclude holds item ids outside [0, {V})")
            mask = torch.zeros(rows, V, dtype=torch.bool)
            mask[r_idx, c_idx] = True
            mask = mask.to(scores.device)
        scores = scores.masked_fill(mask, float("-inf"))
    out = torch.empty(rows, k, dtype=torch.long, device=scores.device)
    if k == 0 or rows == 0:
        return out
    probs = torch.softmax(scores, dim=1)
    allowed = (probs > 0).sum(dim=1)
    empty = (allowed == 0) | torch.isnan(probs).any(dim=1)  # a row of -inf: softmax is NaN
    if bool(empty.any()):
        bad = int(torch.nonzero(empty)[0])
        raise ConfigError(f"row {bad} of logp has no item left to sample (all excluded or -inf)")
    no_repl = allowed >= k
    for rows_sel, replacement in ((no_repl, False), (~no_repl, True)):
        idx = torch.nonzero(rows_sel).ravel()
        if idx.numel():
            out[idx] = torch.multinomial(
                probs[idx], k, replacement=replacement, generator=generator
            )
    return out


# ------------------------------------------------------------------ baselines
def exposure_rerank(
    scores: Any,
    groups: Any,
    target: Any,
    k: int = 10,
    lam: float = 1.0,
    candidates: int = 100,
) -> np.ndarray:
    r"""Post-hoc exposure-constrained greedy re-ranking (the re-ranking baseline).

    Users are processed in order ``u = 0, 1, ...``. For user ``u`` the candidate set
    :math:`C_u` is the ``candidates`` highest-scored items (items scored :math:`-\infty`
    are excluded and never chosen; ties go to the lower item id), with standardised
    scores

    .. math::
        z_{ui} = \frac{s_{ui} - \mathrm{mean}_{C_u}(s_u)}{\mathrm{std}_{C_u}(s_u) + 10^{-12}}
        \qquad (\text{population std}).

    The ``k`` slots are filled one at a time with the remaining candidate maximising

    .. math::
        z_{ui} - \lambda \Big( \frac{E_{g(i)}}{\max(E, 1)} - t_{g(i)} \Big),
        \qquad E = \sum_g E_g,

    where :math:`E_g` counts the slots given to group ``g`` so far, over all users
    processed before ``u`` and the slots already filled for ``u``, and ``t`` is the
    target exposure distribution. Ties go to the earlier candidate (higher score, then
    lower id). ``lam = 0`` reproduces the plain top-``k`` exactly. A user with fewer than
    ``k`` allowed items gets the rest of the row padded with ``-1``.

    Parameters
    ----------
    scores : array-like (n_users, n_items)
        Predicted scores (``-inf`` = excluded, e.g. training items); no NaN.
    groups : array-like (n_items,), int
        The group label of every item, in ``[0, G)``.
    target : array-like (G,)
        Target exposure shares, non-negative, summing to 1.
    k : int
        List length, ``>= 1``.
    lam : float
        Strength :math:`\lambda \ge 0` of the exposure term.
    candidates : int
        Candidate pool per user, ``>= k``.

    Returns
    -------
    lists : ndarray (n_users, k), int64
        Item ids in rank order.
    """
    S = _array("scores", scores, 2)
    if np.isnan(S).any():
        raise ConfigError("scores must not contain NaN (use -inf to exclude an item)")
    t = _array("target", target, 1)
    if t.size == 0 or not np.all(np.isfinite(t)) or np.any(t < 0) or abs(t.sum() - 1) > 1e-6:
        raise ConfigError("target must be a non-empty, non-negative vector summing to 1")
    g = _labels("groups", groups, t.shape[0])
    n_users, n_items = S.shape
    if g.shape[0] != n_items:
        raise ConfigError(f"groups must have one label per item ({n_items}), got {g.shape[0]}")
    kk = _count("k", k, 1)
    nc = _count("candidates", candidates, kk)
    lam_ = _number("lam", lam, 0.0)
    out = np.full((n_users, kk), -1, dtype=np.int64)
    E = np.zeros(t.shape[0])
    for u in range(n_users):
        order = np.argsort(-S[u], kind="stable")[:nc]  # descending, ties to the lower id
        order = order[np.isfinite(S[u, order])]
        if order.size == 0:
            continue
        s = S[u, order]
        z = (s - s.mean()) / (s.std() + 1e-12)
        gc = g[order]
        taken = np.zeros(order.size, dtype=bool)
        for slot in range(min(kk, order.size)):
            pen = lam_ * (E / max(E.sum(), 1.0) - t)
            obj = np.where(taken, -np.inf, z - pen[gc])
            j = int(np.argmax(obj))  # first maximum: the earlier candidate
            taken[j] = True
            out[u, slot] = order[j]
            E[gc[j]] += 1.0
    return out


def inverse_frequency_weights(
    item_groups: Any, train_items: Any, n_groups: int, power: float = 1.0
) -> np.ndarray:
    r"""Per-item loss weights inversely proportional to the training frequency of the
    item's group (the IFairLRS-style re-weighting baseline).

    .. math::
        f_g = \big|\{ (u, i) \in \mathcal{D} : g(i) = g \}\big|,\qquad
        \tilde w(i) = \Big(\frac{\bar f}{f_{g(i)}}\Big)^{p},\qquad
        w(i) = \tilde w(i) \, \frac{|\mathcal{D}|}{\sum_{(u, j) \in \mathcal{D}} \tilde w(j)}

    where :math:`\mathcal{D}` are the training interactions (``train_items`` lists their
    item ids, one entry per interaction) and :math:`\bar f` is the mean of :math:`f_g`
    over the groups with :math:`f_g > 0`. The normalisation makes the mean weight over
    the training interactions exactly 1 (so :math:`\bar f` cancels; it only keeps the
    intermediate values of order 1). Items of a group with :math:`f_g = 0` never occur
    in a training interaction; their weight is set to 0 (finite, never used by the
    loss).

    Parameters
    ----------
    item_groups : array-like (n_items,), int
        The group label of every item, in ``[0, n_groups)``.
    train_items : array-like (N,), int
        The item id of every training interaction, in ``[0, n_items)``; ``N >= 1``.
    n_groups : int
        The number of groups ``G >= 1``.
    power : float
        The exponent :math:`p \ge 0` (``0``: all weights 1).

    Returns
    -------
    w : ndarray (n_items,), float64
    """
    G = _count("n_groups", n_groups, 1)
    ig = _labels("item_groups", item_groups, G)
    ti = _array("train_items", train_items, 1, np.int64)
    if ti.size == 0:
        raise ConfigError("train_items is empty: no training interaction to count")
    if ti.min() < 0 or ti.max() >= ig.shape[0]:
        raise ConfigError(f"train_items must hold item ids in [0, {ig.shape[0]})")
    return inverse_frequency_from_counts(ig, np.bincount(ig[ti], minlength=G), power)


def inverse_frequency_from_counts(item_groups: Any, counts: Any, power: float = 1.0) -> np.ndarray:
    r""":func:`inverse_frequency_weights` from the groups' interaction counts
    :math:`f_g` alone (``counts`` (G,), e.g. summed from clients' histograms): the
    normalisation :math:`|\mathcal{D}| / \sum_{(u,j)} \tilde w(j)` equals
    :math:`\sum_g f_g / \sum_g f_g \tilde w_g`."""
    f = _array("counts", counts, 1, np.float64)
    ig = _labels("item_groups", item_groups, f.shape[0])
    if not np.isfinite(f).all() or (f < 0).any() or f.sum() <= 0:
        raise ConfigError("counts must be finite, non-negative and have a positive sum")
    pw = _number("power", power, 0.0)
    seen = f > 0
    per_group = np.zeros(f.shape[0])
    per_group[seen] = (f[seen].mean() / f[seen]) ** pw
    return per_group[ig] * (f.sum() / (f * per_group).sum())
