"""Client half of ``fedmf`` (federated MF-BPR, FedRec/FCF style).

A logical client owns ``users-per-client`` users (1 = one client per user). Their
embeddings live in the client's private state (``P``, kept in Flower's
``context.state``) and never leave it; their interactions never leave either.

What leaves a client:

- handshake: numbers of users, training interactions and items;
- train: for the item rows its users touched (positives and sampled negatives) the
  row ids, the summed row deltas over its users and the number of its users that
  touched each row (``[ids, delta_sum, counts]``), plus the example count and the
  mean local BPR loss. In ``aggregation = "dense"`` (baseline) the full item matrix.
- evaluate: per-user ranking metric values (HR/NDCG/recall/MRR@K, popular- and
  long-tail-item recall/NDCG) and each user's top-K item ids (for exposure, Gini and
  coverage). These are measurements of the simulation, not training traffic.
- ``query.fedmf_release`` (only with ``strategy.params.release-embeddings = true``):
  the user ids and embeddings, i.e. the "released embeddings" threat model of the
  attack suite. Off by default.

Messages and the state field are declared in :mod:`fedrec.specs.fedmf`; the users'
embeddings are the column ``P`` of the node's columnar state (:mod:`fedrec.state`).

All users a node hosts are trained in one batched call (:meth:`handle_cohort`); each
user's computation (its own copy of the item rows, its own negatives and seeds) is
exactly what it would be alone, so grouping clients onto nodes changes no result.
"""

from __future__ import annotations

import numpy as np

from fedrec import protocol
from fedrec.algorithms import fedmf as algo
from fedrec.clients.ranking import CohortClient, cohort_users, hello_replies, ranking_replies
from fedrec.recsys.data import cfg_user_data
from fedrec.specs import fedmf as spec


class MFClient(CohortClient):
    """Per-user BPR on private user embeddings and private copies of item rows."""

    Params = spec.FedMFParams
    P = spec.P

    @classmethod
    def _users_and_P(cls, cfg, p, ud, states):
        """The cohort's users, their owners and embeddings ``P`` (float32, users in client
        order); a client without ``P`` gets its private initialisation first."""
        users, owner = cohort_users(p.users_per_client, ud.num_users, states)
        for c in states:
            if cls.P not in states[c]:  # private init, seeded by (run seed, client)
                states[c][cls.P] = algo.init_users(
                    cfg.seed, c, int((owner == c).sum()), p.dim, p.init_std
                )
        P, _ = states.column(cls.P)
        return users, owner, np.asarray(P, dtype=np.float32)

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        if message_type == protocol.HELLO:
            return hello_replies(ud, p.users_per_client, states)
        users, owner, P = cls._users_and_P(cfg, p, ud, states)
        if message_type == "train":
            return cls._train(cfg, p, ud, server_round, weights, users, owner, P, states)
        if message_type == "evaluate":
            return cls._evaluate(p, ud, weights, config, users, owner, P)
        if message_type == f"query.{spec.RELEASE}":
            return {c: (spec.pack_release(users[owner == c], P[owner == c]), {}) for c in states}
        raise ValueError(f"fedmf clients do not handle '{message_type}'")

    @classmethod
    def _train(cls, cfg, p, ud, rnd, weights, users, owner, P, states, user_grad=None):
        t = cfg.train
        Q = np.asarray(weights[0], dtype=np.float32)
        res = algo.local_step(
            ud,
            users,
            P,
            Q,
            rnd,
            seed=cfg.seed,
            lr=t.lr,
            reg=p.reg,
            epochs=t.local_epochs,
            batch_size=t.batch_size,
            negatives=p.negatives,
            user_grad=user_grad,
        )
        # users of one client are contiguous in ``users`` (clients sorted), so are their rows
        cids = list(states)
        bounds = np.searchsorted(owner, [*cids, cids[-1] + 1], "left") if cids else np.zeros(1, int)
        states.set_column(cls.P, res.P, bounds - bounds[0])
        out = {}
        for i, (c, upload) in enumerate(zip(cids, algo.client_uploads(res, bounds))):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            losses = res.losses[lo:hi]
            loss = float(np.nanmean(losses)) if np.isfinite(losses).any() else 0.0
            if p.aggregation == "dense":
                full = np.zeros_like(Q)
                full[upload.ids] = upload.rows / np.maximum(upload.counts, 1)[:, None]
                arrays = [Q + full]
            else:
                arrays = spec.pack_train(upload)
            out[c] = (
                arrays,
                {spec.NUM_EXAMPLES: int(res.num_pos[lo:hi].sum()), spec.TRAIN_LOSS: loss},
            )
        return out

    @classmethod
    def _evaluate(cls, p, ud, weights, config, users, owner, P, split="test"):
        Q = np.asarray(weights[0], dtype=np.float32)
        return ranking_replies(ud, users, owner, P @ Q.T, config, split)
