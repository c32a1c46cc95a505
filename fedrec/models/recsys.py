"""Recommendation models (pure torch): MF-BPR on explicit tensors, SASRec and GRU4Rec.

No Flower import; numpy only for index bookkeeping. Item ids are 0-based everywhere in the public
API (SASRec shifts them internally, see below).

MF-BPR (Rendle et al. 2009)
---------------------------
User table ``P`` (num_users x d), item table ``Q`` (num_items x d), optional item bias ``b``;
``score(u, i) = P_u . Q_i (+ b_i)``. :func:`init_mf` draws ``P`` and ``Q`` from
``N(0, init_std^2)`` with an explicit ``torch.Generator`` (``b`` starts at 0).

Loss (:func:`bpr_loss`) on ``B`` triples ``(u, i, j)`` (``i`` positive, ``j`` sampled negative),
``x = s(u, i) - s(u, j)``::

    L = 1/B * sum_t [ softplus(-x_t)
                      + reg/2 * (|p_t|^2 + |q_i_t|^2 + |q_j_t|^2 (+ b_i_t^2 + b_j_t^2)) ]

i.e. ``-log sigmoid(x)`` averaged over the batch plus L2 on the embeddings *used by the batch*
(the usual mini-batch form of BPR's per-triple regularisation, as in RecBole's ``EmbLoss``); the
bias is regularised with the same ``reg``.

Cohort step (:func:`mf_bpr_user_step`): the federated client primitive. Each user of a cohort
trains its own embedding and **its own private copy** of the item rows it touches (its positives
and its sampled negatives), all copies starting from the same ``Q``; users never see each other's
updates, so the result for each user is exactly what a run of that user alone would give (tested
to 1e-6 in float32, 1e-12 in float64). Vectorisation: the private copies of all users are laid out
as one flat ``(T, d)`` tensor (``T`` = sum of touched rows per user), every triple indexes its
user's rows there, and one step of all users is a few gathers plus ``index_add_`` scatters — no
padding and no cross-user coupling. Local training per user: ``epochs`` passes over its positives,
each positive paired with one negative per epoch (from ``neg_lists``); within an epoch the
triples are visited in a per-user random order (``np.random.default_rng(seed_u)``) in mini-batches
of ``batch_size`` (``None`` = the whole epoch is one full-batch step, and the order is unused),
each mini-batch one plain SGD step on the mean loss above. Gradients are the closed-form ones of
:func:`bpr_loss` (tested against autograd). The user and item-row updates of a step are
simultaneous (computed from the pre-step values).

SASRec (Kang & McAuley 2018)
----------------------------
Causal self-attention over the last ``max_len`` items. Follows the authors' TensorFlow code (and its
widely used PyTorch port): item embedding scaled by ``sqrt(d)`` plus a learned positional
embedding, embedding dropout, ``num_blocks`` blocks of ``q = LN(x); x = q + Dropout(MHA(q, x, x));
y = LN(x); x = y + FFN(y)`` with a point-wise two-layer ReLU FFN (width ``d``, dropout after each
layer), padded positions zeroed after every block, a final LayerNorm (eps 1e-8 everywhere). The
attention is torch-style multi-head attention with input and output projections (with bias) and
dropout on the attention weights. Output layer: the **input item embedding is shared** as the
output embedding, ``r(t, i) = h_t . E_i``. Training loss (:meth:`SASRec.bce_loss`): at each
non-padded position, binary cross-entropy of the next item (label 1) and one sampled negative
(label 0), as in the paper.

* **Padding**: tokens are item ids **shifted by one**; token 0 is padding (its embedding row is
  fixed at zero). :func:`to_tokens` builds left-padded ``(B, max_len)`` token batches from 0-based
  item sequences, keeping the most recent ``max_len`` items. Outputs of :meth:`SASRec.score_all`
  are indexed by 0-based item id (the padding column is dropped).
* **Masks**: a query position attends to itself and to earlier *non-padded* positions (causal mask
  AND key-padding mask; the diagonal is always allowed so that padded query rows are well-defined
  and then zeroed). Hence padding never influences real positions.
* **Positions** are right-aligned: a length-``L`` input uses the positional embeddings
  ``max_len - L .. max_len - 1``, so the most recent item always gets the last one; together with
  the padding mask, the output at real positions does not depend on how much padding precedes.
* **Randomness**: the initial weights are drawn inside ``torch.random.fork_rng`` after seeding with
  ``seed`` (xavier-normal for matrices, zeros for biases, ones/zeros for LayerNorm), so the
  caller's global torch RNG is untouched. Dropout uses torch's CPU generator; the trainers seed it
  inside ``fork_rng`` as well.
* **Federated use**: SASRec has no user parameters. All weights (item and positional embeddings,
  attention, FFN, LayerNorms) are item-side and shared by every client; a user's sequence is its
  private data, used only locally to compute gradients.

GRU4Rec (Hidasi et al. 2016)
----------------------------
The recurrent baseline in the session-parallel next-item form used by SASRec's comparison (as
RecBole's GRU4Rec, with the output embedding shared): a user's sequence is one session, a batch
holds many sessions side by side and every position predicts the next item. :class:`GRU4Rec`
has :class:`SASRec`'s interface (tokens, :func:`to_tokens`, ``forward``, ``dropout_noise``, the
losses, ``score_all``, :func:`sasrec_user_step`). Exact form: input
``x_t = Dropout(E[s_t])`` (the shared item embedding, no scaling, no positions), then per layer
(hidden size ``d``, ``h_0 = 0``, ``m_t = 1`` iff ``s_t`` is not padding)::

    r = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
    z = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
    n = tanh(W_in x_t + b_in + r * (W_hn h_{t-1} + b_hn))
    h_t = m_t * ((1 - z) * n + z * h_{t-1}) + (1 - m_t) * h_{t-1}
    x_t <- Dropout(h_t)          (the next layer's input, or the projection's)

i.e. ``torch.nn.GRU``'s equations and gate layout (tested against it), with padded positions
carrying the state over, so left padding leaves ``h`` at 0 and real positions do not depend on
how much padding precedes. Output ``o_t = W_o x_t + b_o`` on the last layer's ``x_t`` (``d x d``
linear, 0 at padded positions): GRU states lie in ``(-1, 1)^d``, the projection maps them into
item-embedding space; ``r(t, i) = o_t . E_i``. Loss: SASRec's BCE with one sampled negative per
position (not the original TOP1/BPR losses with in-batch negatives). Init inside ``fork_rng``
after seeding: xavier-normal for the embedding, the projection and each ``d x d`` gate block,
zero biases. No user parameters: in federated use every weight is item-side and shared.
The GRU is an explicit loop over positions, not ``nn.GRU``: under ``torch.func.vmap`` (torch 2.13)
an ``nn.GRU`` forward raises "Batching rule not implemented for aten::gru.input" (it only works
when wrapped in ``grad``, where it is decomposed), its inter-layer dropout draws from the global
RNG (no per-user masks) and it cannot skip padding without data-dependent packing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrec.errors import ConfigError

__all__ = [
    "CohortUpdate",
    "GRU4Rec",
    "MFParams",
    "SASRec",
    "SASRecCohortUpdate",
    "bpr_loss",
    "init_mf",
    "mf_bpr_user_step",
    "mf_scores",
    "sasrec_user_step",
    "sum_item_deltas",
    "to_tokens",
]


# =========================================================================== MF-BPR


class MFParams(NamedTuple):
    """MF-BPR parameters.

    ``P`` (num_users, d), ``Q`` (num_items, d), ``b`` (num_items,) or ``None``.
    """

    P: torch.Tensor
    Q: torch.Tensor
    b: torch.Tensor | None = None


def init_mf(
    num_users: int,
    num_items: int,
    d: int = 64,
    *,
    init_std: float = 0.1,
    item_bias: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MFParams:
    """``P, Q ~ N(0, init_std^2)`` from ``torch.Generator().manual_seed(seed)``; bias zero."""
    for name, v in (("num_users", num_users), ("num_items", num_items), ("d", d)):
        if int(v) < 1:
            raise ConfigError(f"{name} must be >= 1 (got {v})")
    if not init_std > 0:
        raise ConfigError(f"init_std must be > 0 (got {init_std})")
    g = torch.Generator().manual_seed(int(seed))
    P = torch.randn(num_users, d, generator=g, dtype=dtype) * init_std
    Q = torch.randn(num_items, d, generator=g, dtype=dtype) * init_std
    b = torch.zeros(num_items, dtype=dtype) if item_bias else None
    return MFParams(P, Q, b)


def mf_scores(params: MFParams, users: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
    """Scores ``P[users] @ Q.T (+ b)`` of shape (len(users), num_items); all users when ``None``."""
    P = (
        params.P
        if users is None
        else params.P[torch.as_tensor(np.asarray(users), dtype=torch.long)]
    )
    s = P @ params.Q.T
    return s + params.b if params.b is not None else s


def bpr_loss(
    p_u: torch.Tensor,
    q_pos: torch.Tensor,
    q_neg: torch.Tensor,
    reg: float = 0.0,
    b_pos: torch.Tensor | None = None,
    b_neg: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BPR loss of ``B`` triples plus ``reg/2`` x the batch's squared norms.

    See the module docstring.
    """
    x = (p_u * (q_pos - q_neg)).sum(-1)
    sq = p_u.pow(2).sum(-1) + q_pos.pow(2).sum(-1) + q_neg.pow(2).sum(-1)
    if (b_pos is None) != (b_neg is None):
        raise ConfigError("b_pos and b_neg must be given together")
    if b_pos is not None and b_neg is not None:  # both or neither (checked above)
        x = x + b_pos - b_neg
        sq = sq + b_pos.pow(2) + b_neg.pow(2)
    return (F.softplus(-x) + 0.5 * reg * sq).mean()


