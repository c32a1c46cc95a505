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

Modes
-----
(What each mode makes leave a client: :mod:`fedrec.clients.raid`; the messages:
:mod:`fedrec.specs.raid`.)

* ``gaussian`` (cross-device): the server adds the clients' per-group sums ``[n_a, sum
  e_u, sum e_u e_u^T]``, forms group means and covariances, the Bures-Wasserstein
  barycenter (POT ``ot.gaussian``, group weights ``n_a / N``) and the linear maps
  ``T_a(x) = A_a x + b_a``, broadcast to everyone as arrays; each client maps its own
  users, ``t_u = T_{a_u}(e_u)``. fedrec does not ship secure aggregation: this
  simulation sums the clients' sums in the clear.

  ``target-moments`` (default ``resampled``): each group is mapped onto the moments of
  a fresh ``n_a``-sample of the barycenter (:func:`fedrec.algorithms.raid.
  resampled_moments`, one draw per run seeded by ``(seed, "raid-resample")``), not onto
  the barycenter itself: exact equality of the groups' sample moments over all users
  makes held-out users' attributes readable by an attacker that flips its decisions
  (the maths module's docstring, "Resampled targets"). ``barycenter`` keeps the former
  behaviour.
* ``free-support`` (cross-silo, several users per client): the server pools the
  clients' per-group k-means atoms (``quantize-k`` atoms with their masses) and runs
  POT's free-support barycenter (``support-size`` atoms). ``support-targets = atoms``
  (default): the server plans every group's pooled atoms onto the barycenter (onto a
  multinomial resample of it with ``target-moments = resampled``,
  :func:`fedrec.algorithms.raid.resampled_support_weights`) and broadcasts each atom's
  displacement (:func:`fedrec.algorithms.raid.atom_displacements`); each client
  re-quantises its users exactly as in the centroid round and moves every user with its
  own atom's displacement, keeping its offset from the atom. ``client-plans``: the
  clients compute exact OT plans (``ot.emd``) from their own users of each group to the
  whole barycenter and take the barycentric projection (a few users per client spread
  over all atoms: every target is pulled toward the barycenter mean). With one user per
  client the "quantisation" is the embedding itself: use this mode cross-silo.
