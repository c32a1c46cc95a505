"""Client-side pieces shared by the per-user recommenders (``fedmf``, ``fedsasrec``, ...).

:class:`CohortClient` is a client half whose logic is one batched
:meth:`~CohortClient.handle_cohort` over all the clients a node hosts;
:func:`ranking_replies` turns a cohort's score matrix into the per-user evaluation
replies the server half (:mod:`fedrec.strategies.ranking`) sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec import protocol
from fedrec.clients.base import ClientHalf
from fedrec.config import RunConfig, validate_dataclass
from fedrec.recsys.data import client_users
from fedrec.specs import ranking as spec
from fedrec.state import StateStore


def ranking_replies(ud, users, owner, scores, config, split: str = "test") -> protocol.ReplyColumns:
    """Per-client evaluation replies, by column: per-user ranking metrics and top-K lists.

    ``owner`` (per user, its client) must be sorted (a cohort lists its clients' users in
    client order).

    ``scores`` (len(users), num_items) for the cohort's users (rows in ``users`` order);
    each user's training and validation items are excluded before ranking.
    """
    from fedrec.metrics.ranking import first_relevant_rank, per_user_metrics, topk_items

    scores = np.array(scores, dtype=np.float32, copy=True)
    hist, targets = ud.history(split), ud.targets(split)
    for j, u in enumerate(users):  # exclude what the user has already seen
        scores[j, hist[u]] = -np.inf
    rel = [targets[u] for u in users]
    top = topk_items(scores, spec.TOPK_LEN)
    ranks = first_relevant_rank(scores, rel)
    popular = np.zeros(ud.num_items, dtype=bool)
    popular[np.asarray(config.get(spec.POPULAR, []), dtype=np.int64)] = True
    pu = per_user_metrics(top, rel, spec.K_LIST, ranks=ranks, popular=popular)
    if spec.TARGET_ITEMS in config:  # an attack run: the target items' exposure
        pu.update(target_replies(ud, users, scores, config))
    # users are grouped by client (clients sorted): one column per field, no per-client work
    cids, start = np.unique(owner, return_index=True)
    indptr = np.append(start, len(owner)).astype(np.int64)
    metrics: dict[str, Any] = {
        spec.PER_USER + k: (spec.pack_per_user(v), indptr) for k, v in pu.items()
    }
    metrics[spec.USERS] = (np.asarray(users, dtype=np.int64), indptr)
    metrics[spec.TOPK] = (np.asarray(top).reshape(-1), indptr * top.shape[1])
    metrics[spec.NUM_EXAMPLES] = np.diff(indptr)
    return protocol.ReplyColumns(cids.astype(np.int64), None, metrics)


def target_replies(ud, users, scores, config) -> dict:
    """Per-user target-item metrics (:func:`fedrec.metrics.ranking.target_item_metrics`) for
    ``scores`` with the seen items already at ``-inf``. Each user's 100 sampled negatives are
    unseen non-target items drawn without replacement with probability proportional to their
    training popularity (the popularity sampler of the evaluation template CREAT inherits from
    Yue et al.; uniform negatives are mostly unpopular items that any trained model ranks
    below a medium-popularity target), from ``derive_seed(target-seed, "tgt-neg", user)``."""
    from fedrec.metrics.ranking import target_item_metrics
    from fedrec.seeding import derive_seed

    targets = np.asarray(config[spec.TARGET_ITEMS], dtype=np.int64).reshape(-1)
    seed = int(config.get(spec.TARGET_SEED, 0))
    m = spec.TARGET_NEGATIVES
    negs = np.zeros((len(users), m), dtype=np.int64)
    pop = ud.item_counts().astype(np.float64)
    for j, u in enumerate(users):
        pool = np.flatnonzero(np.isfinite(scores[j]) & (pop > 0))
        pool = pool[~np.isin(pool, targets)]
        rng = np.random.default_rng(derive_seed(seed, "tgt-neg", int(u)))
        w = pop[pool] / pop[pool].sum()
        k = min(m, pool.size)
        negs[j, :k] = rng.choice(pool, size=k, replace=False, p=w)
        negs[j, k:] = negs[j, :1]  # (only with fewer than m candidates: repeat one)
    return target_item_metrics(scores, targets, negs, k=10)


class CohortClient(ClientHalf):
    """A client half whose logic is :meth:`handle_cohort`; the per-client entry points
    (used when the ClientApp is not batching) call it with a one-client cohort."""

    Params: type = object  # the method's Params dataclass (from its spec module)

    @classmethod
    def params(cls, cfg: RunConfig) -> Any:
        """``strategy.params.*`` validated against the method's Params (the spec's)."""
        return validate_dataclass(cls.Params, dict(cfg.strategy_params), "strategy.params.")

    def _one(self, message_type, rnd, weights, config):
        """A one-client cohort over this client's own state."""
        store = StateStore()
        states = store.cohort([self.client_id])
        states.save(self.client_id, self.state)
        states.commit()
        states = store.cohort([self.client_id])
        out = type(self).handle_cohort(self.cfg, message_type, rnd, weights, config, states)
        states.commit()
        self.state = {k: np.array(v) for k, v in store.load(self.client_id).items()}
        if isinstance(out, protocol.ReplyColumns):
            out = out.as_dict()
        return out[self.client_id]

    @classmethod
    def owned_users(cls, cfg, client_id):
        from fedrec.recsys.data import cfg_user_data

        _, ud = cfg_user_data(cfg)
        return client_users(client_id, cls.params(cfg).users_per_client, ud.num_users)

    def hello(self):
        return self._one(protocol.HELLO, 0, None, {})[1]

    def fit(self, server_round, weights, config):
        return self._one("train", server_round, weights, config)

    def evaluate(self, server_round, weights, config):
        return self._one("evaluate", server_round, weights, config)[1]

    def query(self, action, server_round, weights, config):
        return self._one(f"query.{action}", server_round, weights, config)


