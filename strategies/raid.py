"""Federated RAID (``raid``): in-training defense against attribute inference on FedMF-BPR.

RAID (Feng et al. 2025, arXiv 2504.11510) makes the user-embedding distributions of
the attribute groups indistinguishable while the recommender trains: every ``F``
rounds the server computes a Wasserstein barycenter of the group distributions
("centroid round"), each user gets an OT target ``t_u`` on it, and local training adds
``gamma * ||e_u - t_u||^2`` to the BPR loss. Federated design (``reference/
recsys_fairness_defense.md`` §3.5); the maths is :mod:`fedrec.algorithms.raid`.

Schedule
--------
Rounds ``1..warmup-rounds``: plain FedMF (recommendation loss only). After round
``warmup-rounds`` and then after every ``centroid-every`` rounds, in
:meth:`after_aggregate`:

1. **Validation** (``query.raid_validate``): NDCG@10 on each user's validation item
   (never the test item). The value at the end of the warm-up is the reference; if a
   later check falls more than ``ndcg-tolerance`` (relative) below it, ``gamma`` is
   multiplied by ``gamma-backoff`` (the performance constraint: the paper's
   "constrained" barycenter is unpublished; we enforce the constraint by backing off the
   penalty, reference §3.3 option (iii)).
2. **Centroid round** (``query.raid_stats``) and broadcast of the next version with the
   following ``train`` messages.

Modes and exactly what leaves a client
--------------------------------------
* ``gaussian`` (cross-device): per client and group ``a`` the sums ``[n_a, sum e_u,
  sum e_u e_u^T]`` over its users (float64). The server forms group means and
  covariances, the Bures-Wasserstein barycenter (POT ``ot.gaussian``, group weights
  ``n_a / N``) and the linear maps ``T_a(x) = A_a x + b_a``, broadcast to everyone;
  each client maps its own users, ``t_u = T_{a_u}(e_u)``. With one user per client
  these sums are that user's embedding and attribute, so a deployment must add them
  with secure aggregation (only the totals are used); fedrec does not ship secure
  aggregation and this simulation sums them in the clear.
* ``free-support`` (cross-silo, several users per client): per client and group a
  k-means quantisation (``quantize-k`` atoms with their masses) of its users'
  embeddings. The server pools the atoms per group and runs POT's free-support
  barycenter (``support-size`` atoms); the clients compute exact OT plans (``ot.emd``)
  from their users of each group to the atoms and the barycentric targets. With one user
  per client the "quantisation" is the embedding itself: use this mode cross-silo.
* ``adversarial`` (baseline): a shared attribute classifier (MLP ``d -> adv-hidden ->
  K``) is trained each round by FedAvg of the cross-entropy gradient sums of consenting
  users (``query.raid_adv``; those sums leave the client), and local training adds the
  reversed gradient ``-gamma * dCE/de_u`` (gradient reversal, as the lineage code's
  ``adv`` baseline). Started with the warm-up like RAID.

Never sent: user embeddings, interactions, attribute values one by one (except as
said for one-user clients above, and the opt-in ``release-embeddings`` audit).

Evaluation: FedMF's ranking metrics every round; at every centroid round the W2
between the group Gaussians (``bures_w2``, gaussian mode) is logged. The attack audit
(``experiments/raid``) attacks the released embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedrec.config import key
from fedrec.errors import ConfigError
from fedrec.strategies.fedmf import FedMF, FedMFParams


@dataclass(frozen=True)
class RAIDParams(FedMFParams):
    mode: str = key("gaussian", "gaussian: Bures-Wasserstein barycenter from summed moments "
                    "(cross-device); free-support: POT free-support barycenter from per-client "
                    "k-means supports (cross-silo); adversarial: gradient-reversal baseline.",
                    choices=("gaussian", "free-support", "adversarial"))
    attribute: str = key("gender", "The protected user attribute (a key of the dataset's "
                         "user profile, e.g. gender, age_bucket, occupation).")
    gamma: float = key(0.5, "Penalty coefficient of ||e_u - t_u||^2 (adversarial: weight of "
                       "the reversed classifier gradient).", check=lambda v: v >= 0,
                       check_doc=">= 0")
    warmup_rounds: int = key(10, "Rounds of plain FedMF before the defense starts.",
                             check=lambda v: v >= 1, check_doc=">= 1")
    centroid_every: int = key(5, "Rounds between centroid updates (F).", check=lambda v: v >= 1,
                              check_doc=">= 1")
    support_size: int = key(100, "free-support: atoms of the barycenter.",
                            check=lambda v: v >= 1, check_doc=">= 1")
    quantize_k: int = key(16, "free-support: k-means atoms per group and client.",
                          check=lambda v: v >= 1, check_doc=">= 1")
    ndcg_tolerance: float = key(0.05, "Relative drop of validation NDCG@10 below its warm-up "
                                "value that triggers a gamma back-off.",
                                check=lambda v: 0 <= v < 1, check_doc="in [0, 1)")
    gamma_backoff: float = key(0.5, "Factor applied to gamma when the tolerance is exceeded.",
                               check=lambda v: 0 < v <= 1, check_doc="in (0, 1]")
    adv_hidden: int = key(16, "adversarial: hidden units of the attribute classifier.",
                          check=lambda v: v >= 1, check_doc=">= 1")
    adv_lr: float = key(0.01, "adversarial: Adam step size of the classifier.",
                        check=lambda v: v > 0, check_doc="> 0")
    adv_steps: int = key(5, "adversarial: classifier updates per round.",
                         check=lambda v: v >= 1, check_doc=">= 1")
    consent_fraction: float = key(1.0, "adversarial: share of users whose label trains the "
                                  "classifier (seeded).", check=lambda v: 0 < v <= 1,
                                  check_doc="in (0, 1]")


class RAID(FedMF):
    """FedMF-BPR with RAID's Wasserstein-barycenter alignment (or the adversarial baseline)."""

    name = "raid"
    Params = RAIDParams
    client_half = "fedrec.clients.raid:RAIDClient"

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        from fedrec.clients.recsys import cfg_user_data

        p = cls.parse_params(cfg)
        ds, _ = cfg_user_data(cfg)
        if p.attribute not in (ds.user_attrs or {}):
            allowed = ", ".join(sorted(ds.user_attrs or {})) or "none (this dataset has no user attributes)"
            raise ConfigError(f"config key 'strategy.params.attribute': '{p.attribute}' is not a user "
                              f"attribute of '{cfg.dataset.name}'; allowed: {allowed}")

    def setup(self, grid) -> None:
        super().setup(grid)
        attr = np.asarray(self.ds.user_attrs[self.params.attribute], dtype=np.int64)
        self.num_groups = int(attr.max()) + 1
        self.gamma = float(self.params.gamma)
        self.version = 0
        self.broadcast: dict[str, Any] = {}
        self.val_ref: float | None = None
        self.defense_log: list[dict] = []
        self._extra: dict[int, dict] = {}
        self.adv = None

    def _defending(self, server_round: int) -> bool:
        return server_round > self.params.warmup_rounds and self.version > 0

    def train_config(self, server_round: int) -> dict[str, Any]:
        cfg = dict(super().train_config(server_round))
        if self._defending(server_round):
            cfg.update({"raid-gamma": self.gamma, "raid-version": self.version,
                        "num-groups": self.num_groups, **self.broadcast})
        return cfg

    def after_aggregate(self, server_round, weights, grid):
        p = self.params
        k = server_round - p.warmup_rounds
        if p.mode == "adversarial":
            if k >= 0:
                self._train_adversary(grid, server_round, weights)
        if k < 0 or k % p.centroid_every:
            return weights
        info: dict[str, Any] = {"round": server_round}
        val = self._validate(grid, server_round, weights)
        info["val-ndcg@10"] = val
        if self.val_ref is None:
            self.val_ref = val
        elif val < (1 - p.ndcg_tolerance) * self.val_ref:
            self.gamma *= p.gamma_backoff
            info["backoff"] = True
        info["gamma"] = self.gamma
        if p.mode != "adversarial":
            info.update(self._centroid_round(grid, server_round, weights))
        else:
            self.version += 1
        self.defense_log.append(info)
        self._extra[server_round] = {k2: v for k2, v in info.items() if k2 != "round"}
        return weights

    def on_round_end(self, server_round: int, record) -> None:
        record.extra.update(self._extra.pop(server_round, {}))
        super().on_round_end(server_round, record)

    # ------------------------------------------------------------------ phases
    def _validate(self, grid, rnd, weights) -> float:
        replies = self.communicate(grid, "query.raid_validate", self.client_ids, rnd, weights,
                                   self.evaluate_config(rnd))
        v = np.concatenate([np.asarray(r.metrics["pu.ndcg@10"], dtype=np.float64) for r in replies])
        v = v[v >= 0]
        return float(v.mean()) if v.size else 0.0

    def _centroid_round(self, grid, rnd, weights) -> dict[str, Any]:
        from fedrec.algorithms import raid

        p = self.params
        replies = self.communicate(grid, "query.raid_stats", self.client_ids, rnd, weights,
                                   {"num-groups": self.num_groups})
        G, d = self.num_groups, p.dim
        info: dict[str, Any] = {}
        if p.mode == "gaussian":
            cnt, sums, outer = np.zeros(G), np.zeros((G, d)), np.zeros((G, d, d))
            for r in replies:
                cnt += r.weights[0]
                sums += r.weights[1]
                outer += r.weights[2]
            present = cnt > 0
            means, covs = raid.moments_from_sums(cnt[present], sums[present], outer[present])
            m_star, C_star = raid.gaussian_barycenter(means, covs, cnt[present] / cnt.sum())
            A_p, b_p = raid.gaussian_maps(means, covs, m_star, C_star, counts=cnt[present])
            A = np.tile(np.eye(d), (G, 1, 1))
            b = np.zeros((G, d))
            A[present], b[present] = A_p, b_p
            self.broadcast = {"raid-A": A.ravel().tolist(), "raid-b": b.ravel().tolist()}
            pairs = [raid.bures_w2(means[i], covs[i], means[j], covs[j]) ** 0.5
                     for i in range(len(means)) for j in range(i + 1, len(means))]
            info["group-w2-gaussian"] = float(np.mean(pairs)) if pairs else 0.0
        else:
            atoms: list[list] = [[] for _ in range(G)]
            mass: list[list] = [[] for _ in range(G)]
            for r in replies:
                gid, X, w = r.weights
                for a in np.unique(gid):
                    atoms[int(a)].append(X[gid == a])
                    mass[int(a)].append(w[gid == a])
            meas = [(np.concatenate(atoms[a]), np.concatenate(mass[a])) for a in range(G) if atoms[a]]
            weights_g = np.array([m.sum() for _, m in meas])
            X_star = raid.free_support_barycenter(meas, weights_g / weights_g.sum(), p.support_size,
                                                  seed=rnd)
            self.broadcast = {"raid-X": X_star.ravel().tolist()}
            info["atoms"] = int(sum(len(m) for _, m in meas))
        self.version += 1
        info["version"] = self.version
        return info

    def _train_adversary(self, grid, rnd, weights) -> None:
        from fedrec.algorithms import lego
        from fedrec.seeding import derive_seed

        p = self.params
        if self.adv is None:
            self.adv = (lego.classifier_init(p.dim, self.num_groups, p.adv_hidden,
                                             seed=derive_seed(self.cfg.seed, "raid-adv") % 2**31), None)
        phi, st = self.adv
        for _ in range(p.adv_steps):
            replies = self.communicate(grid, "query.raid_adv", self.client_ids, rnd,
                                       [np.asarray(w) for w in phi])
            grads = [sum(r.weights[i] for r in replies) for i in range(len(phi))]
            count = sum(r.num_examples for r in replies)
            phi, st = lego.classifier_step(phi, grads, count, st, p.adv_lr)
        self.adv = (phi, st)
        self.broadcast = {"adv-params": np.concatenate([np.asarray(w, np.float64).ravel()
                                                        for w in phi]).tolist()}

    def write_outputs(self, out_dir) -> None:
        import json

        super().write_outputs(out_dir)
        (out_dir / "raid.json").write_text(json.dumps({"defense": self.defense_log,
                                                       "final-gamma": self.gamma}, indent=1))