@dataclass
class CohortUpdate:
    """Result of :func:`mf_bpr_user_step` for a cohort of ``U`` users.

    ``P``: new user embeddings (U, d). User ``j`` touched items ``item_ids[indptr[j]:indptr[j+1]]``
    (sorted, unique) and its new private copies of those rows are the same slice of ``item_rows``
    (and of ``item_bias``). ``losses[j, e]``: user ``j``'s mean objective over its triples in epoch
    ``e``, each triple's loss taken just before the step that used it (NaN for users without data).
    """

    P: torch.Tensor
    indptr: np.ndarray
    item_ids: np.ndarray
    item_rows: torch.Tensor
    item_bias: torch.Tensor | None
    losses: np.ndarray

    @property
    def num_users(self) -> int:
        return int(self.P.shape[0])

    def user(self, j: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor | None]:
        """(embedding, touched item ids, new rows, new biases) of cohort member ``j``."""
        sl = slice(int(self.indptr[j]), int(self.indptr[j + 1]))
        bias = None if self.item_bias is None else self.item_bias[sl]
        return self.P[j], self.item_ids[sl], self.item_rows[sl], bias

    def item_deltas(self, Q: torch.Tensor, b: torch.Tensor | None = None):
        """New rows minus the starting rows ``Q[item_ids]`` (and bias deltas, or ``None``)."""
        idx = torch.as_tensor(self.item_ids, dtype=torch.long)
        dq = self.item_rows - Q[idx]
        db = None if (b is None or self.item_bias is None) else self.item_bias - b[idx]
        return dq, db


