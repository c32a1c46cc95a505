"""Client half of ``fedavg`` (:mod:`fedrec.strategies.fedavg`): the generic classifier
half, and the base class of the halves of the classification strategies that extend it
(``fedfact-post`` / ``local-post`` / ``fedfact-in`` in :mod:`fedrec.clients.fedfact`,
``fairfed`` in :mod:`fedrec.clients.fairfed`, ``fedfb`` in :mod:`fedrec.clients.fedfb`).
Its messages are declared in :mod:`fedrec.specs.fedavg`.

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
from fedrec.messages import FlatLayout
from fedrec.metrics import confusion_counts
from fedrec.models import get_weights, set_weights
from fedrec.seeding import derive_seed
from fedrec.specs import fedavg as spec
from fedrec.tasks import ClientData, initial_model, load_client_data
from fedrec.training import predict_proba, train_classifier

__all__ = ["ClassifierClient", "initial_model", "loss_sum"]  # initial_model: re-export

_DATA: dict[tuple[str, int], ClientData] = {}
_DATA_RUNS = 4  #: the configs (runs) whose client data one process keeps


def _cached_data(cfg: RunConfig, client_id: int) -> ClientData:
    """Client data cached per process, keyed by the run's whole config and the client:
    simulation actors and long-lived deployment ClientApps serve many clients, and the
    latter many runs (the data of the oldest of more than ``_DATA_RUNS`` configs is
    dropped)."""
    k = (cfg.to_json(), client_id)
    if k not in _DATA:
        runs = list(dict.fromkeys(run for run, _ in _DATA))
        if k[0] not in runs and len(runs) >= _DATA_RUNS:
            for old in [key for key in _DATA if key[0] == runs[0]]:
                del _DATA[old]
        _DATA[k] = load_client_data(cfg, client_id)
    return _DATA[k]


def loss_sum(proba: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> float:
    """Summed cross-entropy ``-sum_i log proba[i, y_i]`` (probabilities clipped to eps)."""
    return float(-np.log(np.clip(proba[np.arange(len(y)), y], eps, 1.0)).sum())


#: reply metric with the client's cumulative ε (fedrec.strategies.privacy.CLIENT_EPSILON)
DP_EPSILON = "dp-epsilon"
DP_STEPS_STATE, DP_EPS_STATE = "dp-steps", "dp-epsilon"


class ClassifierClient(ClientHalf):
    """Local SGD on the client's train split; confusion counts on its test split."""

    unlearning_actions = ("unlearn_ascent", "sisa_evidence")
    #: local DP on the model update; sample-level DP-SGD (fedrec.strategies.privacy)
    privacy_mechanisms = ("local", "dpsgd")

    def __init__(self, cfg: RunConfig, client_id: int, state: dict[str, np.ndarray]):
        super().__init__(cfg, client_id, state)
        self.data = _cached_data(cfg, client_id)

    def hello(self) -> Metrics:
        d = self.data
        return {
            spec.NUM_TRAIN: len(d.y_train),
            spec.NUM_TEST: len(d.y_test),
            spec.NUM_FEATURES: d.num_features,
            spec.NUM_CLASSES: d.num_classes,
            spec.NUM_GROUPS: d.num_groups,
            spec.TRAIN_COUNTS: spec.pack_counts(d.counts("train")),
            spec.TEST_COUNTS: spec.pack_counts(d.counts("test")),
        }

    def model(self, weights: Weights):
        m = initial_model(self.cfg, self.data.num_features, self.data.num_classes)
        set_weights(m, weights)
        return m

    def train_model(
        self,
        model,
        server_round: int,
        config: dict[str, Any],
        *,
        sample_weight: np.ndarray | None = None,
        soft_targets: np.ndarray | None = None,
        seed_offset: int = 0,
    ):
        """Local training of ``model`` on the train split with the run's settings
        (seeded by run seed, round and client); FedProx if ``proximal-mu`` is sent."""
        d = self.data
        mu = float(config.get(spec.PROXIMAL_MU, 0.0))
        common = self._local_settings(server_round, config, seed_offset)
        if self.cfg.privacy.mechanism == "dpsgd":
            return self._dp_sgd(model, common, mu, sample_weight, soft_targets)
        return train_classifier(
            model,
            d.X_train,
            d.y_train,
            **common,
            proximal_mu=mu,
            sample_weight=sample_weight,
            soft_targets=soft_targets,
        )

    def _local_settings(
        self, server_round: int, config: dict[str, Any], seed_offset: int = 0
    ) -> dict[str, Any]:
        """This round's local-training settings (the run's, or the server's per-round
        ``local-epochs`` / ``lr``), seeded by run seed, round and client."""
        t = self.cfg.train
        return {
            "epochs": int(config.get("local-epochs", t.local_epochs)),
            "batch_size": t.batch_size,
            "lr": float(config.get(spec.LR, t.lr)),
            "optimizer": t.optimizer,
            "weight_decay": t.weight_decay,
            "seed": derive_seed(self.cfg.seed, "train", server_round, self.client_id) + seed_offset,
        }

    def fit_weighted(
        self,
        server_round: int,
        weights: Weights,
        config: dict[str, Any],
        sample_weight: np.ndarray | None,
    ) -> tuple[Weights, Metrics]:
        """:meth:`fit` with per-row weights of the training rows (None: unweighted)."""
        model = self.model(weights)
        res = self.train_model(model, server_round, config, sample_weight=sample_weight)
        metrics = {spec.NUM_EXAMPLES: res.num_examples, spec.TRAIN_LOSS: res.loss}
        new = get_weights(model)
        if self.cfg.privacy.mechanism == "local":
            new = self._local_dp(server_round, weights, new)
        if self.cfg.privacy.mechanism in ("local", "dpsgd"):
            metrics[DP_EPSILON] = float(self.state[DP_EPS_STATE])
        return new, metrics

    def _dp_sgd(self, model, common, mu, sample_weight, soft_targets):
        """Sample-level DP-SGD (Opacus) of this round's local training; the client composes
        its own ε over every DP-SGD step it has taken (kept in its private state)."""
        from fedrec.errors import ConfigError
        from fedrec.privacy.accountant import epsilon
        from fedrec.privacy.dpsgd import dp_sgd_train

        if mu or sample_weight is not None or soft_targets is not None:
            raise ConfigError(
                "privacy.mechanism = 'dpsgd' trains plain local SGD; this strategy's clients "
                "need proximal terms, sample weights or soft targets"
            )
        d, p = self.data, self.cfg.privacy
        res = dp_sgd_train(
            model,
            d.X_train,
            d.y_train,
            **common,
            noise_multiplier=p.noise_multiplier,
            max_grad_norm=p.clip_norm,
            delta=p.delta,
        )
        steps = int(self.state.get(DP_STEPS_STATE, 0)) + res.steps
        self.state[DP_STEPS_STATE] = np.asarray(steps, dtype=np.int64)
        eps = epsilon(p.noise_multiplier, res.sample_rate, steps, p.delta, p.accountant)
        self.state[DP_EPS_STATE] = np.asarray(eps, dtype=np.float64)
        return res

    def _local_dp(self, server_round: int, old: Weights, new: Weights) -> Weights:
        """Local DP: the whole update ``new - old`` clipped to ``privacy.clip-norm`` and
        noised (std ``z C``) before it leaves; ε composed over the rounds this client took
        part in (replace-one neighbours, no amplification: it knows it took part)."""
        from fedrec.privacy.accountant import gaussian_ldp_epsilon
        from fedrec.privacy.mechanisms import local_gaussian
        from fedrec.seeding import rng

        p, lay = self.cfg.privacy, FlatLayout.of(old)
        flat = lay.pack(new, np.float64) - lay.pack(old, np.float64)
        g = rng(self.cfg.seed, "ldp", server_round, self.client_id)
        noised = local_gaussian(flat[None, :], p.clip_norm, p.noise_multiplier, g)[0]
        out = [
            (np.asarray(w0) + dw).astype(np.asarray(w0).dtype)
            for w0, dw in zip(old, lay.unpack(noised))
        ]
        rounds = int(self.state.get(DP_STEPS_STATE, 0)) + 1
        self.state[DP_STEPS_STATE] = np.asarray(rounds, dtype=np.int64)
        eps = gaussian_ldp_epsilon(p.noise_multiplier, rounds, p.delta, p.accountant)
        self.state[DP_EPS_STATE] = np.asarray(eps, dtype=np.float64)
        return out

    def fit(
        self, server_round: int, weights: Weights, config: dict[str, Any]
    ) -> tuple[Weights, Metrics]:
        return self.fit_weighted(server_round, weights, config, None)

    def predict(self, weights: Weights, X: np.ndarray) -> np.ndarray:
        return predict_proba(self.model(weights), X)

    def query(self, action, server_round, weights, config):
        if action == "unlearn_ascent":
            return self.ascent(server_round, weights, config)
        if action == "sisa_evidence":  # p_k(y | x) of every training row, kept private
            from fedrec.unlearning.client import SISA_EVIDENCE

            d, S = self.data, int(config["sisa-shards"])
            k = len(weights) // S
            probs = [self.predict(weights[i * k : (i + 1) * k], d.X_train) for i in range(S)]
            ev = np.stack([pr[np.arange(len(d.y_train)), d.y_train] for pr in probs], axis=1)
            self.state[SISA_EVIDENCE] = ev
            return None, {spec.NUM_EXAMPLES: len(ev)}
        return super().query(action, server_round, weights, config)

    def ascent(self, server_round: int, weights: Weights, config: dict[str, Any]):
        """Gradient ascent on the client's own training rows (it forgets itself): the
        negated local update ``w - (fit(w) - w)``; a whole client keeps no data for
        GradDiff's descent term, so the repair rounds of the retained clients play it."""
        new, metrics = self.fit(server_round, weights, config)
        return [2 * np.asarray(w) - np.asarray(n) for w, n in zip(weights, new)], metrics

    def ensemble_proba(self, weights: Weights, X: np.ndarray, config: dict[str, Any]):
        """A SISA ensemble (``sisa-shards`` models, their arrays in shard order): the
        (learned-)weighted mean of the shard models' probabilities (uniform without
        ``sisa-weights``)."""
        S = int(config["sisa-shards"])
        k = len(weights) // S
        alpha = np.asarray(config.get("sisa-weights", np.full(S, 1.0 / S)), dtype=np.float64)
        probs = [self.predict(weights[i * k : (i + 1) * k], X) for i in range(S)]
        return sum(a * p for a, p in zip(alpha, probs))

    def evaluate(self, server_round: int, weights: Weights, config: dict[str, Any]) -> Metrics:
        d = self.data
        if "sisa-shards" in config:
            proba = self.ensemble_proba(weights, d.X_test, config)
            return self.evaluation_reply(proba.argmax(axis=1), loss_sum(proba, d.y_test), config)
        proba = self.predict(weights, d.X_test)
        return self.evaluation_reply(proba.argmax(axis=1), loss_sum(proba, d.y_test), config)

    def evaluation_reply(
        self, pred: np.ndarray, loss_sum: float, config: dict[str, Any]
    ) -> Metrics:
        """Confusion counts of ``pred`` on the test split (+ rows if auditing)."""
        d = self.data
        counts = confusion_counts(d.y_test, pred, d.a_test, d.num_classes, d.num_groups)
        out = {
            spec.NUM_EXAMPLES: len(d.y_test),
            spec.LOSS_SUM: float(loss_sum),
            spec.COUNTS: spec.pack_confusion(counts),
            spec.NUM_GROUPS: d.num_groups,
            spec.NUM_CLASSES: d.num_classes,
        }
        if config.get(spec.SAVE_PREDICTIONS):
            out.update(
                {
                    spec.PRED_LABEL: np.asarray(d.y_test, dtype=np.int64),
                    spec.PRED_GROUP: np.asarray(d.a_test, dtype=np.int64),
                    spec.PRED_VALUE: np.asarray(pred, dtype=np.int64),
                }
            )
        return out
