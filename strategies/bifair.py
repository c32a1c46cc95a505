"""Federated BiFair (``bifair``): bi-level fairness-aware training of an LLM-enhanced MF.

BiFair (Zhang et al. 2025, arXiv 2507.04294) makes an LLM-enhanced recommender fair
across item groups by learning both the item representations (against *prior*
unfairness, present in the language model's vectors) and the projector (against
*training* unfairness), with adaptive inter-group balancing. The math and the choices
we made where the paper is silent: :mod:`fedrec.algorithms.bifair`; the federated
design: ``reference/recsys_fairness_defense.md`` §1.5.

Federated roles
---------------
* **Server**: the learnable item representations ``Z`` (initialised from a language
  model's embeddings of the item texts, :mod:`fedrec.recsys.item_repr`), the group
  weights ``w`` and the FedAvg of the projector ``phi``.
* **Clients** (silos of ``users-per-client`` users): private user embeddings and
  interactions. Each round (inner loop) they run local epochs of the group-weighted BPR
  loss on ``(P, phi)`` and send ``phi`` back; the server averages it weighted by the
  number of training positives.
* **Outer step**, after every ``outer-every`` rounds (``query.bifair_outer``): each
  client sends the one-step-unrolled hypergradient on ``Z`` of its validation triples
  (row-sparse) and per-group last-layer gradient sums. The server divides by the total
  number of validation triples, adds ``2 rho (Z - Z0)`` and takes an Adam step on ``Z``
  (``update-z``); with ``balance = "mgda"`` it solves the min-norm problem over the
  aggregated per-group gradients and smooths ``w``.

Ablations and baselines (all the same code path; ``experiments/bifair``):
``balance = "none"`` + ``update-z = false`` is the plain LLM-enhanced MF;
``balance = "uniform"`` + ``update-z = false`` the inverse-frequency re-weighting
baseline; ``update-z = false`` alone "no Z update"; ``balance = "uniform"`` "no MGDA";
``inner-balancing = false`` "no inner balancing"; ``rerank-lambda > 0`` adds the
post-hoc exposure-constrained re-ranking at evaluation (each client re-ranks its
users' lists toward the groups' training shares; with one client this is the global
greedy re-ranking).

Evaluation: the ranking metrics of :class:`~fedrec.strategies.ranking.RankingStrategy`
plus the item-group report (:func:`fedrec.recsys.item_groups.group_report`) for the
popularity quintiles and, where the dataset has them, the genres.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import numpy as np

from fedrec.algorithms import bifair as algo
from fedrec.errors import ConfigError
from fedrec.messages import RowSparse
from fedrec.protocol import ClientReply
from fedrec.specs import bifair as spec
from fedrec.specs import ranking as ranking_spec
from fedrec.specs.bifair import BiFairParams
from fedrec.strategies.fedavg import weighted_average
from fedrec.strategies.ranking import RankingStrategy

__all__ = ["BiFair", "BiFairParams"]


class BiFair(RankingStrategy):
    """LLM-enhanced MF with a learnable Z (outer step) and group-balanced inner loss."""

    name = "bifair"
    Params = BiFairParams
    client_half = "fedrec.clients.bifair:BiFairClient"
    progress_keys = ("ndcg@10", "pop_worst25@10", "pop_mgu@10")
    unlearning_kinds: ClassVar[tuple[str, ...]] = ()
    server_state_attrs: ClassVar[tuple[str, ...]] = ("w", "z_adam", "z0", "balance_log")

    @classmethod
    def preflight(cls, cfg) -> None:
        super().preflight(cfg)
        from fedrec.recsys.data import cfg_user_data
        from fedrec.recsys.item_groups import training_groups

        p = cls.parse_params(cfg)
        ds, ud = cfg_user_data(cfg)
        training_groups(ds, ud, p.groups, p.num_groups)
        if p.representation in ("minilm", "hashing", "tfidf-svd") and not ds.item_titles:
            raise ConfigError(
                f"config key 'strategy.params.representation': '{p.representation}' embeds "
                f"item texts and '{cfg.dataset.name}' has none; allowed here: svd-pop"
            )

    def setup(self, grid) -> None:
        super().setup(grid)
        from fedrec.recsys.item_groups import memberships, training_groups

        p = self.params
        self.item_group = training_groups(self.ds, self.ud, p.groups, p.num_groups)
        self.num_groups = int(self.item_group.max()) + 1
        counts = np.bincount(self.item_group[self.ud.train.indices], minlength=self.num_groups)
        self.pi = counts / counts.sum()
        uniform = np.full(self.num_groups, 1.0 / self.num_groups)
        self.w = uniform if p.balance == "uniform" else self.pi.copy()
        self.eval_groups = memberships(self.ds, self.ud)
        self.z_adam: Any = None
        self.z0: np.ndarray | None = None
        self.balance_log: list[dict] = []
        self._extra: dict[int, dict] = {}
        self.last_detail: dict[str, Any] = {}

    def initial_weights(self) -> list[np.ndarray]:
        from fedrec.recsys.item_repr import item_representations
        from fedrec.seeding import derive_seed

        p = self.params
        Z0 = item_representations(
            self.cfg.dataset.name,
            self.cfg.dataset.options,
            kind=p.representation,
            dim=p.repr_dim,
            seed=self.cfg.seed,
            split=self.cfg.dataset.split,
        ).astype(np.float32)
        self.z0 = Z0
        phi = algo.init_projector(
            Z0.shape[1], p.hidden, p.dim, derive_seed(self.cfg.seed, "bifair-projector")
        )
        return [Z0.copy(), *phi]

    def _mult(self, inner: bool) -> np.ndarray:
        w = self.w if (not inner or self.params.inner_balancing) else self.pi
        return algo.group_multipliers(w, self.pi)

    def train_config(self, server_round: int) -> dict[str, Any]:
        return {spec.ITEM_GROUP: self.item_group, spec.MULT: self._mult(inner=True)}

    def evaluate_config(self, server_round: int) -> dict[str, Any]:
        cfg = dict(super().evaluate_config(server_round))
        if self.params.rerank_lambda > 0:
            cfg.update(
                ranking_spec.pack_rerank(self.item_group, self.pi, self.params.rerank_lambda)
            )
        return cfg

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        replies = [r for r in replies if r.weights is not None]
        n = sum(r.num_examples for r in replies)
        if not n:
            return None, {}
        phi = weighted_average(
            [list(r.arrays())[:4] for r in replies], [r.num_examples for r in replies]
        )
        loss = sum(float(r.metrics[spec.TRAIN_LOSS]) * r.num_examples for r in replies) / n
        Z = self.current_weights[0]
        return [Z, *phi], {
            spec.NUM_EXAMPLES: n,
            "num-clients": len(replies),
            "train-loss": loss,
        }

    def after_aggregate(self, server_round, weights, grid):
        from fedrec.optim import adam_step

        p = self.params
        if server_round % p.outer_every or (not p.update_z and p.balance != "mgda"):
            return weights
        replies = self.communicate(
            grid,
            f"query.{spec.OUTER}",
            self.client_ids,
            server_round,
            weights,
            {
                spec.ITEM_GROUP: self.item_group,
                spec.MULT: self._mult(inner=False),
                spec.ALPHA: float(p.unroll_lr),
                spec.OUTER_BATCH: int(p.outer_batch),
            },
        )
        Z = np.asarray(weights[0], dtype=np.float32)
        G = self.num_groups
        ups: list[RowSparse] = []
        gsum, lsum, cnt = None, np.zeros(G), np.zeros(G)
        nval, vloss = 0, 0.0
        for r in replies:
            hyper, gs, ls, c = spec.unpack_outer(r.arrays())
            ups.append(hyper)
            gsum = gs if gsum is None else gsum + gs
            lsum, cnt = lsum + ls, cnt + c
            nval += r.num_examples
            vloss += float(r.metrics[spec.VAL_LOSS])
        info: dict[str, Any] = {"round": server_round, "val-loss": vloss / max(nval, 1)}
        if p.update_z and nval:
            total, _ = RowSparse.accumulate(ups, Z.shape[0], Z.shape[1:])
            assert self.z0 is not None
            grad = total / nval + 2.0 * p.prox * (Z - self.z0)
            (Z,), self.z_adam = adam_step([Z], [grad], self.z_adam, lr=p.outer_lr)
            info["z-drift"] = float(np.linalg.norm(Z - self.z0) / np.linalg.norm(self.z0))
        if p.balance == "mgda" and gsum is not None and cnt.sum() > 0:
            w_star = algo.balance_weights("mgda", gsum, lsum, cnt, self.pi, p.mgda_normalize)
            tau = p.balance_momentum
            self.w = (1 - tau) * self.w + tau * w_star
            info["w-mgda"] = w_star.round(4).tolist()
        info["w"] = np.asarray(self.w).round(4).tolist()
        info["group-val-loss"] = (lsum / np.maximum(cnt, 1)).round(4).tolist()
        self.balance_log.append(info)
        self._extra[server_round] = {k: info[k] for k in ("val-loss", "z-drift") if k in info}
        return [Z.astype(np.float32), *weights[1:]]

    def on_round_end(self, server_round: int, record) -> None:
        record.extra.update(self._extra.pop(server_round, {}))
        super().on_round_end(server_round, record)

    def write_outputs(self, out_dir) -> None:
        super().write_outputs(out_dir)
        (out_dir / "bifair.json").write_text(
            json.dumps(
                {
                    "balance": self.balance_log,
                    "final-w": np.asarray(self.w).tolist(),
                    "pi": np.asarray(self.pi).tolist(),
                    "groups": self.last_detail,
                },
                indent=1,
            )
        )