def sum_item_deltas(
    update: CohortUpdate,
    Q: torch.Tensor,
    b: torch.Tensor | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
):
    """Summable item-side statistics of a cohort.

    ``(sum_j w_j * delta_j, sum_j w_j [touched], bias sum)``.

    Shapes ``(num_items, d)``, ``(num_items,)`` and ``(num_items,)`` or ``None``; ``weights`` per
    user (default 1). Sums from several cohorts add up, so a server can aggregate, e.g.
    ``Q + delta_sum / count`` where ``count > 0`` (mean over the users that touched a row).
    """
    U = update.num_users
    w = np.ones(U) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != U:
        raise ConfigError(f"weights must have one entry per cohort user ({U}), got {w.size}")
    owner = np.repeat(np.arange(U), np.diff(update.indptr))
    wt = torch.as_tensor(w[owner], dtype=Q.dtype)
    idx = torch.as_tensor(update.item_ids, dtype=torch.long)
    dq, db = update.item_deltas(Q, b)
    delta_sum = torch.zeros_like(Q).index_add_(0, idx, dq * wt[:, None])
    count = torch.zeros(Q.shape[0], dtype=Q.dtype).index_add_(0, idx, wt)
    bias_sum = (
        None if db is None else torch.zeros(Q.shape[0], dtype=Q.dtype).index_add_(0, idx, db * wt)
    )
    return delta_sum, count, bias_sum


