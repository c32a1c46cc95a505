"""Centralised reference trainers (MF-BPR, SASRec, GRU4Rec) and full-ranking evaluation.

These are the non-federated baselines the federated versions are compared with, built on the same
pure pieces (:mod:`fedrec.models.recsys`, :mod:`fedrec.recsys.splits`,
:mod:`fedrec.metrics.ranking`).

Randomness: every epoch draws its shuffling and negatives from
``np.random.default_rng(derive_seed(seed, <purpose>, epoch))``; torch weights come from explicit
seeds, and SASRec's dropout runs inside ``torch.random.fork_rng`` after seeding, so the caller's
global RNG state is never read or changed and the same arguments give the same model (on the same
torch build and thread count).

MF-BPR (:func:`train_mf_bpr`)
    One epoch = every training (user, item) pair once, in a random order, each paired with one
    negative drawn uniformly from the items that user has not trained on (exact, with
    replacement), in mini-batches of ``batch_size`` triples; loss
    :func:`~fedrec.models.recsys.bpr_loss` (mean BPR + ``reg/2`` x squared norms of the batch's
    embeddings). Optimiser Adam (default, as RecBole's BPR) or plain SGD, on dense ``P``/``Q``
    tensors; ``P, Q ~ N(0, 0.1^2)``. Defaults (d=64, 30 epochs, Adam lr 5e-3, reg 1e-3, batch
    1024) were picked on ML-100K leave-one-out, where they give test NDCG@10 ~ 0.040 and HR@10 ~
    0.081 (lr 1e-3 / reg 1e-4 reaches ~ 0.034 after 40-60 epochs).

SASRec (:func:`train_sasrec`)
    One epoch = every user with at least 2 training interactions once, in a random order, in
    batches of ``batch_size`` users. Input: the user's training sequence minus its last item, last
    ``max_len`` items, left-padded; target at each position: the next item; one negative per
    target position drawn uniformly from the items outside the user's training set (as in the
    paper's code). Adam with betas (0.9, 0.98) as in the paper, optional L2 on the item embeddings
    of the batch (``l2_emb``, default 0). Defaults are the paper's (d=64, max_len 50, 2 blocks,
    1 head, dropout 0.2, lr 1e-3, batch 128) with 200 epochs, which on ML-100K leave-one-out gives
    test NDCG@10 ~ 0.07 and HR@10 ~ 0.15 (about 0.05 / 0.11 after 60 epochs).

GRU4Rec (:func:`train_gru4rec`)
    The SASRec loop above unchanged (same examples, negatives, BCE loss, Adam), on a
    :class:`~fedrec.models.recsys.GRU4Rec`; :func:`sasrec_score_fn` scores either model.

Evaluation (:func:`evaluate_full_ranking`)
    Full ranking over the whole catalog for every user with at least one target item in the split.
    With ``exclude_train=True`` the user's history is masked: training items for ``split="valid"``;
    training **and validation** items for ``split="test"`` (the validation item is history at test
    time; SASRec's test input sequence accordingly ends with it, see :func:`sasrec_score_fn`).
    Metrics: :func:`fedrec.metrics.ranking.ranking_metrics` (means of per-user values over the
    evaluated users), plus popularity-group fairness with popular items = top ``popular_fraction``
    of items by training count, exposure metrics over the evaluated users' top-K lists, and, with
    ``user_groups`` (one code per user of the dataset), per-group means and gaps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from fedrec.errors import ConfigError
from fedrec.metrics import ranking as rk
from fedrec.models.recsys import (
    GRU4Rec,
    MFParams,
    SASRec,
    bpr_loss,
    init_mf,
    mf_scores,
    to_tokens,
)
from fedrec.recsys.splits import Ragged, UserData, sample_negatives_rows
from fedrec.seeding import derive_seed

__all__ = [
    "OPTIMIZERS",
    "evaluate_full_ranking",
    "mf_score_fn",
    "sasrec_score_fn",
    "train_gru4rec",
    "train_mf_bpr",
    "train_sasrec",
]

OPTIMIZERS = ("adam", "sgd")

ScoreFn = Callable[[np.ndarray], "np.ndarray | torch.Tensor"]


def _positive(name: str, v, integer: bool = False, allow_zero: bool = False) -> None:
    ok = (v >= 0 if allow_zero else v > 0) and (not integer or int(v) == v)
    if not ok:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind} {'>= 0' if allow_zero else '> 0'} (got {v!r})")


def _num_items(train: UserData, num_items: int | None) -> int:
    if num_items is None:
        return train.num_items
    if int(num_items) < train.num_items:
        raise ConfigError(
            f"num_items must be >= the data's num_items={train.num_items} (got {num_items})"
        )
    return int(num_items)


def _optimizer(name: str, params, lr: float, **adam_kw) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, **adam_kw)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ConfigError(f"optimizer must be one of: {', '.join(OPTIMIZERS)} (got {name!r})")


# --------------------------------------------------------------------------- MF-BPR


def train_mf_bpr(
    train: UserData,
    num_items: int | None = None,
    d: int = 64,
    epochs: int = 30,
    lr: float = 5e-3,
    reg: float = 1e-3,
    batch_size: int = 1024,
    seed: int = 0,
    *,
    item_bias: bool = False,
    optimizer: str = "adam",
    init_std: float = 0.1,
    callback: Callable[[int, float, MFParams], None] | None = None,
) -> MFParams:
    """Centralised MF-BPR on ``train.train``.

    Returns :class:`~fedrec.models.recsys.MFParams` (P, Q, b).

    ``callback(epoch, mean_loss, params)`` runs after every epoch (e.g. validation, logging).
    """
    n_items = _num_items(train, num_items)
    _positive("epochs", epochs, integer=True, allow_zero=True)
    _positive("lr", lr)
    _positive("reg", reg, allow_zero=True)
    _positive("batch_size", batch_size, integer=True)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of: {', '.join(OPTIMIZERS)} (got {optimizer!r})")
    init = init_mf(
        train.num_users,
        n_items,
        d,
        init_std=init_std,
        item_bias=item_bias,
        seed=derive_seed(seed, "mf-init"),
    )
    P = torch.nn.Parameter(init.P)
    Q = torch.nn.Parameter(init.Q)
    b = torch.nn.Parameter(init.b) if init.b is not None else None  # init_mf: b iff item_bias
    opt = _optimizer(optimizer, [t for t in (P, Q, b) if t is not None], lr)
    users_all, items_all = train.train.rows, train.train.indices
    n = users_all.size
    for epoch in range(int(epochs)):
        rng = np.random.default_rng(derive_seed(seed, "mf-epoch", epoch))
        perm = rng.permutation(n)
        u_np, i_np = users_all[perm], items_all[perm]
        j_np = sample_negatives_rows(n_items, train.train, u_np, rng)
        u_t, i_t, j_t = (torch.from_numpy(a) for a in (u_np, i_np, j_np))
        total = 0.0
        for a in range(0, n, batch_size):
            u, i, j = u_t[a : a + batch_size], i_t[a : a + batch_size], j_t[a : a + batch_size]
            loss = bpr_loss(
                P[u], Q[i], Q[j], reg, None if b is None else b[i], None if b is None else b[j]
            )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * u.numel()
        if callback is not None:
            callback(epoch, total / max(n, 1), _mf_snapshot(P, Q, b))
    return _mf_snapshot(P, Q, b)


def _mf_snapshot(P, Q, b) -> MFParams:
    return MFParams(
        P.detach().clone(), Q.detach().clone(), None if b is None else b.detach().clone()
    )


def mf_score_fn(params: MFParams) -> ScoreFn:
    """``users -> P[users] @ Q.T (+ b)``."""

    def score(users: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return mf_scores(params, users)

    return score


# --------------------------------------------------------------------------- SASRec


def _sasrec_examples(train: UserData, max_len: int):
    """Users with >= 2 training interactions and their input/target tokens.

    Tokens are left-padded and +1 shifted.
    """
    seq = train.train_seq
    users = np.flatnonzero(seq.lengths >= 2)
    inputs = to_tokens([seq[u][:-1] for u in users], max_len)
    targets = to_tokens([seq[u][1:] for u in users], max_len)
    return users, inputs, targets


def train_sasrec(
    train: UserData,
    num_items: int | None = None,
    *,
    d: int = 64,
    max_len: int = 50,
    num_blocks: int = 2,
    num_heads: int = 1,
    dropout: float = 0.2,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 128,
    l2_emb: float = 0.0,
    seed: int = 0,
    callback: Callable[[int, float, SASRec], None] | None = None,
) -> SASRec:
    """Centralised SASRec on ``train.train_seq``; returns the trained model in eval mode.

    ``callback(epoch, mean_loss, model)`` runs after every epoch (the model is in train mode again
    afterwards, so a callback may evaluate it).
    """
    n_items = _num_items(train, num_items)
    _check_seq_args(epochs, lr, batch_size, l2_emb)
    model = SASRec(
        n_items, d, max_len, num_blocks, num_heads, dropout, seed=derive_seed(seed, "sasrec-init")
    )
    _train_next_item(
        model, train, n_items, epochs, lr, batch_size, l2_emb, seed, "sasrec", callback
    )
    return model


def train_gru4rec(
    train: UserData,
    num_items: int | None = None,
    *,
    d: int = 64,
    max_len: int = 50,
    num_layers: int = 1,
    dropout: float = 0.2,
    epochs: int = 200,
    lr: float = 1e-3,
    batch_size: int = 128,
    l2_emb: float = 0.0,
    seed: int = 0,
    callback: Callable[[int, float, GRU4Rec], None] | None = None,
) -> GRU4Rec:
    """Centralised GRU4Rec, trained exactly like :func:`train_sasrec` (same examples, negatives,
    loss and optimiser; seeds derived with ``"gru4rec-..."`` instead of ``"sasrec-..."``).

    Returns the trained model in eval mode; score it with :func:`sasrec_score_fn`.
    """
    n_items = _num_items(train, num_items)
    _check_seq_args(epochs, lr, batch_size, l2_emb)
    model = GRU4Rec(
        n_items, d, max_len, num_layers, dropout, seed=derive_seed(seed, "gru4rec-init")
    )
    _train_next_item(
        model, train, n_items, epochs, lr, batch_size, l2_emb, seed, "gru4rec", callback
    )
    return model


def _check_seq_args(epochs: int, lr: float, batch_size: int, l2_emb: float) -> None:
    _positive("epochs", epochs, integer=True, allow_zero=True)
    _positive("lr", lr)
    _positive("batch_size", batch_size, integer=True)
    _positive("l2_emb", l2_emb, allow_zero=True)


def _train_next_item(
    model: SASRec | GRU4Rec,
    train: UserData,
    n_items: int,
    epochs: int,
    lr: float,
    batch_size: int,
    l2_emb: float,
    seed: int,
    tag: str,
    callback: Callable[[int, float, Any], None] | None,
) -> None:
    """The shared SASRec/GRU4Rec loop (module docstring); seeds ``derive_seed(seed, tag-...)``."""
    users, inputs, targets = _sasrec_examples(train, model.max_len)
    mask = targets > 0
    t_rows = np.nonzero(mask.numpy())[0]
    opt = _optimizer("adam", model.parameters(), lr, betas=(0.9, 0.98))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, f"{tag}-dropout"))
        model.train()
        for epoch in range(int(epochs)):
            rng = np.random.default_rng(derive_seed(seed, f"{tag}-epoch", epoch))
            neg = torch.zeros_like(targets)
            neg[mask] = torch.from_numpy(
                sample_negatives_rows(n_items, train.train, users[t_rows], rng) + 1
            )
            perm = torch.from_numpy(rng.permutation(users.size))
            total, count = 0.0, 0
            for a in range(0, users.size, batch_size):
                idx = perm[a : a + batch_size]
                loss = model.bce_loss(inputs[idx], targets[idx], neg[idx])
                if l2_emb > 0:
                    toks = torch.unique(
                        torch.cat([t[idx].reshape(-1) for t in (inputs, targets, neg)])
                    )
                    loss = loss + l2_emb * model.item_emb(toks).pow(2).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
                count += idx.numel()
            if callback is not None:
                model.eval()
                callback(epoch, total / max(count, 1), model)
                model.train()
    model.eval()


def sasrec_score_fn(model: SASRec | GRU4Rec, user_data: UserData, split: str = "test") -> ScoreFn:
    """Score function in eval mode.

    ``users -> model.score_all(last max_len items of user_data.sequences(split))``.
    """
    seqs = user_data.sequences(split)

    def score(users: np.ndarray) -> torch.Tensor:
        model.eval()
        with torch.no_grad():
            return model.score_all(to_tokens([seqs[u] for u in users], model.max_len))

    return score


# --------------------------------------------------------------------------- evaluation


def _rows(r: Ragged, users: np.ndarray) -> list[np.ndarray]:
    return [r[u] for u in users]


def evaluate_full_ranking(
    score_fn: ScoreFn,
    user_data: UserData,
    k_list: Sequence[int] = (10, 20),
    exclude_train: bool = True,
    *,
    split: str = "test",
    batch_size: int = 1024,
    popular_fraction: float = 0.2,
    user_groups: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-catalog ranking metrics of ``score_fn(users) -> (len(users), num_items)`` on ``split``.

    Returns the flat dict of :func:`fedrec.metrics.ranking.ranking_metrics` (``hr@K``,
    ``recall@K``, ``ndcg@K``, ``precision@K``, ``mrr@K``, ``mrr``, popularity-group metrics and
    gaps, ``exposure_*@K``, ``gini@K``, ``coverage@K``, ``num_users`` and, with ``user_groups``,
    ``"{metric}[{group}]"`` and ``"{metric}_gap"``).
    """
    ks = rk._check_k(k_list)
    _positive("batch_size", batch_size, integer=True)
    targets = user_data.targets(split)
    history = user_data.history(split)
    users = np.flatnonzero(targets.lengths > 0)
    popular = rk.popular_items(user_data.item_counts(), popular_fraction)
    n_items = user_data.num_items
    per_user: dict[str, list[np.ndarray]] = {}
    tops = []
    for a in range(0, users.size, batch_size):
        chunk = users[a : a + batch_size]
        s = score_fn(chunk)
        s = s.detach().cpu().numpy() if isinstance(s, torch.Tensor) else np.asarray(s)
        if s.shape != (chunk.size, n_items):
            raise ConfigError(
                f"score_fn must return ({chunk.size}, {n_items}) scores (got {s.shape})"
            )
        s = rk._scores(s)
        if exclude_train:
            s = rk._apply_exclude(s, _rows(history, chunk))
        rel = _rows(targets, chunk)
        top = rk.topk_items(s, max(ks))
        ranks = rk.first_relevant_rank(s, rel)
        for name, v in rk.per_user_metrics(top, rel, ks, ranks=ranks, popular=popular).items():
            per_user.setdefault(name, []).append(v)
        tops.append(top)
    pu = {name: np.concatenate(v) for name, v in per_user.items()}
    if not pu:
        raise ConfigError(f"no user has a '{split}' item to evaluate")
    out = rk.mean_metrics(pu)
    out["num_users"] = float(users.size)
    for k in ks:
        out[f"recall_gap@{k}"] = out[f"recall_pop@{k}"] - out[f"recall_tail@{k}"]
        out[f"ndcg_gap@{k}"] = out[f"ndcg_pop@{k}"] - out[f"ndcg_tail@{k}"]
    out.update(rk.exposure_metrics(np.concatenate(tops), n_items, ks, popular))
    if user_groups is not None:
        g = np.asarray(user_groups).reshape(-1)
        if g.size != user_data.num_users:
            raise ConfigError(
                f"user_groups must have one entry per user ({user_data.num_users}), got {g.size}"
            )
        out.update(rk.user_group_metrics(pu, g[users]))
    return out
