"""BiFair (Zhang et al. 2025, arXiv 2507.04294): bi-level fairness-aware training of an
LLM-enhanced recommender, the math of both halves (torch; no flwr).

Model (an LLM-enhanced MF)
--------------------------
Learnable item representations ``Z`` (n_items, d_L), initialised from a frozen language
model's item embeddings ``Z0`` (:mod:`fedrec.recsys.item_repr`); a projector
``phi = (W1, b1, W2, b2)``, a 2-layer MLP

.. math::
    v_i = \\phi(z_i) = W_2\\,\\mathrm{relu}(W_1 z_i + b_1) + b_2, \\qquad
    s(u, i) = \\langle p_u, v_i \\rangle

with private user embeddings ``p_u``. The per-triple loss is BPR,
``l(u, i, j) = softplus(-(s(u, i) - s(u, j)))`` with ``j`` a sampled negative.

Group-weighted objective
------------------------
Items carry one group label ``g(i)`` (popularity quantile or primary genre). With
``L_g`` the mean BPR loss over the positives of group ``g`` and ``pi_g`` the share of
training interactions in ``g``, the objective for weights ``w`` on the simplex is
``L_w = sum_g w_g L_g``. It is estimated without per-group batching by the per-triple
multiplier ``a(i) = w_{g(i)} / pi_{g(i)}`` (:func:`group_multipliers`):
``E[a(i) l] = sum_g pi_g (w_g / pi_g) L_g = L_w``. ``w = pi`` is the plain
(interaction-weighted) loss, ``w = 1/G`` the inverse-frequency re-weighting.

Bi-level problem (reference ``recsys_fairness_defense.md`` §1.3)
-----------------------------------------------------------------
.. math::
    \\min_Z \\; \\sum_g w_g L^{val}_g(\\phi^*(Z), Z) + \\rho \\|Z - Z_0\\|^2
    \\quad \\text{s.t.} \\quad \\phi^*(Z) \\in \\arg\\min_\\phi L^{train}_w(\\phi, Z)

* **Inner loop** (:func:`local_train`): Adam on ``phi`` and the user embeddings for the
  weighted training loss; ``Z`` is fixed.
* **Outer step** (:func:`unrolled_hypergrad`): one-step unrolling (DARTS / MAML),
  ``phi' = phi - alpha grad_phi L^{train}_w(phi, Z)`` on a batch of training triples,
  then ``dL^{val}_w(phi'(Z), Z)/dZ`` on the validation triples, through both the direct
  path and ``phi'``. The user embeddings are held fixed (not unrolled): a documented
  choice, as they are private and per user.
* **Adaptive inter-group balancing** (:func:`balance_weights`): the per-group gradients
  ``G_g = grad L^{val}_g`` with respect to the projector's last layer (``W2, b2``; the
  shared parameters closest to the output, the "MGDA-UB" trick) are normalised
  (``loss``: ``G_g / L_g``, Sener & Koltun's ``loss`` normalisation, which gives lagging,
  high-loss groups a shorter gradient and hence more weight in the min-norm point) and
  the min-norm problem ``w* = argmin_{w in simplex} ||sum_g w_g G_g||^2`` is solved
  (:func:`fedrec.algorithms.mgda.min_norm_weights`, Frank-Wolfe). Because a min-norm
  point is often sparse (a vertex of the simplex) and ``w`` is then held for several
  rounds of local training, the weights are smoothed:
  ``w <- (1 - tau) w + tau w*`` (``tau`` = ``balance-momentum``), starting from ``pi``.
  That smoothing is our choice; the paper's exact rule is unpublished.

Everything is seeded by the caller (run seed, round, client).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedrec.errors import ConfigError
from fedrec.messages import RowSparse

__all__ = [
    "balance_weights",
    "group_gradients",
    "group_multipliers",
    "init_projector",
    "local_train",
    "project",
    "sample_triples",
    "scores",
    "unrolled_hypergrad",
]

PHI_NAMES = ("W1", "b1", "W2", "b2")


def init_projector(d_in: int, hidden: int, d_out: int, seed: int) -> list[np.ndarray]:
    """``[W1 (hidden, d_in), b1, W2 (d_out, hidden), b2]`` float32, ``torch.nn.Linear``'s
    default initialisation (uniform ``±1/sqrt(fan_in)``) from a seeded generator."""
    g = torch.Generator().manual_seed(int(seed) % 2**63)
    out = []
    for fan_in, fan_out in ((d_in, hidden), (hidden, d_out)):
        bound = 1.0 / np.sqrt(fan_in)
        out.append((torch.rand(fan_out, fan_in, generator=g) * 2 - 1) * bound)
        out.append((torch.rand(fan_out, generator=g) * 2 - 1) * bound)
    return [t.numpy().astype(np.float32) for t in out]


def project(phi: Sequence[torch.Tensor], Z: torch.Tensor) -> torch.Tensor:
    """``phi(Z)``: (n, d_L) -> (n, d)."""
    W1, b1, W2, b2 = phi
    return F.linear(F.relu(F.linear(Z, W1, b1)), W2, b2)


def scores(P: np.ndarray, phi: Sequence[np.ndarray], Z: np.ndarray) -> np.ndarray:
    """Score matrix ``P phi(Z)^T`` (n_users, n_items), float32."""
    with torch.no_grad():
        V = project([torch.as_tensor(a) for a in phi], torch.as_tensor(Z))
        return (torch.as_tensor(P) @ V.T).numpy()


def group_multipliers(w: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """``a_g = w_g / pi_g`` (0 where ``pi_g = 0``: such a group has no training triple)."""
    w, pi = np.asarray(w, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    if w.shape != pi.shape:
        raise ConfigError(f"w {w.shape} and pi {pi.shape} must have the same shape")
    return np.where(pi > 0, w / np.where(pi > 0, pi, 1.0), 0.0)


def sample_triples(
    positives: Sequence[np.ndarray], num_items: int, negatives: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(u, i, j)``: every positive ``i`` of local user ``u`` (index into ``positives``)
    repeated ``negatives`` times, each with a uniform negative ``j`` outside the user's
    positives."""
    from fedrec.recsys.splits import sample_negatives

    us, ps, ns = [], [], []
    for u, pos in enumerate(positives):
        pos = np.asarray(pos, dtype=np.int64)
        if not len(pos):
            continue
        rep = np.repeat(pos, negatives)
        us.append(np.full(len(rep), u, dtype=np.int64))
        ps.append(rep)
        ns.append(sample_negatives(num_items, np.unique(pos), len(rep), rng))
    if not us:
        e = np.zeros(0, dtype=np.int64)
        return e, e, e
    return np.concatenate(us), np.concatenate(ps), np.concatenate(ns)


