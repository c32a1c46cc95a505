"""Federated MF-BPR (FedRec / FCF style): the math of both halves, batch-first.

Client side (a cohort of users, any number of clients, in one call):

- :func:`init_users` — a client's private user embeddings, seeded by (run seed, client);
- :func:`local_step` — sampled negatives (one per positive and negative ratio, seeded by
  (run seed, round, user)) and ``local-epochs`` of BPR on each user's own copy of the item
  rows it touches (:func:`fedrec.models.recsys.mf_bpr_user_step`): returns the new user
  embeddings and each user's item-row deltas;
- :func:`client_uploads` — per client, the row-sparse upload: the touched row ids, the
  summed deltas over its users and how many of its users touched each row.

Server side:

- :func:`init_items` — the shared item matrix ``Q``, seeded by the run seed;
- :func:`sparse_server_step` — ``Q[i] += server_lr * step_i`` on the touched rows only,
  with ``step_i`` the mean delta over the users that touched row ``i`` (``sum delta /
  count``) or, with a :class:`fedrec.optim.RowAdam`, its lazy Adam direction. An
  untouched row stays bit-for-bit unchanged.

Every user's computation is its own (own negatives, own mini-batch order, own copies of
the rows), so how users are grouped into clients and clients onto nodes changes no
number. No flwr import: the client half, the server half and the benchmarks call this.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.messages import RowSparse
from fedrec.optim import RowAdam
from fedrec.seeding import derive_seed

__all__ = [
    "LocalResult",
    "client_uploads",
    "init_items",
    "init_users",
    "local_step",
    "sparse_server_step",
]


def init_items(num_items: int, dim: int, init_std: float, seed: int) -> np.ndarray:
    """``Q`` (num_items, dim) float32: ``N(0, init_std^2)``.

    Drawn from ``derive_seed(seed, "item-init")``.
    """
    g = torch.Generator().manual_seed(derive_seed(seed, "item-init") % 2**63)
    return (torch.randn(num_items, dim, generator=g) * init_std).numpy()


def init_users(seed: int, client_id: int, num_users: int, dim: int, init_std: float) -> np.ndarray:
    """A client's ``P`` (num_users, dim) float32 from ``derive_seed(seed, "user-init", client)``."""
    g = torch.Generator().manual_seed(derive_seed(seed, "user-init", client_id) % 2**63)
    return (torch.randn(num_users, dim, generator=g) * init_std).numpy()


@dataclass
class LocalResult:
    """What :func:`local_step` computed for a cohort of ``U`` users.

    ``P`` (U, d) new user embeddings; ``item_ids`` / ``item_deltas`` (R,) / (R, d): each
    user's touched rows and their deltas, user ``j``'s in ``indptr[j]:indptr[j+1]``;
    ``num_pos`` (U,) training triples per user; ``losses`` (U, epochs) mean BPR loss per
    epoch (NaN for a user without triples).
    """

    P: np.ndarray
    item_ids: np.ndarray
    item_deltas: np.ndarray
    indptr: np.ndarray
    num_pos: np.ndarray
    losses: np.ndarray


