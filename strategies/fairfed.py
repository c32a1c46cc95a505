"""FairFed (Ezzeldin, Yan, He, Ferrara, Avestimehr; AAAI 2023): fairness-aware aggregation.

Paper: "FairFed: Enabling Group Fairness in Federated Learning",
https://arxiv.org/abs/2110.00857 (Algorithm 1). Reference code consulted:
Lizhngg/AdaFFed ``fedlearn/algorithm/FairFed.py`` and declearn
``declearn/fairness/fairfed/`` (``FairfedAggregator``, ``FairfedValueComputer``).

The method. Every round, each sampled client evaluates the global model it received
on its training rows, then trains locally (optionally with local debiasing). The
server compares each client's local fairness value ``F_k`` with the global one
``F_global`` and moves aggregation weight away from clients whose local fairness
deviates most from the global one::

    Delta_k = |F_global - F_k|        (|Acc_k - Acc_global| if F_k is undefined)
    w_k    <- w_k - beta * (Delta_k - mean_j Delta_j),   w_k^0 = n_k / n
    w      <- max(w, 0) / sum(max(w, 0))
    theta  <- sum_k w_k theta_k

The exact formulas, the generalisation to more groups/classes and the choices are
documented in :mod:`fedrec.algorithms.fair_baselines`.

Messages and Params: :mod:`fedrec.specs.fairfed`; client half and what leaves a
client: :mod:`fedrec.clients.fairfed`.

Choices:

- ``beta`` (fairness budget) defaults to 1.0: the most stringent value of the grid
  {0.01, 0.05, 0.5, 1} of FedFACT's Table 4 (reference/fedfact.md §9.5, "baselines
  use stringent settings of their fairness knobs"); ``beta = 0`` is FedAvg (with
  local debiasing if enabled).
- ``metric``: ``dp`` (the paper's SPD), ``eop`` (the paper's EOD, TPR gap) or ``eo``
  (TPR and FPR gaps). The fairness value is measured on the training rows of the
  clients (the paper's clients have no separate validation split).
- ``local-debias`` (default on): FairFed/RW, Kamiran–Calders reweighing of the
  client's (label, group) cells from its own counts. FedFACT's Table 4 also lists a
  "local debiasing alpha" in {0.005, 0.01, 0.05}, which fits FairFed/FB (FairBatch
  as local debiasing); that variant is not implemented here.
- Weights persist across rounds for all clients. With partial participation only
  the sampled clients' weights are updated (the mean of ``Delta`` is over them and
  their total weight is kept), and the model is their weight-normalised average.
- Weights below 0 are clipped (the paper leaves this open), keeping the global
  model a convex combination of client models.
- The update is applied from round 1 (the initial model's fairness), as in the
  paper's loop; the per-round weights are in ``rounds.jsonl`` (``fairfed_weights``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedrec.algorithms.fair_baselines import (
    fairfed_deltas,
    fairfed_signed_gaps,
    fairfed_update_weights,
)
from fedrec.protocol import ClientReply
from fedrec.specs import fairfed as spec
from fedrec.specs import fedavg as base_spec
from fedrec.specs.fairfed import FairFedParams
from fedrec.strategies.fedavg import FedAvg, weighted_average, weighted_metrics

__all__ = ["FairFed", "FairFedParams"]


class FairFed(FedAvg):
    """FairFed: FedAvg with fairness-aware, persistent aggregation weights."""

    name = "fairfed"
    Params = FairFedParams
    client_half = "fedrec.clients.fairfed:FairFedClient"
    server_state_attrs: ClassVar[tuple[str, ...]] = ("fair_weights", "last_deltas")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fair_weights: dict[int, float] = {}
        self.last_deltas: dict[int, float] = {}

    def sizes(self) -> dict[int, int]:
        return {c: int(self.hello[c].get(base_spec.NUM_TRAIN, 0)) for c in self.client_ids}

    def initial_fair_weights(self) -> dict[int, float]:
        """``w_k^0 = n_k / n`` from the handshake sizes."""
        sizes = self.sizes()
        total = float(sum(sizes.values()))
        if total <= 0:
            return {c: 1.0 / len(sizes) for c in sizes}
        return {c: n / total for c, n in sizes.items()}

    def train_config(self, server_round):
        return {spec.LOCAL_DEBIAS: bool(self.params.local_debias)}

    def aggregate(self, server_round: int, replies: list[ClientReply]):
        replies = [r for r in replies if r.weights is not None and spec.COUNTS in r.metrics]
        if not replies:
            return None, {}
        if not self.fair_weights:
            self.fair_weights = self.initial_fair_weights()
        clients = [r.client_id for r in replies]
        counts = [spec.unpack_counts(r.metrics) for r in replies]
        deltas = fairfed_deltas(counts, self.params.metric)
        current = np.asarray([self.fair_weights[c] for c in clients], dtype=np.float64)
        mass = float(current.sum())
        if mass > 0:
            base = current / mass
        else:  # every participant was clipped to 0 earlier: restart them from data shares
            sizes = np.asarray([self.sizes()[c] for c in clients], dtype=np.float64)
            base = sizes / sizes.sum()
        agg = fairfed_update_weights(base, deltas, float(self.params.beta))
        for c, v in zip(clients, agg):
            self.fair_weights[c] = float(v * mass)
        self.last_deltas = {c: float(d) for c, d in zip(clients, deltas)}
        models = [r.weights for r in replies if r.weights is not None]  # all, see above
        weights = weighted_average(models, list(agg))
        metrics = weighted_metrics(replies)
        gap = fairfed_signed_gaps(np.sum(counts, axis=0), self.params.metric)
        gap = gap[~np.isnan(gap)]
        metrics.update(
            {
                spec.TRAIN_GAP: float(np.max(np.abs(gap))) if gap.size else 0.0,
                spec.DELTA_MEAN: float(np.mean(deltas)),
                spec.WEIGHT_MIN: float(agg.min()),
                spec.WEIGHT_MAX: float(agg.max()),
            }
        )
        return weights, metrics

    def on_round_end(self, server_round, record):
        record.extra[spec.WEIGHTS] = [self.fair_weights.get(c, 0.0) for c in self.client_ids]