def _flatten_lists(
    lists: Sequence, name: str, num_items: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    arrays = [np.asarray(x, dtype=np.int64).reshape(-1) for x in lists]
    for a in arrays:
        if a.size and (a.min() < 0 or a.max() >= num_items):
            raise ConfigError(
                f"{name} must hold item ids in [0, {num_items}) (got {a.min()}..{a.max()})"
            )
    lengths = np.array([a.size for a in arrays], dtype=np.int64)
    return lengths, arrays


_LANES = 64  # a multiple of every SIMD width torch's CPU kernels use
_CHUNK = 16384  # below torch's grain size: one thread per call


def _pointwise(fn, x: torch.Tensor) -> torch.Tensor:
    """``fn(x)`` for an elementwise ``fn`` such that every element goes through the same
    (vectorised) kernel wherever it sits in ``x``.

    torch's CPU ``sigmoid``/``softplus`` compute the last ``len % width`` elements with a
    scalar routine that can differ from the vector one in the last bit, and split long
    inputs across threads at positions that depend on the length. A user's triple would
    then depend on how many other users share the call (i.e. on the node's cohort).
    Padding to a multiple of :data:`_LANES` and cutting into fixed chunks below the
    threading grain removes both, so a cohort gives one user's bits exactly.
    """
    n = x.numel()
    pad = (-n) % _LANES
    xp = F.pad(x, (0, pad)) if pad else x
    if xp.numel() <= _CHUNK:
        return fn(xp)[:n]
    return torch.cat([fn(c) for c in xp.split(_CHUNK)])[:n]


@torch.no_grad()
def mf_bpr_user_step(
    P_users: torch.Tensor,
    Q: torch.Tensor,
    pos_lists: Sequence,
    neg_lists: Sequence,
    lr: float,
    reg: float = 0.0,
    epochs: int = 1,
    seed: int | Sequence[int] = 0,
    *,
    batch_size: int | None = None,
    item_bias: torch.Tensor | None = None,
    user_grad=None,
) -> CohortUpdate:
    """Local BPR training of ``U`` users at once, each on its own copy of the item rows it touches.

    ``P_users`` (U, d): the cohort's embeddings; ``Q`` (num_items, d) (and ``item_bias``): the
    global item parameters every user starts from (not modified). ``pos_lists[j]``: user ``j``'s
    positives; ``neg_lists[j]``: its negatives, either one per positive (reused every epoch) or
    ``epochs * len(pos_lists[j])`` (epoch ``e`` uses the ``e``-th block), negative ``t`` of a block
    paired with positive ``t``. ``seed``: one int for all users, or one per user (the caller derives
    them, e.g. ``derive_seed(run_seed, "local", round, user)``); it only orders mini-batches.
    Returns a :class:`CohortUpdate`; running the users one at a time gives the same numbers.

    ``user_grad(P_active (k, d), users (k,) cohort indices) -> (k, d)``: an optional extra
    per-user gradient on the user embeddings, added once per mini-batch step of each user that
    has triples in the step, from the pre-step values (e.g. RAID's ``2 * gamma * (p - t_u)``
    or a gradient-reversal adversary). It must be per-user (row ``i`` may depend only on user
    ``users[i]``) so that the cohort result stays the per-user result.
    """
    if P_users.dim() != 2 or Q.dim() != 2 or P_users.shape[1] != Q.shape[1]:
        raise ConfigError(
            f"P_users (U, d) and Q (num_items, d) must share d (got {tuple(P_users.shape)}, "
            f"{tuple(Q.shape)})"
        )
    U, d = P_users.shape
    num_items = Q.shape[0]
    if not lr > 0:
        raise ConfigError(f"lr must be > 0 (got {lr})")
    if not reg >= 0:
        raise ConfigError(f"reg must be >= 0 (got {reg})")
    if int(epochs) != epochs or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1 (got {epochs})")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ConfigError(
            f"batch_size must be None (full batch) or an integer >= 1 (got {batch_size})"
        )
    if len(pos_lists) != U or len(neg_lists) != U:
        raise ConfigError(
            f"pos_lists and neg_lists must have one entry per user in P_users ({U}), "
            f"got {len(pos_lists)} and {len(neg_lists)}"
        )
    if item_bias is not None and tuple(item_bias.shape) != (num_items,):
        raise ConfigError(
            f"item_bias must have shape ({num_items},) (got {tuple(item_bias.shape)})"
        )
    if isinstance(seed, (int, np.integer)):
        seeds = [int(seed)] * U
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != U:
            raise ConfigError(f"seed must be an int or one int per user ({U}), got {len(seeds)}")

    E = int(epochs)
    n, pos_arr = _flatten_lists(pos_lists, "pos_lists", num_items)
    _, neg_arr = _flatten_lists(neg_lists, "neg_lists", num_items)
    negs = []
    for j in range(U):
        a = neg_arr[j]
        if a.size == n[j]:
            negs.append(np.broadcast_to(a, (E, n[j])))
        elif a.size == E * n[j]:
            negs.append(a.reshape(E, n[j]))
        else:
            raise ConfigError(
                f"neg_lists[{j}] must have len(pos_lists[{j}])={n[j]} or epochs*that="
                f"{E * n[j]} entries (got {a.size})"
            )
    N = int(n.sum())
    off = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(n, out=off[1:])
    user_of = np.repeat(np.arange(U, dtype=np.int64), n)
    pos_flat = np.concatenate(pos_arr) if U else np.zeros(0, np.int64)
    neg_flat = np.concatenate(negs, axis=1) if U else np.zeros((E, 0), np.int64)

    # Each user's private rows: sorted unique (user, item) keys over its positives and negatives.
    base = user_of * num_items
    keys = np.sort(np.concatenate([base + pos_flat, (base[None, :] + neg_flat).reshape(-1)]))
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.size else keys
    owners, item_ids = keys // num_items, keys % num_items
    indptr = np.zeros(U + 1, dtype=np.int64)
    np.cumsum(np.bincount(owners, minlength=U), out=indptr[1:])
    lpos = torch.as_tensor(np.searchsorted(keys, base + pos_flat))
    lneg = torch.as_tensor(np.searchsorted(keys, base[None, :] + neg_flat))

    P = P_users.detach().clone()
    rows = torch.as_tensor(item_ids, dtype=torch.long)
    R = Q.detach().index_select(0, rows)  # a copy: Q is never modified
    Rb = None if item_bias is None else item_bias.detach().index_select(0, rows)
    user_t = torch.as_tensor(user_of)
    gens = [np.random.default_rng(s) for s in seeds] if batch_size is not None else None
    losses = np.zeros((U, E))

    for e in range(E):
        if batch_size is None:
            step = np.zeros(N, dtype=np.int64)
            rank = np.arange(N) - off[user_of]
            size = n[user_of]
        else:
            assert gens is not None  # drawn above whenever batch_size is given
            rank = np.empty(N, dtype=np.int64)
            for j in range(U):
                if n[j]:
                    rank[off[j] + gens[j].permutation(n[j])] = np.arange(n[j])
            step = rank // batch_size
            size = np.minimum(batch_size, n[user_of] - step * batch_size)
        w_all = torch.as_tensor(1.0 / np.maximum(size, 1), dtype=Q.dtype)
        order = np.lexsort((rank, user_of, step))  # by step, then user, then visiting order
        bounds = np.concatenate(
            [[0], np.cumsum(np.bincount(step, minlength=int(step.max(initial=-1)) + 1))]
        )
        loss_sum = torch.zeros(U, dtype=torch.float64)
        for s in range(bounds.size - 1):
            idx = torch.as_tensor(order[bounds[s] : bounds[s + 1]])
            u = user_t.index_select(0, idx)
            li, lj, w = (
                lpos.index_select(0, idx),
                lneg[e].index_select(0, idx),
                w_all.index_select(0, idx),
            )
            p, qi, qj = P.index_select(0, u), R.index_select(0, li), R.index_select(0, lj)
            diff = qi - qj
            x = torch.linalg.vecdot(p, diff)
            sq = (
                torch.linalg.vecdot(p, p)
                + torch.linalg.vecdot(qi, qi)
                + torch.linalg.vecdot(qj, qj)
            )
            if Rb is not None:
                bi, bj = Rb.index_select(0, li), Rb.index_select(0, lj)
                x = x + bi - bj
                sq = sq + bi.pow(2) + bj.pow(2)
            loss_sum.index_add_(
                0, u, (_pointwise(F.softplus, -x) + 0.5 * reg * sq).to(torch.float64)
            )
            gw = w * -_pointwise(torch.sigmoid, -x)  # w * dL/dx, per triple
            active = torch.unique_consecutive(u)
            reg_p = P.index_select(0, active).mul_(reg)
            if user_grad is not None:
                reg_p += user_grad(P.index_select(0, active), active)
            wr = (w * reg)[:, None]
            # in place on the gathered copies (pre-step values are no longer needed afterwards)
            P.index_add_(0, u, diff.mul_(gw[:, None]), alpha=-lr)
            P.index_add_(0, active, reg_p, alpha=-lr)
            R.index_add_(0, li, qi.mul_(wr).addcmul_(gw[:, None], p), alpha=-lr)
            R.index_add_(0, lj, qj.mul_(wr).addcmul_(gw[:, None], p, value=-1.0), alpha=-lr)
            if Rb is not None:
                Rb.index_add_(0, li, gw + w * reg * bi, alpha=-lr)
                Rb.index_add_(0, lj, -gw + w * reg * bj, alpha=-lr)
        with np.errstate(invalid="ignore", divide="ignore"):
            losses[:, e] = loss_sum.numpy() / n
    return CohortUpdate(P, indptr, item_ids, R, Rb, losses)


