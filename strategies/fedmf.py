"""Federated MF-BPR (``fedmf``): per-user clients with private user embeddings.

FedRec / FCF-style federated matrix factorisation (Ammad-ud-din et al. 2019,
https://arxiv.org/abs/1901.09888; Lin et al. 2020): every user's embedding stays on
its client; the item embedding matrix Q is the only shared parameter. Each round,
the sampled clients run local BPR epochs (one sampled negative per positive by
default, seeded per (run seed, round, user)) on their own copy of the item rows they
touch and send back, per touched row, the summed delta and the number of users that
touched it (see :mod:`fedrec.clients.fedmf`; messages in :mod:`fedrec.specs.fedmf`).

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

from typing import ClassVar

import numpy as np

from fedrec.algorithms import fedmf as algo
from fedrec.optim import RowAdam
from fedrec.protocol import ClientReply
from fedrec.specs import fedmf as spec
from fedrec.specs import ranking as ranking_spec
from fedrec.specs.fedmf import FedMFParams
from fedrec.strategies.ranking import RankingStrategy

__all__ = ["FedMF", "FedMFParams"]


class FedMF(RankingStrategy):
    """Federated MF-BPR with sparse per-row aggregation of item embeddings."""

    name = "fedmf"
    Params = FedMFParams
    client_half = "fedrec.clients.fedmf:MFClient"
    _adam: RowAdam | None = None  # lazy Adam state (server-optimizer = adam), set in round 1
    server_state_attrs: ClassVar[tuple[str, ...]] = ("_adam",)

    def setup(self, grid) -> None:
        super().setup(grid)
        self.uploads: dict[int, np.ndarray] = {}

    def initial_weights(self) -> list[np.ndarray]:
        num_items = int(self.hello[self.client_ids[0]][ranking_spec.NUM_ITEMS])
        return [algo.init_items(num_items, self.params.dim, self.params.init_std, self.cfg.seed)]

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        Q = self._current
        replies = [r for r in replies if r.weights is not None]
        n = sum(r.num_examples for r in replies)
        loss = sum(float(r.metrics[spec.TRAIN_LOSS]) * r.num_examples for r in replies) / max(n, 1)
        if self.params.aggregation == "dense":
            acc = np.zeros(Q.shape, dtype=np.float64)
            for r in replies:
                assert r.weights is not None  # replies without weights were dropped above
                acc += r.weights[0].astype(np.float64) * (r.num_examples / n)
            newQ = acc.astype(Q.dtype)
            touched = int(Q.shape[0])
        else:
            uploads = [spec.unpack_train(r.weights) for r in replies if r.weights is not None]
            if self.params.server_optimizer == "adam" and self._adam is None:
                self._adam = RowAdam.zeros(Q.shape)
            newQ, touched = algo.sparse_server_step(
                Q,
                uploads,
                self.server_lr(server_round),
                self._adam if self.params.server_optimizer == "adam" else None,
            )
            if self.params.release_embeddings:
                self.uploads = {r.client_id: u.ids for r, u in zip(replies, uploads)}
        return [newQ], {
            spec.NUM_EXAMPLES: n,
            "num-clients": len(replies),
            "train-loss": loss,
            "rows-touched": touched,
        }

    # ---------------------------------------------------------------- unlearning hooks
    # A train reply is the row-sparse upload itself: it is the update (FedEraser stores it,
    # calibrates it per row and sends it back through ``aggregate``).
    def client_update(self, reply, weights):
        if self.params.aggregation == "dense":
            return super().client_update(reply, weights)
        return [np.array(a, copy=True) for a in reply.arrays()]

    def reply_with_update(self, reply, update, weights):
        if self.params.aggregation == "dense":
            return super().reply_with_update(reply, update, weights)
        return ClientReply(reply.client_id, reply.node_id, dict(reply.metrics), list(update))

    def calibrate_update(self, old, new):
        from fedrec.algorithms.unlearning import calibrate, calibrate_rows

        if self.params.aggregation == "dense":
            return calibrate(old, new)
        return spec.pack_train(calibrate_rows(spec.unpack_train(old), spec.unpack_train(new)))

    def apply_updates(self, server_round, weights, replies):
        """A few clients' uploads as in a round of their own: per-row mean, SGD step."""
        if self.params.aggregation == "dense":
            return super().apply_updates(server_round, weights, replies)
        uploads = [spec.unpack_train(r.weights) for r in replies if r.weights is not None]
        newQ, _ = algo.sparse_server_step(weights[0], uploads, self.server_lr(server_round))
        return [newQ]

    def server_lr(self, server_round: int) -> float:
        """``server-lr``, or the linear decay to ``server-lr-final`` over the rounds."""
        p = self.params
        if p.server_lr_final <= 0:
            return p.server_lr
        frac = (server_round - 1) / max(self.total_rounds() - 1, 1)
        return p.server_lr + frac * (p.server_lr_final - p.server_lr)

    def after_evaluate(self, server_round: int, record, grid) -> None:
        if server_round == self.total_rounds() and self.params.release_embeddings:
            self.release(grid, server_round)

    def release(self, grid, server_round: int) -> None:
        """Threat model (b): collect released user embeddings; (a): keep the uploads."""
        replies = self.communicate(grid, f"query.{spec.RELEASE}", self.client_ids, server_round)
        parts = [spec.unpack_release(r.weights) for r in replies if r.weights is not None]
        self.released = {
            "users": np.concatenate([u for u, _ in parts]),
            "embeddings": np.concatenate([e for _, e in parts])
            .reshape(-1, self.params.dim)
            .astype(np.float32),
        }

    def write_outputs(self, out_dir) -> None:
        if getattr(self, "released", None):
            # allow_pickle: numpy's default, spelled out so that mypy does not match the
            # ``**arrays`` against it.
            np.savez(out_dir / "embeddings.npz", allow_pickle=True, **self.released)
        if self.uploads:
            cids = sorted(self.uploads)
            np.savez(
                out_dir / "uploads.npz",
                allow_pickle=True,
                clients=np.asarray(cids),
                **{f"touched_{c}": self.uploads[c] for c in cids},
            )
