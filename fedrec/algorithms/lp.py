"""Centralized LP limit of FedFACT (the empirical problem (1) on a finite pooled sample).

FedFACT's problem (1) (``reference/fedfact.md`` §5.1) restricted to a finite sample
with known scores is a linear program (§12 item 4, §13.2). This module solves it twice,
with cvxpy (:func:`fair_lp`, CLARABEL by default) and with scipy/HiGHS
(:func:`fair_lp_scipy`), from the same sparse matrices, as an oracle for the
federated post-processing in :mod:`fedrec.algorithms.fedfact`.

The LP
------
Pooled rows ``t = 1..n`` with client ``k_t``, group ``a_t`` and scores ``S_t`` (``S = eta``,
or ``S = onehot(labels)`` for the transductive oracle ``labels=y``). Variables: a
randomized attribute-aware classifier ``h_t in Δ_m`` per row (``n*m`` variables, ``h >= 0``,
``sum_j h_tj = 1``). Objective: maximise the (plug-in) accuracy
``(1/n) sum_t sum_j h_tj S_tj``. Constraints (subgroup form, fedfact.md §3):

- ``|D^g_u(h)| <= xi_g`` for all ``u`` (scope ``global``/``both``), where
  ``D^g_u(h) = sum_k constraint_values(global_constraints(c, n_k, n), C_k(h))``,
- ``|D^k_u(h)| <= xi_k`` for every client ``k`` and ``u`` (scope ``local``/``both``),
  ``D^k_u(h) = constraint_values(local_constraints(c, n_k), C_k(h))``,

with the plug-in confusion ``C^{a,k}_{ij}(h) = (1/n_{a,k}) sum_{t in (a,k)} S_ti h_tj``
(:func:`fedrec.algorithms.fedfact.confusion_from_scores`). Each constraint is one sparse
row; all-zero rows (undefined constraints, see fedfact's "undefined constraints are
dropped") are left out of the LP and get dual 0.

Choices (not fixed by the paper)
--------------------------------
- **Counts** ``counts[k, a, y]`` that define the ``p``'s inside the ``D`` matrices: by
  default the label counts if ``labels`` is given, else the *expected* counts
  ``sum_{t in (a,k)} eta_t`` (label-free, consistent with the plug-in confusion: the
  constant classifier is then feasible for every criterion at ``xi = 0``). Any given
  ``counts`` must have the sample's group sizes ``n_{a,k}`` as row sums (ConfigError
  otherwise), because the dual-to-classifier map below uses ``p_{a,k} = n_{a,k}/n``.
- **Duals**: the two one-sided constraints ``D <= xi`` and ``-D <= xi`` have multipliers
  ``y1, y2 >= 0`` of the minimisation of ``-accuracy``; the returned signed duals are
  ``lam = y1 - y2`` (and ``mu[k]`` likewise). With
  :func:`fedrec.algorithms.fedfact.calibration_matrix`
  (``M = I - (1/p_{a,k})[lam.Dg + mu.Dl]``) the Lagrangian is exactly
  ``-sum_{a,k} p_{a,k} <M(a,k), C^{a,k}(h)> - xi_g ||lam||_1 - sum_k xi_k ||mu_k||_1`` (fedfact.md
  §5.3), so by Theorem 5 :func:`lp_classifier_predict` (``argmax_j (M(a,k)^T eta)_j``) is an
  optimal rule on the same sample up to the few rows where the LP randomizes (ties).
- Unused duals are empty: ``lam`` has shape ``(0,)`` for scope ``local`` and every
  ``mu[k]`` has shape ``(0,)`` for scope ``global``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedrec.algorithms.fedfact import (
    CRITERIA,
    SCOPES,
    calibration_matrix,
    check_choice,
    confusion_from_scores,
    constraint_values,
    global_constraints,
    local_constraints,
)
from fedrec.errors import ConfigError

__all__ = [
    "LPResult",
    "fair_lp",
    "fair_lp_scipy",
    "lp_classifier_predict",
    "plugin_constraint_values",
    "sample_counts",
]

SCIPY_METHODS = ("highs", "highs-ds", "highs-ipm")


@dataclass
class LPResult:
    """Solution of the fair LP: ``h (n, m)``, ``objective`` (plug-in accuracy), signed duals
    ``lam (U_g,)`` and ``mu {k: (U_l,)}``, solver ``status`` and the ``counts (K, A, m)``
    that defined the constraint matrices (pass them to :func:`lp_classifier_predict`)."""

    h: np.ndarray
    objective: float
    lam: np.ndarray
    mu: dict[int, np.ndarray]
    status: str
    counts: np.ndarray = field(repr=False)


# ------------------------------------------------------------------ inputs
def _inputs(eta: Any, a: Any, k: Any, labels: Any, num_groups: int | None, num_clients: int | None):
    eta = np.asarray(eta, dtype=np.float64)
    if eta.ndim != 2 or eta.shape[0] < 1 or eta.shape[1] < 2:
        raise ConfigError(
            f"eta must be a 2-D (n, m) array with n >= 1 and m >= 2, got shape {eta.shape}"
        )
    n, m = eta.shape
    if not np.all(np.isfinite(eta)):
        raise ConfigError("eta must hold finite scores")
    out = []
    for name, v, upper in (("a", a, num_groups), ("k", k, num_clients)):
        arr = np.asarray(v)
        if arr.shape != (n,) or not np.all(np.mod(arr, 1) == 0) or arr.min() < 0:
            raise ConfigError(f"{name} must be a 1-D array of {n} non-negative integer ids")
        arr = arr.astype(np.int64)
        size = int(arr.max()) + 1 if upper is None else int(upper)
        if arr.max() >= size:
            raise ConfigError(f"{name} holds id {int(arr.max())}; allowed 0..{size - 1}")
        out.append((arr, size))
    (a_, A), (k_, K) = out
    y = None
    if labels is not None:
        y = np.asarray(labels)
        if y.shape != (n,) or not np.all(np.mod(y, 1) == 0) or y.min() < 0 or y.max() >= m:
            raise ConfigError(f"labels must be a 1-D array of {n} integer classes in 0..{m - 1}")
        y = y.astype(np.int64)
    return eta, a_, k_, y, A, K, m


def sample_counts(
    eta: Any,
    a: Any,
    k: Any,
    labels: Any = None,
    num_groups: int | None = None,
    num_clients: int | None = None,
) -> np.ndarray:
    """``counts[k, a, y]`` (K, A, m): label counts if ``labels`` is given, else expected
    counts ``sum_{t in (a,k)} eta_t`` (floats)."""
    eta_, a_, k_, y, A, K, m = _inputs(eta, a, k, labels, num_groups, num_clients)
    S = np.eye(m)[y] if y is not None else eta_
    counts = np.zeros((K, A, m))
    np.add.at(counts, (k_, a_), S)
    return counts


def _check_counts(counts: Any, a: np.ndarray, k: np.ndarray, K: int, A: int, m: int) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (K, A, m):
        raise ConfigError(f"counts must have shape (K, A, m) = {(K, A, m)}, got {c.shape}")
    sizes = np.zeros((K, A))
    np.add.at(sizes, (k, a), 1.0)
    if not np.allclose(c.sum(axis=2), sizes, rtol=1e-9, atol=1e-6):
        raise ConfigError(
            "counts[k, a, :].sum() must equal the number of sample rows of (client k, group a)"
        )
    return c


# ------------------------------------------------------------- assembly
def _constraint_rows(
    S: np.ndarray,
    a: np.ndarray,
    k: np.ndarray,
    criterion: str,
    scope: str,
    counts: np.ndarray,
    xi_g: float,
    xi_k: float,
):
    """Sparse ``G`` (R, n*m), slack ``b`` (R,) and row tags ``(kind, client, u)``."""
    n, m = S.shape
    K, A, _ = counts.shape
    pooled = counts.sum(axis=0)
    rows, cols, vals, b, tags = [], [], [], [], []
    n_rows = 0

    def add_block(D_by_client: dict[int, np.ndarray], kind: str, xi: float, shared: bool) -> None:
        nonlocal n_rows
        U = next(iter(D_by_client.values())).shape[0] if D_by_client else 0
        block_rows: dict[tuple[int, int], int] = {}
        for kk, D in D_by_client.items():
            for g in range(A):
                idx = np.flatnonzero((k == kk) & (a == g))
                if idx.size == 0:
                    continue
                W = np.einsum("ti,uij->utj", S[idx], D[:, g]) / idx.size  # (U, |idx|, m)
                u_i, t_i, j_i = np.nonzero(W)
                if u_i.size == 0:
                    continue
                owner = -1 if shared else kk
                row_of = np.full(U, -1, dtype=np.int64)
                for u in np.unique(u_i).tolist():
                    if (owner, u) not in block_rows:
                        block_rows[(owner, u)] = n_rows
                        tags.append((kind, owner, u))
                        b.append(xi)
                        n_rows += 1
                    row_of[u] = block_rows[(owner, u)]
                rows.append(row_of[u_i])
                cols.append(idx[t_i] * m + j_i)
                vals.append(W[u_i, t_i, j_i])

    if scope in ("global", "both"):
        add_block(
            {
                kk: global_constraints(criterion, counts[kk], pooled)
                for kk in range(K)
                if counts[kk].sum() > 0
            },
            "global",
            xi_g,
            shared=True,
        )
    if scope in ("local", "both"):
        add_block(
            {
                kk: local_constraints(criterion, counts[kk])
                for kk in range(K)
                if counts[kk].sum() > 0
            },
            "local",
            xi_k,
            shared=False,
        )
    if rows:
        G = sp.csr_matrix(
            (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
            shape=(n_rows, n * m),
        )
    else:
        G = sp.csr_matrix((0, n * m))
    G.eliminate_zeros()
    keep = np.flatnonzero(np.abs(G).sum(axis=1).A.ravel() > 0)  # rows that cancel exactly
    return G[keep], np.asarray(b, dtype=np.float64)[keep], [tags[i] for i in keep]


def _assemble(eta, a, k, criterion, scope, xi_g, xi_k, labels, counts, num_groups, num_clients):
    check_choice("criterion", criterion, CRITERIA)
    check_choice("scope", scope, SCOPES)
    for name, v in (("xi_g", xi_g), ("xi_k", xi_k)):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float, np.integer, np.floating))
            or not np.isfinite(v)
            or v < 0
        ):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v!r}")
    eta_, a_, k_, y, A, K, m = _inputs(eta, a, k, labels, num_groups, num_clients)
    S = np.eye(m)[y] if y is not None else eta_
    if counts is None:
        counts_ = np.zeros((K, A, m))
        np.add.at(counts_, (k_, a_), S)
    else:
        counts_ = _check_counts(counts, a_, k_, K, A, m)
    n = eta_.shape[0]
    G, b, tags = _constraint_rows(S, a_, k_, criterion, scope, counts_, float(xi_g), float(xi_k))
    c = S.ravel() / n  # accuracy coefficients
    A_eq = sp.kron(sp.eye(n, format="csr"), np.ones((1, m)), format="csr")
    return dict(S=S, n=n, m=m, K=K, A=A, counts=counts_, G=G, b=b, tags=tags, c=c, A_eq=A_eq)


def _duals(signed: np.ndarray, tags, criterion: str, scope: str, K: int, A: int, m: int):
    U = (2 if criterion == "eo" else 1) * A * m
    lam = np.zeros(U if scope in ("global", "both") else 0)
    mu = {kk: np.zeros(U if scope in ("local", "both") else 0) for kk in range(K)}
    for value, (kind, owner, u) in zip(signed, tags):
        if kind == "global":
            lam[u] = value
        else:
            mu[owner][u] = value
    return lam, mu


def _result(
    x: np.ndarray, prob: dict, y1: np.ndarray, y2: np.ndarray, status: str, criterion, scope
) -> LPResult:
    n, m = prob["n"], prob["m"]
    h = np.clip(x.reshape(n, m), 0.0, None)
    lam, mu = _duals(y1 - y2, prob["tags"], criterion, scope, prob["K"], prob["A"], m)
    return LPResult(
        h=h, objective=float(prob["c"] @ x), lam=lam, mu=mu, status=status, counts=prob["counts"]
    )


# ------------------------------------------------------------------ solvers
def fair_lp(
    eta: Any,
    a: Any,
    k: Any,
    criterion: str,
    scope: str,
    xi_g: float,
    xi_k: float,
    labels: Any = None,
    solver: str = "CLARABEL",
    counts: Any = None,
    num_groups: int | None = None,
    num_clients: int | None = None,
) -> LPResult:
    """Solve the fair LP with cvxpy (see the module docstring).

    ``solver`` is a cvxpy solver name.
    """
    import cvxpy as cp

    check_choice("solver", solver, tuple(cp.installed_solvers()))
    prob = _assemble(
        eta, a, k, criterion, scope, xi_g, xi_k, labels, counts, num_groups, num_clients
    )
    x = cp.Variable(prob["n"] * prob["m"], nonneg=True)
    cons = [prob["A_eq"] @ x == 1]
    G, b = prob["G"], prob["b"]
    if G.shape[0]:
        cons += [G @ x <= b, -G @ x <= b]
    problem = cp.Problem(cp.Maximize(prob["c"] @ x), cons)
    problem.solve(solver=solver)
    if x.value is None:
        raise RuntimeError(f"fair LP not solved: status {problem.status}")
    if G.shape[0]:
        y1, y2 = np.asarray(cons[1].dual_value), np.asarray(cons[2].dual_value)
    else:
        y1 = y2 = np.zeros(0)
    return _result(np.asarray(x.value), prob, y1, y2, str(problem.status), criterion, scope)


def fair_lp_scipy(
    eta: Any,
    a: Any,
    k: Any,
    criterion: str,
    scope: str,
    xi_g: float,
    xi_k: float,
    labels: Any = None,
    method: str = "highs",
    counts: Any = None,
    num_groups: int | None = None,
    num_clients: int | None = None,
) -> LPResult:
    """The same LP (same sparse matrices) solved by ``scipy.optimize.linprog(method=...)``."""
    from scipy.optimize import linprog

    check_choice("method", method, SCIPY_METHODS)
    prob = _assemble(
        eta, a, k, criterion, scope, xi_g, xi_k, labels, counts, num_groups, num_clients
    )
    G, b = prob["G"], prob["b"]
    R = G.shape[0]
    kwargs: dict[str, Any] = {}
    if R:
        kwargs = {"A_ub": sp.vstack([G, -G], format="csr"), "b_ub": np.concatenate([b, b])}
    res = linprog(
        -prob["c"],
        A_eq=prob["A_eq"],
        b_eq=np.ones(prob["n"]),
        bounds=(0, None),
        method=method,
        **kwargs,
    )
    if res.x is None:
        raise RuntimeError(f"fair LP not solved: {res.message}")
    if R:
        y = -np.asarray(res.ineqlin.marginals)  # >= 0 multipliers of the minimisation
        y1, y2 = y[:R], y[R:]
    else:
        y1 = y2 = np.zeros(0)
    status = "optimal" if res.status == 0 else str(res.message)
    return _result(np.asarray(res.x), prob, y1, y2, status, criterion, scope)


# ------------------------------------------------------ duals -> classifier
def lp_classifier_predict(
    eta: Any, a: Any, k: Any, criterion: str, scope: str, lam: Any, mu: dict[int, Any], counts: Any
) -> np.ndarray:
    """Plug-in rule ``argmax_j (M(a,k)^T eta)_j`` (ties -> lowest index) with the LP's duals.

    ``counts (K, A, m)`` must be the counts that defined the LP (``LPResult.counts``);
    ``M`` is :func:`fedrec.algorithms.fedfact.calibration_matrix` with the pooled counts
    ``counts.sum(0)``, so the scale of the duals matches (module docstring).
    """
    check_choice("criterion", criterion, CRITERIA)
    check_choice("scope", scope, SCOPES)
    counts_ = np.asarray(counts, dtype=np.float64)
    if counts_.ndim != 3:
        raise ConfigError(f"counts must have shape (K, A, m), got {counts_.shape}")
    K, A, m = counts_.shape
    eta_, a_, k_, _, _, _, _ = _inputs(eta, a, k, None, A, K)
    pooled = counts_.sum(axis=0)
    pred = np.zeros(eta_.shape[0], dtype=np.int64)
    empty = np.zeros((0, A, m, m))
    for kk in range(K):
        rows = np.flatnonzero(k_ == kk)
        if rows.size == 0:
            continue
        if counts_[kk].sum() <= 0:
            raise ConfigError(
                f"counts of client {kk} are all zero but the sample has rows of that client"
            )
        Dg = (
            global_constraints(criterion, counts_[kk], pooled)
            if scope in ("global", "both")
            else empty
        )
        Dl = local_constraints(criterion, counts_[kk]) if scope in ("local", "both") else empty
        M = calibration_matrix(counts_[kk], pooled, Dg, lam, Dl, mu.get(kk, np.zeros(Dl.shape[0])))
        pred[rows] = np.argmax(np.einsum("ni,nij->nj", eta_[rows], M[a_[rows]]), axis=1)
    return pred


def plugin_constraint_values(
    S: Any, h: Any, a: Any, k: Any, criterion: str, counts: Any
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Constraint values of a (randomized or hard) classifier ``h`` on the sample, as the
    LP sees them: ``(D^g (U_g,), {k: D^k (U_l,)})`` with plug-in confusions from ``S``
    (scores or one-hot labels) and the ``D`` matrices from ``counts (K, A, m)``."""
    check_choice("criterion", criterion, CRITERIA)
    counts_ = np.asarray(counts, dtype=np.float64)
    if counts_.ndim != 3:
        raise ConfigError(f"counts must have shape (K, A, m), got {counts_.shape}")
    K, A, m = counts_.shape
    S_, a_, k_, _, _, _, _ = _inputs(S, a, k, None, A, K)
    pooled = counts_.sum(axis=0)
    h_ = np.asarray(h)
    glob = np.zeros((2 if criterion == "eo" else 1) * A * m)
    loc: dict[int, np.ndarray] = {}
    for kk in range(K):
        rows = np.flatnonzero(k_ == kk)
        if counts_[kk].sum() <= 0:
            continue
        C = confusion_from_scores(S_[rows], h_[rows], a_[rows], A)
        glob += constraint_values(global_constraints(criterion, counts_[kk], pooled), C)
        loc[kk] = constraint_values(local_constraints(criterion, counts_[kk]), C)
    return glob, loc
