"""FedFACT: federated global + local group-fairness calibration (pure maths, no flwr).

Implements the notation, constraint matrices, calibration matrix, cost-sensitive loss
and the post-processing (Algorithm 2) client / server dual steps of FedFACT
(Zhang et al., NeurIPS 2025) as described in ``reference/fedfact.md`` §2-§7. Matrices
are numpy arrays; where autograd is needed the same formulas run on torch tensors.

Setting (client-centric, fedfact.md §2 and §6.3 "statistics needed before round 1")
-----------------------------------------------------------------------------------
``K`` clients, ``A`` sensitive groups, ``m`` classes. Client ``k`` knows its own label
counts ``own_counts[a, y] = n_k[a, y]`` (shape ``(A, m)``). In a "round 0" the clients
send these counts once and the server broadcasts only the pooled counts
``pooled_counts[a, y] = sum_k n_k[a, y]``. Every function a client runs therefore takes
``(own_counts, pooled_counts)`` and derives the population probabilities of §2 from
empirical counts (``N = pooled_counts.sum()``):

- ``p_{a,k} = n_k[a,:].sum() / N``, ``p_{k|a} = n_k[a,:].sum() / n[a,:].sum()``,
  ``p_{a|k} = n_k[a,:].sum() / n_k.sum()``, ``p_k = n_k.sum() / N`` (= ``p̂_k``),
- ``p_{a,y} = n[a,y] / N``, ``p_y = n[:,y].sum() / N``,
  ``p_{a,y,k} = n_k[a,y] / N``, ``p_{y,k} = n_k[:,y].sum() / N``.

Counts may be non-negative floats (e.g. expected counts ``sum_i eta_i`` in a label-free
setting); they are used only through these ratios. Confusion matrices are
``C^{a,k}[i, j] = P(Y=i, Yhat=j | A=a, K=k)`` (each sums to 1 over ``i, j``); for an empty
``(a, k)`` cell it is **defined as all zeros** (see :func:`confusion_from_predictions`).

Constraints (fedfact.md §3, §3.1, §4)
-------------------------------------
Subgroup form: every group is compared with the whole population. A constraint tensor
``D`` has shape ``(U, A, m, m)`` with constraint index ``u = (a', y)`` in row-major order
(``u = a' * m + y``); for ``"eo"`` the ``A*m`` TPR constraints come first, then the ``A*m``
FPR constraints with the same ordering. The value of a constraint is
``D_u(h) = sum_{a} <D_u^a, C^a>`` per client (:func:`constraint_values`); the **global**
value is the sum of the clients' contributions, the **local** value of client ``k`` is
its own term computed with :func:`local_constraints`.

- ``"dp"``:  ``P(Yhat=y | A=a') - P(Yhat=y)``
- ``"eop"``: ``P(Yhat=y | Y=y, A=a') - P(Yhat=y | Y=y)`` (per-class recall)
- ``"eo"``:  the EOP (TPR) constraints and ``P(Yhat=y | Y!=y, A=a') - P(Yhat=y | Y!=y)``
  (FPR), the mean-equalized-odds form of §3.1.

Choices the paper leaves open, made here:

- **All classes are constrained**, also for binary tasks (§3.2, "the paper's code
  path"). For DP with ``m = 2`` the two classes are redundant (equal up to sign). For
  ``"eop"`` with ``m = 2`` constraining both classes means TPR *and* TNR parity, i.e. it
  is as strict as equalized odds; ``fedrec.metrics`` reports binary EOP on class 1 only.
- **Undefined constraints are dropped**: a constraint ``u = (a', y)`` whose conditioning
  event has zero count (no rows of group ``a'``; for TPR no rows of ``(a', y)``; for FPR
  no rows of ``(a', Y != y)``) is an all-zero matrix (value 0, never active). The same
  rule on the client's own counts drops undefined local constraints. This matches
  ``fedrec.metrics`` ("groups with zero rows are ignored").
- **Local matrices** use the client-conditional probabilities of the "Local" column of
  §3.1. Mathematically ``local_constraints(c, own) == global_constraints(c, own, own)``
  (a single client that is the whole population), which is how they are computed.

Calibration matrix and sign convention (fedfact.md §5.2-§5.4)
-------------------------------------------------------------
Signed duals ``lam in R^{U_g}`` (``lam = lam^(1) - lam^(2)``) and ``mu_k in R^{U_l}``::

    M(a,k) = I - (1/p_{a,k}) * [ sum_u lam_u Dg_u^{a,k} + sum_u mu_{k,u} Dl_u^{a,k} ]

with a **plus** between the global and the local sums and the factor ``1/p_{a,k}``
(joint, ``N``-normalised) on **both**. This is the sign derived from the Lagrangian in
§5.2-5.3 when ``Dl`` has the same orientation as ``Dg`` (the paper's appendix prints a
minus, §5.4). It is settled by the invariant of §5.4, tested in
``tests/test_fedfact_math.py``::

    sum_{a,k} p_{a,k} <M(a,k), C^{a,k}> = sum_{a,k} p_{a,k} <I, C^{a,k}>
                                          - sum_u lam_u D^g_u(h) - sum_{k,u} mu_{k,u} D^k_u(h)

and by the test that one dual step on a violated local constraint reduces it. Groups
with ``p_{a,k} = 0`` get ``M(a,k) = I`` (no sample can have that group on that client).

Post-processing (fedfact.md §7, Theorem 5, eq. 8, Algorithm 2)
--------------------------------------------------------------
Client objective (label-free; ``eta`` are the pre-trained scores on the client's data)::

    H'_k(lam, mu_k) = (1/n_k) sum_i sigma_beta( M(a_i,k)^T eta_i ) + xi_g ||lam||_1
                      + (xi_k / p̂_k) ||mu_k||_1

where ``sigma_beta`` is a smoothed max (:func:`smooth_max`). ``H = sum_k p̂_k H'_k`` is
the negated dual (dual function ``= 1 - H``), minimised over the signed duals.

- **Smoothing: entropic by default** (``sigma_beta(z) = beta logsumexp(z / beta)``, the
  OptFair successor's form). The paper's soft-max-weighted average
  ``sum_i softmax(z/beta)_i z_i`` (``smoothing="softmax-average"``) is not convex (for
  ``z = (t, 0)`` it dips below 0 near ``t = -1.28 beta``) and its gradient is not the
  constraint value of any classifier, so the duals can sit at a point where the smoothed
  classifier meets ``xi`` while the deployed argmax does not. Measured in
  ``experiments/fedfact/README.md`` (Bank, German: local train-set gaps 0.020-0.034 at
  ``xi = 0.01`` on clients with ~20 rows of one group). With the entropic form the
  gradient of ``H'_k`` in ``(lam, mu_k)`` is *exactly* ``-(1/p̂_k)`` times the plug-in
  constraint values of the randomized classifier ``softmax(M(a,k)^T eta / beta)``
  (:meth:`PostProcessingClient.proba`), which is what is deployed: at the dual optimum
  its constraints hold (KKT of the L1-penalised dual).
- **Deployed classifier** (:meth:`PostProcessingClient.predict` with ``u``): a draw
  from that softmax, by inverse CDF from one uniform per row (the caller seeds them per
  run seed, client and row). The fair Bayes-optimal classifier needs randomization
  where the constraint binds on an atom (Fairlearn's ThresholdOptimizer randomizes there
  too); with ``beta = 0.01`` only rows within a few ``beta`` of a boundary are
  randomized. ``predict`` without ``u`` is the paper's deterministic argmax (ties ->
  lowest class index).
- **Dual steps are proximal** (the OptFair signed form, §5.2 last bullet, §11.3):
  gradient step on the *smooth* part, soft-threshold by ``lr * xi``, then Euclidean
  projection onto the L1 ball ``{||v||_1 <= bound}`` (:func:`dual_prox_step`). This
  composition is the exact prox of ``xi ||.||_1 + indicator(L1 ball)``: the projection
  onto an L1 ball is itself a soft-threshold, so both compose into one soft-threshold.
- **xi_g is applied once, at the server** (§6.3, §7.3): clients send the gradient of
  the smooth part of ``H'_k`` w.r.t. ``lam`` only; :func:`server_lambda_step` takes
  ``lam - lr * sum_k w_k grad_k`` (``w_k = p̂_k``) and applies the soft-threshold by
  ``lr * xi_g`` once. The local penalty ``(xi_k/p̂_k)||mu_k||_1`` is handled by the
  client.
- **Server search** (:func:`dual_newton_step`, the default of the strategy): instead of
  one fixed step, a Levenberg-Marquardt damped proximal Newton step on the clients'
  summed values, gradients and Hessians of ``F_k(lam) = min_mu H'_k`` (Hessian by the
  Schur complement over the free entries of ``mu_k``, :meth:`PostProcessingClient.
  dual_hessian`), with an acceptance test on the dual objective. The dual's curvature
  scales like ``1/beta`` and like the inverse group shares, so no fixed step fits every
  dataset (Adult converged, German / Bank EO oscillated or diverged); ``U_g`` is tiny.
- **Step sizes** (``inner="prox"``): ``mu`` enters ``M`` with the factor ``1/p_{a,k}``
  and ``H'_k`` averages over the client's rows only, so the curvature in ``mu`` is about
  ``1/p̂_k^2`` times the curvature in ``lam``; ``inner="lbfgs"`` solves the inner problem.
- **Client computations** run on the CPU in float64 with ``torch.set_num_threads(1)``
  (restored afterwards; :func:`fedrec.training.single_thread`): deterministic and, for
  these small tensors, much faster than multi-threaded kernels on a busy machine.
- **Labels**: the objective is label-free; for eop/eo the plug-in constraint values
  equal the label-based ones only for scores calibrated within each (group, client)
  cell: see :mod:`fedrec.algorithms.calibration`, applied by the client half.

In-processing (fedfact.md §6): :func:`cost_sensitive_loss` is the soft-target
cross-entropy with ``Mbar = shift_positive(M)``, one shift ``kappa`` for the whole
``(A, m, m)`` tensor of a client. In the signed form the dual ascent of Algorithm 1
(steps 5 and 9) is ``dual_prox_step(lam, -sum_k constraint_values(Dg_k, C_k), lr, xi_g,
bound)`` (``-D`` is the gradient of the hard-max ``H`` at the current classifier), which
again subtracts ``xi_g`` once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedrec.errors import ConfigError
from fedrec.training import single_thread

__all__ = [
    "CRITERIA",
    "OUTPUTS",
    "SCOPES",
    "SMOOTHINGS",
    "DualNewton",
    "draw_classes",
    "dual_newton_step",
    "expected_counts",
    "smooth_max",
    "PostProcessingClient",
    "calibration_matrix",
    "check_choice",
    "client_objective",
    "client_statistics",
    "confusion_from_predictions",
    "confusion_from_scores",
    "constraint_values",
    "cost_sensitive_loss",
    "dual_prox_step",
    "fairness_gap",
    "global_constraints",
    "local_constraints",
    "num_constraints",
    "project_l1_ball",
    "project_simplex_ball",
    "server_lambda_step",
    "shift_positive",
    "soft_max_average",
    "soft_threshold",
]

CRITERIA: tuple[str, ...] = ("dp", "eop", "eo")
SCOPES: tuple[str, ...] = ("global", "local", "both")
INNER_SOLVERS: tuple[str, ...] = ("prox", "lbfgs")
SMOOTHINGS: tuple[str, ...] = ("entropic", "softmax-average")
OUTPUTS: tuple[str, ...] = ("randomized", "argmax")


# --------------------------------------------------------------------------- checks
def check_choice(name: str, value: Any, allowed: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise a one-line ConfigError."""
    try:
        ok = value in tuple(allowed)
    except TypeError:  # unhashable / array-like values
        ok = False
    if not ok:
        raise ConfigError(
            f"{name} must be one of {', '.join(repr(v) for v in allowed)}; got {value!r}"
        )
    return value


