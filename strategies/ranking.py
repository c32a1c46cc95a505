"""Shared server half of the federated recommenders (``fedmf``, ``fedsasrec``, ...).

:class:`RankingStrategy` checks that ``partition.num-clients`` matches the users and
``users-per-client`` (logical client ``c`` owns users ``c*upc .. (c+1)*upc - 1`` of the
leave-one-out split), loads the evaluation metadata (item popularity, user gender) and
turns the clients' per-user evaluation replies into metrics: HR/NDCG/recall/MRR@K as
means of per-user values (summed, never averaged per client), item-side fairness from
the users' top-K lists, user-side gaps by gender. Subclasses provide the model
(``initial_weights``, ``aggregate``) and its client half.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from fedrec.errors import ConfigError
from fedrec.metrics.fairness import FederatedMetrics
from fedrec.protocol import ClientReply
from fedrec.specs import ranking as spec
from fedrec.strategies.base import FedrecStrategy


class RankingStrategy(FedrecStrategy):
    """Base of per-user federated recommenders evaluated by full ranking."""

    progress_keys = ("ndcg@10", "hr@10", "coverage@10")
    unlearning_kinds: ClassVar[tuple[str, ...]] = ("interactions", "users", "items", "client")
    #: item-group memberships (name -> (n_items, G) bool) of the item-group report
    #: (:func:`fedrec.recsys.item_groups.group_report`) that :meth:`evaluation_metrics` adds
    #: when a subclass sets them; ``last_detail`` holds the last report's per-group values
    eval_groups: dict[str, np.ndarray] | None = None
    last_detail: dict[str, Any]
    threat: Any = None  # an attack run's resolved threat model (fedrec.attacks.threat)

    @classmethod
    def unlearning_universe(cls, cfg):
        from fedrec.recsys.data import cfg_user_data
        from fedrec.unlearning.requests import Universe

        ds, ud = cfg_user_data(cfg)
        rows = ud.train.rows
        return Universe(
            num_users=ud.num_users,
            num_items=ud.num_items,
            num_clients=cfg.partition.num_clients,
            attributes=tuple(sorted(ds.user_attrs or {})),
            train_pairs=frozenset(zip(rows.tolist(), ud.train.indices.tolist())),
        )

    @classmethod
    def preflight(cls, cfg) -> None:
        from fedrec.recsys.data import cfg_user_data, num_clients_for

        params = cls.parse_params(cfg)
        ds, ud = cfg_user_data(cfg)
        want = num_clients_for(ud.num_users, params.users_per_client)
        if cfg.partition.num_clients != want:
            raise ConfigError(
                f"config key 'partition.num-clients': {cfg.partition.num_clients} "
                f"does not match {ud.num_users} users / users-per-client "
                f"{params.users_per_client}; set it to {want}"
            )

    def setup(self, grid) -> None:
        super().setup(grid)
        from fedrec.metrics.ranking import popular_items
        from fedrec.recsys.data import cfg_user_data

        self.ds, self.ud = cfg_user_data(self.cfg)
        self.popular = np.flatnonzero(popular_items(self.ud.item_counts(), 0.2))
        self.threat = None
        if self.cfg.attack.kind != "none":  # an attack run: its targets' exposure is measured
            from fedrec.attacks.threat import resolve

            self.threat = resolve(
                self.cfg.attack,
                self.cfg.seed,
                self.cfg.partition.num_clients,
                self.ud,
                self.params.users_per_client,
            )

    def owned_users(self, client_id: int) -> np.ndarray:
        from fedrec.recsys.data import client_users

        return client_users(client_id, self.params.users_per_client, self.ud.num_users)

    def evaluate_config(self, server_round: int) -> dict[str, Any]:
        cfg: dict[str, Any] = {spec.POPULAR: self.popular.astype(np.int64)}
        if self.threat is not None and self.threat.targets.size:
            cfg[spec.TARGET_ITEMS] = self.threat.targets.astype(np.int64)
            cfg[spec.TARGET_SEED] = int(self.cfg.seed)
        return cfg

    @property
    def _current_all(self) -> list[np.ndarray]:
        """The global weights the round's train message carried."""
        return self.current_weights

    @property
    def _current(self) -> np.ndarray:
        return self.current_weights[0]

    def evaluation_metrics(self, replies: list[ClientReply]) -> FederatedMetrics | None:
        from fedrec.metrics.ranking import exposure_metrics, mean_metrics, user_group_metrics

        replies = [r for r in replies if spec.USERS in r.metrics]
        if not replies:
            return None
        users = np.concatenate([np.asarray(r.metrics[spec.USERS], dtype=np.int64) for r in replies])
        keys = [k for k in replies[0].metrics if k.startswith(spec.PER_USER)]
        pu = {
            k[len(spec.PER_USER) :]: spec.unpack_per_user(
                np.concatenate([np.asarray(r.metrics[k], dtype=np.float64) for r in replies])
            )
            for k in keys
        }
        K = spec.TOPK_LEN
        top = np.concatenate(
            [np.asarray(r.metrics[spec.TOPK], dtype=np.int64).reshape(-1, K) for r in replies]
        )
        popular = np.zeros(self.ud.num_items, dtype=bool)
        popular[self.popular] = True
        self.last_per_user = (users, pu)  # for the unlearning reports (active/inactive gap)
        overall = mean_metrics(pu)
        overall["num_users"] = float((~np.isnan(pu["hr@10"])).sum())
        for k in spec.K_LIST:
            if f"recall_pop@{k}" in overall:
                overall[f"recall_gap@{k}"] = (
                    overall[f"recall_pop@{k}"] - overall[f"recall_tail@{k}"]
                )
                overall[f"ndcg_gap@{k}"] = overall[f"ndcg_pop@{k}"] - overall[f"ndcg_tail@{k}"]
        overall.update(exposure_metrics(top, self.ud.num_items, spec.K_LIST, popular))
        by_group = []
        gender = self.ds.user_attrs.get("gender") if self.ds.user_attrs else None
        if gender is not None:
            g = np.asarray(gender)[users]
            overall.update(
                {
                    f"user_{k}": v
                    for k, v in user_group_metrics(pu, g).items()
                    if k.endswith("_gap") and k.split("_gap")[0] in ("ndcg@10", "hr@10")
                }
            )
            for a in np.unique(g):
                m = g == a
                by_group.append(
                    {
                        "n": int(m.sum()),
                        **{
                            k: float(np.nanmean(v[m]))
                            for k, v in pu.items()
                            if k in ("hr@10", "ndcg@10")
                        },
                    }
                )
        if self.eval_groups:
            from fedrec.recsys.item_groups import group_report

            flat, self.last_detail = group_report(self.ud, users, top, self.eval_groups, (10, 20))
            overall.update(flat)
        return FederatedMetrics(overall=overall, by_client={}, by_group=by_group, local={})
