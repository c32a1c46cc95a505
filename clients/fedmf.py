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
from fedrec.clients.ranking import (
    CohortClient,
    cohort_users,
    cohort_view,
    forget_cohort,
    hello_replies,
    ranking_replies,
)
from fedrec.messages import RowSparse
from fedrec.recsys.data import cfg_user_data
from fedrec.seeding import derive_seed, rng
from fedrec.specs import fedmf as spec


class MFClient(CohortClient):
    """Per-user BPR on private user embeddings and private copies of item rows."""

    Params = spec.FedMFParams
    P = spec.P
    unlearning_actions = (spec.UNLEARN_ASCENT, spec.UNLEARN_INFLUENCE, "sisa_evidence")
    #: local DP of the item-matrix upload (:meth:`_local_dp`)
    privacy_mechanisms = ("local",)
    #: epochs of local BPR that fit a user's embedding to another shard's item matrix when
    #: a SISA ensemble is served by averaging (the user's data stays on the client)
    FOLD_IN_EPOCHS = 5

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
            return cls._train(
                cfg,
                p,
                cohort_view(ud, states),
                server_round,
                weights,
                users,
                owner,
                P,
                states,
                epochs=int(config.get(spec.LOCAL_EPOCHS, cfg.train.local_epochs)),
            )
        if message_type == "evaluate":
            view, keep = forget_cohort(ud, users, states)
            if "sisa-shards" in config:
                return cls._evaluate_ensemble(
                    cfg, p, view, server_round, weights, config, users[keep], owner[keep], P[keep]
                )
            return cls._evaluate(p, view, weights, config, users[keep], owner[keep], P[keep])
        if message_type == f"query.{spec.UNLEARN_ASCENT}":
            return cls._ascent(cfg, p, ud, server_round, weights, config, users, owner, P, states)
        if message_type == "query.sisa_evidence":
            view, keep = forget_cohort(ud, users, states)
            return cls._sisa_evidence(
                cfg,
                p,
                view,
                server_round,
                weights,
                config,
                users[keep],
                owner[keep],
                P[keep],
                states,
            )
        if message_type == f"query.{spec.UNLEARN_INFLUENCE}":
            return cls._influence(
                cfg, p, ud, server_round, weights, config, users, owner, P, states
            )
        if message_type == f"query.{spec.RELEASE}":
            return {c: (spec.pack_release(users[owner == c], P[owner == c]), {}) for c in states}
        raise ValueError(f"fedmf clients do not handle '{message_type}'")

    @classmethod
    def forget_users(cls, cfg, client_id, state, users):
        """A silo deletes the embeddings of its forgotten users (zero rows: with no training
        data left they stay zero)."""
        if cls.P not in state:
            return
        own = cls.owned_users(cfg, client_id)
        P = np.array(state[cls.P], copy=True)
        P[np.isin(own, users)] = 0.0
        state[cls.P] = P

    @classmethod
    def _bounds(cls, owner, states):
        cids = list(states)
        return np.searchsorted(owner, [*cids, cids[-1] + 1], "left") if cids else np.zeros(1, int)

    @classmethod
    def _ascent(cls, cfg, p, ud, rnd, weights, config, users, owner, P, states):
        """GradDiff upload of forgetting clients: ascent on their forget data (the negated
        descent delta) plus descent on what they keep (:func:`graddiff_upload`)."""
        from fedrec.algorithms.unlearning import graddiff_upload
        from fedrec.unlearning import client as ul

        fu, fp, fi = ul.forget_records(states)
        views = (ul.forget_view(ud, fu, fp, fi, only=True), ul.forget_view(ud, fu, fp, fi))
        epochs = int(config.get(spec.LOCAL_EPOCHS, cfg.train.local_epochs))
        Q = np.asarray(weights[0], dtype=np.float32)
        bounds = cls._bounds(owner, states)
        res = [
            algo.local_step(
                v,
                users,
                P,
                Q,
                rnd,
                seed=cfg.seed,
                lr=cfg.train.lr,
                reg=p.reg,
                epochs=epochs,
                batch_size=cfg.train.batch_size,
                negatives=p.negatives,
            )
            for v in views
        ]
        newP = P - (res[0].P - P) + (res[1].P - P)
        states.set_column(cls.P, newP.astype(np.float32), bounds - bounds[0])
        out = {}
        ups = [algo.client_uploads(r, bounds) for r in res]
        for i, c in enumerate(states):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            n = int(res[0].num_pos[lo:hi].sum())
            out[c] = (
                spec.pack_train(graddiff_upload(ups[0][i], ups[1][i])),
                {spec.NUM_EXAMPLES: n},
            )
        return out

    @classmethod
    def _influence(cls, cfg, p, ud, rnd, weights, config, users, owner, P, states):
        """Per-row BPR gradient sums over the forget triples (``op = grad``) or Hessian
        diagonal sums over the kept triples (``op = hess``) of each client's users."""
        from fedrec.algorithms.unlearning import bpr_influence_stats
        from fedrec.recsys.splits import sample_negatives
        from fedrec.seeding import derive_seed
        from fedrec.unlearning import client as ul

        op = str(config.get("op", "grad"))
        fu, fp, fi = ul.forget_records(states)
        view = ul.forget_view(ud, fu, fp, fi, only=(op == "grad"))
        Q = np.asarray(weights[0], dtype=np.float32)
        out = {}
        for c in states:
            parts, n = [], 0
            for j in np.flatnonzero(owner == c):
                u = int(users[j])
                pos = view.train[u]
                if not len(pos):
                    continue
                neg = sample_negatives(
                    ud.num_items,
                    np.unique(ud.train[u]),
                    len(pos),
                    derive_seed(cfg.seed, "influence", rnd, u),
                )
                g, h = bpr_influence_stats(P[j], Q, pos, neg)
                parts.append(g if op == "grad" else h)
                n += len(pos)
            up = (
                RowSparse.accumulate_sparse(parts)
                if parts
                else RowSparse(
                    np.zeros(0, np.int64), np.zeros((0, Q.shape[1])), np.zeros(0, np.int64)
                )
            )
            out[c] = (spec.pack_train(up), {spec.NUM_EXAMPLES: n})
        return out

    @classmethod
    def _train(cls, cfg, p, ud, rnd, weights, users, owner, P, states, user_grad=None, epochs=None):
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
            epochs=t.local_epochs if epochs is None else epochs,
            batch_size=t.batch_size,
            negatives=p.negatives,
            user_grad=user_grad,
        )
        # users of one client are contiguous in ``users`` (clients sorted), so are their rows
        cids = list(states)
        bounds = cls._bounds(owner, states)
        states.set_column(cls.P, res.P, bounds - bounds[0])
        out = {}
        for i, (c, upload) in enumerate(zip(cids, algo.client_uploads(res, bounds))):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            losses = res.losses[lo:hi]
            loss = float(np.nanmean(losses)) if np.isfinite(losses).any() else 0.0
            metrics = {spec.NUM_EXAMPLES: int(res.num_pos[lo:hi].sum()), spec.TRAIN_LOSS: loss}
            if cfg.privacy.mechanism == "local":
                upload, metrics["dp-epsilon"] = cls._local_dp(cfg, rnd, c, upload, Q, states[c])
            if p.aggregation == "dense":
                full = np.zeros_like(Q)
                full[upload.ids] = upload.rows / np.maximum(upload.counts, 1)[:, None]
                arrays = [Q + full]
            else:
                arrays = spec.pack_train(upload)
            out[c] = (arrays, metrics)
        return out

    @staticmethod
    def _local_dp(cfg, rnd, c, upload, Q, state):
        """Local DP of client ``c``'s item-matrix upload. A sparse upload's ids are the items
        its users interacted with, so the private upload covers *every* item row: the
        client's delta matrix ``D`` (``D[ids] = `` its summed row deltas, 0 elsewhere) is
        clipped to ``privacy.clip-norm`` as one vector and noised (std ``z C``) on every
        entry, and sent with count 1 per row (the server then averages each row over all
        clients of the round: no per-row count can leak the ids either). ε: the client's
        rounds composed (:func:`fedrec.privacy.accountant.gaussian_ldp_epsilon`)."""
        from fedrec.privacy.accountant import gaussian_ldp_epsilon
        from fedrec.privacy.mechanisms import local_gaussian

        pc = cfg.privacy
        D = np.zeros(Q.shape, dtype=np.float64)
        D[upload.ids] = upload.rows
        g = rng(cfg.seed, "ldp", rnd, c)
        noised = local_gaussian(D.reshape(1, -1), pc.clip_norm, pc.noise_multiplier, g)
        rounds = int(state.get("dp-steps", 0)) + 1
        state["dp-steps"] = np.asarray(rounds, dtype=np.int64)
        eps = gaussian_ldp_epsilon(pc.noise_multiplier, rounds, pc.delta, pc.accountant)
        private = RowSparse(
            np.arange(Q.shape[0], dtype=np.int64),
            noised.reshape(Q.shape).astype(np.float32),
            np.ones(Q.shape[0], dtype=np.int64),
        )
        return private, float(eps)

    @classmethod
    def _shard_views(cls, cfg, p, ud, rnd, weights, config, users, owner, P):
        """Per shard of a SISA ensemble, each user's embedding and the item matrix: its own
        embedding for its own shard; for the other shards one folded in locally
        (``FOLD_IN_EPOCHS`` of BPR against the frozen ``Q_s``, from its own embedding)."""
        S = int(config["sisa-shards"])
        assign = np.asarray(config["sisa-assign"], dtype=np.int64)
        mine = assign[owner]
        out = []
        for k in range(S):
            Q = np.asarray(weights[k], dtype=np.float32)
            Pk = P.copy()
            other = mine != k
            if other.any():
                res = algo.local_step(
                    ud,
                    users[other],
                    P[other],
                    Q,
                    rnd,
                    seed=derive_seed(cfg.seed, "fold-in", k),
                    lr=cfg.train.lr,
                    reg=p.reg,
                    epochs=cls.FOLD_IN_EPOCHS,
                    batch_size=cfg.train.batch_size,
                    negatives=p.negatives,
                )
                Pk[other] = res.P
            out.append((Pk.astype(np.float64), Q.astype(np.float64)))
        return out

    @classmethod
    def _evaluate_ensemble(cls, cfg, p, ud, rnd, weights, config, users, owner, P):
        """SISA serving: each user's scores are the (learned-)weighted mean over the shards
        of ``p_s . Q_s`` (:meth:`_shard_views`); uniform weights without ``sisa-weights``."""
        views = cls._shard_views(cfg, p, ud, rnd, weights, config, users, owner, P)
        alpha = np.asarray(config.get("sisa-weights", np.full(len(views), 1.0 / len(views))))
        scores = sum(a * (Pk @ Q.T) for a, (Pk, Q) in zip(alpha, views))
        return ranking_replies(ud, users, owner, scores, config)

    @classmethod
    def _sisa_evidence(cls, cfg, p, ud, rnd, weights, config, users, owner, P, states):
        """Each user's ``s_k(valid item) - s_k(negative)`` per shard, kept private
        (:mod:`fedrec.algorithms.sisa`); the reply is a count."""
        from fedrec.recsys.splits import sample_negatives
        from fedrec.unlearning import client as ul

        views = cls._shard_views(cfg, p, ud, rnd, weights, config, users, owner, P)
        out = {}
        for c in states:
            rows = []
            for j in np.flatnonzero(owner == c):
                u = int(users[j])
                if not len(ud.valid[u]):
                    continue
                seen = np.unique(np.concatenate([ud.train[u], ud.valid[u]]))
                neg = sample_negatives(
                    ud.num_items, seen, 1, derive_seed(cfg.seed, "sisa-evidence", u)
                )[0]
                i = int(ud.valid[u][0])
                rows.append([Pk[j] @ (Q[i] - Q[neg]) for Pk, Q in views])
            states[c][ul.SISA_EVIDENCE] = np.asarray(rows, dtype=np.float64).reshape(-1, len(views))
            out[c] = (None, {spec.NUM_EXAMPLES: len(rows)})
        return out

    @classmethod
    def _evaluate(cls, p, ud, weights, config, users, owner, P, split="test"):
        Q = np.asarray(weights[0], dtype=np.float32)
        return ranking_replies(ud, users, owner, P @ Q.T, config, split)
