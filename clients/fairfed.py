"""Client half of ``fairfed`` (see :mod:`fedrec.strategies.fairfed`; messages in
:mod:`fedrec.specs.fairfed`, the math in :mod:`fedrec.algorithms.fair_baselines`).

What leaves a client, on top of :class:`~fedrec.clients.classification.ClassifierClient`
(handshake sizes and label x group counts, model weights, example count and train loss
after training, test confusion counts after evaluation): in the train reply
``fairfed-counts``, the (group, label, prediction) confusion counts ``(G, C, C)`` of the
*received global model* on the client's training rows (computed before local training),
from which the server derives the client's local fairness value and the global one (by
summing them, as the paper's secure aggregation of the metric's per-client components
does). With local debiasing on, training uses Kamiran–Calders weights from the client's
own label x group counts (nothing extra leaves for that). Raw rows never leave.
"""

from __future__ import annotations

from typing import Any

from fedrec.algorithms.fair_baselines import cell_sample_weights, reweighing_weights
from fedrec.clients.base import Metrics, Weights
from fedrec.clients.classification import ClassifierClient
from fedrec.metrics import confusion_counts
from fedrec.specs import fairfed as spec


class FairFedClient(ClassifierClient):
    """FairFed: report the global model's train-split confusion counts, then train
    (optionally with Kamiran–Calders reweighing)."""

    def fit(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[Weights, Metrics]:
        d = self.data
        pred = self.predict(weights, d.X_train).argmax(axis=1)
        counts = confusion_counts(d.y_train, pred, d.a_train, d.num_classes, d.num_groups)
        sw = None
        if bool(config.get(spec.LOCAL_DEBIAS, False)):
            sw = cell_sample_weights(reweighing_weights(d.counts("train")), d.y_train, d.a_train)
        new_w, metrics = self.fit_weighted(server_round, weights, config, sw)
        metrics.update(spec.pack_counts(counts, d.num_groups, d.num_classes))
        return new_w, metrics