# =========================================================================== SASRec


def to_tokens(sequences: Sequence, max_len: int) -> torch.Tensor:
    """Left-padded ``(B, max_len)`` long tokens of the last ``max_len`` items.

    Token = item id + 1, 0 = padding.
    """
    if int(max_len) < 1:
        raise ConfigError(f"max_len must be >= 1 (got {max_len})")
    out = np.zeros((len(sequences), max_len), dtype=np.int64)
    for r, s in enumerate(sequences):
        s = np.asarray(s, dtype=np.int64).reshape(-1)[-max_len:]
        if s.size:
            out[r, max_len - s.size :] = s + 1
    return torch.from_numpy(out)


class _Attention(nn.Module):
    def __init__(self, d: int, num_heads: int, dropout: float):
        super().__init__()
        self.h, self.dropout = num_heads, dropout
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor,
        drop: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, L, d = query.shape

        def heads(t):
            return t.view(B, L, self.h, d // self.h).transpose(1, 2)

        q, k, v = heads(self.q(query)), heads(self.k(key)), heads(self.v(key))
        if drop is None:
            a = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )
        else:  # explicit dropout multipliers on the attention weights (B, h, L, L)
            w = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.h)
            w = torch.softmax(w.masked_fill(~mask, float("-inf")), dim=-1)
            a = (w * drop) @ v
        return self.out(a.transpose(1, 2).reshape(B, L, d))


class _Block(nn.Module):
    def __init__(self, d: int, num_heads: int, dropout: float):
        super().__init__()
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.attn = _Attention(d, num_heads, dropout)
        self.drop_attn = nn.Dropout(dropout)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        self.ffn = nn.Sequential(
            nn.Linear(d, d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d, d), nn.Dropout(dropout)
        )

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, noise: Sequence[torch.Tensor] | None = None
    ) -> torch.Tensor:
        q = self.ln_attn(x)
        if noise is None:
            x = q + self.drop_attn(self.attn(q, x, mask))
            y = self.ln_ffn(x)
            return y + self.ffn(y)
        n_w, n_a, n_f1, n_f2 = noise
        x = q + self.attn(q, x, mask, n_w) * n_a
        y = self.ln_ffn(x)
        lin1, _, _, lin2, _ = self.ffn
        return y + lin2(F.relu(lin1(y)) * n_f1) * n_f2


