"""RAID maths: Wasserstein-barycenter alignment of user embeddings (numpy/scipy/POT, no Flower).

RAID ("An In-Training Defense against Attribute Inference Attacks in Recommender
Systems", Feng, Li, Yu, Xiong, Fang, Zhang, Du, Chen; arXiv 2504.11510) makes the
distribution of user embeddings independent of a protected attribute. No official
code is published; this module follows the reconstruction in
``reference/recsys_fairness_defense.md`` §3.3 and §3.5. Every function is pure and
deterministic given its inputs (and ``seed`` where there is one).

Notation and shapes
-------------------
``n`` users, embedding dimension ``d``, ``G`` attribute groups (values ``0..G-1``),
``e_u`` (rows of ``emb``, shape ``(n, d)``), ``groups`` (shape ``(n,)``, integer group
of every user), ``U_a`` the users of group ``a``, ``n_a = |U_a|``, ``N = sum_a n_a``.
All outputs are float64 numpy arrays.

Objective
---------
RAID wants ``P(e | A=a)`` to be the same for every ``a``. The pairwise objective
``sum_{a != b} W2^2(P_a, P_b)`` is relaxed (triangle inequality) to
``sum_a w_a W2^2(P_a, P*)`` for a Wasserstein *barycenter* ``P*``; each user is then
pulled toward an OT target ``t_u`` on the barycenter by the penalty

    L = L_P + gamma * (1/N) * sum_u ||e_u - t_u||^2,

with the targets held fixed (stop-gradient) between centroid updates.
:func:`raid_penalty` returns the per-user term ``gamma * ||e_u - t_u||^2`` (shape
``(n,)``) and its gradient w.r.t. ``e_u``, ``2 * gamma * (e_u - t_u)`` (shape
``(n, d)``); the ``1/N`` average is the caller's (a mean over the users of a batch
or a client, whichever the training loop uses).

Group weights (our choice; the paper is silent): callers pass ``w_a = n_a / N``
(the barycenter of the pooled population); uniform weights are the default of the
barycenter functions when ``weights`` is ``None``. Weights are normalised to sum 1.

Mode (a): Gaussian / Bures-Wasserstein (cross-device, secure-aggregation friendly)
---------------------------------------------------------------------------------
Each client computes *summable* per-group sums (:func:`group_moment_sums`)::

    counts[a] = n_a,  sums[a] = sum_{u in U_a} e_u,  outer[a] = sum_{u in U_a} e_u e_u^T

(shapes ``(G,)``, ``(G, d)``, ``(G, d, d)``, float64). The server adds them over
clients and :func:`moments_from_sums` returns ``m_a = sums[a] / n_a`` and the
*population* covariance ``C_a = outer[a] / n_a - m_a m_a^T + ridge * I``,
symmetrised. The ridge (default ``1e-6``, absolute) keeps ``C_a`` positive definite
when ``n_a <= d`` or embeddings are degenerate (our choice). A group with
``n_a = 0`` has no moments and raises :class:`~fedrec.errors.ConfigError`: drop
empty groups before calling.

The barycenter of ``N(m_a, C_a)`` with weights ``w_a`` is ``N(m*, C*)`` with
``m* = sum_a w_a m_a`` and ``C*`` the fixed point of
``C* = sum_a w_a (C*^{1/2} C_a C*^{1/2})^{1/2}`` (Agueh & Carlier 2011), computed
by ``ot.gaussian.bures_wasserstein_barycenter`` (:func:`gaussian_barycenter`).
The OT (Brenier) map from ``N(m_a, C_a)`` to ``N(m*, C*)`` is affine,
``T_a(x) = m* + A_a (x - m_a)`` with the symmetric positive definite
``A_a = C_a^{-1/2} (C_a^{1/2} C* C_a^{1/2})^{1/2} C_a^{-1/2}`` (so
``A_a C_a A_a^T = C*``). :func:`gaussian_maps` returns ``A (G, d, d)`` and
``b (G, d)`` with ``T_a(x) = x @ A[a].T + b[a]`` for row vectors ``x`` (``b[a] =
m* - A[a] m_a``). Each client computes its users' targets with its own group's map,
``t_u = T_{a_u}(e_u)`` (:func:`gaussian_targets`).

*Groups with fewer than 2 users* (our choice): a single user has a Dirac group
measure; no Monge map from a Dirac to a Gaussian exists, and the barycentric
projection of the only coupling sends the user to the barycenter mean. With
``counts`` given, :func:`gaussian_maps` uses ``A_a = 0, b_a = m*`` for those groups
(without ``counts`` the ridge map ``(C*/ridge)^{1/2}`` would amplify any drift of
the user away from ``m_a`` by ``~ridge^{-1/2}``). *Groups of 2 to d users* have a
singular sample covariance (rank ``n_a - 1``) and the same amplification in the
directions they do not span, so with ``counts`` given they are only shifted, ``A_a = I,
b_a = m* - m_a`` (our choice; such groups arise with many-valued or joint attributes,
e.g. ``gender,age_bucket`` on ML-100K has cells of 7 to 231 users at d = 64).

Resampled targets (our addition; ``target-moments = "resampled"``)
-------------------------------------------------------------------
Mapping every group exactly onto ``N(m*, C*)`` equalises the *sample* moments of the
groups over all ``N`` users. That is more than independence: if the group means are
equal over all users, then for any split of the users into a part ``S`` (the users an
adversary knows the attribute of) and the rest, the group-mean difference of ``S`` is
``-(n_rest / n_S)`` times that of the rest (for each group, ``n_S m_S + n_rest m_rest =
N m*``). An attacker fitted on ``S`` is then anti-informative on the rest (AUC well
below 0.5), and one that knows the defense flips its decisions and reads the attribute
(``fedrec.attacks``' flip-aware attacker does exactly that, from the known users only).
The sample moments of users drawn i.i.d. from one attribute-independent distribution
are *not* equal: they differ by sampling noise that is independent across groups. So
:func:`resampled_moments` draws, for every group, the moments of a fresh ``n_a``-sample
of ``N(m*, C*)`` (normalised so that ``N(m*, C*)`` stays their barycenter, a constraint
on the population only) and :func:`gaussian_maps` maps group ``a`` onto its own draw. For a
Gaussian group this makes the transported group an exact i.i.d.-looking sample: the
subtraction of its own sample mean (which makes the parts of any split anti-correlated,
covariance ``-C/N``) is compensated by the fresh mean's variance ``C/n_a``, so the
group means of ``S`` and of the rest become uncorrelated. The cost in utility is the
size of the sampling noise (the groups' means differ by ~``sqrt(d (1/n_0 + 1/n_1))``
standard deviations of nothing, as they would in an unrelated sample). The draws are
seeded by the run seed and the centroid round; an adversary that knows them (e.g. the
server itself, which also sees the group sums) is outside this threat model.

Mode (b): free-support barycenter (cross-silo)
----------------------------------------------
Each silo quantises its users' embeddings of each group with k-means
(:func:`quantize_groups`): ``k_g <= min(k, n_g)`` centroids with their *masses*
(numbers of users assigned, not normalised) so that the server can pool silos'
measures of the same group by concatenation. The server solves

    X* = argmin_X sum_a w_a W2^2(P_a, (1/s) sum_j delta_{x_j})

with ``ot.lp.free_support_barycenter`` (alternating exact OT plans and barycentric
averaging; uniform weights on the ``s`` barycenter atoms; each group measure is
normalised to mass 1 inside; :func:`free_support_barycenter`). Initialisation
(deterministic): ``s`` atoms drawn with ``np.random.default_rng(seed)`` from the
pooled supports with probability proportional to ``w_a * mass / mass_a`` (the mass
of the mixture ``sum_a w_a P_a``; with ``w_a = n_a/N`` and raw masses this is the
mass, i.e. a random subset of users' quantised embeddings), without replacement
when there are enough atoms of positive probability. Group measures of zero total
mass are dropped (they have no distribution to transport).

Each silo then computes, for each of its groups, the exact plan
``pi^a = ot.emd(unif(n_a), beta, ||e_u - x_j||^2)`` (``beta`` the barycenter weights,
uniform by default) from its own users of the group to ``X*`` and the *barycentric
projection* ``t_u = n_a * sum_j pi^a_{uj} x_j`` (the paper does not say whether the
plan cost or the projection is used; the projection gives a per-user target and
the penalty above; :func:`ot_targets`, plans from :func:`group_plans`). For balanced
sizes the plan is a permutation; a group of one user gets the barycenter mean.

Atom targets (our addition; the strategy's ``support-targets = "atoms"``): a silo holds
only a few users of a group, so its own plan spreads each user over many barycenter
atoms and the projection pulls every target toward the barycenter mean. Instead the
server plans each group's *pooled* atoms (with their masses) onto the barycenter and
every atom moves to its barycentric projection (:func:`atom_displacements`); a user
moves with its own atom's displacement, ``t_u = e_u + delta_{atom(u)}``, keeping its
offset from the atom (:func:`quantize_groups` with ``return_labels=True`` gives each
user's atom). The resampling principle above has a discrete analogue: plan onto a fresh
``n_a``-sample of the uniform barycenter measure, ``Multinomial(n_a, 1/s) / n_a``
(:func:`resampled_support_weights`). Measured limitation (``experiments/raid``): the
quantisation itself differs between groups of different sizes in a silo, which the MLP
attacker still reads.

Diagnostic
----------
:func:`w2_between_groups`: on embeddings standardised by the pooled mean and
standard deviation (coordinates with zero spread are left unscaled), the exact
``W2`` (not squared: ``sqrt(ot.emd2)`` with uniform weights and squared Euclidean
cost) between every pair of non-empty groups and its mean over the pairs; groups
larger than ``max_per_group`` are subsampled without replacement with
``np.random.default_rng(seed)`` (groups in increasing order).

POT conventions checked by ``tests/test_raid_math.py`` (POT 0.9.x):

- ``ot.gaussian.bures_wasserstein_mapping(ms, mt, Cs, Ct)`` returns ``(A, b)`` with
  ``T(x) = x @ A + b`` for row vectors; ``A`` is symmetric so ``A == A.T`` and our
  ``x @ A[a].T`` is the same map.
- ``ot.gaussian.bures_wasserstein_barycenter`` returns ``(mb, Cb)`` (``(mb, Cb, log)``
  with ``log=True``) and *prints* "Dit not converge." instead of warning; we
  silence stdout and raise a :class:`RuntimeWarning` ourselves.
- ``ot.gaussian.bures_wasserstein_distance`` returns the distance ``W2``, not its
  square, despite computing ``W2^2`` internally.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence

import numpy as np
import ot
import scipy.linalg
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from fedrec.errors import ConfigError

__all__ = [
    "atom_displacements",
    "bures_w2",
    "free_support_barycenter",
    "gaussian_barycenter",
    "gaussian_maps",
    "gaussian_targets",
    "group_moment_sums",
    "group_plans",
    "moments_from_sums",
    "ot_targets",
    "quantize_groups",
    "raid_penalty",
    "raid_penalty_grad",
    "resampled_moments",
    "resampled_support_weights",
    "w2_between_groups",
]

#: Iteration cap of POT's network simplex in our ``ot.emd`` / ``ot.emd2`` calls (POT's
#: default 100000 is too small for a few thousand points per side).
EMD_MAX_ITER = 10_000_000


# ----------------------------------------------------------------------------- validation
def _embeddings(emb, name: str = "emb") -> np.ndarray:
    arr = np.asarray(emb)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ConfigError(f"{name} must be a 2-D (n, d) array with d >= 1, got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must hold finite numbers")
    return arr


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _groups(groups, n: int, num_groups: int | None = None, name: str = "groups") -> np.ndarray:
    arr = np.asarray(groups)
    if arr.shape != (n,):
        raise ConfigError(f"{name} must have shape ({n},) matching the embeddings, got {arr.shape}")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    elif arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ConfigError(f"{name} must hold integer group ids")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise ConfigError(f"{name} must hold integer group ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n and arr.min() < 0:
        raise ConfigError(f"{name} must hold group ids >= 0, got {int(arr.min())}")
    if num_groups is not None and n and arr.max() >= num_groups:
        raise ConfigError(
            f"{name} holds a group outside 0..{num_groups - 1} (num_groups={num_groups})"
        )
    return arr


def _real(value, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number >= {minimum}, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < minimum:
        raise ConfigError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return value


def _simplex(weights, size: int, name: str) -> np.ndarray:
    """Non-negative weights of shape ``(size,)`` with a positive total, normalised to 1."""
    w = np.asarray(weights)
    if w.shape != (size,):
        raise ConfigError(f"{name} must have shape ({size},), got {w.shape}")
    if w.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must hold real numbers, got dtype {w.dtype}")
    w = w.astype(np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ConfigError(f"{name} must hold finite non-negative numbers with a positive sum")
    return w / w.sum()


def _means_covs(means, covs) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(means, dtype=np.float64)
    C = np.asarray(covs, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ConfigError(f"means must be a 2-D (G, d) array with G, d >= 1, got shape {m.shape}")
    G, d = m.shape
    if C.shape != (G, d, d):
        raise ConfigError(f"covs must have shape ({G}, {d}, {d}) matching means, got {C.shape}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(C))):
        raise ConfigError("means and covs must hold finite numbers")
    return m, _sym(C)


def _sym(C: np.ndarray) -> np.ndarray:
    return 0.5 * (C + np.swapaxes(C, -1, -2))


def _check_pd(C: np.ndarray, name: str) -> None:
    if np.linalg.eigvalsh(C).min() <= 0:
        raise ConfigError(f"{name} must be symmetric positive definite (increase ridge)")


# ------------------------------------------------------------------ mode (a): moments
def group_moment_sums(emb, groups, num_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group summable statistics of the embeddings.

    Args:
        emb: ``(n, d)`` user embeddings.
        groups: ``(n,)`` integer groups in ``0..num_groups-1``.
        num_groups: ``G >= 1``.

    Returns:
        ``counts (G,)``, ``sums (G, d)`` and ``outer (G, d, d)`` (float64): ``n_a``,
        ``sum_{u in U_a} e_u`` and ``sum_{u in U_a} e_u e_u^T``. Sums over clients of
        these are the sums of the pooled users (secure-aggregation friendly).
    """
    x = _embeddings(emb)
    G = _positive_int(num_groups, "num_groups")
    g = _groups(groups, x.shape[0], G)
    onehot = np.zeros((x.shape[0], G))
    onehot[np.arange(x.shape[0]), g] = 1.0
    counts = onehot.sum(axis=0)
    sums = onehot.T @ x
    outer = np.einsum("na,ni,nj->aij", onehot, x, x)
    return counts, sums, outer


