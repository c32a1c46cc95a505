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
  the user embeddings, i.e. the "released embeddings" threat model of the attack
  suite. Off by default.

All users a node hosts are trained in one batched call (:meth:`handle_cohort`); each
user's computation (its own copy of the item rows, its own negatives and seeds) is
exactly what it would be alone, so grouping clients onto nodes changes no result.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from fedrec.clients.base import ClientHalf
from fedrec.config import RunConfig
from fedrec.seeding import derive_seed

K_LIST = (10, 20)


def parse_options(options: str) -> dict:
    """``"a=1,b=0.5,c=x"`` -> ``{"a": 1, "b": 0.5, "c": "x"}`` (config key ``dataset.options``)."""
    from fedrec.errors import ConfigError

    out = {}
    for part in filter(None, (p.strip() for p in str(options).split(","))):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"config key 'dataset.options': '{part}' is not key=value "
                              "(example: num_users=10000,num_items=2000)")
        v = v.strip()
        for cast in (int, float):
            try:
                v = cast(v)
                break
            except ValueError:
                pass
        out[k.strip()] = v
    return out


def cfg_user_data(cfg: RunConfig):
    """:func:`user_data` for a run config (dataset name and ``dataset.options``)."""
    return user_data(cfg.dataset.name, cfg.dataset.options)


@functools.lru_cache(maxsize=4)
def user_data(dataset: str, options: str = ""):
    """(RecDataset, leave-one-out UserData), cached per process."""
    from fedrec.data import RecDataset, load_dataset
    from fedrec.errors import ConfigError
    from fedrec.recsys.splits import leave_one_out

    ds = load_dataset(dataset, **parse_options(options))
    if not isinstance(ds, RecDataset):
        raise ConfigError(f"config key 'dataset.name': '{dataset}' is not a recommendation "
                          "dataset; fedmf needs one (ml-100k, lastfm, synthetic-rec)")
    return ds, leave_one_out(ds)


def client_users(client_id: int, users_per_client: int, num_users: int) -> np.ndarray:
    lo = client_id * users_per_client
    return np.arange(lo, min(lo + users_per_client, num_users), dtype=np.int64)


