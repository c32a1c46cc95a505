"""Client half for federated classification (FedAvg and its relatives).

What leaves the client: in the handshake, train/test sizes and label x group counts
of its partition (for the run's partition report); after training, the updated
model weights, the number of training examples and the mean training loss; after
evaluation, the (group, label, prediction) confusion counts of its test split and
the summed test loss. Raw rows never leave, except with ``output.save-predictions``
(an audit option): then the final round's per-row test labels, groups and
predictions are sent so that predictions.csv can be written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedrec.clients.base import ClientHalf, Metrics, Weights
from fedrec.config import RunConfig
from fedrec.metrics import confusion_counts
from fedrec.models import build_model, get_weights, set_weights
from fedrec.seeding import derive_seed
from fedrec.tasks import ClientData, load_client_data
from fedrec.training import predict_proba, train_classifier


def initial_model(cfg: RunConfig, num_features: int, num_classes: int):
    """The global model before round 1 (seeded by the run seed only)."""
    return build_model(cfg.model.name, num_features, num_classes,
                       seed=derive_seed(cfg.seed, "init"), **dict(cfg.model_params))


_DATA: dict[tuple[str, int], ClientData] = {}


def _cached_data(cfg: RunConfig, client_id: int) -> ClientData:
    """Client data cached per process: simulation actors serve many clients."""
    k = (cfg.to_json(), client_id)
    if k not in _DATA:
        _DATA[k] = load_client_data(cfg, client_id)
    return _DATA[k]


class ClassifierClient(ClientHalf):
    """Local SGD on the client's train split; confusion counts on its test split."""

    def __init__(self, cfg: RunConfig, client_id: int, state: dict[str, np.ndarray]):
        super().__init__(cfg, client_id, state)
        self.data = _cached_data(cfg, client_id)

    def hello(self) -> Metrics:
        d = self.data
        return {"num-train": len(d.y_train), "num-test": len(d.y_test),
                "num-features": d.num_features, "num-classes": d.num_classes,
                "num-groups": d.num_groups,
                "train-counts": d.counts("train").ravel().tolist(),
                "test-counts": d.counts("test").ravel().tolist()}

    def model(self, weights: Weights):
        m = initial_model(self.cfg, self.data.num_features, self.data.num_classes)
        set_weights(m, weights)
        return m

    def train_model(self, model, server_round: int, config: dict[str, Any], *,
                    sample_weight: np.ndarray | None = None,
                    soft_targets: np.ndarray | None = None, seed_offset: int = 0):
        """Local training of ``model`` on the train split with the run's settings
        (seeded by run seed, round and client); FedProx if ``proximal-mu`` is sent."""
        t, d = self.cfg.train, self.data
        mu = float(config.get("proximal-mu", 0.0))
        return train_classifier(
            model, d.X_train, d.y_train, epochs=t.local_epochs, batch_size=t.batch_size,
            lr=float(config.get("lr", t.lr)), optimizer=t.optimizer,
            weight_decay=t.weight_decay,
            seed=derive_seed(self.cfg.seed, "train", server_round, self.client_id) + seed_offset,
            proximal_mu=mu, sample_weight=sample_weight, soft_targets=soft_targets)

    def fit(self, server_round: int, weights: Weights, config: dict[str, Any]
            ) -> tuple[Weights, Metrics]:
        model = self.model(weights)
        res = self.train_model(model, server_round, config)
        return get_weights(model), {"num-examples": res.num_examples, "train-loss": res.loss}

    def predict(self, weights: Weights, X: np.ndarray) -> np.ndarray:
        return predict_proba(self.model(weights), X)

    def evaluate(self, server_round: int, weights: Weights, config: dict[str, Any]) -> Metrics:
        d = self.data
        proba = self.predict(weights, d.X_test)
        pred = proba.argmax(axis=1)
        eps = 1e-12
        loss_sum = float(-np.log(np.clip(proba[np.arange(len(d.y_test)), d.y_test], eps, 1.0)
                                 ).sum())
        return self.evaluation_reply(pred, loss_sum, config)

    def evaluation_reply(self, pred: np.ndarray, loss_sum: float, config: dict[str, Any]
                         ) -> Metrics:
        """Confusion counts of ``pred`` on the test split (+ rows if auditing)."""
        d = self.data
        counts = confusion_counts(d.y_test, pred, d.a_test, d.num_classes, d.num_groups)
        out = {"num-examples": len(d.y_test), "loss-sum": float(loss_sum),
               "counts": counts.ravel().tolist(), "num-groups": d.num_groups,
               "num-classes": d.num_classes}
        if config.get("save-predictions"):
            out.update({"pred-label": d.y_test.tolist(), "pred-group": d.a_test.tolist(),
                        "pred-value": np.asarray(pred).tolist()})
        return out