* ``adversarial`` (baseline): a shared attribute classifier (the MLP ``d -> adv-hidden
  -> K`` of :mod:`fedrec.algorithms.estimators`) is trained each round by Adam on the
  summed cross-entropy gradients of consenting users (``query.raid_adv``), and local
  training adds the reversed gradient ``-gamma * dCE/de_u`` (gradient reversal, as the
  lineage code's ``adv`` baseline). Started with the warm-up like RAID.

``release-transport``: after the last round's aggregation one more centroid round runs
(unless the last round is one already) and every user takes its target, ``e_u <-
t_u`` (``query.raid_transport``), so the evaluated and released embeddings are the
transported ones.

Evaluation: FedMF's ranking metrics every round; at every centroid round the W2
between the group Gaussians (``bures_w2``, gaussian mode) is logged. The attack audit
(``experiments/raid``) attacks the released embeddings.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedrec.algorithms import estimators as E
from fedrec.errors import ConfigError
from fedrec.specs import raid as spec
from fedrec.specs.raid import RAIDParams
from fedrec.strategies.fedmf import FedMF


class RAID(FedMF):
    """FedMF-BPR with RAID's Wasserstein-barycenter alignment (or the adversarial baseline)."""

    name = "raid"
    Params = RAIDParams
    client_half = "fedrec.clients.raid:RAIDClient"
    # carried between rounds: FedMF's lazy Adam, the (backed-off) penalty, the broadcast
    # version and maps, the validation reference, the defense log, the adversary
    server_state_attrs: ClassVar[tuple[str, ...]] = (
        "_adam",
        "gamma",
        "version",
        "broadcast",
        "val_ref",
        "defense_log",
        "adv",
    )

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        from fedrec.recsys.data import cfg_user_data

        p = cls.parse_params(cfg)
        ds, _ = cfg_user_data(cfg)
        names = spec.attribute_names(p.attribute)
        for name in names or [p.attribute]:
            if name not in (ds.user_attrs or {}):
                allowed = (
                    ", ".join(sorted(ds.user_attrs or {}))
                    or "none (this dataset has no user attributes)"
                )
                raise ConfigError(
                    f"config key 'strategy.params.attribute': '{name}' is not a "
                    f"user attribute of '{cfg.dataset.name}'; allowed: {allowed} "
                    "(several joined by commas)"
                )

    def setup(self, grid) -> None:
        super().setup(grid)
        _, self.num_groups = spec.group_codes(self.ds.user_attrs, self.params.attribute)
        self.gamma = float(self.params.gamma)
        self.version = 0
        self.broadcast: dict[str, Any] = {}
        self.val_ref: float | None = None
        self.defense_log: list[dict] = []
        self._extra: dict[int, dict] = {}
        self.adv: tuple[list[np.ndarray], Any] | None = None  # adversary and its Adam state

    def _defending(self, server_round: int) -> bool:
        return server_round > self.params.warmup_rounds and self.version > 0

    def train_config(self, server_round: int) -> dict[str, Any]:
        cfg = dict(super().train_config(server_round))
        if self._defending(server_round):
            cfg.update(
                {
                    spec.GAMMA: self.gamma,
                    spec.VERSION: self.version,
                    spec.NUM_GROUPS: self.num_groups,
                    **self.broadcast,
                }
            )
        return cfg

    def after_aggregate(self, server_round, weights, grid):
        p = self.params
        k = server_round - p.warmup_rounds
        if p.mode == "adversarial":
            if k >= 0:
                self._train_adversary(grid, server_round, weights)
        transport = (
            server_round == self.total_rounds() and p.release_transport and p.mode != "adversarial"
        )
        centroid = k >= 0 and k % p.centroid_every == 0
        if not (centroid or transport):
            return weights
        info: dict[str, Any] = {"round": server_round}
        if centroid:
            val = self._validate(grid, server_round, weights)
            info["val-ndcg@10"] = val
            if self.val_ref is None:
                self.val_ref = val
            elif val < (1 - p.ndcg_tolerance) * self.val_ref:
                self.gamma *= p.gamma_backoff
                info["backoff"] = True
            info["gamma"] = self.gamma
        if p.mode != "adversarial":  # a centroid round, or the one before the transport
            info.update(self._centroid_round(grid, server_round, weights))
        else:
            self.version += 1
        if transport:
            self._transport(grid, server_round, weights)
            info["transported"] = True
        self.defense_log.append(info)
        self._extra[server_round] = {k2: v for k2, v in info.items() if k2 != "round"}
        return weights

    def _transport(self, grid, rnd, weights) -> None:
        """release-transport: every user takes its OT target of the newest version."""
        self.communicate(
            grid,
            f"query.{spec.TRANSPORT}",
            self.client_ids,
            rnd,
            weights,
            {spec.VERSION: self.version, spec.NUM_GROUPS: self.num_groups, **self.broadcast},
        )

    def on_round_end(self, server_round: int, record) -> None:
        record.extra.update(self._extra.pop(server_round, {}))
        super().on_round_end(server_round, record)

    # ------------------------------------------------------------------ phases
    def _validate(self, grid, rnd, weights) -> float:
        replies = self.communicate(
            grid, f"query.{spec.VALIDATE}", self.client_ids, rnd, weights, self.evaluate_config(rnd)
        )
        v = np.concatenate(
            [np.asarray(r.metrics[spec.VAL_NDCG], dtype=np.float64) for r in replies]
        )
        v = v[v >= 0]
        return float(v.mean()) if v.size else 0.0

    def _centroid_round(self, grid, rnd, weights) -> dict[str, Any]:
        from fedrec.algorithms import raid

        p = self.params
        replies = self.communicate(
            grid,
            f"query.{spec.STATS}",
            self.client_ids,
            rnd,
            weights,
            {spec.NUM_GROUPS: self.num_groups},
        )
        G, d = self.num_groups, p.dim
        info: dict[str, Any] = {}
        if p.mode == "gaussian":
            cnt, sums, outer = np.zeros(G), np.zeros((G, d)), np.zeros((G, d, d))
            for r in replies:
                c_r, s_r, o_r = spec.unpack_moments(r.arrays(), G, d)
                cnt += c_r
                sums += s_r
                outer += o_r
            present = cnt > 0
            means, covs = raid.moments_from_sums(cnt[present], sums[present], outer[present])
            m_star, C_star = raid.gaussian_barycenter(means, covs, cnt[present] / cnt.sum())
            if p.target_moments == "resampled":
                from fedrec.seeding import derive_seed

                # one draw per run: the groups look like one fixed random sample of the
                # barycenter (a fresh draw every version would move the targets each time)
                m_star, C_star = raid.resampled_moments(
                    m_star, C_star, cnt[present], seed=derive_seed(self.cfg.seed, "raid-resample")
                )
                info["group-w2-target"] = _mean_pairwise_w2(m_star, C_star)
            A_p, b_p = raid.gaussian_maps(means, covs, m_star, C_star, counts=cnt[present])
            A = np.tile(np.eye(d), (G, 1, 1))
            b = np.zeros((G, d))
            A[present], b[present] = A_p, b_p
            self.broadcast = spec.gaussian_broadcast(A, b)
            info["group-w2-gaussian"] = _mean_pairwise_w2(means, covs)
        else:
            atoms: list[list] = [[] for _ in range(G)]
            mass: list[list] = [[] for _ in range(G)]
            uploads = []
            for r in replies:
                gid, X, w = spec.unpack_quantized(r.arrays(), d)
                uploads.append((r.client_id, gid))
                for a in np.unique(gid):
                    atoms[int(a)].append(X[gid == a])
                    mass[int(a)].append(w[gid == a])
            nonempty = [a for a in range(G) if atoms[a]]
            meas = [(np.concatenate(atoms[a]), np.concatenate(mass[a])) for a in nonempty]
            weights_g = np.array([m.sum() for _, m in meas])
            X_star = raid.free_support_barycenter(
                meas, weights_g / weights_g.sum(), p.support_size, seed=rnd
            )
            info["atoms"] = int(sum(len(m) for _, m in meas))
            if p.support_targets == "client-plans":
                self.broadcast = spec.support_broadcast(X_star)
            else:
                self.broadcast = self._atom_targets(uploads, nonempty, meas, X_star, rnd)
        self.version += 1
        info["version"] = self.version
        return info

    def _atom_targets(self, uploads, present, meas, X_star, rnd) -> dict[str, Any]:
        """free-support, ``support-targets = atoms``: every group's pooled atoms planned
        onto the barycenter (onto a fresh sample of it with ``target-moments =
        resampled``); the displacements go back in each client's upload order."""
        from fedrec.algorithms import raid
        from fedrec.seeding import derive_seed

        p = self.params
        disp = {}
        for a, (X_a, w_a) in zip(present, meas, strict=True):
            beta = None
            if p.target_moments == "resampled":
                beta = raid.resampled_support_weights(
                    len(X_star),
                    max(int(round(w_a.sum())), 1),
                    seed=derive_seed(self.cfg.seed, "raid-resample", a),
                )
            disp[a] = raid.atom_displacements(X_a, w_a, X_star, beta)
        # a group's pooled atoms are its rows of the replies in reply order
        gids = np.concatenate([gid for _, gid in uploads])
        D = np.zeros((gids.size, X_star.shape[1]))
        for a in present:
            D[gids == a] = disp[a]
        owner = np.concatenate([np.full(len(gid), cid) for cid, gid in uploads])
        return spec.atoms_broadcast(X_star, owner, D, rnd)

    def _train_adversary(self, grid, rnd, weights) -> None:
        from fedrec.seeding import derive_seed

        p = self.params
        layout = spec.adversary_layout(p.dim, p.adv_hidden, self.num_groups)
        if self.adv is None:
            self.adv = (
                E.classifier_init(
                    p.dim,
                    self.num_groups,
                    p.adv_hidden,
                    seed=derive_seed(self.cfg.seed, "raid-adv") % 2**31,
                ),
                None,
            )
        phi, st = self.adv
        for _ in range(p.adv_steps):
            replies = self.communicate(
                grid,
                f"query.{spec.ADV}",
                self.client_ids,
                rnd,
                [spec.adversary_broadcast(phi, layout)[spec.ADV_PARAMS]],
            )
            total = np.zeros(layout.size)
            for r in replies:  # in client order, as the per-array sums were
                total += r.arrays()[0]
            grads = spec.unpack_adv_grads([total], layout)
            count = sum(r.num_examples for r in replies)
            phi, st = E.classifier_step(phi, grads, count, st, p.adv_lr)
        self.adv = (phi, st)
        self.broadcast = spec.adversary_broadcast(phi, layout)

    def write_outputs(self, out_dir) -> None:
        import json

        super().write_outputs(out_dir)
        (out_dir / "raid.json").write_text(
            json.dumps({"defense": self.defense_log, "final-gamma": self.gamma}, indent=1)
        )


def _mean_pairwise_w2(means: np.ndarray, covs: np.ndarray) -> float:
    """Mean Bures-Wasserstein distance (not squared) over the pairs of Gaussians."""
    from fedrec.algorithms import raid

    pairs = [
        raid.bures_w2(means[i], covs[i], means[j], covs[j]) ** 0.5
        for i in range(len(means))
        for j in range(i + 1, len(means))
    ]
    return float(np.mean(pairs)) if pairs else 0.0
