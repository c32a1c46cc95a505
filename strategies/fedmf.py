"""Federated MF-BPR (``fedmf``): per-user clients with private user embeddings.

FedRec / FCF-style federated matrix factorisation (Ammad-ud-din et al. 2019,
https://arxiv.org/abs/1901.09888; Lin et al. 2020): every user's embedding stays on
its client; the item embedding matrix Q is the only shared parameter. Each round,
the sampled clients run local BPR epochs (one sampled negative per positive by
default, seeded per (run seed, round, user)) on their own copy of the item rows they
touch and send back, per touched row, the summed delta and the number of users that
touched it (see :mod:`fedrec.clients.recsys`).

Sparse aggregation (default): ``Q[i] += server_lr * (sum of deltas for row i) /
(number of users that touched row i)`` over rows that were touched; an untouched row
is bit-for-bit unchanged. With ``server-optimizer = "adam"`` the per-row mean delta is
the pseudo-gradient of a lazy (sparse) Adam step with step size ``server-lr`` (FedAdam,
Reddi et al. 2021; touched rows only, so untouched rows stay unchanged too).
``aggregation = "dense"`` is the FedAvg baseline: every
client sends a full matrix (the global rows plus its users' mean delta where they
touched), averaged with example weights, so each row's update is diluted by the
clients that never touched it.

Evaluation: leave-one-out by time, full ranking over all items with each user's
training and validation items excluded; HR/NDCG/recall/MRR@K are means over users with
a test item, summed from per-user values; item-side fairness (exposure share of the
20% most popular items, popular vs long-tail recall/NDCG gap, Gini of exposure,
coverage) from the users' top-K lists; user-side gap by gender. Popularity and gender
are evaluation metadata that the evaluator (this server object, in the simulation)
reads from the dataset; they are not sent by clients and not used in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedrec.config import key
from fedrec.protocol import ClientReply
from fedrec.strategies.ranking import RankingStrategy


@dataclass(frozen=True)
class FedMFParams:
    dim: int = key(64, "Embedding dimension d.", check=lambda v: v >= 1, check_doc=">= 1")
    negatives: int = key(1, "Sampled negatives per positive per local epoch.",
                         check=lambda v: v >= 1, check_doc=">= 1")
    reg: float = key(0.0, "L2 regularisation of the BPR objective.", check=lambda v: v >= 0,
                     check_doc=">= 0")
    init_std: float = key(0.1, "Std of the Gaussian initialisation of P and Q.",
                          check=lambda v: v > 0, check_doc="> 0")
    users_per_client: int = key(1, "Users per logical client (1 = one client per user, as "
                                "FedRec/FCF; larger = cross-silo).", check=lambda v: v >= 1,
                                check_doc=">= 1")
    aggregation: str = key("sparse", "sparse: per-row mean over the users that touched the "
                           "row; dense: FedAvg of full item matrices (baseline).",
                           choices=("sparse", "dense"))
    server_lr: float = key(1.0, "Multiplier of the aggregated item-row delta.",
                           check=lambda v: v > 0, check_doc="> 0")
    server_lr_final: float = key(0.0, "If > 0, the server lr decays linearly from server-lr "
                                 "in round 1 to this value in the last round (0 = constant).",
                                 check=lambda v: v >= 0, check_doc=">= 0")
    server_optimizer: str = key("sgd", "sgd: Q += server-lr * per-row mean delta; adam: lazy "
                                "(sparse) Adam on the per-row mean delta, only touched rows "
                                "step (FedAdam, Reddi et al. 2021), betas (0.9, 0.999).",
                                choices=("sgd", "adam"))
    release_embeddings: bool = key(False, "After the last round, ask clients to release "
                                   "their user embeddings (saved as embeddings.npz) and save "
                                   "the last round's uploads (uploads.npz), for the attack "
                                   "suite's threat models. Off by default.")


class FedMF(RankingStrategy):
    """Federated MF-BPR with sparse per-row aggregation of item embeddings."""

    name = "fedmf"
    Params = FedMFParams
    client_half = "fedrec.clients.recsys:MFClient"

    def setup(self, grid) -> None:
        super().setup(grid)
        self.uploads: dict[int, np.ndarray] = {}

    def initial_weights(self) -> list[np.ndarray]:
        import torch

        from fedrec.seeding import derive_seed

        num_items = int(self.hello[self.client_ids[0]]["num-items"])
        g = torch.Generator().manual_seed(derive_seed(self.cfg.seed, "item-init") % 2**63)
        Q = torch.randn(num_items, self.params.dim, generator=g) * self.params.init_std
        return [Q.numpy()]

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        Q = self._current
        replies = [r for r in replies if r.weights is not None]
        n = sum(r.num_examples for r in replies)
        loss = sum(float(r.metrics["train-loss"]) * r.num_examples for r in replies) / max(n, 1)
        if self.params.aggregation == "dense":
            acc = np.zeros(Q.shape, dtype=np.float64)
            for r in replies:
                acc += r.weights[0].astype(np.float64) * (r.num_examples / n)
            newQ = acc.astype(Q.dtype)
            touched = int(Q.shape[0])
        else:
            delta = np.zeros(Q.shape, dtype=np.float64)
            count = np.zeros(Q.shape[0], dtype=np.float64)
            for r in replies:
                ids, d, c = r.weights
                np.add.at(delta, ids.astype(np.int64), d.astype(np.float64))
                np.add.at(count, ids.astype(np.int64), c.astype(np.float64))
            rows = count > 0
            newQ = Q.copy()
            step = delta[rows] / count[rows, None]
            if self.params.server_optimizer == "adam":
                step = self._adam_rows(np.flatnonzero(rows), step, Q.shape)
            newQ[rows] = (Q[rows].astype(np.float64) + self.server_lr(server_round) * step).astype(Q.dtype)
            touched = int(rows.sum())
            if self.params.release_embeddings:
                self.uploads = {r.client_id: r.weights[0].astype(np.int64) for r in replies}
        return [newQ], {"num-examples": n, "num-clients": len(replies), "train-loss": loss,
                        "rows-touched": touched}

    def server_lr(self, server_round: int) -> float:
        """``server-lr``, or the linear decay to ``server-lr-final`` over the rounds."""
        p = self.params
        if p.server_lr_final <= 0:
            return p.server_lr
        frac = (server_round - 1) / max(self.total_rounds() - 1, 1)
        return p.server_lr + frac * (p.server_lr_final - p.server_lr)

    def _adam_rows(self, rows: np.ndarray, delta: np.ndarray, shape) -> np.ndarray:
        """Lazy Adam direction for ``rows`` from their mean deltas (pseudo-gradient ``-delta``).

        Like ``torch.optim.SparseAdam``: moments and step counts of a row change only when
        the row is touched, so an untouched row stays bit-for-bit unchanged.
        """
        b1, b2, eps = 0.9, 0.999, 1e-8
        st = getattr(self, "_adam", None)
        if st is None:
            st = self._adam = {"m": np.zeros(shape), "v": np.zeros(shape),
                               "t": np.zeros(shape[0])}
        g = -delta
        st["t"][rows] += 1
        st["m"][rows] = b1 * st["m"][rows] + (1 - b1) * g
        st["v"][rows] = b2 * st["v"][rows] + (1 - b2) * g * g
        t = st["t"][rows][:, None]
        mh = st["m"][rows] / (1 - b1 ** t)
        vh = st["v"][rows] / (1 - b2 ** t)
        return -mh / (np.sqrt(vh) + eps)

    def on_round_end(self, server_round: int, record) -> None:
        if server_round == self.total_rounds() and self.params.release_embeddings:
            self.release(self._grid, server_round)

    def release(self, grid, server_round: int) -> None:
        """Threat model (b): collect released user embeddings; (a): keep the uploads."""
        replies = self.communicate(grid, "query.fedmf_release", self.client_ids, server_round)
        users = np.concatenate([np.asarray(r.metrics["users"], dtype=np.int64) for r in replies])
        emb = np.concatenate([np.asarray(r.metrics["embedding"], dtype=np.float32)
                              .reshape(-1, self.params.dim) for r in replies])
        self.released = {"users": users, "embeddings": emb}

    def write_outputs(self, out_dir) -> None:
        if getattr(self, "released", None):
            np.savez(out_dir / "embeddings.npz", **self.released)
        if self.uploads:
            cids = sorted(self.uploads)
            np.savez(out_dir / "uploads.npz", clients=np.asarray(cids),
                     **{f"touched_{c}": self.uploads[c] for c in cids})