def moments_from_sums(counts, sums, outer, ridge: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Means and population covariances (plus ``ridge * I``) from summed statistics.

    Args:
        counts: ``(G,)`` user counts, all ``> 0``.
        sums: ``(G, d)`` sums of embeddings.
        outer: ``(G, d, d)`` sums of outer products.
        ridge: ``>= 0`` added to the diagonal of every covariance.

    Returns:
        ``means (G, d)`` and ``covs (G, d, d)`` with ``covs[a] = outer[a]/n_a -
        m_a m_a^T + ridge I`` (symmetrised).
    """
    c = np.asarray(counts, dtype=np.float64)
    s = np.asarray(sums, dtype=np.float64)
    o = np.asarray(outer, dtype=np.float64)
    if c.ndim != 1 or c.shape[0] < 1:
        raise ConfigError(f"counts must be a 1-D (G,) array with G >= 1, got shape {c.shape}")
    G = c.shape[0]
    if s.ndim != 2 or s.shape[0] != G or s.shape[1] < 1:
        raise ConfigError(f"sums must have shape ({G}, d) matching counts, got {s.shape}")
    d = s.shape[1]
    if o.shape != (G, d, d):
        raise ConfigError(f"outer must have shape ({G}, {d}, {d}) matching sums, got {o.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s)) and np.all(np.isfinite(o))):
        raise ConfigError("counts, sums and outer must hold finite numbers")
    if np.any(c < 0):
        raise ConfigError("counts must be non-negative")
    empty = np.flatnonzero(c == 0)
    if empty.size:
        raise ConfigError(
            f"counts must be > 0 for every group; groups {empty.tolist()} are empty "
            "(drop empty groups before computing moments)"
        )
    r = _real(ridge, "ridge")
    means = s / c[:, None]
    covs = o / c[:, None, None] - np.einsum("ai,aj->aij", means, means)
    covs = _sym(covs) + r * np.eye(d)[None]
    return means, covs


def gaussian_barycenter(
    means, covs, weights=None, *, num_iter: int = 100, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray]:
    """Bures-Wasserstein barycenter ``N(m*, C*)`` of the Gaussians ``N(means[a], covs[a])``.

    Args:
        means: ``(G, d)``.
        covs: ``(G, d, d)`` symmetric positive definite.
        weights: ``(G,)`` non-negative (normalised here); ``None`` = uniform. Callers
            pass ``n_a / N``.
        num_iter: maximum fixed-point iterations of POT's solver.
        tol: stop when the Frobenius change of ``C`` is ``<= tol`` (absolute).

    Returns:
        ``m_star (d,)`` and ``C_star (d, d)`` (symmetrised). Warns
        (:class:`RuntimeWarning`) if the fixed point did not reach ``tol``.
    """
    m, C = _means_covs(means, covs)
    G = m.shape[0]
    w = np.full(G, 1.0 / G) if weights is None else _simplex(weights, G, "weights")
    n_it = _positive_int(num_iter, "num_iter")
    eps = _real(tol, "tol")
    for a in range(G):
        _check_pd(C[a], f"covs[{a}]")
    with contextlib.redirect_stdout(io.StringIO()):  # POT prints "Dit not converge."
        mb, Cb, log = ot.gaussian.bures_wasserstein_barycenter(
            m, C, weights=w, method="fixed_point", num_iter=n_it, eps=eps, log=True
        )
    Cb = _sym(np.asarray(Cb, dtype=np.float64))
    if not np.all(np.isfinite(Cb)):
        raise ConfigError("covs must be symmetric positive definite (increase ridge)")
    if float(log["final_diff"]) > eps:
        warnings.warn(
            f"gaussian_barycenter: fixed point not converged after {n_it} iterations "
            f"(last change {float(log['final_diff']):.3g} > tol={eps:g})",
            RuntimeWarning,
            stacklevel=2,
        )
    return np.asarray(mb, dtype=np.float64).reshape(-1), Cb


def gaussian_maps(means, covs, m_star, C_star, counts=None) -> tuple[np.ndarray, np.ndarray]:
    """Affine OT maps ``T_a`` from ``N(means[a], covs[a])`` to ``N(m_star, C_star)``.

    Args:
        means: ``(G, d)``; covs: ``(G, d, d)`` positive definite.
        m_star: ``(d,)``; C_star: ``(d, d)`` positive definite: one target for every
            group (the barycenter); or ``(G, d)`` and ``(G, d, d)``: a target per group
            (the resampled targets of :func:`resampled_moments`).
        counts: optional ``(G,)`` group sizes; groups with fewer than 2 users get the
            constant map ``A_a = 0, b_a = m_star[a]``, groups of 2 to ``d`` users the
            shift ``A_a = I, b_a = m_star[a] - means[a]`` (see the module docstring).

    Returns:
        ``A (G, d, d)`` (symmetric) and ``b (G, d)`` with ``T_a(x) = x @ A[a].T + b[a]``;
        ``A[a] @ covs[a] @ A[a].T == C_star[a]`` and ``A[a] @ means[a] + b[a] == m_star[a]``.
    """
    m, C = _means_covs(means, covs)
    G, d = m.shape
    ms = np.asarray(m_star, dtype=np.float64)
    Cs = np.asarray(C_star, dtype=np.float64)
    if ms.shape == (d,) and Cs.shape == (d, d):
        ms, Cs = np.broadcast_to(ms, (G, d)), np.broadcast_to(Cs, (G, d, d))
    elif ms.shape != (G, d) or Cs.shape != (G, d, d):
        raise ConfigError(
            f"m_star and C_star must have shapes ({d},) and ({d}, {d}) (one target) or "
            f"({G}, {d}) and ({G}, {d}, {d}) (one per group), got {ms.shape} and {Cs.shape}"
        )
    if not (np.all(np.isfinite(ms)) and np.all(np.isfinite(Cs))):
        raise ConfigError("m_star and C_star must hold finite numbers")
    Cs = _sym(Cs)
    for a in range(G):
        _check_pd(Cs[a], "C_star" if G == 1 else f"C_star[{a}]")
    small = np.zeros(G, dtype=bool)
    few = np.zeros(G, dtype=bool)
    if counts is not None:
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (G,):
            raise ConfigError(f"counts must have shape ({G},), got {c.shape}")
        small = c < 2
        few = (c >= 2) & (c <= d)
    A = np.zeros((G, d, d))
    b = np.zeros((G, d))
    for a in range(G):
        if small[a]:
            b[a] = ms[a]
            continue
        if few[a]:  # singular sample covariance: shift the mean only
            A[a] = np.eye(d)
            b[a] = ms[a] - m[a]
            continue
        _check_pd(C[a], f"covs[{a}]")
        Ap, bp = ot.gaussian.bures_wasserstein_mapping(m[a], ms[a], C[a], Cs[a])
        # POT: T(x) = x @ Ap + bp (row vectors); Ap is symmetric, so Ap == Ap.T.
        A[a] = _sym(np.asarray(Ap, dtype=np.float64)).T
        b[a] = ms[a] - A[a] @ m[a]
    return A, b


def resampled_moments(
    m_star, C_star, counts, seed: int, weights=None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-group targets spread like the moments of fresh samples of the barycenter.

    For every group ``a`` with ``n_a = counts[a]`` users, draws ``n_a`` i.i.d. points
    ``z ~ N(m_star, C_star)`` (``np.random.default_rng(seed)``, groups in order) and
    takes their sample mean ``zbar_a`` and the Brenier map ``R0_a`` (symmetric positive
    definite) from ``C_star`` to their population covariance: the moments the group
    would have if its members were a random sample of one distribution that does not
    depend on the attribute. The draws are then normalised so that the barycenter of
    the targets is ``N(m_star, C_star)`` exactly (weights ``w_a``, default ``n_a / N``):

        m~_a = m_star + zbar_a - sum_b w_b zbar_b,
        R_a = Rbar^{-1/2} R0_a Rbar^{-1/2},  Rbar = sum_b w_b R0_b,
        C~_a = R_a C_star R_a.

    ``sum_a w_a R_a = I`` with every ``R_a`` symmetric positive definite is exactly the
    fixed-point condition of the Bures-Wasserstein barycenter, so ``N(m_star,
    C_star)`` stays the barycenter of the targets. Without this the server's next
    barycenter, estimated from groups that already sit on their draws, would absorb
    the draws and the next draw would compound them version after version (our
    choice; the constraint is on the population, not on any group, so it carries no
    attribute information). Mapping each group onto its own target instead of onto
    ``(m_star, C_star)`` keeps held-out users private (module docstring, "Resampled
    targets"). A group with ``n_a <= d`` would get a singular sample covariance: its
    ``R0_a`` is the identity (only its mean is resampled); an empty group gets
    ``m_star`` and ``R0 = I`` and weight 0.

    Args:
        m_star: ``(d,)``; C_star: ``(d, d)`` symmetric positive definite.
        counts: ``(G,)`` group sizes (non-negative integers, positive sum).
        seed: the draw's seed.
        weights: ``(G,)`` non-negative or ``None`` (``counts / counts.sum()``).

    Returns:
        ``means (G, d)`` and ``covs (G, d, d)``.
    """
    ms = np.asarray(m_star, dtype=np.float64)
    Cs = _sym(np.asarray(C_star, dtype=np.float64))
    d = ms.shape[0] if ms.ndim == 1 else -1
    if ms.ndim != 1 or Cs.shape != (d, d):
        raise ConfigError(
            f"m_star and C_star must have shapes (d,) and (d, d), got {ms.shape} and {Cs.shape}"
        )
    if not (np.all(np.isfinite(ms)) and np.all(np.isfinite(Cs))):
        raise ConfigError("m_star and C_star must hold finite numbers")
    _check_pd(Cs, "C_star")
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size < 1 or np.any(c < 0) or np.any(c != np.round(c)) or c.sum() <= 0:
        raise ConfigError("counts must be a 1-D array of non-negative integers with a positive sum")
    G = c.shape[0]
    w = _simplex(c if weights is None else weights, G, "weights")
    ev, V = np.linalg.eigh(Cs)
    root = (V * np.sqrt(ev)) @ V.T  # C_star^{1/2}
    rng = np.random.default_rng(seed)
    zbar = np.tile(ms, (G, 1))
    R0 = np.tile(np.eye(d), (G, 1, 1))
    for a, n_a in enumerate(c.astype(np.int64)):
        if n_a == 0:
            continue
        z = rng.standard_normal((int(n_a), d)) @ root + ms
        zbar[a] = z.mean(axis=0)
        if n_a > d:  # else the sample covariance is singular: keep R0 = I
            zc = z - zbar[a]
            A, _ = ot.gaussian.bures_wasserstein_mapping(ms, ms, Cs, _sym(zc.T @ zc / n_a))
            R0[a] = _sym(np.asarray(A, dtype=np.float64))
    means = ms + zbar - w @ zbar
    rv, RV = np.linalg.eigh(np.einsum("a,aij->ij", w, R0))
    inv_half = (RV / np.sqrt(rv)) @ RV.T
    R = inv_half @ R0 @ inv_half
    covs = _sym(R @ Cs @ R)
    return means, covs


def gaussian_targets(emb, groups, A, b) -> np.ndarray:
    """Targets ``t_u = T_{a_u}(e_u) = e_u @ A[a_u].T + b[a_u]``.

    Args:
        emb: ``(n, d)``; groups: ``(n,)`` in ``0..G-1``; A: ``(G, d, d)``; b: ``(G, d)``.

    Returns:
        ``(n, d)`` targets.
    """
    x = _embeddings(emb)
    A = np.asarray(A, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = x.shape[1]
    if A.ndim != 3 or A.shape[1:] != (d, d) or b.shape != (A.shape[0], d):
        raise ConfigError(
            f"A and b must have shapes (G, {d}, {d}) and (G, {d}), got {A.shape} and {b.shape}"
        )
    g = _groups(groups, x.shape[0], A.shape[0])
    return np.einsum("nj,nij->ni", x, A[g]) + b[g]


def bures_w2(m1, C1, m2, C2) -> float:
    """Squared Bures-Wasserstein distance between ``N(m1, C1)`` and ``N(m2, C2)``.

    ``|m1 - m2|^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2})`` with
    :func:`scipy.linalg.sqrtm`; ``m (d,)``, ``C (d, d)`` symmetric PSD. Clipped at 0.
    """
    m1 = np.asarray(m1, dtype=np.float64)
    m2 = np.asarray(m2, dtype=np.float64)
    C1 = _sym(np.asarray(C1, dtype=np.float64))
    C2 = _sym(np.asarray(C2, dtype=np.float64))
    d = m1.shape[0] if m1.ndim == 1 else -1
    if m1.ndim != 1 or m2.shape != (d,) or C1.shape != (d, d) or C2.shape != (d, d):
        raise ConfigError(
            f"bures_w2 needs m1, m2 of shape (d,) and C1, C2 of shape (d, d); got "
            f"{m1.shape}, {m2.shape}, {C1.shape}, {C2.shape}"
        )
    r1 = np.real(scipy.linalg.sqrtm(C1))
    cross = np.real(scipy.linalg.sqrtm(_sym(r1 @ C2 @ r1)))
    val = float(np.sum((m1 - m2) ** 2) + np.trace(C1) + np.trace(C2) - 2.0 * np.trace(cross))
    return max(val, 0.0)


# ------------------------------------------------------------ mode (b): free support
def quantize_groups(
    emb, groups, num_groups: int, k: int, seed: int, *, return_labels: bool = False
):
    """k-means summary of every group's embeddings (one silo's upload).

    Args:
        emb: ``(n, d)``; groups: ``(n,)`` in ``0..num_groups-1``.
        num_groups: ``G >= 1``; k: centroids per group, ``>= 1``; seed: KMeans seed.

    Returns:
        ``G`` pairs ``(support (k_g, d), weights (k_g,))``: centroids and their masses
        (numbers of users assigned, summing to ``n_g``). ``k_g = min(k, n_g)`` (when
        ``n_g <= k`` the support is the users' embeddings themselves with mass 1
        each); centroids left empty by duplicate embeddings are dropped. An empty
        group gives ``((0, d), (0,))``. With ``return_labels=True`` also ``(n,)`` int64:
        each user's atom, as an index into its group's support.
    """
    x = _embeddings(emb)
    G = _positive_int(num_groups, "num_groups")
    kk = _positive_int(k, "k")
    g = _groups(groups, x.shape[0], G)
    d = x.shape[1]
    out: list[tuple[np.ndarray, np.ndarray]] = []
    user_atom = np.zeros(x.shape[0], dtype=np.int64)
    for a in range(G):
        rows = np.flatnonzero(g == a)
        xa = x[rows]
        na = xa.shape[0]
        if na == 0:
            out.append((np.zeros((0, d)), np.zeros(0)))
        elif na <= kk:
            out.append((xa.copy(), np.ones(na)))
            user_atom[rows] = np.arange(na)
        else:
            km = KMeans(n_clusters=kk, n_init=1, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                labels = km.fit_predict(xa)
            mass = np.bincount(labels, minlength=kk).astype(np.float64)
            keep = mass > 0
            centers = np.asarray(km.cluster_centers_, dtype=np.float64)
            out.append((centers[keep], mass[keep]))
            user_atom[rows] = (np.cumsum(keep) - 1)[labels]
    return (out, user_atom) if return_labels else out


def _measures(measures, d: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    if not isinstance(measures, (list, tuple)) or len(measures) < 1:
        raise ConfigError(
            "measures must be a non-empty list of (support (k, d), weights (k,)) pairs"
        )
    out = []
    for i, item in enumerate(measures):
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise ConfigError(f"measures[{i}] must be a (support (k, d), weights (k,)) pair")
        X = np.asarray(item[0], dtype=np.float64)
        w = np.asarray(item[1], dtype=np.float64)
        if X.ndim != 2 or w.shape != (X.shape[0],):
            raise ConfigError(
                f"measures[{i}] must be support (k, d) and weights (k,), "
                f"got {X.shape} and {w.shape}"
            )
        if d is None:
            d = X.shape[1]
        if X.shape[1] != d:
            raise ConfigError(f"measures[{i}] has dimension {X.shape[1]}, expected {d}")
        if not (np.all(np.isfinite(X)) and np.all(np.isfinite(w))) or np.any(w < 0):
            raise ConfigError(f"measures[{i}] must hold finite numbers and non-negative weights")
        out.append((X, w))
    return out


def free_support_barycenter(
    measures: Sequence[tuple[np.ndarray, np.ndarray]],
    group_weights,
    support_size: int,
    seed: int,
    *,
    num_iter: int = 100,
    tol: float = 1e-7,
) -> np.ndarray:
    """Free-support W2 barycenter of the group measures (``ot.lp.free_support_barycenter``).

    Args:
        measures: ``G`` pairs ``(X_a (k_a, d), w_a (k_a,))`` (masses, normalised to 1
            here; silos' measures of the same group are concatenated by the caller).
            Measures of zero mass are dropped.
        group_weights: ``(G,)`` non-negative, normalised here (callers pass ``n_a/N``).
        support_size: ``s >= 1`` atoms of the barycenter (uniform weights ``1/s``).
        seed: seed of the initial atom draw (see the module docstring).
        num_iter: maximum iterations; tol: stop when the squared displacement of the
            support is ``<= tol``.

    Returns:
        ``X_star (s, d)``.
    """
    ms = _measures(measures)
    G = len(ms)
    d = ms[0][0].shape[1]
    gw = _simplex(group_weights, G, "group_weights")
    s = _positive_int(support_size, "support_size")
    n_it = _positive_int(num_iter, "num_iter")
    stop = _real(tol, "tol")
    keep = [a for a in range(G) if ms[a][1].sum() > 0 and gw[a] > 0]
    if not keep:
        raise ConfigError("measures must contain at least one group with positive mass and weight")
    locs = [ms[a][0] for a in keep]
    wts = [ms[a][1] / ms[a][1].sum() for a in keep]
    gwk = gw[keep] / gw[keep].sum()
    pooled = np.concatenate(locs, axis=0)
    p = np.concatenate([gwk[i] * wts[i] for i in range(len(keep))])
    p = p / p.sum()
    rng = np.random.default_rng(seed)
    idx = rng.choice(pooled.shape[0], size=s, replace=bool(np.count_nonzero(p) < s), p=p)
    X_init = pooled[idx].copy()
    X = ot.lp.free_support_barycenter(
        locs, wts, X_init, b=np.full(s, 1.0 / s), weights=gwk, numItermax=n_it, stopThr=stop
    )
    return np.asarray(X, dtype=np.float64).reshape(s, d)


def group_plans(emb, groups, X_star, b_weights=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Exact OT plans from every group's users (uniform mass) to the barycenter support.

    Args:
        emb: ``(n, d)``; groups: ``(n,)`` integer ids (any non-negative values);
        X_star: ``(s, d)``; b_weights: ``(s,)`` non-negative (normalised here) or
            ``None`` for uniform.

    Returns:
        ``{a: (idx (n_a,), plan (n_a, s))}`` for each group present: ``idx`` are the
        rows of ``emb`` in group ``a`` (increasing), ``plan = ot.emd(unif(n_a), beta,
        ||e_u - x_j||^2)``: rows sum to ``1/n_a``, columns to ``beta``.
    """
    x = _embeddings(emb)
    Xs = _embeddings(X_star, "X_star")
    if Xs.shape[1] != x.shape[1]:
        raise ConfigError(f"X_star must have dimension {x.shape[1]} like emb, got shape {Xs.shape}")
    s = Xs.shape[0]
    if s < 1:
        raise ConfigError("X_star must have at least one atom")
    beta = np.full(s, 1.0 / s) if b_weights is None else _simplex(b_weights, s, "b_weights")
    g = _groups(groups, x.shape[0])
    out = {}
    for a in np.unique(g).tolist():
        idx = np.flatnonzero(g == a)
        na = idx.size
        M = ot.dist(x[idx], Xs, metric="sqeuclidean")
        plan = ot.emd(np.full(na, 1.0 / na), beta, M, numItermax=EMD_MAX_ITER)
        out[int(a)] = (idx, np.asarray(plan, dtype=np.float64))
    return out


def ot_targets(emb, groups, X_star, b_weights=None) -> np.ndarray:
    """Barycentric-projection targets ``t_u = n_a * sum_j plan[u, j] X_star[j]``.

    Args: as :func:`group_plans`. Returns: ``(n, d)`` targets (a convex combination
    of barycenter atoms per user; a group of one user gets the barycenter mean).
    """
    x = _embeddings(emb)
    Xs = _embeddings(X_star, "X_star")
    t = np.zeros_like(x)
    for idx, plan in group_plans(x, groups, Xs, b_weights).values():
        t[idx] = idx.size * (plan @ Xs)
    return t


def atom_displacements(atoms, masses, X_star, target_weights=None) -> np.ndarray:
    """Displacement of every atom of one group under the exact plan to the barycenter.

    The plan is ``ot.emd(masses / sum, beta, ||atom_i - x_j||^2)`` from the group's
    pooled atoms (all silos' k-means atoms of the group, with their masses) to the
    barycenter support ``X_star``, with ``beta = target_weights`` (normalised; uniform
    when ``None``). Each atom moves to its barycentric projection:
    ``delta_i = sum_j plan[i, j] x_j / sum_j plan[i, j] - atom_i``.

    Args:
        atoms: ``(m, d)``; masses: ``(m,)`` non-negative with a positive sum;
        X_star: ``(s, d)``; target_weights: ``(s,)`` non-negative or ``None``.

    Returns:
        ``(m, d)`` displacements (zero for atoms of zero mass).
    """
    A = _embeddings(atoms, "atoms")
    Xs = _embeddings(X_star, "X_star")
    if Xs.shape[1] != A.shape[1]:
        raise ConfigError(f"X_star must have dimension {A.shape[1]} like atoms, got {Xs.shape}")
    w = _simplex(masses, A.shape[0], "masses")
    s = Xs.shape[0]
    beta = (
        np.full(s, 1.0 / s)
        if target_weights is None
        else _simplex(target_weights, s, "target_weights")
    )
    plan = np.asarray(
        ot.emd(w, beta, ot.dist(A, Xs, metric="sqeuclidean"), numItermax=EMD_MAX_ITER),
        dtype=np.float64,
    )
    row = plan.sum(axis=1)
    out = np.zeros_like(A)
    pos = row > 0
    out[pos] = plan[pos] @ Xs / row[pos, None] - A[pos]
    return out


def resampled_support_weights(support_size: int, count: int, seed: int) -> np.ndarray:
    """Weights of a fresh ``count``-sample of the uniform barycenter measure on
    ``support_size`` atoms: ``Multinomial(count, 1/s) / count`` (the discrete analogue of
    :func:`resampled_moments`; ``np.random.default_rng(seed)``)."""
    s = _positive_int(support_size, "support_size")
    n = _positive_int(count, "count")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(s, 1.0 / s)).astype(np.float64) / n


# ------------------------------------------------------------------ diagnostic, penalty
def w2_between_groups(
    emb, groups, *, standardize: bool = True, max_per_group: int | None = 2000, seed: int = 0
) -> dict:
    """Exact W2 between the empirical embedding distributions of every pair of groups.

    Args:
        emb: ``(n, d)``; groups: ``(n,)`` non-negative integer ids (at least 2 present).
        standardize: divide by the pooled per-coordinate std after centring (zero
            spread left unscaled).
        max_per_group: subsample larger groups to this size (``None``: never).
        seed: seed of the subsampling.

    Returns:
        ``{"w2": mean over pairs, "pairs": {(a, b): W2 for a < b}}`` (W2, not squared).
    """
    x = _embeddings(emb)
    g = _groups(groups, x.shape[0])
    if max_per_group is not None:
        max_per_group = _positive_int(max_per_group, "max_per_group")
    present = np.unique(g).tolist()
    if len(present) < 2:
        raise ConfigError(f"groups must contain at least 2 distinct groups, got {len(present)}")
    if standardize:
        sd = x.std(axis=0)
        x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    rng = np.random.default_rng(seed)
    parts = {}
    for a in present:
        xa = x[g == a]
        if max_per_group is not None and xa.shape[0] > max_per_group:
            xa = xa[np.sort(rng.choice(xa.shape[0], size=max_per_group, replace=False))]
        parts[int(a)] = xa
    pairs = {}
    for i, a in enumerate(present):
        for b in present[i + 1 :]:
            xa, xb = parts[a], parts[b]
            M = ot.dist(xa, xb, metric="sqeuclidean")
            cost = ot.emd2(
                np.full(xa.shape[0], 1.0 / xa.shape[0]),
                np.full(xb.shape[0], 1.0 / xb.shape[0]),
                M,
                numItermax=EMD_MAX_ITER,
            )
            pairs[(int(a), int(b))] = float(np.sqrt(max(float(cost), 0.0)))
    return {"w2": float(np.mean(list(pairs.values()))), "pairs": pairs}


def _penalty_inputs(emb, targets, gamma) -> tuple[np.ndarray, float]:
    x = _embeddings(emb)
    t = _embeddings(targets, "targets")
    if t.shape != x.shape:
        raise ConfigError(f"targets must have the shape of emb {x.shape}, got {t.shape}")
    return x - t, _real(gamma, "gamma")


def raid_penalty(emb, targets, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user RAID penalty ``gamma * ||e_u - t_u||^2`` and its gradient.

    Args:
        emb: ``(n, d)``; targets: ``(n, d)`` (held fixed); gamma: ``>= 0``.

    Returns:
        ``value (n,)`` and ``grad (n, d) = 2 * gamma * (e_u - t_u)`` (w.r.t. ``emb``).
        The training loss averages ``value`` over users (``1/N`` in the module docstring).
    """
    diff, gm = _penalty_inputs(emb, targets, gamma)
    return gm * np.sum(diff**2, axis=1), 2.0 * gm * diff


def raid_penalty_grad(emb, targets, gamma: float) -> np.ndarray:
    """Gradient ``2 * gamma * (e_u - t_u)`` of :func:`raid_penalty`, shape ``(n, d)``."""
    diff, gm = _penalty_inputs(emb, targets, gamma)
    return 2.0 * gm * diff