class _NextItemModel(nn.Module):
    """Shared next-item head of :class:`SASRec` and :class:`GRU4Rec`.

    A subclass defines ``num_items``, ``d``, ``max_len``, ``item_emb`` (row 0 = padding) and
    ``forward(seqs, noise=None) -> (B, L, d)``; scores are ``h . E[token]`` (shared embedding).
    """

    PAD = 0
    num_items: int
    d: int
    max_len: int
    item_emb: nn.Embedding

    def item_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``h . E[token]`` for matching hidden states ``(..., d)`` and tokens ``(...)``."""
        return (hidden * self.item_emb(tokens)).sum(-1)

    def bce_loss(
        self, seqs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, noise: dict | None = None
    ) -> torch.Tensor:
        """Mean over non-padded targets of BCE(next item, 1) + BCE(one sampled negative, 0).

        ``seqs``, ``pos``, ``neg``: token tensors ``(B, L)``; position ``t`` of ``pos`` is the item
        that follows ``seqs[:, t]`` (0 where there is no target) and ``neg`` one sampled negative
        token.
        """
        h = self(seqs, noise)
        m = pos != self.PAD
        if not bool(m.any()):
            return h.sum() * 0.0
        lp, ln = self.item_logits(h, pos)[m], self.item_logits(h, neg)[m]
        return F.binary_cross_entropy_with_logits(
            lp, torch.ones_like(lp)
        ) + F.binary_cross_entropy_with_logits(ln, torch.zeros_like(ln))

    def masked_bce(
        self, seqs: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, noise: dict | None = None
    ) -> torch.Tensor:
        """:meth:`bce_loss` without data-dependent indexing (usable under ``torch.func.vmap``).

        Same value: the mean over non-padded targets, as a masked sum divided by the count.
        """
        h = self(seqs, noise)
        m = (pos != self.PAD).to(h.dtype)
        lp, ln = self.item_logits(h, pos), self.item_logits(h, neg)
        per = F.softplus(-lp) + F.softplus(ln)
        return (per * m).sum() / m.sum().clamp_min(1.0)

    def score_all(self, seqs: torch.Tensor) -> torch.Tensor:
        """Scores ``(B, num_items)`` (0-based item ids) of the next item.

        The next item is the one after each sequence's last position.
        """
        h = self(seqs)[:, -1, :]
        return h @ self.item_emb.weight[1:].T


class SASRec(_NextItemModel):
    """Self-attentive sequential recommender (see the module docstring for every choice)."""

    PAD = 0

    def __init__(
        self,
        num_items: int,
        d: int = 64,
        max_len: int = 50,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        *,
        seed: int = 0,
    ):
        super().__init__()
        for name, v in (
            ("num_items", num_items),
            ("d", d),
            ("max_len", max_len),
            ("num_heads", num_heads),
        ):
            if int(v) != v or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1 (got {v})")
        if int(num_blocks) != num_blocks or num_blocks < 0:
            raise ConfigError(f"num_blocks must be an integer >= 0 (got {num_blocks})")
        if d % num_heads:
            raise ConfigError(
                f"d must be divisible by num_heads (got d={d}, num_heads={num_heads})"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (got {dropout})")
        self.num_items, self.d, self.max_len = int(num_items), int(d), int(max_len)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=self.PAD)
            self.pos_emb = nn.Embedding(max_len, d)
            self.emb_dropout = nn.Dropout(dropout)
            self.blocks = nn.ModuleList(_Block(d, num_heads, dropout) for _ in range(num_blocks))
            self.final_ln = nn.LayerNorm(d, eps=1e-8)
            for name, prm in self.named_parameters():
                if prm.dim() >= 2:
                    nn.init.xavier_normal_(prm)
                elif name.endswith("bias"):
                    nn.init.zeros_(prm)
            with torch.no_grad():
                self.item_emb.weight[self.PAD].zero_()

    def forward(self, seqs: torch.Tensor, noise: dict | None = None) -> torch.Tensor:
        """Hidden states ``(B, L, d)`` of token batches ``(B, L)``, ``L <= max_len`` (0 = padding).

        ``noise``: explicit dropout multipliers from :meth:`dropout_noise` (keep / (1 - p) or 0),
        used instead of the ``nn.Dropout`` modules, so that each row's masks can come from its own
        generator (federated cohorts: every user's computation is what it would be alone).
        """
        if seqs.dim() != 2 or seqs.shape[1] > self.max_len:
            raise ConfigError(
                f"seqs must be (B, L) with L <= max_len={self.max_len} (got {tuple(seqs.shape)})"
            )
        B, L = seqs.shape
        keep = seqs != self.PAD
        x = self.item_emb(seqs) * math.sqrt(self.d)
        x = x + self.pos_emb(torch.arange(self.max_len - L, self.max_len, device=seqs.device))
        x = (self.emb_dropout(x) if noise is None else x * noise["emb"]) * keep.unsqueeze(-1)
        eye = torch.eye(L, dtype=torch.bool, device=seqs.device)
        causal = torch.ones(L, L, dtype=torch.bool, device=seqs.device).tril()
        mask = (causal & keep[:, None, :]) | eye  # (B, L, L): query t may attend to key s
        mask = mask.unsqueeze(1)
        for b, blk in enumerate(self.blocks):
            x = blk(x, mask, None if noise is None else noise["blocks"][b]) * keep.unsqueeze(-1)
        return self.final_ln(x)

    def dropout_noise(self, seeds: Sequence[int], L: int | None = None) -> dict:
        """Dropout multipliers for ``len(seeds)`` rows of length ``L``.

        Row ``r`` comes from ``Generator(seeds[r])``.

        Layout: ``{"emb": (B, L, d), "blocks": [(attn weights (B, h, L, L), attn out (B, L, d),
        ffn hidden (B, L, d), ffn out (B, L, d)), ...]}``; each entry is ``(U >= p) / (1 - p)`` with
        ``U`` uniform, i.e. the same Bernoulli(1 - p) keep masks ``nn.Dropout`` draws. A row's
        multipliers depend only on its own seed.
        """
        L = self.max_len if L is None else int(L)
        p, d = float(self.emb_dropout.p), self.d
        h = cast(_Block, self.blocks[0]).attn.h if len(self.blocks) else 1
        sizes = [L * d] + [h * L * L, L * d, L * d, L * d] * len(self.blocks)
        total = sum(sizes)
        u = (
            torch.stack(
                [
                    torch.rand(total, generator=torch.Generator().manual_seed(int(s) % 2**63))
                    for s in seeds
                ]
            )
            if len(seeds)
            else torch.zeros(0, total)
        )
        m = (u >= p).to(torch.float32) / (1.0 - p)
        B = m.shape[0]
        parts = list(torch.split(m, sizes, dim=1))
        shapes = [(L, d)] + [(h, L, L), (L, d), (L, d), (L, d)] * len(self.blocks)
        parts = [t.reshape(B, *sh) for t, sh in zip(parts, shapes)]
        blocks = [tuple(parts[1 + 4 * b : 5 + 4 * b]) for b in range(len(self.blocks))]
        return {"emb": parts[0], "blocks": blocks}


# =========================================================================== GRU4Rec


class _GRULayer(nn.Module):
    """One GRU layer with ``torch.nn.GRU``'s equations and gate layout (r, z, n).

    ``ih``/``hh`` hold ``weight_ih_l{k}``/``bias_ih_l{k}`` and ``weight_hh_l{k}``/``bias_hh_l{k}``
    of an ``nn.GRU`` (each ``(3d, d)``, rows ``[r; z; n]``). Written as a Python loop over
    positions so that it runs under ``torch.func.vmap`` with per-user weights.
    """

    def __init__(self, d: int):
        super().__init__()
        self.ih, self.hh = nn.Linear(d, 3 * d), nn.Linear(d, 3 * d)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Outputs ``(B, L, d)`` of inputs ``x`` ``(B, L, d)``; ``keep`` ``(B, L, 1)`` is 1 at real
        positions, 0 at padding (where the hidden state is carried over unchanged)."""
        B, L, d = x.shape
        gi = self.ih(x)  # input-side gates of every position at once
        h = x.new_zeros(B, d)
        out = []
        for t in range(L):
            i_r, i_z, i_n = gi[:, t].chunk(3, dim=-1)
            h_r, h_z, h_n = self.hh(h).chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            m = keep[:, t]
            h = m * (n + z * (h - n)) + (1.0 - m) * h
            out.append(h)
        return torch.stack(out, dim=1)


class GRU4Rec(_NextItemModel):
    """GRU sequential recommender with SASRec's interface (see the module docstring)."""

    def __init__(
        self,
        num_items: int,
        d: int = 64,
        max_len: int = 50,
        num_layers: int = 1,
        dropout: float = 0.2,
        seed: int = 0,
    ):
        super().__init__()
        for name, v in (
            ("num_items", num_items),
            ("d", d),
            ("max_len", max_len),
            ("num_layers", num_layers),
        ):
            if int(v) != v or v < 1:
                raise ConfigError(f"{name} must be an integer >= 1 (got {v})")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1) (got {dropout})")
        self.num_items, self.d, self.max_len = int(num_items), int(d), int(max_len)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=self.PAD)
            self.emb_dropout = nn.Dropout(dropout)
            self.layers = nn.ModuleList(_GRULayer(d) for _ in range(num_layers))
            self.drops = nn.ModuleList(nn.Dropout(dropout) for _ in range(num_layers))
            self.proj = nn.Linear(d, d)
            for name, prm in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(prm)
                elif name.startswith("layers."):  # each (d, d) gate matrix on its own
                    for g in prm.detach().split(d, dim=0):
                        nn.init.xavier_normal_(g)
                else:
                    nn.init.xavier_normal_(prm)
            with torch.no_grad():
                self.item_emb.weight[self.PAD].zero_()

    def forward(self, seqs: torch.Tensor, noise: dict | None = None) -> torch.Tensor:
        """Outputs ``(B, L, d)`` (in item-embedding space) of token batches ``(B, L)``.

        ``L <= max_len``, 0 = padding; padded positions give 0. ``noise``: explicit dropout
        multipliers from :meth:`dropout_noise`, used instead of the ``nn.Dropout`` modules.
        """
        if seqs.dim() != 2 or seqs.shape[1] > self.max_len:
            raise ConfigError(
                f"seqs must be (B, L) with L <= max_len={self.max_len} (got {tuple(seqs.shape)})"
            )
        keep = (seqs != self.PAD).unsqueeze(-1)
        x = self.item_emb(seqs)
        x = self.emb_dropout(x) if noise is None else x * noise["emb"]
        m = keep.to(x.dtype)
        for k, layer in enumerate(self.layers):
            x = layer(x, m)
            x = self.drops[k](x) if noise is None else x * noise["blocks"][k][0]
        return self.proj(x) * m

    def dropout_noise(self, seeds: Sequence[int], L: int | None = None) -> dict:
        """Dropout multipliers for ``len(seeds)`` rows of length ``L``.

        Row ``r`` comes from ``Generator(seeds[r])`` exactly as in :meth:`SASRec.dropout_noise`.
        Layout: ``{"emb": (B, L, d), "blocks": [(layer output (B, L, d),), ...]}`` (one 1-tuple
        per GRU layer); entries ``(U >= p) / (1 - p)``. A row depends only on its own seed.
        """
        L = self.max_len if L is None else int(L)
        p, d, n = float(self.emb_dropout.p), self.d, len(self.layers)
        total = (1 + n) * L * d
        u = (
            torch.stack(
                [
                    torch.rand(total, generator=torch.Generator().manual_seed(int(s) % 2**63))
                    for s in seeds
                ]
            )
            if len(seeds)
            else torch.zeros(0, total)
        )
        m = ((u >= p).to(torch.float32) / (1.0 - p)).reshape(-1, 1 + n, L, d)
        return {"emb": m[:, 0], "blocks": [(m[:, 1 + k],) for k in range(n)]}


