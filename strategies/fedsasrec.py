"""Federated SASRec (``fedsasrec``): every weight shared, user sequences private.

SASRec (Kang & McAuley 2018, :class:`fedrec.models.recsys.SASRec`) has no user
parameters, so a federated SASRec shares the whole model and keeps each user's item
sequence on its client. Each round the sampled clients run ``train.local-epochs``
full-batch SGD steps (lr ``train.lr``) on each of their users' own sequence (BCE on the
next item and one negative per position, negatives seeded per (run seed, round, user),
dropout masks per (run seed, round, user)), each user on its own copy of the weights
(:func:`fedrec.models.recsys.sasrec_user_step`; a node's users are vectorised, with the
same numbers as one node per user).

Upload (see :class:`fedrec.clients.recsys.SASRecClient`): the touched item-embedding
rows only (ids + example-weighted delta sums) and example-weighted delta sums of the
other parameters. The server forms the FedAvg pseudo-gradient
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

from dataclasses import dataclass

import numpy as np

from fedrec.config import key
from fedrec.protocol import ClientReply
from fedrec.strategies.ranking import RankingStrategy


@dataclass(frozen=True)
class FedSASRecParams:
    dim: int = key(64, "Hidden size d.", check=lambda v: v >= 1, check_doc=">= 1")
    max_len: int = key(50, "Most recent items a sequence keeps.", check=lambda v: v >= 2,
                       check_doc=">= 2")
    num_blocks: int = key(2, "Self-attention blocks.", check=lambda v: v >= 0, check_doc=">= 0")
    num_heads: int = key(1, "Attention heads (must divide dim).", check=lambda v: v >= 1,
                         check_doc=">= 1")
    dropout: float = key(0.2, "Dropout rate.", check=lambda v: 0 <= v < 1, check_doc="in [0, 1)")
    users_per_client: int = key(1, "Users per logical client (1 = one client per user).",
                                check=lambda v: v >= 1, check_doc=">= 1")
    server_optimizer: str = key("adam", "adam: FedAdam on the FedAvg pseudo-gradient; sgd: "
                                "FedAvg with server-lr.", choices=("adam", "sgd"))
    server_lr: float = key(0.01, "Server learning rate.", check=lambda v: v > 0, check_doc="> 0")


class FedSASRec(RankingStrategy):
    """Federated SASRec with sparse item-row uploads and a FedAdam/FedAvg server step."""

    name = "fedsasrec"
    Params = FedSASRecParams
    client_half = "fedrec.clients.recsys:SASRecClient"

    def initial_weights(self) -> list[np.ndarray]:
        from fedrec.models.recsys import SASRec
        from fedrec.seeding import derive_seed

        p = self.params
        num_items = int(self.hello[self.client_ids[0]]["num-items"])
        if p.dim % p.num_heads:
            from fedrec.errors import ConfigError

            raise ConfigError(f"config key 'strategy.params.num-heads': {p.num_heads} does not "
                              f"divide dim={p.dim}")
        m = SASRec(num_items, p.dim, p.max_len, p.num_blocks, p.num_heads, p.dropout,
                   seed=derive_seed(self.cfg.seed, "sasrec-init") % 2**63)
        self._adam = None
        return [prm.detach().numpy().copy() for prm in m.parameters()]

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        W = [w.astype(np.float64) for w in self._current_all]
        replies = [r for r in replies if r.weights is not None]
        n = sum(r.num_examples for r in replies)
        loss = sum(float(r.metrics["train-loss"]) * r.num_examples for r in replies) / max(n, 1)
        delta = [np.zeros_like(w) for w in W]
        flat = np.zeros(sum(w.size for w in W[1:]), dtype=np.float64)
        for r in replies:
            ids, item_sum, dense = r.weights
            np.add.at(delta[0], ids.astype(np.int64) + 1, item_sum.astype(np.float64))
            flat += dense
        off = 0
        for k in range(1, len(W)):  # the flat non-embedding deltas, in parameter order
            delta[k] = flat[off:off + W[k].size].reshape(W[k].shape)
            off += W[k].size
        delta = [d / max(n, 1) for d in delta]
        if self.params.server_optimizer == "sgd":
            new = [w + self.params.server_lr * d for w, d in zip(W, delta)]
        else:
            b1, b2, eps = 0.9, 0.98, 1e-8
            if self._adam is None:
                self._adam = {"t": 0, "m": [np.zeros_like(w) for w in W],
                              "v": [np.zeros_like(w) for w in W]}
            st = self._adam
            st["t"] += 1
            new = []
            for k, (w, d) in enumerate(zip(W, delta)):
                g = -d
                st["m"][k] = b1 * st["m"][k] + (1 - b1) * g
                st["v"][k] = b2 * st["v"][k] + (1 - b2) * g * g
                mh = st["m"][k] / (1 - b1 ** st["t"])
                vh = st["v"][k] / (1 - b2 ** st["t"])
                new.append(w - self.params.server_lr * mh / (np.sqrt(vh) + eps))
        new[0][0] = 0.0  # the padding row stays zero
        dtype = self._current_all[0].dtype
        return [w.astype(dtype) for w in new], {"num-examples": n, "num-clients": len(replies),
                                                "train-loss": loss}
