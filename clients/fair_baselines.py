"""Client halves of the FairFed and FedFB baselines (plain numpy/torch, no flwr).

See :mod:`fedrec.strategies.fairfed` and :mod:`fedrec.strategies.fedfb` for the
methods; the math lives in :mod:`fedrec.algorithms.fair_baselines`.

What leaves a client, on top of :class:`~fedrec.clients.classification.ClassifierClient`
(handshake sizes and label x group counts, model weights after training, test
confusion counts after evaluation):

- **FairFed** (train reply): ``fairfed-counts``, the (group, label, prediction)
  confusion counts of the *received global model* on the client's training rows
  (computed before local training), from which the server derives the client's
  local fairness value and the global one (by summing). With local debiasing on,
  training uses Kamiran–Calders weights from the client's own label x group counts
  (nothing extra leaves for that).
- **FedFB**: in the train reply ``weight-sum``, the sum of the FairBatch row weights
  of its training rows (the aggregation weight); in the ``query.fedfb_losses`` phase
  ``loss-sums``, the summed cross-entropy of the new global model per (label, group)
  cell of its training rows (``C * G`` floats).

Raw rows never leave.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.algorithms.fair_baselines import (
    cell_loss_sums,
    cell_sample_weights,
    reweighing_weights,
)
from fedrec.clients.base import Metrics, Weights
from fedrec.clients.classification import ClassifierClient
from fedrec.metrics import confusion_counts
from fedrec.models import get_weights

#: Train-config keys sent by the FairFed / FedFB servers.
FAIRFED_DEBIAS = "fairfed-local-debias"
FEDFB_WEIGHTS = "fedfb-cell-weights"
#: Extra phase of FedFB (``query.fedfb_losses``).
FEDFB_LOSSES = "fedfb_losses"


class WeightedClassifierClient(ClassifierClient):
    """:class:`ClassifierClient` whose local training takes per-row weights."""

    def train_weighted(self, server_round: int, weights: Weights, config: dict[str, Any],
                       sample_weight: np.ndarray | None) -> tuple[Weights, Metrics]:
        model = self.model(weights)
        res = self.train_model(model, server_round, config, sample_weight=sample_weight)
        return get_weights(model), {"num-examples": res.num_examples, "train-loss": res.loss}


class FairFedClient(WeightedClassifierClient):
    """FairFed: report the global model's train-split confusion counts, then train
    (optionally with Kamiran–Calders reweighing)."""

    def fit(self, server_round: int, weights: Weights, config: dict[str, Any]
            ) -> tuple[Weights, Metrics]:
        d = self.data
        pred = self.predict(weights, d.X_train).argmax(axis=1)
        counts = confusion_counts(d.y_train, pred, d.a_train, d.num_classes, d.num_groups)
        sw = None
        if bool(config.get(FAIRFED_DEBIAS, False)):
            sw = cell_sample_weights(reweighing_weights(d.counts("train")), d.y_train, d.a_train)
        new_w, metrics = self.train_weighted(server_round, weights, config, sw)
        metrics.update({"fairfed-counts": counts.ravel().tolist(),
                        "num-groups": d.num_groups, "num-classes": d.num_classes})
        return new_w, metrics


class FedFBClient(WeightedClassifierClient):
    """FedFB: train with the server's FairBatch cell weights; report per-cell loss sums."""

    def cell_weights(self, config: dict[str, Any]) -> np.ndarray:
        d = self.data
        raw = config.get(FEDFB_WEIGHTS)
        if raw is None:
            return np.ones((d.num_classes, d.num_groups))
        W = np.asarray(list(raw), dtype=np.float64)
        if W.size != d.num_classes * d.num_groups:
            raise ValueError(f"{FEDFB_WEIGHTS}: expected {d.num_classes * d.num_groups} values "
                             f"(C x G), got {W.size}")
        return W.reshape(d.num_classes, d.num_groups)

    def fit(self, server_round: int, weights: Weights, config: dict[str, Any]
            ) -> tuple[Weights, Metrics]:
        d = self.data
        sw = cell_sample_weights(self.cell_weights(config), d.y_train, d.a_train)
        new_w, metrics = self.train_weighted(server_round, weights, config, sw)
        metrics["weight-sum"] = float(sw.sum())
        return new_w, metrics

    def query(self, action: str, server_round: int, weights: Weights | None,
              config: dict[str, Any]) -> tuple[Weights | None, Metrics]:
        if action != FEDFB_LOSSES:
            return super().query(action, server_round, weights, config)
        if weights is None:
            raise ValueError(f"query.{FEDFB_LOSSES} needs the global model")
        d = self.data
        proba = self.predict(weights, d.X_train)
        sums = cell_loss_sums(proba, d.y_train, d.a_train, d.num_groups)
        return None, {"loss-sums": sums.ravel().tolist(), "num-classes": d.num_classes,
                      "num-groups": d.num_groups}
