"""Federated SASRec (``fedsasrec``): every weight shared, user sequences private.

SASRec (Kang & McAuley 2018, :class:`fedrec.models.recsys.SASRec`) has no user
parameters, so a federated SASRec shares the whole model and keeps each user's item
sequence on its client. Each round the sampled clients run ``train.local-epochs``
full-batch SGD steps (lr ``train.lr``) on each of their users' own sequence (BCE on the
next item and one negative per position, negatives seeded per (run seed, round, user),
dropout masks per (run seed, round, user)), each user on its own copy of the weights
(:func:`fedrec.models.recsys.sasrec_user_step`; a node's users are vectorised, with the
same numbers as one node per user).

Upload (see :class:`fedrec.clients.fedsasrec.SASRecClient`, :mod:`fedrec.specs.fedsasrec`): the
touched item-embedding rows only (ids + example-weighted delta sums) and example-weighted delta
sums of the other parameters. The server forms the FedAvg pseudo-gradient
``Delta = sum_u n_u delta_u / sum_u n_u`` (untouched item rows have an exactly zero
delta, so the sparse upload loses nothing) and applies it with a server optimizer
(Reddi et al. 2021, "Adaptive Federated Optimization"):

* ``server-optimizer = "adam"`` (FedAdam, default): Adam on ``-Delta`` with
  ``server-lr``, betas (0.9, 0.98) as SASRec's reference trainer, eps 1e-8 and bias
  correction. With one local step, ``train.lr = 1`` and all users each round, ``Delta``
  is the full-batch gradient of the mean loss over all target positions, so FedSASRec
  is full-batch Adam on SASRec's loss: the centralized reference with the same
  hyperparameters is :func:`fedrec.recsys.train.train_sasrec` with ``batch_size`` =
  all users and ``epochs`` = rounds.
* ``"sgd"`` (FedAvg): ``w += server-lr * Delta``.

Evaluation as for ``fedmf`` (leave-one-out by time, full ranking, seen items excluded;
the test input sequence ends with the validation item).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedrec.optim import AdamState, adam_step
from fedrec.protocol import ClientReply
from fedrec.specs import fedsasrec as spec
from fedrec.specs import ranking as ranking_spec
from fedrec.specs.fedsasrec import FedSASRecParams
from fedrec.strategies.ranking import RankingStrategy

__all__ = ["FedSASRec", "FedSASRecParams"]

ADAM_BETAS = (0.9, 0.98)  # SASRec's reference trainer


class FedSASRec(RankingStrategy):
    """Federated SASRec with sparse item-row uploads and a FedAdam/FedAvg server step."""

    #: central DP (privacy.mechanism = "central") wraps this aggregation (a mean of updates)
    privacy_central: ClassVar[bool] = True

    name = "fedsasrec"
    Params: ClassVar[type] = FedSASRecParams
    client_half = "fedrec.clients.fedsasrec:SASRecClient"
    history_updates = False  # its replies pack sparse item sums and weighted dense deltas
    server_state_attrs: ClassVar[tuple[str, ...]] = (
        "_adam",
    )  # FedAdam moments and step (None with sgd)
    _adam: AdamState | None = None

    #: the model of ``Params`` (the spec's) and the seed tag of the initial weights
    build_model = staticmethod(spec.build_model)
    init_tag = "sasrec-init"

    def initial_weights(self) -> list[np.ndarray]:
        from fedrec.seeding import derive_seed

        num_items = int(self.hello[self.client_ids[0]][ranking_spec.NUM_ITEMS])
        seed = derive_seed(self.cfg.seed, self.init_tag) % 2**63
        m = self.build_model(self.params, num_items, seed)
        self._adam = None
        return [prm.detach().numpy().copy() for prm in m.parameters()]

    def check_reply(self, reply: ClientReply, weights: list[np.ndarray]) -> str | None:
        why = super().check_reply(reply, weights)
        if why is not None or reply.weights is None:
            return why
        arrays = reply.weights
        if len(arrays) != 3:
            return f"{len(arrays)} arrays, expected 3 (item ids, item-row sums, dense sums)"
        ids, rows, dense = (np.asarray(a) for a in arrays)
        R, d = np.asarray(weights[0]).shape[0] - 1, np.asarray(weights[0]).shape[1]
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            return "item ids are not a 1-D integer array"
        if ids.size and (ids.min() < 0 or ids.max() >= R):
            return f"item ids outside [0, {R})"
        if ids.size > 1 and not (np.diff(ids) > 0).all():
            return "item ids are not sorted and unique"
        if rows.shape != (ids.size, d):
            return f"item rows of shape {rows.shape}, expected {(ids.size, d)}"
        size = spec.dense_layout(list(weights)).size
        if dense.shape != (size,):
            return f"dense part of shape {dense.shape}, expected {(size,)}"
        return None

    def update_view(self, replies: list[ClientReply], weights: list[np.ndarray]):
        """Per client: touched item rows and their mean update (``item_sum / n``), the mean
        dense update (``dense / n``), ``n``."""
        from fedrec.algorithms.robust import RowUpdates

        ids, rows, dense, n = [], [], [], []
        for r in replies:
            i, s, v = spec.unpack_train(r.arrays())
            k = max(r.num_examples, 1)
            ids.append(np.asarray(i, np.int64))
            rows.append(np.asarray(s, np.float64) / k)
            dense.append(np.asarray(v, np.float64) / k)
            n.append(float(r.num_examples))
        W0 = np.asarray(weights[0])
        return RowUpdates.from_lists(
            ids=ids,
            rows=rows,
            dense=np.stack(dense),
            weights=np.asarray(n),
            num_rows=W0.shape[0] - 1,
            d=W0.shape[1],
        )

    def replies_from_update(self, row_delta, dense_delta, replies, weights):
        """One reply whose sums make :meth:`aggregate`'s FedAvg delta the defended one."""
        n = sum(r.num_examples for r in replies)
        loss = sum(float(r.metrics[spec.TRAIN_LOSS]) * r.num_examples for r in replies)
        ids = np.flatnonzero(np.abs(row_delta).sum(1) > 0)
        arrays = spec.pack_train(ids, row_delta[ids] * n, np.asarray(dense_delta) * n)
        metrics = {spec.NUM_EXAMPLES: int(n), spec.TRAIN_LOSS: loss / max(n, 1)}
        return [ClientReply(-1, 0, metrics, arrays)]

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        W = [w.astype(np.float64) for w in self._current_all]
        replies = [r for r in replies if r.weights is not None]
        n = sum(r.num_examples for r in replies)
        loss = sum(float(r.metrics[spec.TRAIN_LOSS]) * r.num_examples for r in replies) / max(n, 1)
        layout = spec.dense_layout(W)
        item_delta = np.zeros_like(W[0])
        flat = np.zeros(layout.size, dtype=np.float64)
        for r in replies:
            assert r.weights is not None  # replies without weights were dropped above
            ids, item_sum, dense = spec.unpack_train(r.weights)
            np.add.at(item_delta, ids + 1, item_sum.astype(np.float64))
            flat += dense
        delta = [d / max(n, 1) for d in [item_delta, *layout.unpack(flat)]]
        if self.params.server_optimizer == "sgd":
            new = [w + self.params.server_lr * d for w, d in zip(W, delta)]
        else:  # FedAdam: Adam on the pseudo-gradient -Delta
            new, self._adam = adam_step(
                W,
                [-d for d in delta],
                self._adam or AdamState.zeros(W),
                self.params.server_lr,
                betas=ADAM_BETAS,
            )
        new[0][0] = 0.0  # the padding row stays zero
        dtype = self._current_all[0].dtype
        return [w.astype(dtype) for w in new], {
            spec.NUM_EXAMPLES: n,
            "num-clients": len(replies),
            "train-loss": loss,
        }
