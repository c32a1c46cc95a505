"""Client half of ``bifair`` (federated BiFair on an LLM-enhanced MF).

A logical client is a silo of ``users-per-client`` users. Their embeddings ``P`` live in
the client's private state and never leave it; their interactions never leave either.

What leaves a client:

- handshake: numbers of users, training interactions and items;
- train: the locally trained projector ``[W1, b1, W2, b2]`` (FedAvg), the number of
  training positives and the mean local loss;
- ``query.bifair_outer``: the one-step-unrolled hypergradient of the client's
  validation triples with respect to the item representations ``Z``, summed over the
  triples, for the rows the client touched (row ids + sums), and, per item group, the
  summed last-layer gradient, the summed validation loss and the number of validation
  triples. Group-level sums over the silo's users (no per-user value);
- evaluate: per-user ranking metrics and top-K lists (measurements of the simulation).

The math is :mod:`fedrec.algorithms.bifair`; messages :mod:`fedrec.specs.bifair`.
Randomness (negatives, mini-batch order, the outer batch) is seeded by (run seed,
round, client).
"""

from __future__ import annotations

import numpy as np

from fedrec import protocol
from fedrec.algorithms import bifair as algo
from fedrec.algorithms.fedmf import init_users
from fedrec.clients.ranking import (
    CohortClient,
    cohort_users,
    hello_replies,
    ranking_replies,
    rerank,
)
from fedrec.recsys.data import cfg_user_data
from fedrec.seeding import derive_seed
from fedrec.specs import bifair as spec


class BiFairClient(CohortClient):
    """Group-weighted BPR on private user embeddings through the shared projector."""

    Params = spec.BiFairParams
    P = spec.P

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        if message_type == protocol.HELLO:
            return hello_replies(ud, p.users_per_client, states)
        users, owner = cohort_users(p.users_per_client, ud.num_users, states)
        for c in states:
            if cls.P not in states[c]:  # private init, seeded by (run seed, client)
                n = int((owner == c).sum())
                states[c][cls.P] = init_users(cfg.seed, c, n, p.dim, p.init_std)
        Z = np.asarray(weights[0], dtype=np.float32)
        phi = [np.asarray(a, dtype=np.float32) for a in weights[1:5]]
        if message_type == "train":
            return cls._train(cfg, p, ud, server_round, Z, phi, config, users, owner, states)
        if message_type == "evaluate":
            return cls._evaluate(ud, Z, phi, config, users, owner, states)
        if message_type == f"query.{spec.OUTER}":
            return cls._outer(cfg, p, ud, server_round, Z, phi, config, users, owner, states)
        raise ValueError(f"bifair clients do not handle '{message_type}'")

    @classmethod
    def _item_mult(cls, config) -> np.ndarray:
        groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
        return np.asarray(config[spec.MULT], dtype=np.float64)[groups]

    @classmethod
    def _train(cls, cfg, p, ud, rnd, Z, phi, config, users, owner, states):
        t = cfg.train
        mult = cls._item_mult(config)
        out = {}
        for c in states:
            us = users[owner == c]
            pos = [ud.train[u] for u in us]
            rng = np.random.default_rng(derive_seed(cfg.seed, "bifair-neg", rnd, c))
            triples = algo.sample_triples(pos, ud.num_items, p.negatives, rng)
            P = np.asarray(states[c][cls.P], dtype=np.float32)
            if not len(triples[0]):
                out[c] = (list(phi), {spec.NUM_EXAMPLES: 0, spec.TRAIN_LOSS: 0.0})
                continue
            P2, phi2, loss = algo.local_train(
                P,
                phi,
                Z,
                triples,
                mult,
                epochs=t.local_epochs,
                lr=t.lr,
                batch_size=t.batch_size,
                seed=derive_seed(cfg.seed, "bifair-train", rnd, c),
                reg=p.reg,
            )
            states[c][cls.P] = P2
            n = int(sum(len(x) for x in pos))
            out[c] = (phi2, {spec.NUM_EXAMPLES: n, spec.TRAIN_LOSS: loss})
        return out

    @classmethod
    def _outer(cls, cfg, p, ud, rnd, Z, phi, config, users, owner, states):
        from fedrec.recsys.splits import sample_negatives

        mult = cls._item_mult(config)
        groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
        G = int(len(np.asarray(config[spec.MULT])))
        batch = int(config[spec.OUTER_BATCH])
        out = {}
        for c in states:
            us = users[owner == c]
            rng = np.random.default_rng(derive_seed(cfg.seed, "bifair-outer", rnd, c))
            tr = algo.sample_triples([ud.train[u] for u in us], ud.num_items, 1, rng)
            if len(tr[0]) > batch:
                keep = np.sort(rng.choice(len(tr[0]), batch, replace=False))
                tr = (tr[0][keep], tr[1][keep], tr[2][keep])
            vu, vi, vj = [], [], []
            for k, u in enumerate(us):
                for i in ud.valid[u]:
                    seen = np.unique(np.concatenate([ud.train[u], ud.valid[u]]))
                    vu.append(k)
                    vi.append(int(i))
                    vj.append(int(sample_negatives(ud.num_items, seen, 1, rng)[0]))
            val = tuple(np.asarray(a, dtype=np.int64) for a in (vu, vi, vj))
            P = np.asarray(states[c][cls.P], dtype=np.float32)
            hyper, vloss, nval = algo.unrolled_hypergrad(
                P, phi, Z, tr, val, mult, float(config[spec.ALPHA])
            )
            gs, ls, cnt = algo.group_gradients(P, phi, Z, val, groups, G)
            out[c] = (
                spec.pack_outer(hyper, gs, ls, cnt),
                {spec.NUM_EXAMPLES: nval, spec.VAL_LOSS: vloss},
            )
        return out

    @classmethod
    def _evaluate(cls, ud, Z, phi, config, users, owner, states, split="test"):
        P = np.concatenate([np.asarray(states[c][cls.P], dtype=np.float32) for c in states])
        scores = rerank(ud, users, owner, algo.scores(P, phi, Z), config, split)
        return ranking_replies(ud, users, owner, scores, config, split)