def cohort_view(ud, states):
    """``ud`` without the training data the cohort's clients have forgotten (their private
    forget records, :mod:`fedrec.unlearning.client`); ``ud`` itself when none has any."""
    from fedrec.unlearning import client as ul

    if not any(f in states.store.columns for f in ul.FORGET_FIELDS):
        return ud
    users, pairs, items = ul.forget_records(states)
    return ul.forget_view(ud, users, pairs, items)


def forget_cohort(ud, users: np.ndarray, states):
    """``(view, keep)``: :func:`cohort_view` and, per cohort user, False where its client
    has forgotten the user (it is not evaluated); the forget records are read once."""
    from fedrec.unlearning import client as ul

    keep = np.ones(len(users), dtype=bool)
    if not any(f in states.store.columns for f in ul.FORGET_FIELDS):
        return ud, keep
    gone, pairs, items = ul.forget_records(states)
    if gone:
        keep = ~np.isin(users, np.fromiter(gone, dtype=np.int64))
    return ul.forget_view(ud, gone, pairs, items), keep


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
        out[c] = (
            None,
            {
                spec.NUM_USERS: len(us),
                spec.NUM_ITEMS: ud.num_items,
                spec.NUM_TRAIN: int(ud.train.lengths[us].sum()),
                spec.NUM_TEST: int((ud.test.lengths[us] > 0).sum()),
            },
        )
    return out


def rerank(ud, users, owner, scores, config, split="test"):
    """``scores`` as they are, or, when the evaluate config asks for the post-hoc
    re-ranking baseline (:func:`fedrec.specs.ranking.pack_rerank`), scores whose order
    puts each client's exposure-re-ranked top-K first (then the original order): greedy
    re-ranking toward the group shares ``TARGET`` of the item labels ``ITEM_GROUP``, per
    client (:func:`fedrec.algorithms.ufo.exposure_rerank`)."""
    from fedrec.algorithms.ufo import exposure_rerank

    lam = float(config.get(spec.RERANK, 0.0))
    if lam <= 0:
        return scores
    groups = np.asarray(config[spec.ITEM_GROUP], dtype=np.int64)
    target = np.asarray(config[spec.TARGET], dtype=np.float64)
    s = np.array(scores, dtype=np.float32, copy=True)
    hist = ud.history(split)
    for j, u in enumerate(users):
        s[j, hist[u]] = -np.inf
    finite = s[np.isfinite(s)]
    top = float(finite.max()) if finite.size else 0.0
    for c in np.unique(owner):
        rows = np.flatnonzero(owner == c)
        rr = exposure_rerank(s[rows], groups, target, k=spec.TOPK_LEN, lam=lam)
        for j, items in zip(rows, rr):
            items = items[items >= 0]
            s[j, items] = top + (len(items) - np.arange(len(items), dtype=np.float32))
    return s