def num_clients_for(num_users: int, users_per_client: int) -> int:
    return -(-num_users // users_per_client)


def ranking_replies(ud, users, owner, scores, config, split: str = "test"):
    """Per-client evaluation replies: per-user ranking metrics and top-K lists.

    ``scores`` (len(users), num_items) for the cohort's users (rows in ``users`` order);
    each user's training and validation items are excluded before ranking.
    """
    from fedrec.metrics.ranking import first_relevant_rank, per_user_metrics, topk_items

    scores = np.array(scores, dtype=np.float32, copy=True)
    hist, targets = ud.history(split), ud.targets(split)
    for j, u in enumerate(users):  # exclude what the user has already seen
        scores[j, hist[u]] = -np.inf
    rel = [targets[u] for u in users]
    top = topk_items(scores, max(K_LIST))
    ranks = first_relevant_rank(scores, rel)
    popular = np.zeros(ud.num_items, dtype=bool)
    popular[np.asarray(config.get("popular", []), dtype=np.int64)] = True
    pu = per_user_metrics(top, rel, K_LIST, ranks=ranks, popular=popular)
    out = {}
    for c in sorted(set(owner.tolist())):
        m = owner == c
        metrics = {f"pu.{k}": np.nan_to_num(v[m], nan=-1.0).astype(float).tolist()
                   for k, v in pu.items()}
        metrics.update({"users": users[m].tolist(), "topk": top[m].ravel().tolist(),
                        "num-examples": int(m.sum())})
        out[c] = (None, metrics)
    return out


class CohortClient(ClientHalf):
    """A client half whose logic is :meth:`handle_cohort`; the per-client entry points
    (used when the ClientApp is not batching) call it with a one-client cohort."""

    @staticmethod
    def params(cfg: RunConfig):
        from fedrec.plugins import load_strategy

        return load_strategy(cfg.strategy.name).parse_params(cfg)

    def _one(self, message_type, rnd, weights, config):
        states = {self.client_id: self.state}
        return type(self).handle_cohort(self.cfg, message_type, rnd, weights, config,
                                        states)[self.client_id]

    def hello(self):
        return self._one("query.fedrec_hello", 0, None, {})[1]

    def fit(self, server_round, weights, config):
        return self._one("train", server_round, weights, config)

    def evaluate(self, server_round, weights, config):
        return self._one("evaluate", server_round, weights, config)[1]

    def query(self, action, server_round, weights, config):
        return self._one(f"query.{action}", server_round, weights, config)


def cohort_users(users_per_client: int, num_users: int, states) -> tuple[np.ndarray, np.ndarray]:
    """``(users, owner)`` of a cohort: its clients' users in client order, and each one's client."""
    us = [client_users(c, users_per_client, num_users) for c in sorted(states)]
    owner = [np.full(len(u), c) for c, u in zip(sorted(states), us)]
    return np.concatenate(us), np.concatenate(owner)


def hello_replies(ud, users_per_client: int, states) -> dict:
    """Handshake counts of each client in ``states`` (users, items, training and test)."""
    out = {}
    for c in sorted(states):
        us = client_users(c, users_per_client, ud.num_users)
        out[c] = (None, {"num-users": len(us), "num-items": ud.num_items,
                         "num-train": int(ud.train.lengths[us].sum()),
                         "num-test": int((ud.test.lengths[us] > 0).sum())})
    return out


class MFClient(CohortClient):
    """Per-user BPR on private user embeddings and private copies of item rows."""

    P = "P"


    @classmethod
    def _users_and_P(cls, cfg, p, ud, states):
        users, owner = cohort_users(p.users_per_client, ud.num_users, states)
        for c in sorted(states):
            if cls.P not in states[c]:  # private init, seeded by (run seed, client)
                g = torch.Generator().manual_seed(derive_seed(cfg.seed, "user-init", c) % 2**63)
                n = int((owner == c).sum())
                states[c][cls.P] = (torch.randn(n, p.dim, generator=g) * p.init_std).numpy()
        P = np.concatenate([states[c][cls.P] for c in sorted(states)])
        return users, owner, P.astype(np.float32)

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        if message_type == "query.fedrec_hello":
            return hello_replies(ud, p.users_per_client, states)
        users, owner, P = cls._users_and_P(cfg, p, ud, states)
        if message_type == "train":
            return cls._train(cfg, p, ud, server_round, weights, users, owner, P, states)
        if message_type == "evaluate":
            return cls._evaluate(p, ud, weights, config, users, owner, P)
        if message_type == "query.fedmf_release":
            return {c: (None, {"users": users[owner == c].tolist(),
                               "embedding": P[owner == c].ravel().astype(float).tolist()})
                    for c in sorted(states)}
        raise ValueError(f"fedmf clients do not handle '{message_type}'")

    @classmethod
    def _train(cls, cfg, p, ud, rnd, weights, users, owner, P, states, user_grad=None):
        from fedrec.models.recsys import mf_bpr_user_step
        from fedrec.recsys.splits import sample_negatives

        t = cfg.train
        Q = torch.as_tensor(np.asarray(weights[0], dtype=np.float32))
        pos = [ud.train[u] for u in users]
        neg = [sample_negatives(ud.num_items, np.unique(ud.train[u]),
                                len(pos[j]) * p.negatives * t.local_epochs,
                                derive_seed(cfg.seed, "neg", rnd, int(u)))
               for j, u in enumerate(users)]
        if p.negatives > 1:  # one (pos, neg) triple per negative
            pos = [np.tile(x, p.negatives) for x in pos]
        upd = mf_bpr_user_step(torch.as_tensor(P), Q, pos, neg, lr=t.lr, reg=p.reg,
                               epochs=t.local_epochs, batch_size=t.batch_size,
                               seed=[derive_seed(cfg.seed, "local", rnd, int(u)) for u in users],
                               user_grad=user_grad)
        newP = upd.P.detach().numpy()
        dq, _ = upd.item_deltas(Q)
        dq = dq.detach().numpy()
        # users of one client are contiguous in ``users`` (clients sorted), so are their rows
        user_lo = {c: int(np.searchsorted(owner, c, "left")) for c in states}
        user_hi = {c: int(np.searchsorted(owner, c, "right")) for c in states}
        n_pos = np.array([len(x) for x in pos])
        out = {}
        for c in sorted(states):
            lo, hi = user_lo[c], user_hi[c]
            states[c][cls.P] = newP[lo:hi]
            rows = slice(int(upd.indptr[lo]), int(upd.indptr[hi]))
            ids, inv = np.unique(upd.item_ids[rows], return_inverse=True)
            delta = np.zeros((len(ids), Q.shape[1]), dtype=np.float32)
            np.add.at(delta, inv, dq[rows])
            counts = np.bincount(inv, minlength=len(ids)).astype(np.int64)
            n = int(n_pos[lo:hi].sum())
            losses = upd.losses[lo:hi]
            loss = float(np.nanmean(losses)) if np.isfinite(losses).any() else 0.0
            if p.aggregation == "dense":
                full = np.zeros_like(Q.numpy())
                full[ids] = delta / np.maximum(counts, 1)[:, None]
                arrays = [Q.numpy() + full]
            else:
                arrays = [ids, delta, counts]
            out[c] = (arrays, {"num-examples": n, "train-loss": loss})
        return out

    @classmethod
    def _evaluate(cls, p, ud, weights, config, users, owner, P, split="test"):
        Q = np.asarray(weights[0], dtype=np.float32)
        return ranking_replies(ud, users, owner, P @ Q.T, config, split)




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

    _models: dict = {}


    @classmethod
    def model(cls, cfg, p, num_items, weights):
        from fedrec.models.recsys import SASRec

        key = (num_items, p.dim, p.max_len, p.num_blocks, p.num_heads, p.dropout)
        if key not in cls._models:
            cls._models.clear()
            cls._models[key] = SASRec(num_items, p.dim, p.max_len, p.num_blocks, p.num_heads,
                                      p.dropout, seed=0)
        m = cls._models[key]
        with torch.no_grad():
            for prm, w in zip(m.parameters(), weights):
                prm.copy_(torch.as_tensor(np.asarray(w, dtype=np.float32)))
        return m

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        if message_type == "query.fedrec_hello":
            return hello_replies(ud, p.users_per_client, states)
        users, owner = cohort_users(p.users_per_client, ud.num_users, states)
        model = cls.model(cfg, p, ud.num_items, weights)
        if message_type == "train":
            return cls._train(cfg, p, ud, server_round, model, users, owner)
        if message_type == "evaluate":
            from fedrec.models.recsys import to_tokens

            seqs = ud.sequences("test")
            model.eval()
            with torch.no_grad():
                scores = torch.cat([model.score_all(to_tokens([seqs[u] for u in users[a:a + 256]],
                                                              model.max_len))
                                    for a in range(0, len(users), 256)]).numpy()
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
        negs = [sample_negatives(ud.num_items, np.unique(ud.train[u]), E * n,
                                 derive_seed(cfg.seed, "neg", rnd, int(u)))
                for u, n in zip(users, n_t)]
        upd = sasrec_user_step(model, seqs, negs, lr=t.lr, epochs=E,
                               seeds=[derive_seed(cfg.seed, "dropout", rnd, int(u)) % 2**62
                                      for u in users])
        # all non-embedding deltas as one flat row per user (one array per reply, not one per
        # parameter: Flower's per-array cost dominates otherwise), weighted by n_u
        wts = torch.as_tensor(upd.num_targets, dtype=torch.float32)
        flat = torch.cat([upd.dense[n].reshape(len(users), -1) for n in upd.dense], 1) * wts[:, None]
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
                d_all = torch.cat([upd.item_deltas[r] * float(wj) for r, wj in zip(rows, w)]).numpy()
                ids, inv = np.unique(ids_all, return_inverse=True)
                item_sum = np.zeros((len(ids), model.d), dtype=np.float32)
                np.add.at(item_sum, inv, d_all)
                dense = flat[torch.as_tensor(idx)].sum(0).numpy()
            losses = upd.losses[idx, 0]
            ok = np.isfinite(losses)
            loss = float(np.average(losses[ok], weights=w[ok])) if ok.any() and w[ok].sum() > 0 else 0.0
            out[c] = ([np.asarray(ids, dtype=np.int64), np.asarray(item_sum, dtype=np.float32), dense],
                      {"num-examples": int(w.sum()), "train-loss": loss})
        return out

