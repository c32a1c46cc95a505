"""Client half of ``fedsasrec`` (federated SASRec); see :class:`SASRecClient`.

What leaves a client: in the handshake its numbers of users, training interactions, items
and users with a test item; in ``train`` the ids of the item-embedding rows its users touched
(their input, target and sampled negative items: the items of their recent interactions,
mixed with negatives), the example-weighted sums of those rows' deltas and of the flat
non-embedding deltas, the example count and the mean loss; in ``evaluate`` per-user ranking
metrics, user ids and top-K lists (measurements of the simulation). Sequences never leave.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec import protocol
from fedrec.clients.ranking import (
    CohortClient,
    cohort_users,
    forget_cohort,
    hello_replies,
    ranking_replies,
)
from fedrec.recsys.data import cfg_user_data
from fedrec.seeding import derive_seed
from fedrec.specs import fedsasrec as spec


class SASRecClient(CohortClient):
    """Client half of ``fedsasrec``: local SGD on the users' own item sequences.

    SASRec has no user parameters: every weight is shared. A user's sequence is its
    private data. What leaves a client in ``train``: the ids of the item-embedding rows
    its users touched (their input, target and negative items), the example-weighted
    sums ``sum_u n_u * delta_u`` of those rows' deltas and of every other parameter's
    delta (``n_u`` = the user's number of target positions), the example count and the
    mean local loss. With ``users-per-client = 1`` that is one user's update. In
    ``evaluate``: per-user ranking metrics and top-K lists, as for ``fedmf``.
    """

    Params: type = spec.FedSASRecParams
    build_model = staticmethod(spec.build_model)  # the model of Params (the spec's)
    _models: dict = {}  # one model per process, its weights overwritten per message

    @classmethod
    def model(cls, cfg, p, num_items, weights):
        key = (num_items, p)
        if key not in cls._models:
            cls._models.clear()
            cls._models[key] = cls.build_model(p, num_items)
        m = cls._models[key]
        with torch.no_grad():
            for prm, w in zip(m.parameters(), weights):
                prm.copy_(torch.as_tensor(np.asarray(w, dtype=np.float32)))
        return m

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        if message_type == protocol.HELLO:
            return hello_replies(ud, p.users_per_client, states)
        users, owner = cohort_users(p.users_per_client, ud.num_users, states)
        ud, keep = forget_cohort(ud, users, states)  # without what the cohort forgot
        S = int(config.get("sisa-shards", 1))
        model = cls.model(cfg, p, ud.num_items, weights[: len(weights) // S])
        if message_type == "train":
            return cls._train(cfg, p, ud, server_round, model, users, owner)
        if message_type == "evaluate":
            from fedrec.models.recsys import to_tokens

            users, owner = users[keep], owner[keep]
            seqs = ud.sequences("test")
            S = int(config.get("sisa-shards", 1))  # a SISA ensemble: its models' mean scores
            alpha = np.asarray(config.get("sisa-weights", np.full(S, 1.0 / S)))
            k = len(weights) // S
            scores = 0.0
            for i in range(S):
                m = (
                    model
                    if S == 1
                    else cls.model(cfg, p, ud.num_items, weights[i * k : (i + 1) * k])
                )
                m.eval()
                with torch.no_grad():
                    scores = (
                        scores
                        + alpha[i]
                        * torch.cat(
                            [
                                m.score_all(
                                    to_tokens([seqs[u] for u in users[a : a + 256]], m.max_len)
                                )
                                for a in range(0, len(users), 256)
                            ]
                        ).numpy()
                    )
            return ranking_replies(ud, users, owner, scores, config)
        raise ValueError(f"fedsasrec clients do not handle '{message_type}'")

    @classmethod
    def _train(cls, cfg, p, ud, rnd, model, users, owner):
        from fedrec.models.recsys import sasrec_user_step
        from fedrec.recsys.splits import sample_negatives

        t = cfg.train
        E = t.local_epochs
        seqs = [ud.train_seq[u] for u in users]
        n_t = [min(max(len(s) - 1, 0), model.max_len) for s in seqs]
        negs = [
            sample_negatives(
                ud.num_items,
                np.unique(ud.train[u]),
                E * n,
                derive_seed(cfg.seed, "neg", rnd, int(u)),
            )
            for u, n in zip(users, n_t)
        ]
        upd = sasrec_user_step(
            model,
            seqs,
            negs,
            lr=t.lr,
            epochs=E,
            seeds=[derive_seed(cfg.seed, "dropout", rnd, int(u)) % 2**62 for u in users],
        )
        # all non-embedding deltas as one flat row per user (one array per reply, not one per
        # parameter: Flower's per-array cost dominates otherwise), weighted by n_u
        wts = torch.as_tensor(upd.num_targets, dtype=torch.float32)
        flat = (
            torch.cat([upd.dense[n].reshape(len(users), -1) for n in upd.dense], 1) * wts[:, None]
        )
        single = bool((np.bincount(owner - owner.min()) <= 1).all())
        out = {}
        for c in sorted(set(owner.tolist())):
            idx = np.flatnonzero(owner == c)
            w = upd.num_targets[idx].astype(np.float32)
            if single:
                j = int(idx[0])
                r = slice(int(upd.indptr[j]), int(upd.indptr[j + 1]))
                ids, item_sum = upd.item_ids[r], (upd.item_deltas[r] * float(w[0])).numpy()
                dense = flat[j].numpy()
            else:
                rows = [slice(int(upd.indptr[j]), int(upd.indptr[j + 1])) for j in idx]
                ids_all = np.concatenate([upd.item_ids[r] for r in rows])
                d_all = torch.cat(
                    [upd.item_deltas[r] * float(wj) for r, wj in zip(rows, w)]
                ).numpy()
                ids, inv = np.unique(ids_all, return_inverse=True)
                item_sum = np.zeros((len(ids), model.d), dtype=np.float32)
                np.add.at(item_sum, inv, d_all)
                dense = flat[torch.as_tensor(idx)].sum(0).numpy()
            losses = upd.losses[idx, 0]
            ok = np.isfinite(losses)
            loss = (
                float(np.average(losses[ok], weights=w[ok]))
                if ok.any() and w[ok].sum() > 0
                else 0.0
            )
            out[c] = (
                spec.pack_train(ids, item_sum, dense),
                {spec.NUM_EXAMPLES: int(w.sum()), spec.TRAIN_LOSS: loss},
            )
        return out
