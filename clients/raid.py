"""Client half of ``raid`` (federated RAID on FedMF-BPR); see :mod:`fedrec.strategies.raid`.

A client holds its users' embeddings (``P``), interactions and private attribute
values (in the simulation read from the dataset's user profile for its own users
only). Messages, keys and layouts are declared in :mod:`fedrec.specs.raid`.

Private state (columns of the node's state, :mod:`fedrec.state`; never sent)
-----------------------------------------------------------------------------
- ``P`` (FedMF): the user embeddings (float32);
- ``raid-targets`` (float32, ``(n_c, d)``): the users' OT targets ``t_u`` of the current
  barycenter version, and ``raid-version`` (0-d int64) that version. When a ``train``
  message carries another version the client recomputes its users' targets from their
  current embeddings and keeps them fixed until the next version (stop-gradient,
  EM-style).

What leaves a client (beyond FedMF's messages)
----------------------------------------------
- ``query.raid_stats``: mode ``gaussian``: the per-group sums ``[count_a, sum e,
  sum e e^T]`` of its users' embeddings (float64); mode ``free-support``: per group a
  k-means quantisation of its users' embeddings (atom group ids, atoms, masses). With
  one user per client these are that user's embedding and attribute: a deployment adds
  them under secure aggregation (only the totals are used) or runs cross-silo.
- ``query.raid_adv``: mode ``adversarial``: the summed cross-entropy gradients of the
  shared attribute classifier on its consenting users (one flat float64 vector), their
  number and loss sum.
- ``query.raid_validate``: per-user validation-split NDCG@10 (the performance
  constraint; the validation item of each user, never the test item).
- ``query.raid_transport`` (``release-transport``): the number of its users; the client
  replaces its users' embeddings by their targets.

Never sent: user embeddings, interactions, attribute values one by one (except as said
for one-user clients, and the opt-in ``release-embeddings`` audit).

Local training adds ``gamma * ||e_u - t_u||^2`` per user and step (gradient ``2 gamma
(e_u - t_u)``, :func:`fedrec.algorithms.raid.raid_penalty`). In adversarial mode the
added gradient is the reversed classifier gradient ``-gamma * d CE(q_phi(e_u), a_u) /
d e_u`` (:func:`fedrec.algorithms.estimators.ce_input_grads`, one user per slice, so a
user's gradient does not depend on the rest of the cohort).
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec import protocol
from fedrec.algorithms import estimators as E
from fedrec.clients.fedmf import MFClient
from fedrec.recsys.data import cfg_user_data
from fedrec.specs import fedmf as mf_spec
from fedrec.specs import raid as spec


def user_groups(cfg, p, users: np.ndarray) -> np.ndarray:
    ds, _ = cfg_user_data(cfg)
    return spec.group_codes(ds.user_attrs, p.attribute)[0][users]


def consenting(cfg, p, users: np.ndarray) -> np.ndarray:
    from fedrec.seeding import derive_seed

    rng = np.random.default_rng(derive_seed(cfg.seed, "raid-consent"))
    _, ud = cfg_user_data(cfg)
    return rng.random(ud.num_users)[users] < p.consent_fraction


class RAIDClient(MFClient):
    """FedMF client with RAID's centroid statistics and OT-target penalty."""

    Params = spec.RAIDParams
    _FEDMF = (protocol.HELLO, "evaluate", f"query.{mf_spec.RELEASE}")

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        if message_type in cls._FEDMF:
            return super().handle_cohort(cfg, message_type, server_round, weights, config, states)
        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        users, owner, P = cls._users_and_P(cfg, p, ud, states)
        groups = user_groups(cfg, p, users)
        G = int(config.get(spec.NUM_GROUPS, 0)) or spec.group_codes(ds.user_attrs, p.attribute)[1]
        if message_type == f"query.{spec.VALIDATE}":
            # only what the back-off reads leaves the client: the per-user validation NDCG@10
            # (the full ranking reply would carry each user's top-20 list and rank, i.e. the
            # private validation item)
            res = cls._evaluate(p, ud, weights, config, users, owner, P, split="valid")
            if isinstance(res, protocol.ReplyColumns):
                res = res.as_dict()
            return {c: (None, {spec.VAL_NDCG: m[spec.VAL_NDCG]}) for c, (_, m) in res.items()}
        if message_type == f"query.{spec.STATS}":
            return cls._stats(p, server_round, P, owner, groups, G, states)
        if message_type == f"query.{spec.TRANSPORT}":
            T = cls._targets(p, config, owner, P, groups, states)
            _, start = np.unique(owner, return_index=True)
            states.set_column(cls.P, T.astype(np.float32), np.append(start, len(owner)))
            return {c: (None, {spec.NUM_EXAMPLES: int((owner == c).sum())}) for c in states}
        if message_type == f"query.{spec.ADV}":
            return cls._adversary_sums(cfg, p, weights, users, owner, P, groups, G, states)
        if message_type == "train":
            from fedrec.clients.ranking import cohort_view

            ud = cohort_view(ud, states)  # without what the cohort's clients forgot
            gamma = float(config.get(spec.GAMMA, 0.0))
            if gamma <= 0:
                return cls._train(cfg, p, ud, server_round, weights, users, owner, P, states)
            if p.mode == "adversarial":
                grad_fn = cls._adversary_grad(config, groups, gamma, p.dim, p.adv_hidden, G)
            else:
                T = cls._targets(p, config, owner, P, groups, states)
                Tt = torch.as_tensor(T, dtype=torch.float32)

                def grad_fn(Pa, active):
                    return 2.0 * gamma * (Pa - Tt.index_select(0, active))

            return cls._train(
                cfg, p, ud, server_round, weights, users, owner, P, states, user_grad=grad_fn
            )
        return super().handle_cohort(cfg, message_type, server_round, weights, config, states)

    @staticmethod
    def _stats(p, server_round, P, owner, groups, G, states):
        """Centroid round: per client the group moment sums (gaussian) or k-means atoms."""
        from fedrec.algorithms import raid

        out = {}
        for c in states:
            m = owner == c
            if p.mode == "gaussian":
                arrays = spec.pack_moments(
                    *raid.group_moment_sums(P[m].astype(np.float64), groups[m], G)
                )
            else:
                meas = raid.quantize_groups(
                    P[m].astype(np.float64),
                    groups[m],
                    G,
                    p.quantize_k,
                    seed=spec.quantize_seed(server_round, c),
                )
                gid = np.concatenate([np.full(len(w), a) for a, (_, w) in enumerate(meas)])
                X = np.concatenate([x for x, _ in meas]) if len(gid) else np.zeros((0, P.shape[1]))
                arrays = spec.pack_quantized(gid, X, np.concatenate([w for _, w in meas]))
            out[c] = (arrays, {spec.NUM_EXAMPLES: int(m.sum())})
        return out

    @staticmethod
    def _adversary_sums(cfg, p, weights, users, owner, P, groups, G, states):
        """The adversary's CE gradient sums over each client's consenting users."""
        layout = spec.adversary_layout(p.dim, p.adv_hidden, G)
        phi = spec.unpack_adversary(weights[0], layout)
        cons = consenting(cfg, p, users)
        out = {}
        for c in states:
            m = owner == c
            grads, count, loss = E.classifier_grad_sums(
                phi, P[m].astype(np.float64), groups[m], cons[m]
            )
            out[c] = (
                spec.pack_adv_grads(grads, layout),
                {spec.NUM_EXAMPLES: int(count), spec.LOSS_SUM: float(loss)},
            )
        return out

    @classmethod
    def _targets(cls, p, config, owner, P, groups, states):
        """Users' OT targets (cohort order): recomputed for the clients whose stored
        version differs from the broadcast one, else kept."""
        from fedrec.algorithms import raid

        version = int(config[spec.VERSION])
        cids = list(states)
        stale = [
            c
            for c in cids
            if spec.STATE_VERSION not in states[c] or int(states[c][spec.STATE_VERSION]) != version
        ]
        if stale:
            m = np.isin(owner, stale)
            own = owner[m]
            d = P.shape[1]
            if p.mode == "gaussian":
                A, b = spec.unpack_gaussian(config, int(config[spec.NUM_GROUPS]), d)
                T = raid.gaussian_targets(P[m].astype(np.float64), groups[m], A, b)
            else:
                X = spec.unpack_support(config, d)
                T = np.zeros((int(m.sum()), d))
                G = int(config[spec.NUM_GROUPS])
                for c in stale:
                    k = own == c
                    e, gk = P[m][k].astype(np.float64), groups[m][k]
                    D = spec.unpack_atom_displacements(config, c, d)
                    if D is None:  # client-plans: its users against X*
                        T[k] = raid.ot_targets(e, gk, X)
                        continue
                    # atoms: the quantisation of the centroid round again (same rows,
                    # same seed), every user moved with its atom's displacement
                    seed = spec.quantize_seed(config[spec.STATS_ROUND], c)
                    meas, atom = raid.quantize_groups(
                        e, gk, G, p.quantize_k, seed=seed, return_labels=True
                    )
                    start = np.cumsum([0] + [len(w) for _, w in meas])[:-1]
                    T[k] = e + D[start[gk] + atom]
            T = T.astype(np.float32)
            if len(stale) == len(cids):  # the whole cohort: one column
                _, indptr = np.unique(own, return_index=True)
                states.set_column(spec.STATE_TARGETS, T, np.append(indptr, len(own)))
            else:
                for c in stale:
                    states[c][spec.STATE_TARGETS] = T[own == c]
            for c in stale:
                states[c][spec.STATE_VERSION] = np.int64(version)
        return states.column(spec.STATE_TARGETS)[0]

    @staticmethod
    def _adversary_grad(config, groups, gamma, d, h, G):
        """Gradient reversal: ``-gamma * dCE/de`` of the broadcast classifier, per user."""
        phi = spec.unpack_adversary(config[spec.ADV_PARAMS], spec.adversary_layout(d, h, G))

        def grad_fn(Pa, active):
            idx = active.numpy()
            g = E.ce_input_grads(phi, Pa.detach().numpy()[:, None, :], groups[idx][:, None])
            return torch.from_numpy((-gamma * g[:, 0]).astype(np.float32))

        return grad_fn
