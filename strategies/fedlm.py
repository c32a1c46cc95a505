"""Federated causal language model (``fedlm``): FedAvg / FedAdam over clients' documents.

The language-model substrate of issue 12 (:class:`fedrec.models.causal_lm.CausalLM`,
``model.name = "causal-lm"``, ``model.params.{d-model, n-layers, n-heads}``) trained on the
``factworld`` dataset (:mod:`fedrec.lmtask`: each client holds the documents of its own
people). Each round the sampled clients run ``train.local-epochs`` epochs of
``train.optimizer`` (fresh optimizer state, mini-batches of ``train.batch-size``, seeded by
(run seed, round, client)) on their documents and upload their weights. The server forms
the example-weighted mean ``w_bar`` (float64, replies sorted by client id) and

* ``server-optimizer = "sgd"`` (FedAvg, default): ``w += server-lr * (w_bar - w)``; with
  ``server-lr = 1`` this is plain FedAvg, and with one client it is the client's local
  training: federated equals centralized :func:`fedrec.models.causal_lm.train_lm` run
  round by round with the same seeds (tested to 1e-6);
* ``"adam"`` (FedAdam, Reddi et al. 2021): Adam on the pseudo-gradient ``w - w_bar``.

Evaluation sums each client's answer NLL and greedy exact matches over its kept trained
facts (``train_em``, ``train_nll``), its forgotten facts (``forgot_*``, after an
unlearning request) and its held-out people's facts (``test_*``). Unlearning: requests of
kind ``users`` name fact-world people (a client forgets its own); methods ``retrain``,
``finetune`` and ``lm-unlearn`` (GA / GradDiff / NPO, MRD-weighted, easy-first curriculum).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedrec.metrics.fairness import FederatedMetrics
from fedrec.optim import AdamState, adam_step
from fedrec.protocol import ClientReply
from fedrec.specs import fedlm as spec
from fedrec.specs.fedlm import FedLMParams
from fedrec.strategies.base import FedrecStrategy
from fedrec.strategies.fedavg import weighted_average

__all__ = ["FedLM", "FedLMParams"]


class FedLM(FedrecStrategy):
    """FedAvg / FedAdam on a causal LM (module docstring)."""

    name = "fedlm"
    Params: ClassVar[type] = FedLMParams
    client_half = "fedrec.clients.fedlm:LMClient"
    progress_keys = ("train_em", "forgot_em", "test_nll")
    unlearning_kinds: ClassVar[tuple[str, ...]] = ("users", "client")
    server_state_attrs: ClassVar[tuple[str, ...]] = ("_adam",)
    _adam: AdamState | None = None

    @classmethod
    def preflight(cls, cfg) -> None:
        from fedrec.lmtask import build_model, lm_task

        cls.parse_params(cfg)
        lm_task(cfg)
        build_model(cfg)

    @classmethod
    def unlearning_universe(cls, cfg):
        from fedrec.lmtask import lm_task
        from fedrec.unlearning.requests import Universe

        t = lm_task(cfg)
        return Universe(
            num_users=len(t.world.names),  # type: ignore[attr-defined]
            num_clients=cfg.partition.num_clients,
        )

    def owned_users(self, client_id: int) -> np.ndarray:
        from fedrec.lmtask import lm_task

        return lm_task(self.cfg).people(client_id).astype(np.int64)

    def initial_weights(self) -> list[np.ndarray]:
        from fedrec.lmtask import build_model
        from fedrec.models import get_weights

        self._adam = None
        return get_weights(build_model(self.cfg))

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        replies = [r for r in replies if r.weights is not None]
        if not replies:
            return None, {}
        n = sum(r.num_examples for r in replies)
        mean = weighted_average(
            [r.weights for r in replies if r.weights is not None],
            [r.num_examples for r in replies],
        )
        loss = sum(float(r.metrics.get(spec.TRAIN_LOSS, 0.0)) * r.num_examples for r in replies)
        metrics = {
            spec.NUM_EXAMPLES: n,
            "num-clients": len(replies),
            "train-loss": loss / max(n, 1),
        }
        W = self.current_weights
        p = self.params
        if p.server_optimizer == "sgd" and p.server_lr == 1.0:
            return mean, metrics
        W64 = [np.asarray(w, dtype=np.float64) for w in W]
        delta = [m.astype(np.float64) - w for m, w in zip(mean, W64)]
        if p.server_optimizer == "sgd":
            new = [w + p.server_lr * d for w, d in zip(W64, delta)]
        else:
            new, self._adam = adam_step(
                W64, [-d for d in delta], self._adam or AdamState.zeros(W64), p.server_lr
            )
        return [x.astype(w.dtype) for x, w in zip(new, W)], metrics

    def evaluation_metrics(self, replies: list[ClientReply]) -> FederatedMetrics | None:
        sums: dict[str, float] = {}
        for r in replies:
            for s in spec.EVAL_SPLITS:
                for what in ("nll-sum", "em", "n"):
                    k = spec.eval_key(s, what)
                    if k in r.metrics:
                        sums[k] = sums.get(k, 0.0) + float(r.metrics[k])
        if not sums:
            return None
        overall: dict[str, float] = {}
        for s in spec.EVAL_SPLITS:
            n = sums.get(spec.eval_key(s, "n"), 0.0)
            if n:
                overall[f"{s}_nll"] = sums[spec.eval_key(s, "nll-sum")] / n
                overall[f"{s}_em"] = sums[spec.eval_key(s, "em")] / n
                overall[f"{s}_n"] = n
        return FederatedMetrics(overall=overall, by_client={}, by_group=[], local={})