def local_step(
    ud,
    users: np.ndarray,
    P: np.ndarray,
    Q: np.ndarray,
    server_round: int,
    *,
    seed: int,
    lr: float,
    epochs: int,
    batch_size: int,
    negatives: int = 1,
    reg: float = 0.0,
    user_grad: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> LocalResult:
    """Local BPR of ``users`` (rows of ``P``, float32) against ``Q`` in one batched call.

    ``ud``: the leave-one-out :class:`~fedrec.recsys.splits.UserData`; ``user_grad``: an
    optional extra per-user gradient (a defense's penalty; see ``mf_bpr_user_step``).
    """
    from fedrec.models.recsys import mf_bpr_user_step
    from fedrec.recsys.splits import sample_negatives

    Qt = torch.as_tensor(np.asarray(Q, dtype=np.float32))
    pos: Sequence[np.ndarray] = [ud.train[u] for u in users]
    neg = [
        sample_negatives(
            ud.num_items,
            np.unique(ud.train[u]),
            len(pos[j]) * negatives * epochs,
            derive_seed(seed, "neg", server_round, int(u)),
        )
        for j, u in enumerate(users)
    ]
    if negatives > 1:  # one (pos, neg) triple per negative
        pos = [np.tile(x, negatives) for x in pos]
    upd = mf_bpr_user_step(
        torch.as_tensor(np.asarray(P, dtype=np.float32)),
        Qt,
        pos,
        neg,
        lr=lr,
        reg=reg,
        epochs=epochs,
        batch_size=batch_size,
        seed=[derive_seed(seed, "local", server_round, int(u)) for u in users],
        user_grad=user_grad,
    )
    dq, _ = upd.item_deltas(Qt)
    return LocalResult(
        P=upd.P.detach().numpy(),
        item_ids=np.asarray(upd.item_ids),
        item_deltas=dq.detach().numpy(),
        indptr=np.asarray(upd.indptr),
        num_pos=np.array([len(x) for x in pos]),
        losses=np.asarray(upd.losses),
    )


def client_uploads(res: LocalResult, bounds: np.ndarray) -> list[RowSparse]:
    """One row-sparse upload per client; client ``i`` owns users ``bounds[i]:bounds[i+1]``
    of the cohort (contiguous: clients are sorted and own consecutive users).

    A client's upload sums its users' deltas per touched row (float32, in user order) and
    counts the users that touched it, exactly :meth:`RowSparse.from_contributions` on the
    client's rows; computed for the whole cohort at once.
    """
    bounds = np.asarray(bounds, dtype=np.int64)
    C = len(bounds) - 1
    row_ptr = np.asarray(res.indptr, dtype=np.int64)[bounds]  # each client's row range
    ids = np.asarray(res.item_ids, dtype=np.int64)
    deltas = np.asarray(res.item_deltas, dtype=np.float32)
    if C and np.all(np.diff(bounds) <= 1):  # one user per client: its rows are unique already
        sums = deltas + np.float32(0.0)  # (what a zero-initialised float32 sum would hold)
        ones = np.ones(len(ids), dtype=np.int64)
        return [
            RowSparse(ids[a:b], sums[a:b], ones[a:b])
            for a, b in zip(row_ptr[:-1].tolist(), row_ptr[1:].tolist())
        ]
    client_of_row = np.repeat(np.arange(C, dtype=np.int64), np.diff(row_ptr))
    span = int(ids.max()) + 1 if len(ids) else 1
    keys, inv = np.unique(client_of_row * span + ids[row_ptr[0] : row_ptr[-1]], return_inverse=True)
    sums = np.zeros((len(keys),) + deltas.shape[1:], dtype=np.float32)
    np.add.at(sums, inv, deltas[row_ptr[0] : row_ptr[-1]])
    counts = np.bincount(inv, minlength=len(keys)).astype(np.int64)
    cut = np.searchsorted(keys // span, np.arange(C + 1))
    return [
        RowSparse(keys[a:b] % span, sums[a:b], counts[a:b])
        for a, b in zip(cut[:-1].tolist(), cut[1:].tolist())
    ]


def sparse_server_step(
    Q: np.ndarray, uploads: Sequence[RowSparse], server_lr: float, adam: RowAdam | None = None
) -> tuple[np.ndarray, int]:
    """New ``Q`` and the number of touched rows.

    ``step_i = sum_c delta_{c,i} / sum_c count_{c,i}`` over the uploads that touched row
    ``i`` (float64), then ``Q[i] += server_lr * step_i`` (SGD) or ``Q[i] += server_lr *
    adam_direction(-step_i)`` (lazy Adam, :class:`fedrec.optim.RowAdam`).
    """
    delta, count = RowSparse.accumulate(uploads, Q.shape[0], Q.shape[1:])
    rows = count > 0
    step = delta[rows] / count[rows, None]
    if adam is not None:
        step = adam.direction(np.flatnonzero(rows), -step)
    newQ = Q.copy()
    newQ[rows] = (Q[rows].astype(np.float64) + server_lr * step).astype(Q.dtype)
    return newQ, int(rows.sum())