def _number(name: str, value: Any, *, minimum: float | None = None, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and (v <= minimum if strict else v < minimum):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return v


def _counts(name: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ConfigError(
            f"{name} must be a 2-D (A, m) array of counts with A, m >= 1, got shape {arr.shape}"
        )
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ConfigError(f"{name} must hold non-negative numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() < 0:
        raise ConfigError(f"{name} must hold finite non-negative counts")
    return arr


def _count_pair(own: Any, pooled: Any) -> tuple[np.ndarray, np.ndarray]:
    own_c = _counts("own_counts", own)
    pooled_c = _counts("pooled_counts", pooled)
    if own_c.shape != pooled_c.shape:
        raise ConfigError(
            "own_counts and pooled_counts must have the same (A, m) shape, "
            f"got {own_c.shape} and {pooled_c.shape}"
        )
    if pooled_c.sum() <= 0:
        raise ConfigError("pooled_counts must have a positive total")
    if np.any(own_c > pooled_c * (1 + 1e-9) + 1e-9):
        raise ConfigError(
            "own_counts must not exceed pooled_counts entry-wise (pooled = sum over clients)"
        )
    return own_c, pooled_c


def _safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast_shapes(num.shape, den.shape))
    np.divide(num, den, out=out, where=den > 0)
    return out


def client_statistics(own_counts: Any, pooled_counts: Any) -> dict[str, Any]:
    """The empirical probabilities of fedfact.md §2 for one client (see module docstring).

    Keys: ``N``, ``n_k``, ``p_k``, ``p_a`` (A,), ``p_ak`` (A,), ``p_k_given_a`` (A,),
    ``p_a_given_k`` (A,), ``p_ay`` (A, m), ``p_y`` (m,), ``p_ayk`` (A, m), ``p_yk`` (m,).
    Ratios with a zero denominator are 0.
    """
    own, pooled = _count_pair(own_counts, pooled_counts)
    N = float(pooled.sum())
    n_ak, n_a, n_k = own.sum(axis=1), pooled.sum(axis=1), float(own.sum())
    return {
        "N": N,
        "n_k": n_k,
        "p_k": n_k / N,
        "p_a": n_a / N,
        "p_ak": n_ak / N,
        "p_k_given_a": _safe_div(n_ak, n_a),
        "p_a_given_k": _safe_div(n_ak, np.float64(n_k)),
        "p_ay": pooled / N,
        "p_y": pooled.sum(axis=0) / N,
        "p_ayk": own / N,
        "p_yk": own.sum(axis=0) / N,
    }


# ------------------------------------------------------------------- constraints
def num_constraints(criterion: str, A: int, m: int) -> int:
    """``U`` of a criterion: ``A*m`` for dp/eop, ``2*A*m`` for eo."""
    check_choice("criterion", criterion, CRITERIA)
    return (2 if criterion == "eo" else 1) * A * m


def _constraint_tensor(criterion: str, own: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """``(U, A, m, m)`` constraint matrices of one client (pooled = population)."""
    A, m = own.shape
    N = pooled.sum()
    n_ak = own.sum(axis=1)  # (A,) this client's rows per group
    n_a = pooled.sum(axis=1)  # (A,) population rows per group
    p_ak = n_ak / N
    eye = np.eye(A)

    def dp() -> np.ndarray:
        D = np.zeros((A, m, A, m, m))  # (a', y, a, i, j)
        coef = _safe_div(n_ak, n_a)[:, None] * eye - p_ak[None, :]  # (a', a)
        coef[n_a <= 0] = 0.0  # P(.|A=a') undefined: drop
        for y in range(m):
            D[:, y, :, :, y] = coef[:, :, None]  # column y, every row i
        return D

    def tpr() -> np.ndarray:
        D = np.zeros((A, m, A, m, m))
        n_y = pooled.sum(axis=0)
        for y in range(m):
            defined = pooled[:, y] > 0  # rows of (a', y) exist (then n_y[y] > 0 too)
            coef = (
                _safe_div(np.diag(p_ak), (pooled[:, y] / N)[:, None])
                - _safe_div(p_ak, n_y[y] / N)[None, :]
            )
            coef[~defined] = 0.0
            D[:, y, :, y, y] = coef
        return D

    def fpr() -> np.ndarray:
        D = np.zeros((A, m, A, m, m))
        n_y = pooled.sum(axis=0)
        for y in range(m):
            q_a = n_a - pooled[:, y]  # rows of group a' with Y != y
            q = N - n_y[y]
            defined = q_a > 0
            coef = _safe_div(np.diag(p_ak), (q_a / N)[:, None]) - _safe_div(p_ak, q / N)[None, :]
            coef[~defined] = 0.0
            for i in range(m):
                if i != y:
                    D[:, y, :, i, y] = coef
        return D

    if criterion == "dp":
        out = dp()
    elif criterion == "eop":
        out = tpr()
    else:
        out = np.concatenate([tpr(), fpr()], axis=0)
    return out.reshape(-1, A, m, m)


def global_constraints(criterion: str, own_counts: Any, pooled_counts: Any) -> np.ndarray:
    """Client ``k``'s global constraint matrices ``Dg`` (fedfact.md §3.1, "Global" column).

    Shape ``(U_g, A, m, m)``, ``U_g = A*m`` (dp, eop) or ``2*A*m`` (eo: TPR then FPR),
    ``u = a' * m + y``. The global constraint value is
    ``sum_k constraint_values(global_constraints(c, n_k, n), C_k)``.
    """
    check_choice("criterion", criterion, CRITERIA)
    own, pooled = _count_pair(own_counts, pooled_counts)
    return _constraint_tensor(criterion, own, pooled)


def local_constraints(criterion: str, own_counts: Any) -> np.ndarray:
    """Client ``k``'s local constraint matrices ``Dl`` (fedfact.md §3.1, "Local" column).

    Same shape and indexing as :func:`global_constraints`; built from the client's own
    counts only (client-conditional probabilities). ``constraint_values(Dl, C_k)`` is the
    client's local disparity vector ``D^k(h)``.
    """
    check_choice("criterion", criterion, CRITERIA)
    own = _counts("own_counts", own_counts)
    if own.sum() <= 0:
        raise ConfigError("own_counts must have a positive total for local constraints")
    return _constraint_tensor(criterion, own, own)


def constraint_values(D: Any, C: Any) -> np.ndarray:
    """``(U,)`` values ``sum_a <D_u^a, C^a>`` for ``D (U, A, m, m)`` and ``C (A, m, m)``."""
    D = np.asarray(D, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if D.ndim != 4 or C.ndim != 3 or D.shape[1:] != C.shape:
        raise ConfigError(
            "D must be (U, A, m, m) and C (A, m, m) with matching (A, m, m); "
            f"got {D.shape} and {C.shape}"
        )
    return np.einsum("uaij,aij->u", D, C)


# ------------------------------------------------------------------ confusions
def confusion_from_predictions(y: Any, yhat: Any, a: Any, A: int, m: int) -> np.ndarray:
    """``C^{a,k}[i, j] = P(Y=i, Yhat=j | A=a)`` on one client's rows, shape ``(A, m, m)``.

    Groups without rows get an all-zero matrix (they carry weight ``p_{a,k} = 0``).
    """
    from fedrec.metrics import confusion_counts

    counts = confusion_counts(
        np.asarray(y), np.asarray(yhat), np.asarray(a), int(m), int(A)
    ).astype(np.float64)
    return _safe_div(counts, counts.sum(axis=(1, 2))[:, None, None])


def confusion_from_scores(eta: Any, h: Any, a: Any, A: int) -> np.ndarray:
    """Plug-in confusion ``C[a, i, j] = (1/n_a) sum_{t in a} eta_{t,i} h_{t,j}``, ``(A, m, m)``.

    ``eta`` is ``(n, m)`` (scores, or one-hot labels); ``h`` is ``(n, m)`` class
    probabilities of a randomized classifier or ``(n,)`` hard predictions. This is the
    confusion the label-free post-processing objective and the LP of
    :mod:`fedrec.algorithms.lp` see. Empty groups give all-zero matrices.
    """
    eta = np.asarray(eta, dtype=np.float64)
    a = np.asarray(a).astype(np.int64)
    if eta.ndim != 2:
        raise ConfigError(f"eta must be a 2-D (n, m) array, got shape {eta.shape}")
    n, m = eta.shape
    h = np.asarray(h)
    if h.ndim == 1:
        h = np.eye(m)[h.astype(np.int64)]
    h = h.astype(np.float64)
    if h.shape != eta.shape or a.shape != (n,):
        raise ConfigError(
            f"h must be (n,) or (n, m) and a (n,) matching eta {eta.shape}; "
            f"got {h.shape} and {a.shape}"
        )
    if n and (a.min() < 0 or a.max() >= A):
        raise ConfigError(f"a holds a group outside 0..{A - 1}")
    C = np.zeros((A, m, m))
    np.add.at(C, a, eta[:, :, None] * h[:, None, :])
    return _safe_div(C, np.bincount(a, minlength=A)[:, None, None].astype(np.float64))


# ----------------------------------------------------------- calibration matrix
def _dual(name: str, value: Any, U: int, as_torch: bool, dtype: torch.dtype) -> Any:
    if value is None:
        value = np.zeros(U)
    if isinstance(value, torch.Tensor):
        if value.shape != (U,):
            raise ConfigError(f"{name} must have shape ({U},), got {tuple(value.shape)}")
        return value.to(dtype)
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (U,):
        raise ConfigError(f"{name} must have shape ({U},), got {arr.shape}")
    return torch.as_tensor(arr, dtype=dtype) if as_torch else arr


def _Dtensor(name: str, D: Any, A: int, m: int) -> np.ndarray:
    if D is None:
        return np.zeros((0, A, m, m))
    D = np.asarray(D, dtype=np.float64)
    if D.ndim != 4 or D.shape[1:] != (A, m, m):
        raise ConfigError(f"{name} must have shape (U, {A}, {m}, {m}), got {D.shape}")
    return D


def _calibration(inv_p: np.ndarray, Dg: np.ndarray, lam: Any, Dl: np.ndarray, mu: Any) -> Any:
    """``I - inv_p[a] * (lam . Dg + mu . Dl)`` in numpy or torch (if lam is a tensor)."""
    A, m = Dg.shape[1], Dg.shape[2]
    if isinstance(lam, torch.Tensor):
        dtype = lam.dtype
        S = torch.einsum("u,uaij->aij", lam, torch.as_tensor(Dg, dtype=dtype))
        S = S + torch.einsum("u,uaij->aij", mu, torch.as_tensor(Dl, dtype=dtype))
        eye = torch.eye(m, dtype=dtype).expand(A, m, m)
        return eye - torch.as_tensor(inv_p, dtype=dtype)[:, None, None] * S
    S = np.einsum("u,uaij->aij", lam, Dg) + np.einsum("u,uaij->aij", mu, Dl)
    return np.eye(m)[None] - inv_p[:, None, None] * S


def calibration_matrix(
    own_counts: Any, pooled_counts: Any, Dg: Any, lam: Any, Dl: Any = None, mu: Any = None
) -> np.ndarray | torch.Tensor:
    """``M(a,k)`` for every group ``a``: shape ``(A, m, m)`` (fedfact.md §5.3, sign: module doc).

    ``M(a,k) = I - (1/p_{a,k}) [sum_u lam_u Dg_u^a + sum_u mu_u Dl_u^a]`` with signed
    duals. If ``lam`` or ``mu`` is a torch tensor the result is a differentiable torch
    tensor (dtype of the tensor), otherwise numpy. ``Dl``/``mu`` may be ``None`` (no local
    term); ``Dg`` may have ``U_g = 0`` rows. Groups with ``p_{a,k} = 0`` get ``I``.
    """
    own, pooled = _count_pair(own_counts, pooled_counts)
    A, m = own.shape
    Dg_ = _Dtensor("Dg", Dg, A, m)
    Dl_ = _Dtensor("Dl", Dl, A, m)
    as_torch = isinstance(lam, torch.Tensor) or isinstance(mu, torch.Tensor)
    dtype = next((x.dtype for x in (lam, mu) if isinstance(x, torch.Tensor)), torch.float64)
    lam_ = _dual("lam", lam, Dg_.shape[0], as_torch, dtype)
    mu_ = _dual("mu", mu, Dl_.shape[0], as_torch, dtype)
    inv_p = _safe_div(np.float64(pooled.sum()), own.sum(axis=1))
    return _calibration(inv_p, Dg_, lam_, Dl_, mu_)


def shift_positive(M: Any) -> Any:
    """``Mbar = M + kappa``, ``kappa = -min(M) + 1e-5`` if ``min(M) < 0`` else 0 (fedfact.md §5.4).

    One ``kappa`` for the whole tensor (all groups of the client); numpy or torch. The
    shift does not change ``argmax_j (Mbar^T eta)_j`` because ``sum_i eta_i = 1``.
    """
    mn = float(M.min())
    return M + (-mn + 1e-5 if mn < 0 else 0.0)


# ----------------------------------------------------------------- losses
def cost_sensitive_loss(logits: torch.Tensor, y: Any, a: Any, Mbar: Any) -> torch.Tensor:
    """In-processing loss (fedfact.md §6.1).

    ``-mean_i sum_j Mbar[a_i, y_i, j] log softmax(logits_i)_j``.

    With ``M = I`` (zero duals, ``kappa = 0``) this equals ``F.cross_entropy(logits, y)``.
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise ConfigError("logits must be a 2-D (n, m) torch tensor")
    dev = logits.device
    y_t = torch.as_tensor(
        np.asarray(y) if not isinstance(y, torch.Tensor) else y, dtype=torch.long, device=dev
    )
    a_t = torch.as_tensor(
        np.asarray(a) if not isinstance(a, torch.Tensor) else a, dtype=torch.long, device=dev
    )
    Mb = torch.as_tensor(
        np.asarray(Mbar) if not isinstance(Mbar, torch.Tensor) else Mbar,
        dtype=logits.dtype,
        device=dev,
    )
    if Mb.ndim != 3 or Mb.shape[1:] != (logits.shape[1], logits.shape[1]):
        raise ConfigError(
            f"Mbar must be (A, m, m) with m = {logits.shape[1]}, got {tuple(Mb.shape)}"
        )
    targets = Mb[a_t, y_t]  # (n, m): row y_i of Mbar(a_i)
    return -(targets * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()


def soft_max_average(z: Any, beta: float) -> Any:
    """``sigma_beta(z) = sum_i softmax(z/beta)_i z_i`` along the last axis (fedfact.md §7.1).

    Tends to ``max(z)`` as ``beta -> 0``; torch in, torch out (numpy in, numpy out).
    """
    b = _number("beta", beta, minimum=0.0, strict=True)
    if isinstance(z, torch.Tensor):
        return (torch.softmax(z / b, dim=-1) * z).sum(dim=-1)
    zt = torch.as_tensor(np.asarray(z, dtype=np.float64))
    return (torch.softmax(zt / b, dim=-1) * zt).sum(dim=-1).numpy()


def smooth_max(z: Any, beta: float, smoothing: str = "entropic") -> Any:
    """A smoothed ``max`` along the last axis: ``entropic`` = ``beta logsumexp(z / beta)``
    (convex; its gradient in ``z`` is ``softmax(z / beta)``, the randomized classifier that
    is deployed) or ``softmax-average`` = :func:`soft_max_average` (the paper's, not convex).
    Both tend to ``max(z)`` as ``beta -> 0``; torch in, torch out (numpy in, numpy out).
    """
    check_choice("smoothing", smoothing, SMOOTHINGS)
    b = _number("beta", beta, minimum=0.0, strict=True)
    if smoothing == "softmax-average":
        return soft_max_average(z, b)
    if isinstance(z, torch.Tensor):
        return b * torch.logsumexp(z / b, dim=-1)
    zt = torch.as_tensor(np.asarray(z, dtype=np.float64))
    return (b * torch.logsumexp(zt / b, dim=-1)).numpy()


def _scores_torch(eta: torch.Tensor, a: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``(M(a_i)^T eta_i)_j`` for all rows: ``(n, m)``."""
    return torch.einsum("ni,nij->nj", eta, M[a])


def _eta_a(eta: Any, a: Any, A: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    eta_ = np.asarray(
        eta.detach().cpu().numpy() if isinstance(eta, torch.Tensor) else eta, dtype=np.float64
    )
    a_ = np.asarray(a.cpu().numpy() if isinstance(a, torch.Tensor) else a)
    if eta_.ndim != 2 or eta_.shape[1] != m:
        raise ConfigError(f"eta must be a 2-D (n, {m}) array of scores, got shape {eta_.shape}")
    if a_.shape != (eta_.shape[0],):
        raise ConfigError(
            f"a must be a 1-D array of {eta_.shape[0]} group ids, got shape {a_.shape}"
        )
    if a_.size and (not np.all(np.mod(a_, 1) == 0) or a_.min() < 0 or a_.max() >= A):
        raise ConfigError(f"a must hold integer group ids in 0..{A - 1}")
    return eta_, a_.astype(np.int64)


def client_objective(
    eta: Any,
    a: Any,
    own_counts: Any,
    pooled_counts: Any,
    Dg: Any,
    lam: Any,
    Dl: Any,
    mu: Any,
    xi_g: float,
    xi_k: float,
    beta: float = 0.1,
    smoothing: str = "softmax-average",
) -> torch.Tensor:
    """``H'_k(lam, mu_k)`` of fedfact.md §7.1 eq. (8) (smooth part + both L1 penalties).

    ``(1/n_k) sum_i sigma_beta(M(a_i,k)^T eta_i) + xi_g ||lam||_1 + (xi_k/p̂_k) ||mu||_1``
    (``sigma_beta`` = :func:`smooth_max` with ``smoothing``; default the paper's)
    with ``p̂_k = own_counts.sum() / pooled_counts.sum()``. ``lam``/``mu`` may be torch
    tensors requiring grad (the result is differentiable) or numpy arrays. ``n_k`` is the
    number of rows of ``eta``.
    """
    own, pooled = _count_pair(own_counts, pooled_counts)
    A, m = own.shape
    xg = _number("xi_g", xi_g, minimum=0.0)
    xk = _number("xi_k", xi_k, minimum=0.0)
    p_k = own.sum() / pooled.sum()
    if p_k <= 0:
        raise ConfigError("own_counts must have a positive total (p̂_k > 0)")
    eta_, a_ = _eta_a(eta, a, A, m)
    Dg_, Dl_ = _Dtensor("Dg", Dg, A, m), _Dtensor("Dl", Dl, A, m)
    dtype = next((x.dtype for x in (lam, mu) if isinstance(x, torch.Tensor)), torch.float64)
    lam_t = _dual("lam", lam, Dg_.shape[0], True, dtype)
    mu_t = _dual("mu", mu, Dl_.shape[0], True, dtype)
    inv_p = _safe_div(np.float64(pooled.sum()), own.sum(axis=1))
    M = _calibration(inv_p, Dg_, lam_t, Dl_, mu_t)
    smooth = _smooth_part(
        torch.as_tensor(eta_, dtype=dtype), torch.as_tensor(a_), M, beta, smoothing
    )
    return smooth + xg * lam_t.abs().sum() + (xk / p_k) * mu_t.abs().sum()


def _smooth_part(
    eta: torch.Tensor,
    a: torch.Tensor,
    M: torch.Tensor,
    beta: float,
    smoothing: str = "softmax-average",
) -> torch.Tensor:
    if eta.shape[0] == 0:
        return M.sum() * 0.0
    return smooth_max(_scores_torch(eta, a, M), beta, smoothing).mean()


# ------------------------------------------------------- projections / prox steps
def _project_simplex_eq(w: np.ndarray, radius: float) -> np.ndarray:
    """Projection of ``w >= 0`` with ``sum(w) > radius`` onto ``{x >= 0, sum x = radius}``
    (Duchi, Shalev-Shwartz, Singer, Chandra 2008, sort-based, O(n log n))."""
    if radius <= 0:
        return np.zeros_like(w)
    u = np.sort(w)[::-1]
    css = np.cumsum(u) - radius
    idx = np.arange(1, w.size + 1)
    rho = idx[u - css / idx > 0][-1]
    theta = css[rho - 1] / rho
    return np.maximum(w - theta, 0.0)


def _vector(name: str, v: Any) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must hold finite numbers")
    return arr


def project_l1_ball(v: Any, radius: float) -> np.ndarray:
    """Euclidean projection of a real vector onto ``{x : ||x||_1 <= radius}``.

    (Duchi et al. 2008.)
    """
    v = _vector("v", v)
    r = _number("radius", radius, minimum=0.0)
    if np.abs(v).sum() <= r:
        return v.copy()
    return np.sign(v) * _project_simplex_eq(np.abs(v), r)


def project_simplex_ball(v: Any, radius: float) -> np.ndarray:
    """Euclidean projection onto ``{x >= 0, ||x||_1 <= radius}``.

    The paper's non-negative Λ (§11.3).

    Clamp at zero; if the sum still exceeds ``radius``, project onto the simplex of that
    radius (the KKT threshold is then positive, so both steps agree with the joint prox).
    """
    v = _vector("v", v)
    r = _number("radius", radius, minimum=0.0)
    x = np.maximum(v, 0.0)
    if x.sum() <= r:
        return x
    return _project_simplex_eq(x, r)


def soft_threshold(v: Any, t: float) -> np.ndarray:
    """``sign(v) * max(|v| - t, 0)`` (prox of ``t ||.||_1``)."""
    v = _vector("v", v)
    tt = _number("t", t, minimum=0.0)
    return np.sign(v) * np.maximum(np.abs(v) - tt, 0.0)


def dual_prox_step(v: Any, grad: Any, lr: float, xi: float, radius: float) -> np.ndarray:
    """One proximal step for ``min_v f(v) + xi ||v||_1`` over ``{||v||_1 <= radius}``.

    ``v - lr * grad`` (``grad`` of the smooth ``f``), soft-threshold by ``lr * xi``, then
    project onto the L1 ball: the exact prox of ``xi||.||_1 + indicator`` (module doc).
    """
    v = _vector("v", v)
    g = _vector("grad", grad)
    if g.shape != v.shape:
        raise ConfigError(f"grad must have the shape of v {v.shape}, got {g.shape}")
    step = _number("lr", lr, minimum=0.0, strict=True)
    x = _number("xi", xi, minimum=0.0)
    return project_l1_ball(soft_threshold(v - step * g, step * x), radius)


def server_lambda_step(
    lam: Any, grads: Sequence[Any], weights: Sequence[float], lr: float, xi_g: float, bound: float
) -> np.ndarray:
    """Server update of Algorithm 2 (fedfact.md §7.2 step 3), signed form.

    ``lam <- prox(lam - lr * sum_k w_k grad_k)`` where ``grad_k`` is the gradient of the
    **smooth** part of ``H'_k`` (clients do not add ``xi_g sign(lam)``); the ``xi_g ||lam||_1``
    term is applied once here by the soft-threshold, then the L1-ball projection of
    radius ``bound``. Weights are used as given (``w_k = p̂_k`` sums to 1 over all clients).
    """
    lam_ = _vector("lam", lam)
    if len(grads) != len(weights) or len(grads) == 0:
        raise ConfigError(
            "grads and weights must be non-empty and of equal length, "
            f"got {len(grads)} and {len(weights)}"
        )
    total = np.zeros_like(lam_)
    for i, (g, w) in enumerate(zip(grads, weights)):
        g_ = _vector(f"grads[{i}]", g)
        if g_.shape != lam_.shape:
            raise ConfigError(f"grads[{i}] must have the shape of lam {lam_.shape}, got {g_.shape}")
        total += _number(f"weights[{i}]", w, minimum=0.0) * g_
    return dual_prox_step(lam_, total, lr, xi_g, bound)


# ------------------------------------------------------------ post-processing
@dataclass(eq=False)
class PostProcessingClient:
    """What one client of FedFACT-Post does (Algorithm 2, fedfact.md §7.2), pure.

    ``eta`` ``(n, m)`` are the frozen scores on the client's rows, ``a`` ``(n,)`` their
    groups. ``scope`` selects global (``lam``, size ``U_g``), local (``mu``, size ``U_l``)
    or both kinds of constraints; the unused dual is an empty vector. ``mu`` is the
    client's persistent local dual: :meth:`step` updates ``self.mu`` and returns a copy,
    and a caller that re-creates the client each round passes it back in.
    ``lr``/``local_steps`` are the client's proximal step size and number of ``mu`` steps
    per round (R). See the module docstring on step sizes.
    """

    eta: np.ndarray
    a: np.ndarray
    own_counts: np.ndarray
    pooled_counts: np.ndarray
    criterion: str
    scope: str
    xi_g: float
    xi_k: float
    bound: float
    beta: float = 0.1
    lr: float = 0.1
    local_steps: int = 10
    mu: np.ndarray | None = None
    inner: str = "prox"
    smoothing: str = "entropic"
    Dg: np.ndarray = field(init=False, repr=False)
    Dl: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_choice("criterion", self.criterion, CRITERIA)
        check_choice("scope", self.scope, SCOPES)
        check_choice("inner", self.inner, INNER_SOLVERS)
        check_choice("smoothing", self.smoothing, SMOOTHINGS)
        self.last_value = float("nan")
        own, pooled = _count_pair(self.own_counts, self.pooled_counts)
        self.own_counts, self.pooled_counts = own, pooled
        A, m = own.shape
        self.xi_g = _number("xi_g", self.xi_g, minimum=0.0)
        self.xi_k = _number("xi_k", self.xi_k, minimum=0.0)
        self.bound = _number("bound", self.bound, minimum=0.0)
        self.beta = _number("beta", self.beta, minimum=0.0, strict=True)
        self.lr = _number("lr", self.lr, minimum=0.0, strict=True)
        if (
            isinstance(self.local_steps, bool)
            or not isinstance(self.local_steps, (int, np.integer))
            or self.local_steps < 0
        ):
            raise ConfigError(f"local_steps must be an integer >= 0, got {self.local_steps!r}")
        self.eta, self.a = _eta_a(self.eta, self.a, A, m)
        self.p_k = own.sum() / pooled.sum()
        if self.p_k <= 0:
            raise ConfigError("own_counts must have a positive total (p̂_k > 0)")
        empty = np.zeros((0, A, m, m))
        self.Dg = (
            global_constraints(self.criterion, own, pooled)
            if self.scope in ("global", "both")
            else empty
        )
        self.Dl = (
            local_constraints(self.criterion, own) if self.scope in ("local", "both") else empty
        )
        if isinstance(self.mu, torch.Tensor):
            self.mu = self.mu.detach().cpu().numpy()
        self.mu = _dual("mu", self.mu, self.Dl.shape[0], False, torch.float64).copy()
        self._inv_p = _safe_div(np.float64(pooled.sum()), own.sum(axis=1))
        self._eta_t = torch.as_tensor(self.eta)
        self._a_t = torch.as_tensor(self.a)

    @property
    def num_global(self) -> int:
        return int(self.Dg.shape[0])

    @property
    def num_local(self) -> int:
        return int(self.Dl.shape[0])

    def _mu(self) -> np.ndarray:
        """``self.mu``, an array once ``__post_init__`` has run (the field's ``None`` is the
        constructor's default only)."""
        assert self.mu is not None
        return self.mu

    def _lam(self, lam: Any) -> np.ndarray:
        return _dual("lam", lam, self.num_global, False, torch.float64)

    def _smooth_and_grads(
        self, lam: np.ndarray, mu: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        with single_thread():
            return self._smooth_and_grads_impl(lam, mu)

    def _smooth_and_grads_impl(
        self, lam: np.ndarray, mu: np.ndarray
    ) -> tuple[float, np.ndarray, np.ndarray]:
        lam_t = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
        mu_t = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
        M = _calibration(self._inv_p, self.Dg, lam_t, self.Dl, mu_t)
        value = _smooth_part(self._eta_t, self._a_t, M, self.beta, self.smoothing)
        t_lam, t_mu = torch.autograd.grad(value, (lam_t, mu_t), allow_unused=True)
        g_lam = np.zeros_like(lam) if t_lam is None else t_lam.numpy()
        g_mu = np.zeros_like(mu) if t_mu is None else t_mu.numpy()
        return float(value.detach()), g_lam, g_mu

    def objective(self, lam: Any, mu: Any = None) -> float:
        """``H'_k(lam, mu)`` (with ``self.mu`` when ``mu`` is None), smooth part + penalties."""
        lam_ = self._lam(lam)
        mu_ = self._mu() if mu is None else _dual("mu", mu, self.num_local, False, torch.float64)
        value, _, _ = self._smooth_and_grads(lam_, mu_)
        return value + self.xi_g * np.abs(lam_).sum() + self.xi_k / self.p_k * np.abs(mu_).sum()

    def step(self, lam: Any) -> tuple[np.ndarray, np.ndarray]:
        """``local_steps`` proximal steps on ``mu`` given ``lam``, then the smooth ``grad_lam``.

        Returns ``(new_mu, grad_lam)``; ``grad_lam`` is the gradient of the smooth part of
        ``H'_k`` at ``(lam, new_mu)`` (autograd), to be sent to the server.
        """
        lam_ = self._lam(lam)
        mu = self._mu().copy()
        if self.num_local and self.inner == "lbfgs":
            mu = self._solve_mu(lam_, mu)
        elif self.num_local:
            for _ in range(int(self.local_steps)):
                _, _, g_mu = self._smooth_and_grads(lam_, mu)
                mu = dual_prox_step(mu, g_mu, self.lr, self.xi_k / self.p_k, self.bound)
        self.mu = mu
        value, g_lam, _ = self._smooth_and_grads(lam_, mu)
        # F_k(lam) = min_mu H'_k(lam, mu) without the xi_g term (applied once at the server)
        self.last_value = value + self.xi_k / self.p_k * float(np.abs(mu).sum())
        if not self.num_global:
            g_lam = np.zeros(0)
        return mu.copy(), g_lam

    def dual_hessian(self, lam: Any) -> np.ndarray:
        """Hessian ``(U_g, U_g)`` of ``F_k(lam) = min_mu H'_k(lam, mu)`` at the current ``mu``.

        Autograd Hessian of the smooth part in ``(lam, mu)``, then the Schur complement
        ``H_ll - H_lm[:, S] H_mm[S, S]^-1 H_ml[S, :]`` over the free (non-zero) entries ``S``
        of ``mu`` (implicit function theorem; zero entries stay at 0 under the L1 prox
        for small moves of ``lam``). Assumes ``mu`` solves the inner problem (``lbfgs``).
        It is the client's part of the server's proximal Newton step
        (:func:`dual_newton_step`).
        """
        lam_ = self._lam(lam)
        mu = self._mu()
        Ug = self.num_global
        if Ug == 0:
            return np.zeros((0, 0))

        def f(z: torch.Tensor) -> torch.Tensor:
            M = _calibration(self._inv_p, self.Dg, z[:Ug], self.Dl, z[Ug:])
            return _smooth_part(self._eta_t, self._a_t, M, self.beta, self.smoothing)

        z0 = torch.as_tensor(np.concatenate([lam_, mu]), dtype=torch.float64)
        with single_thread():
            H = torch.autograd.functional.hessian(f, z0).numpy()
        H = 0.5 * (H + H.T)
        free = np.flatnonzero(np.abs(mu) > 1e-10)
        H_ll = H[:Ug, :Ug]
        if free.size == 0:
            return H_ll
        H_lm = H[:Ug, Ug + free]
        H_mm = H[np.ix_(Ug + free, Ug + free)]
        H_mm = H_mm + 1e-10 * max(1.0, float(np.abs(np.diag(H_mm)).max())) * np.eye(free.size)
        return H_ll - H_lm @ np.linalg.solve(H_mm, H_lm.T)

    def _solve_mu(self, lam: np.ndarray, mu0: np.ndarray) -> np.ndarray:
        """The inner problem ``min_mu H'_k(lam, mu)`` solved to (near) optimality.

        L-BFGS-B on the split ``mu = u - v`` (``u, v >= 0``, each entry <= ``bound``), where
        the L1 penalty ``(xi_k/p̂_k) ||mu||_1`` becomes the linear term ``(xi_k/p̂_k) sum(u + v)``,
        warm-started at ``mu0``; the result is projected onto the L1 ball. ``local_steps``
        caps the L-BFGS iterations (x10). Why: ``mu`` enters ``M`` through ``mu/p_{a,k}``,
        so the curvature of the inner problem grows like ``1/p_{a,k}^2`` and fixed-step
        proximal gradient diverges on clients with a small group (measured on Adult, 5
        clients, Dir(0.5)); a quasi-Newton solve of this U_l-dimensional convex problem
        is robust and cheap. This is the bi-level form of eq. 8, F_k(lam) = min_mu H'_k.
        """
        from scipy.optimize import minimize

        U = self.num_local
        lam_t = torch.as_tensor(lam, dtype=torch.float64)
        pen = self.xi_k / self.p_k

        def fun(z: np.ndarray) -> tuple[float, np.ndarray]:
            zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
            M = _calibration(self._inv_p, self.Dg, lam_t, self.Dl, zt[:U] - zt[U:])
            smooth = _smooth_part(self._eta_t, self._a_t, M, self.beta, self.smoothing)
            val = smooth + pen * zt.sum()
            (g,) = torch.autograd.grad(val, zt)
            return float(val.detach()), g.numpy()

        z0 = np.concatenate([np.maximum(mu0, 0.0), np.maximum(-mu0, 0.0)])
        with single_thread():
            res = minimize(
                fun,
                z0,
                jac=True,
                method="L-BFGS-B",
                bounds=[(0.0, self.bound)] * (2 * U),
                options={"maxiter": max(10, 10 * int(self.local_steps))},
            )
        return project_l1_ball(res.x[:U] - res.x[U:], self.bound)

    def calibration(self, lam: Any) -> np.ndarray:
        """``M(a,k)`` ``(A, m, m)`` for ``lam`` and the current ``mu``."""
        return _calibration(self._inv_p, self.Dg, self._lam(lam), self.Dl, self.mu)

    def scores(self, lam: Any, eta: Any = None, a: Any = None) -> np.ndarray:
        """``(M(a_i,k)^T eta_i)_j`` ``(n, m)`` on the client's rows or on ``(eta, a)``."""
        A, m = self.own_counts.shape
        if eta is None and a is None:
            eta_, a_ = self.eta, self.a
        elif eta is None or a is None:
            raise ConfigError("pass both eta and a, or neither")
        else:
            eta_, a_ = _eta_a(eta, a, A, m)
        return np.einsum("ni,nij->nj", eta_, self.calibration(lam)[a_])

    def proba(self, lam: Any, eta: Any = None, a: Any = None) -> np.ndarray:
        """Class probabilities ``(n, m)`` of the classifier the duals optimise.

        ``entropic`` smoothing: ``softmax((M(a,k)^T eta) / beta)``, the randomized classifier
        whose constraint values are exactly the ones the smoothed dual objective sees (its
        gradient); ``softmax-average``: the one-hot argmax (the paper's deterministic rule).
        """
        z = self.scores(lam, eta, a)
        if self.smoothing == "softmax-average":
            return np.eye(z.shape[1])[np.argmax(z, axis=1)]
        z = z / self.beta
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, lam: Any, eta: Any = None, a: Any = None, u: Any = None) -> np.ndarray:
        """Predicted classes on own rows or ``(eta, a)``.

        ``u is None``: ``argmax_j (M(a,k)^T eta)_j`` (ties -> lowest index). Otherwise ``u``
        holds one uniform in [0, 1) per row and the class is drawn from :meth:`proba` by
        inverse CDF (:func:`draw_classes`): the randomized classifier, reproducible for a
        given ``u``.
        """
        if u is None:
            return np.argmax(self.scores(lam, eta, a), axis=1)
        return draw_classes(self.proba(lam, eta, a), u)


def draw_classes(proba: Any, u: Any) -> np.ndarray:
    """Inverse-CDF draw: row ``i`` gets the first class ``j`` with ``cumsum(proba_i)_j > u_i``.

    ``proba`` ``(n, m)`` rows on the simplex, ``u`` ``(n,)`` uniforms in [0, 1). One-hot rows
    give their class for any ``u``; the draw is a deterministic function of ``u``.
    """
    q = np.asarray(proba, dtype=np.float64)
    uu = np.asarray(u, dtype=np.float64)
    if q.ndim != 2 or uu.shape != (q.shape[0],):
        raise ConfigError(f"proba must be (n, m) and u (n,); got shapes {q.shape} and {uu.shape}")
    if uu.size and (uu.min() < 0 or uu.max() >= 1):
        raise ConfigError("u must hold uniforms in [0, 1)")
    cdf = np.cumsum(q, axis=1)
    cdf[:, -1] = np.inf  # rounding: the last class takes what is left
    return np.argmax(cdf > uu[:, None], axis=1)


def expected_counts(y: Any, proba: Any, a: Any, A: int) -> np.ndarray:
    """Expected confusion counts ``[a, y, yhat]`` ``(A, m, m)`` of a randomized classifier.

    ``sum_{i in a, y_i = y} proba_i[yhat]``: the counts the classifier produces on average
    over its draws (one-hot ``proba`` gives the ordinary counts). Pooled over clients they
    give the classifier's train-set gaps exactly (:func:`fedrec.metrics.federated_metrics`).
    """
    q = np.asarray(proba, dtype=np.float64)
    yy = np.asarray(y).astype(np.int64)
    aa = np.asarray(a).astype(np.int64)
    if q.ndim != 2 or yy.shape != (q.shape[0],) or aa.shape != yy.shape:
        raise ConfigError(
            f"proba must be (n, m) with y and a (n,); got {q.shape}, {yy.shape}, {aa.shape}"
        )
    m = q.shape[1]
    out = np.zeros((int(A), m, m))
    np.add.at(out, (aa, yy), q)
    return out


def _prox_quadratic(
    lam: np.ndarray, g: np.ndarray, H: np.ndarray, xi: float, bound: float
) -> np.ndarray:
    """``argmin_x g^T (x - lam) + 1/2 (x - lam)^T H (x - lam) + xi ||x||_1`` over the L1
    ball of radius ``bound`` (the proximal Newton model; ``H`` PSD), by FISTA with step
    ``1 / lambda_max(H)``. ``U`` is tiny (at most ``2 |A| m``), so thousands of iterations
    cost microseconds each.
    """
    L = float(np.linalg.eigvalsh(H).max()) if H.size else 0.0
    if L <= 0:
        return dual_prox_step(lam, g, 1.0, xi, bound)
    t = 1.0 / L
    x = lam.copy()
    y, theta = x.copy(), 1.0
    for _ in range(20000):
        x_new = project_l1_ball(soft_threshold(y - t * (g + H @ (y - lam)), t * xi), bound)
        theta_new = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * theta * theta))
        y = x_new + (theta - 1.0) / theta_new * (x_new - x)
        done = float(np.abs(x_new - x).max()) <= 1e-13 * max(1.0, float(np.abs(x).max()))
        x, theta = x_new, theta_new
        if done:
            break
    return x


@dataclass(frozen=True)
class DualNewton:
    """State of the server's damped proximal Newton search on the global dual.

    ``lam``, ``objective`` (``F(lam) + xi ||lam||_1``), ``grad`` and ``hess`` of the smooth
    ``F = sum_k p_k F_k``: the last **accepted** point, which is what is deployed.
    ``damping`` is the Levenberg-Marquardt term ``nu`` of the pending candidate and
    ``predicted`` the model's predicted change of the objective there (``< 0``; 0 once
    converged).
    """

    lam: np.ndarray
    objective: float
    grad: np.ndarray
    hess: np.ndarray
    damping: float
    predicted: float


def _newton_candidate(
    lam: np.ndarray, g: np.ndarray, H: np.ndarray, nu: float, xi: float, bound: float
) -> tuple[np.ndarray, float]:
    """The damped proximal Newton point from ``lam`` and its predicted objective change.

    ``H`` is symmetrized and its negative eigenvalues are clipped to 0 (the entropic dual
    is convex; the paper's soft-max average is not, and round-off can make a PSD
    Hessian slightly indefinite).
    """
    w, V = np.linalg.eigh(0.5 * (H + H.T))
    Hs = (V * np.maximum(w, 0.0)) @ V.T
    x = _prox_quadratic(lam, g, Hs + nu * np.eye(lam.size), xi, bound)
    d = x - lam
    pred = float(g @ d) + 0.5 * float(d @ Hs @ d)
    pred += xi * (float(np.abs(x).sum()) - float(np.abs(lam).sum()))
    return x, pred


def dual_newton_step(
    state: DualNewton | None,
    candidate: Any,
    value: float,
    grad: Any,
    hess: Any,
    *,
    xi: float,
    bound: float,
    accept_ratio: float = 1e-4,
) -> tuple[DualNewton, np.ndarray]:
    """One round of a Levenberg-Marquardt damped proximal Newton method (Lee, Sun &
    Saunders 2014; Moré 1978) on ``min_lam F(lam) + xi ||lam||_1`` over
    ``{||lam||_1 <= bound}``.

    The clients evaluated ``F``, its gradient and Hessian at ``candidate`` (sums weighted
    by ``p_k``). The candidate is accepted if it is the first point or if the actual
    change of the objective is at least ``accept_ratio`` times the predicted one (a
    decrease). Accepted with ratio > 0.75: the damping ``nu`` is divided by 3; < 0.25:
    doubled; rejected: multiplied by 4 and the next candidate is recomputed from the
    accepted point. The next candidate minimises the model
    ``g^T d + 1/2 d^T (H + nu I) d + xi ||lam + d||_1`` (:func:`_prox_quadratic`).
    Why: the smoothed dual's curvature scales like ``1 / beta`` and like the inverse
    group shares, so no fixed step fits every dataset and temperature; Newton steps are
    invariant to that scaling, the damping guards against the kinks of a nearly piecewise
    linear dual, and ``U_g`` is tiny. The initial damping is ``0.1 max diag(H)``. Once the
    predicted decrease is negligible (``> -1e-12``) the accepted point is proposed again;
    its re-evaluation replaces the stored value, gradient and Hessian (the clients' inner
    problems continue from warm starts, so ``F`` at the same ``lam`` can still move).
    """
    cand = _vector("candidate", candidate)
    g = _vector("grad", grad)
    H = np.asarray(hess, dtype=np.float64)
    v = _number("value", value)
    if g.shape != cand.shape or H.shape != (cand.size, cand.size):
        raise ConfigError(
            f"grad must be {cand.shape} and hess {(cand.size, cand.size)}; "
            f"got {g.shape} and {H.shape}"
        )
    xi_ = _number("xi", xi, minimum=0.0)
    obj = v + xi_ * float(np.abs(cand).sum())
    if not cand.size:
        return DualNewton(cand, obj, g, H, 0.0, 0.0), cand
    scale = max(float(np.abs(np.diag(H)).max()), 1e-12)
    if state is None:
        lam, og, gg, HH, nu = cand, obj, g, H, 0.1 * scale
    elif np.array_equal(cand, state.lam):
        # the accepted point evaluated again (converged, or the last round re-evaluates the
        # deployed dual): refresh its value, gradient and Hessian, because the clients'
        # inner solves for mu_k continue from a warm start and may have moved F_k
        lam, og, gg, HH, nu = cand, obj, g, H, state.damping
    else:
        pred = state.predicted
        actual = obj - state.objective
        ratio = actual / pred if pred < 0 else 0.0
        if pred < 0 and ratio >= accept_ratio:
            nu = state.damping / 3.0 if ratio > 0.75 else state.damping
            nu = nu * 2.0 if ratio < 0.25 else nu
            lam, og, gg, HH = cand, obj, g, H
        else:
            lam, og, gg, HH = state.lam, state.objective, state.grad, state.hess
            nu = state.damping * 4.0
    nu = max(nu, 1e-10 * scale)
    x, pred = _newton_candidate(lam, gg, HH, nu, xi_, bound)
    if pred > -1e-12:  # converged (or no progress possible): propose the point itself
        return DualNewton(lam, og, gg, HH, nu, 0.0), lam.copy()
    return DualNewton(lam, og, gg, HH, nu, pred), x


# ------------------------------------------------------------------ metrics
_GAP_KEYS = {
    "dp": ("dp_subgroup_max", "dp_pairwise_max"),
    "eop": ("eop_subgroup_max", "eop_gap"),
    "eo": ("eo_subgroup_max", "eo_gap"),
}


def fairness_gap(criterion: str, C_by_client: Any, expected: bool = False) -> dict[str, float]:
    """Global and local gaps from per-client count tensors ``(K, A, m, m)`` (``[k, a, y, yhat]``).

    Uses :func:`fedrec.metrics.federated_metrics`. Keys: ``accuracy``, ``global``
    (subgroup form, the quantity FedFACT constrains), ``global_pairwise``, ``local_max`` /
    ``local_mean`` (subgroup form over clients, D_local = max) and ``local_max_pairwise``.
    Note: ``fedrec.metrics`` reports binary EOP/EO on class 1 only. ``expected=True``:
    real-valued expected counts of a randomized classifier (:func:`expected_counts`).
    """
    check_choice("criterion", criterion, CRITERIA)
    from fedrec.metrics import federated_metrics

    counts = np.asarray(C_by_client)
    if counts.ndim != 4 or counts.shape[2] != counts.shape[3]:
        raise ConfigError(
            f"C_by_client must be a (K, A, m, m) count tensor, got shape {counts.shape}"
        )
    fm = federated_metrics({k: counts[k] for k in range(counts.shape[0])}, expected=expected)
    sub, pair = _GAP_KEYS[criterion]
    return {
        "accuracy": fm.overall["accuracy"],
        "global": fm.overall[sub],
        "global_pairwise": fm.overall[pair],
        "local_max": fm.local[f"{sub}_local_max"],
        "local_mean": fm.local[f"{sub}_local_mean"],
        "local_max_pairwise": fm.local[f"{pair}_local_max"],
    }