def _bpr(P, V, u, i, j) -> torch.Tensor:
    return F.softplus(-((P[u] * (V[i] - V[j])).sum(-1)))


def local_train(
    P: np.ndarray,
    phi: Sequence[np.ndarray],
    Z: np.ndarray,
    triples: tuple[np.ndarray, np.ndarray, np.ndarray],
    item_mult: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    reg: float = 0.0,
) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Inner loop: ``epochs`` of Adam on ``(P, phi)`` for the weighted BPR loss
    ``mean_b a(i_b) l(u_b, i_b, j_b)`` over shuffled mini-batches; ``Z`` fixed.

    ``item_mult`` (n_items,): the per-item multiplier ``a(i)`` (:func:`group_multipliers`
    indexed by the item's group). ``reg``: L2 on the batch's user embeddings. Returns the
    new ``P``, ``phi`` and the mean weighted loss of the last epoch.
    """
    from fedrec.optim import TorchAdam

    u, i, j = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in triples)
    Pt = torch.tensor(np.asarray(P, dtype=np.float32), requires_grad=True)
    ph = [torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=True) for a in phi]
    Zt = torch.as_tensor(np.asarray(Z, dtype=np.float32))
    mult = torch.as_tensor(np.asarray(item_mult, dtype=np.float32))
    opt = TorchAdam([Pt, *ph], lr=lr)
    g = torch.Generator().manual_seed(int(seed) % 2**63)
    n, last = len(u), 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        tot = 0.0
        for s in range(0, n, batch_size):
            b = order[s : s + batch_size]
            V = project(ph, Zt)
            loss = (mult[i[b]] * _bpr(Pt, V, u[b], i[b], j[b])).mean()
            if reg:
                loss = loss + reg * Pt[u[b]].pow(2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        last = tot / max(n, 1)
    return Pt.detach().numpy(), [p.detach().numpy() for p in ph], last


def unrolled_hypergrad(
    P: np.ndarray,
    phi: Sequence[np.ndarray],
    Z: np.ndarray,
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    item_mult: np.ndarray,
    alpha: float,
) -> tuple[RowSparse, float, int]:
    """Outer step's hypergradient on ``Z`` (one-step unrolled).

    .. math::
        \\phi' = \\phi - \\alpha \\nabla_\\phi \\tfrac{1}{|B|}\\sum_{b \\in B} a(i_b) l_b(\\phi, Z),
        \\qquad h = \\frac{d}{dZ} \\sum_{v \\in V} a(i_v) l_v(\\phi'(Z), Z)

    ``train`` = the batch ``B`` of training triples, ``val`` = the validation triples
    ``V``. Returns ``h`` as a row-sparse sum over the touched rows (the items of both
    batches; ``counts`` = 1 per row), the validation loss **sum** and ``|V|``: the
    server divides the summed ``h`` by the total ``|V|``.
    """
    Pt = torch.as_tensor(np.asarray(P, dtype=np.float32))
    Zt = torch.tensor(np.asarray(Z, dtype=np.float32), requires_grad=True)
    ph = [torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=True) for a in phi]
    mult = torch.as_tensor(np.asarray(item_mult, dtype=np.float32))
    tu, ti, tj = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in train)
    vu, vi, vj = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in val)
    if len(vu) == 0:
        empty = RowSparse(
            np.zeros(0, np.int64), np.zeros((0, Zt.shape[1]), np.float32), np.zeros(0, np.int64)
        )
        return empty, 0.0, 0
    if len(tu):
        V = project(ph, Zt)
        inner = (mult[ti] * _bpr(Pt, V, tu, ti, tj)).mean()
        grads = torch.autograd.grad(inner, ph, create_graph=True)
        ph2 = [p - alpha * g for p, g in zip(ph, grads)]
    else:
        ph2 = list(ph)
    V2 = project(ph2, Zt)
    outer = (mult[vi] * _bpr(Pt, V2, vu, vi, vj)).sum()
    (hz,) = torch.autograd.grad(outer, [Zt])
    ids = np.unique(np.concatenate([np.asarray(a) for a in (*train[1:], *val[1:])]))
    rows = hz[torch.as_tensor(ids)].numpy().astype(np.float32)
    return RowSparse(ids, rows, np.ones(len(ids), np.int64)), float(outer.detach()), int(len(vu))


def group_gradients(
    P: np.ndarray,
    phi: Sequence[np.ndarray],
    Z: np.ndarray,
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    item_group: np.ndarray,
    num_groups: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group sums over the validation triples of the BPR gradient with respect to the
    projector's last layer ``(W2, b2)`` (flattened), of the loss, and the counts:
    ``(grad_sums (G, |W2|+|b2|), loss_sums (G,), counts (G,))`` (summable over clients)."""
    Pt = torch.as_tensor(np.asarray(P, dtype=np.float32))
    Zt = torch.as_tensor(np.asarray(Z, dtype=np.float32))
    ph = [
        torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=(k >= 2))
        for k, a in enumerate(phi)
    ]
    vu, vi, vj = (torch.as_tensor(np.asarray(a, dtype=np.int64)) for a in val)
    n_last = ph[2].numel() + ph[3].numel()
    sums = np.zeros((num_groups, n_last), dtype=np.float64)
    losses = np.zeros(num_groups, dtype=np.float64)
    counts = np.zeros(num_groups, dtype=np.float64)
    if len(vu) == 0:
        return sums, losses, counts
    V = project(ph, Zt)
    per = _bpr(Pt, V, vu, vi, vj)
    grp = torch.as_tensor(np.asarray(item_group, dtype=np.int64))[vi]
    for g in range(num_groups):
        m = grp == g
        k = int(m.sum())
        if not k:
            continue
        loss = per[m].sum()
        gW, gb = torch.autograd.grad(loss, [ph[2], ph[3]], retain_graph=True)
        sums[g] = torch.cat([gW.reshape(-1), gb.reshape(-1)]).double().numpy()
        losses[g], counts[g] = float(loss.detach()), k
    return sums, losses, counts


def balance_weights(
    rule: str,
    grad_sums: np.ndarray,
    loss_sums: np.ndarray,
    counts: np.ndarray,
    pi: np.ndarray,
    normalize: str = "loss",
) -> np.ndarray:
    """The group weights of one outer step, before smoothing.

    ``rule``: ``mgda`` (min-norm point of the normalised mean per-group gradients; groups
    without validation triples get weight 0), ``uniform`` (``1/G``) or ``none``
    (``pi``: the plain loss). ``normalize`` (MGDA only, Sener & Koltun): ``none``,
    ``l2`` (``G_g / ||G_g||``), ``loss`` (``G_g / L_g``) or ``loss+``
    (``G_g / (L_g ||G_g||)``).
    """
    from fedrec.algorithms.mgda import min_norm_weights

    G = len(pi)
    if rule == "none":
        return np.asarray(pi, dtype=np.float64).copy()
    if rule == "uniform":
        return np.full(G, 1.0 / G)
    if rule != "mgda":
        raise ConfigError(f"balance rule '{rule}' is unknown; allowed: mgda, uniform, none")
    have = counts > 0
    mean_g = grad_sums[have] / counts[have, None]
    mean_l = loss_sums[have] / counts[have]
    norms = np.linalg.norm(mean_g, axis=1)
    scale = {
        "none": np.ones_like(mean_l),
        "l2": norms,
        "loss": mean_l,
        "loss+": mean_l * norms,
    }
    if normalize not in scale:
        raise ConfigError(
            f"mgda normalize '{normalize}' is unknown; allowed: none, l2, loss, loss+"
        )
    mean_g = mean_g / np.maximum(scale[normalize], 1e-12)[:, None]
    w = np.zeros(G)
    w[have] = min_norm_weights(mean_g)
    return w
