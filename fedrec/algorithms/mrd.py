"""Memory Removal Difficulty (MRD, arXiv 2504.06658; issue 12).

A sample whose likelihood barely moves under small random parameter perturbations is
deeply memorised and hard to unlearn. For a per-sample loss ``l(x; theta)`` (the mean NLL
of the answer tokens) and ``K`` perturbations ``delta_k``:

- every tensor ``W`` gets noise ``N(0, (sigma * rms(W))^2)`` (per-tensor scale, so that
  ``sigma`` is relative to the weights' size); the ``delta_k`` are drawn from
  ``derive_seed(seed, "mrd", k)``: **common random numbers**, the same perturbations for
  every sample and, in a federation, on every client from a broadcast seed;
- ``change_k(x) = l(x; theta + delta_k) - l(x; theta)``;
- ``fragility(x) = mean_k change_k(x)``, whose expectation is the second-order term
  ``sigma^2 / 2 * tr(S H(x) S)`` (``H`` the Hessian of ``l``, ``S`` the per-tensor rms
  scaling; the first-order term has zero mean). With ``antithetic=True`` every ``delta_k``
  is paired with ``-delta_k``, which cancels the first-order term exactly (lower variance;
  an estimator choice of fedrec, off by default);
- ``MRD(x) = 1 / (eps + mean_k |change_k(x)|)``: higher = harder to forget.

The paper's exact normalisation is not public (reference notes §4.2); the form above is the
notes' reconstruction and is kept configurable through :func:`mrd_scores`'s return of both
quantities. :func:`hessian_trace` is the Hutchinson estimate of ``tr(S H S)`` with exact
Hessian-vector products (forward-over-reverse ``torch.func``), the check of the
second-order form on small models. Pure torch; no flwr import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedrec.seeding import derive_seed

__all__ = [
    "annealed_tau",
    "easy_first_probs",
    "hessian_trace",
    "mrd_scores",
    "perturbation",
    "tensor_scales",
]

Params = dict[str, torch.Tensor]


def tensor_scales(params: Params) -> dict[str, float]:
    """Root-mean-square of every tensor (the per-tensor noise scale)."""
    return {k: float(v.detach().pow(2).mean().sqrt()) for k, v in params.items()}


def perturbation(params: Params, sigma: float, seed: int, k: int) -> Params:
    """``delta_k``: ``N(0, (sigma * rms(W))^2)`` per tensor, from ``derive_seed(seed, "mrd",
    k)`` (the same on every client and for every sample)."""
    g = torch.Generator().manual_seed(derive_seed(seed, "mrd", k) % 2**63)
    scales = tensor_scales(params)
    drawn = {  # drawn in name order (stable), returned in the order of ``params``
        name: torch.randn(v.shape, generator=g, dtype=v.dtype) * (sigma * scales[name])
        for name, v in sorted(params.items())
    }
    return {name: drawn[name] for name in params}


@torch.no_grad()
def mrd_scores(
    loss_fn: Callable[[Params], torch.Tensor],
    params: Params,
    K: int = 16,
    sigma: float = 1e-2,
    seed: int = 0,
    antithetic: bool = False,
    eps: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mrd, fragility)`` per sample (module docstring). ``loss_fn(params)`` returns the
    per-sample losses ``(n,)`` under the given parameters."""
    if K < 1 or sigma <= 0:
        raise ValueError(f"K must be >= 1 and sigma > 0, got K={K}, sigma={sigma}")
    base = loss_fn(params)
    changes = []
    for k in range(K):
        d = perturbation(params, sigma, seed, k)
        plus = loss_fn({n: params[n] + d[n] for n in params}) - base
        if antithetic:
            minus = loss_fn({n: params[n] - d[n] for n in params}) - base
            changes.append(0.5 * (plus + minus))
        else:
            changes.append(plus)
    C = torch.stack(changes)  # (K, n)
    return 1.0 / (eps + C.abs().mean(0)), C.mean(0)


def hessian_trace(
    loss_fn: Callable[[Params], torch.Tensor],
    params: Params,
    probes: int = 64,
    seed: int = 0,
    scaled: bool = True,
) -> torch.Tensor:
    """Hutchinson estimate of ``tr(S H S)`` (``S`` the per-tensor rms scaling when
    ``scaled``, else the identity) of a **scalar** ``loss_fn``, with Rademacher probes and
    exact Hessian-vector products."""
    from torch.func import grad, jvp

    scales = tensor_scales(params) if scaled else {k: 1.0 for k in params}
    g = torch.Generator().manual_seed(derive_seed(seed, "hutchinson") % 2**63)
    total = torch.zeros((), dtype=torch.float64)
    for _ in range(probes):
        v = {
            k: (torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1) * scales[k]
            for k, p in params.items()
        }
        hv = jvp(grad(loss_fn), (params,), (v,))[1]
        total += sum((v[k] * hv[k]).sum().double() for k in params)
    return total / probes


def easy_first_probs(mrd: torch.Tensor | Sequence[float], tau: float) -> torch.Tensor:
    """MRD-weighted sampling (the paper's easy-first curriculum): ``P(i) ∝ exp(-r_i / tau)``
    with ``r_i`` the rank of ``MRD_i`` scaled to ``[0, 1]`` (0 = the easiest sample).

    MRD is ``1 / (eps + mean |change|)`` and spans orders of magnitude, so its rank, not its
    value, enters the softmax: ``tau`` then means the same for any model (a choice of
    fedrec; the paper's normalisation is not public). ``tau -> inf`` is uniform sampling.
    """
    m = torch.as_tensor(mrd, dtype=torch.float64).ravel()
    if m.numel() == 0:
        raise ValueError("no samples")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if m.numel() == 1:
        return torch.ones(1, dtype=torch.float64)
    ranks = torch.empty_like(m)
    ranks[torch.argsort(m, stable=True)] = torch.arange(m.numel(), dtype=torch.float64)
    return torch.softmax(-(ranks / (m.numel() - 1)) / tau, dim=0)


def annealed_tau(step: int, total: int, tau0: float = 0.1, tau_end: float = 10.0) -> float:
    """Geometric annealing of the sampling temperature from ``tau0`` (easy first) at step 0
    to ``tau_end`` (nearly uniform) at the last step, so hard samples are covered too."""
    if total <= 1:
        return tau_end
    frac = min(max(step / (total - 1), 0.0), 1.0)
    return float(tau0 * (tau_end / tau0) ** frac)
