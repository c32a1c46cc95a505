"""Client half of ``raid`` (federated RAID on FedMF-BPR); see :mod:`fedrec.strategies.raid`.

A client holds its users' embeddings (``P``), interactions and private attribute
values (in the simulation read from the dataset's user profile for its own users
only). Beyond FedMF's messages it answers:

- ``query.raid_stats``: mode ``gaussian``: the per-group sums ``[count_a, sum e,
  sum e e^T]`` of its users' embeddings (float64); mode ``free-support``: per group a
  k-means quantisation of its users' embeddings (atom group ids, atoms, masses).
- ``query.raid_adv``: mode ``adversarial``: the summed cross-entropy gradients of the
  shared attribute classifier on its consenting users (FedAvg of the adversary).
- ``query.raid_validate``: per-user validation-split NDCG@10 (the performance
  constraint; the validation item of each user, never the test item).

In ``train`` it receives the current barycenter broadcast (Gaussian maps ``A_a, b_a``
or the free-support atoms ``X*``) with a version number; when the version changes it
computes its users' OT targets ``t_u`` from their current embeddings and keeps them
fixed until the next version (stop-gradient, EM-style). Local BPR then adds
``gamma * ||e_u - t_u||^2`` per user and step (gradient ``2 gamma (e_u - t_u)``,
:func:`fedrec.algorithms.raid.raid_penalty`). In adversarial mode the added gradient is
the reversed classifier gradient ``-gamma * d CE(q_phi(e_u), a_u) / d e_u``.
"""

from __future__ import annotations

import numpy as np
import torch

from fedrec.clients.recsys import MFClient, cfg_user_data

TARGETS, VERSION = "raid-targets", "raid-version"


def user_groups(cfg, p, users: np.ndarray) -> np.ndarray:
    ds, _ = cfg_user_data(cfg)
    return np.asarray(ds.user_attrs[p.attribute], dtype=np.int64)[users]


def consenting(cfg, p, users: np.ndarray) -> np.ndarray:
    from fedrec.seeding import derive_seed

    rng = np.random.default_rng(derive_seed(cfg.seed, "raid-consent"))
    _, ud = cfg_user_data(cfg)
    return rng.random(ud.num_users)[users] < p.consent_fraction


class RAIDClient(MFClient):
    """FedMF client with RAID's centroid statistics and OT-target penalty."""

    @classmethod
    def handle_cohort(cls, cfg, message_type, server_round, weights, config, states):
        if message_type == "query.fedrec_hello" or message_type in ("evaluate", "query.fedmf_release"):
            return super().handle_cohort(cfg, message_type, server_round, weights, config, states)
        from fedrec.algorithms import raid

        p = cls.params(cfg)
        ds, ud = cfg_user_data(cfg)
        users, owner, P = cls._users_and_P(cfg, p, ud, states)
        groups = user_groups(cfg, p, users)
        G = int(config.get("num-groups", 0)) or int(np.asarray(ds.user_attrs[p.attribute]).max()) + 1
        clients = sorted(states)
        if message_type == "query.raid_validate":
            return cls._evaluate(p, ud, weights, config, users, owner, P, split="valid")
        if message_type == "query.raid_stats":
            out = {}
            for c in clients:
                m = owner == c
                if p.mode == "gaussian":
                    cnt, sums, outer = raid.group_moment_sums(P[m].astype(np.float64), groups[m], G)
                    out[c] = ([cnt, sums, outer], {"num-examples": int(m.sum())})
                else:
                    meas = raid.quantize_groups(P[m].astype(np.float64), groups[m], G, p.quantize_k,
                                                seed=int(server_round) * 7919 + c)
                    gid = np.concatenate([np.full(len(w), a) for a, (_, w) in enumerate(meas)])
                    X = np.concatenate([x for x, _ in meas]) if len(gid) else np.zeros((0, P.shape[1]))
                    mass = np.concatenate([w for _, w in meas])
                    out[c] = ([gid.astype(np.int64), X, mass.astype(np.float64)],
                              {"num-examples": int(m.sum())})
            return out
        if message_type == "query.raid_adv":
            from fedrec.algorithms import lego

            phi = [np.asarray(w, dtype=np.float32) for w in weights]
            cons = consenting(cfg, p, users)
            out = {}
            for c in clients:
                m = owner == c
                grads, count, loss = lego.classifier_grad_sums(phi, P[m].astype(np.float64), groups[m],
                                                               cons[m])
                out[c] = ([np.asarray(g, dtype=np.float64) for g in grads],
                          {"num-examples": int(count), "loss-sum": float(loss)})
            return out
        if message_type == "train":
            gamma = float(config.get("raid-gamma", 0.0))
            if gamma <= 0:
                return cls._train(cfg, p, ud, server_round, weights, users, owner, P, states)
            if p.mode == "adversarial":
                grad_fn = cls._adversary_grad(config, groups, gamma, p.dim, p.adv_hidden)
            else:
                T = cls._targets(p, config, users, owner, P, groups, states)
                Tt = torch.as_tensor(T, dtype=torch.float32)

                def grad_fn(Pa, active):
                    return 2.0 * gamma * (Pa - Tt.index_select(0, active))
            return cls._train(cfg, p, ud, server_round, weights, users, owner, P, states,
                              user_grad=grad_fn)
        return super().handle_cohort(cfg, message_type, server_round, weights, config, states)

    @classmethod
    def _targets(cls, p, config, users, owner, P, groups, states):
        """Users' OT targets: recomputed when the broadcast version changes, else kept."""
        from fedrec.algorithms import raid

        version = int(config["raid-version"])
        stale = [c for c in sorted(states) if states[c].get(VERSION) != version]
        if stale:
            m = np.isin(owner, stale)
            d = P.shape[1]
            if p.mode == "gaussian":
                G = int(config["num-groups"])
                A = np.asarray(config["raid-A"], dtype=np.float64).reshape(G, d, d)
                b = np.asarray(config["raid-b"], dtype=np.float64).reshape(G, d)
                T = raid.gaussian_targets(P[m].astype(np.float64), groups[m], A, b)
            else:
                X = np.asarray(config["raid-X"], dtype=np.float64).reshape(-1, d)
                T = np.zeros((int(m.sum()), d))
                own = owner[m]
                for c in stale:  # OT plans are per client: its users against X*
                    k = own == c
                    T[k] = raid.ot_targets(P[m][k].astype(np.float64), groups[m][k], X)
            own = owner[m]
            for c in stale:
                states[c][TARGETS] = T[own == c].astype(np.float32)
                states[c][VERSION] = version
        return np.concatenate([states[c][TARGETS] for c in sorted(states)])

    @staticmethod
    def _adversary_grad(config, groups, gamma, d, h):
        """Gradient reversal: ``-gamma * dCE/de`` of the broadcast classifier, per user."""
        K = int(config["num-groups"])
        shapes = [(h, d), (h,), (K, h), (K,)]
        flat = np.asarray(config["adv-params"], dtype=np.float32)
        phi, off = [], 0
        for sh in shapes:
            n = int(np.prod(sh))
            phi.append(torch.as_tensor(flat[off:off + n].reshape(sh)))
            off += n
        W1, b1, W2, b2 = phi
        y = torch.as_tensor(groups)

        def grad_fn(Pa, active):
            e = Pa.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = torch.relu(e @ W1.T + b1) @ W2.T + b2
                ce = torch.nn.functional.cross_entropy(logits, y.index_select(0, active), reduction="sum")
                (g,) = torch.autograd.grad(ce, e)
            return -gamma * g
        return grad_fn