# =========================================================================== federated SASRec


@dataclass
class SASRecCohortUpdate:
    """Result of :func:`sasrec_user_step` for ``U`` users, each trained alone from the same weights.

    User ``j`` touched the item-embedding rows ``item_ids[indptr[j]:indptr[j+1]]`` (0-based item
    ids, sorted; the items of its input, target and negative tokens): their deltas are the same
    slice of ``item_deltas`` (T, d). Every other item row has an exactly zero delta (its gradient
    is zero). ``dense[name]`` (U, ...): the deltas of every other parameter. ``losses[j, e]``: the
    user's loss at the start of local step ``e`` (NaN for users without a training target).
    ``num_targets[j]``: its non-padded target positions (its example count).
    """

    indptr: np.ndarray
    item_ids: np.ndarray
    item_deltas: torch.Tensor
    dense: dict
    losses: np.ndarray
    num_targets: np.ndarray


def sasrec_user_step(
    model: SASRec | GRU4Rec,
    seqs: Sequence,
    neg_lists: Sequence,
    lr: float,
    epochs: int = 1,
    seeds: Sequence[int] | None = None,
    *,
    chunk: int = 64,
) -> SASRecCohortUpdate:
    """Local SGD of ``U`` users on their own sequences, each on its own copy of ``model``'s weights.

    ``seqs[j]``: user ``j``'s chronological training items (0-based); inputs are ``seq[:-1]`` and
    targets ``seq[1:]``, the last ``model.max_len`` of each. ``neg_lists[j]``: ``epochs`` blocks of
    one negative item per target (``epochs * n_targets`` ids, block ``e`` for step ``e``).
    ``seeds[j]``: the user's dropout seed; step ``e`` uses ``seeds[j] + e``. Each step is one
    full-batch SGD step of lr ``lr`` on the user's mean BCE over its targets
    (:meth:`SASRec.masked_bce`). Users are vectorised with ``torch.func.vmap`` over per-user
    weight copies in chunks of ``chunk``; dropout masks are explicit per-user draws
    (:meth:`SASRec.dropout_noise`), so a user's result does not depend on its cohort (tested).
    ``model`` is not modified; a :class:`GRU4Rec` works the same way.
    """
    from torch.func import functional_call, vmap

    U = len(seqs)
    if len(neg_lists) != U:
        raise ConfigError(f"neg_lists must have one entry per user ({U}), got {len(neg_lists)}")
    if not lr > 0:
        raise ConfigError(f"lr must be > 0 (got {lr})")
    if int(epochs) != epochs or epochs < 1:
        raise ConfigError(f"epochs must be an integer >= 1 (got {epochs})")
    seeds = [0] * U if seeds is None else [int(s) for s in seeds]
    if len(seeds) != U:
        raise ConfigError(f"seeds must have one entry per user ({U}), got {len(seeds)}")
    E, L = int(epochs), model.max_len
    names = [n for n, _ in model.named_parameters()]
    base = {n: p.detach() for n, p in model.named_parameters()}
    x_tok = to_tokens([np.asarray(s, dtype=np.int64)[:-1] for s in seqs], L)
    y_tok = to_tokens([np.asarray(s, dtype=np.int64)[1:] for s in seqs], L)
    n_t = (y_tok > 0).sum(1).numpy()
    neg_tok = torch.zeros(E, U, L, dtype=torch.long)
    for j in range(U):
        neg_j = np.asarray(neg_lists[j], dtype=np.int64).reshape(-1)
        if neg_j.size != E * n_t[j]:
            raise ConfigError(
                f"neg_lists[{j}] must hold epochs * targets = {E * n_t[j]} items (got {neg_j.size})"
            )
        if n_t[j]:
            if neg_j.min() < 0 or neg_j.max() >= model.num_items:
                raise ConfigError(f"neg_lists[{j}] must hold item ids in [0, {model.num_items})")
            neg_tok[:, j, L - n_t[j] :] = torch.from_numpy(neg_j.reshape(E, n_t[j]) + 1)

    # Each user's private copy of the item rows it touches: a local table (row 0 = the padding
    # row) indexed by remapped tokens, so per-user gradients stay (T_max, d) instead of
    # (num_items + 1, d). Untouched rows have zero gradient, so nothing is lost.
    all_tok = torch.cat([x_tok[None], y_tok[None], neg_tok], 0)  # (E + 2, U, L)
    local_ids = [
        torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), all_tok[:, j].reshape(-1)]))
        for j in range(U)
    ]
    T = max(int(t.numel()) for t in local_ids) if U else 1
    loc = torch.zeros_like(all_tok)
    tables = torch.zeros(U, T, dtype=torch.long)
    for j in range(U):
        loc[:, j] = torch.searchsorted(local_ids[j], all_tok[:, j].contiguous())
        tables[j, : local_ids[j].numel()] = local_ids[j]
    x_loc, y_loc, neg_loc = loc[0], loc[1], loc[2:]

    was_training = model.training
    model.train()

    def user_loss(params, x, y, neg, noise):
        noise = {
            "emb": noise["emb"][None],
            "blocks": [tuple(t[None] for t in b) for b in noise["blocks"]],
        }
        h = functional_call(model, params, (x[None],), {"noise": noise})[0]
        Emb = params["item_emb.weight"]
        lp, ln = (h * Emb[y]).sum(-1), (h * Emb[neg]).sum(-1)
        m = (y > 0).to(h.dtype)
        return ((F.softplus(-lp) + F.softplus(ln)) * m).sum() / m.sum().clamp_min(1.0)

    step = vmap(torch.func.grad_and_value(user_loss))
    losses = np.full((U, E), np.nan)
    dense = {n: torch.empty((U, *base[n].shape)) for n in names if n != "item_emb.weight"}
    item_ids, item_rows, indptr = [], [], np.zeros(U + 1, dtype=np.int64)
    for a in range(0, U, chunk):
        b = min(a + chunk, U)
        params = {n: base[n].unsqueeze(0).expand(b - a, *base[n].shape).clone() for n in dense}
        params["item_emb.weight"] = base["item_emb.weight"][tables[a:b]].clone()
        for e in range(E):
            noise = model.dropout_noise([seeds[j] + e for j in range(a, b)], L)
            g, v = step(params, x_loc[a:b], y_loc[a:b], neg_loc[e, a:b], noise)
            with torch.no_grad():
                for n in names:
                    params[n] -= lr * g[n]
            losses[a:b, e] = v.detach().numpy()
        with torch.no_grad():
            for n in dense:
                dense[n][a:b] = params[n] - base[n]
            demb = params["item_emb.weight"] - base["item_emb.weight"][tables[a:b]]
        for j in range(a, b):
            k = local_ids[j].numel()
            item_ids.append(local_ids[j][1:].numpy() - 1)
            item_rows.append(demb[j - a, 1:k])
            indptr[j + 1] = indptr[j] + k - 1
    losses[n_t == 0] = np.nan
    model.train(was_training)
    return SASRecCohortUpdate(
        indptr=indptr,
        item_ids=np.concatenate(item_ids) if item_ids else np.zeros(0, np.int64),
        item_deltas=torch.cat(item_rows) if item_rows else torch.zeros(0, model.d),
        dense=dense,
        losses=losses,
        num_targets=n_t.astype(np.int64),
    )
