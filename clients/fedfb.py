"""Client half of ``fedfb`` (see :mod:`fedrec.strategies.fedfb`; messages in
:mod:`fedrec.specs.fedfb`, the math in :mod:`fedrec.algorithms.fair_baselines`).

What leaves a client, on top of :class:`~fedrec.clients.classification.ClassifierClient`
(handshake sizes and label x group counts, model weights, example count and train loss
after training, test confusion counts after evaluation): in the train reply
``weight-sum``, the sum of the FairBatch row weights of its training rows (the
aggregation weight); in the ``query.fedfb_losses`` phase ``loss-sums``, the summed
cross-entropy of the new global model per (label, group) cell of its training rows
(``C * G`` floats). The server learns the global label x group counts from the handshake
(as every fedrec classification strategy does). Raw rows never leave.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.algorithms.fair_baselines import cell_loss_sums, cell_sample_weights
from fedrec.clients.base import Metrics, Weights
from fedrec.clients.classification import ClassifierClient
from fedrec.specs import fedavg as base_spec
from fedrec.specs import fedfb as spec


class FedFBClient(ClassifierClient):
    """FedFB: train with the server's FairBatch cell weights; report per-cell loss sums."""

    def cell_weights(self, config: dict[str, Any]) -> np.ndarray:
        d = self.data
        W = spec.unpack_cell_weights(config, d.num_classes, d.num_groups)
        return np.ones((d.num_classes, d.num_groups)) if W is None else W

    def fit(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[Weights, Metrics]:
        d = self.data
        sw = cell_sample_weights(self.cell_weights(config), d.y_train, d.a_train)
        new_w, metrics = self.fit_weighted(server_round, weights, config, sw)
        metrics[spec.WEIGHT_SUM] = float(sw.sum())
        return new_w, metrics

    def query(
        self, action: str, server_round: int, weights: Weights | None, config: dict[str, Any]
    ) -> tuple[Weights | None, Metrics]:
        if action != spec.LOSSES:
            return super().query(action, server_round, weights, config)
        if weights is None:
            raise ValueError(f"query.{spec.LOSSES} needs the global model")
        d = self.data
        proba = self.predict(weights, d.X_train)
        sums = cell_loss_sums(proba, d.y_train, d.a_train, d.num_groups)
        return None, {
            spec.LOSS_SUMS: spec.pack_loss_sums(sums),
            base_spec.NUM_CLASSES: d.num_classes,
            base_spec.NUM_GROUPS: d.num_groups,
        }
