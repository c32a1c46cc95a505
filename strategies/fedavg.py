"""FedAvg (McMahan et al., 2017, https://arxiv.org/abs/1602.05629).

The new global model is the average of the clients' models weighted by their
number of training examples, computed in float64 over replies sorted by client id
(so the result does not depend on reply order) and cast back to each array's dtype.
Equal to Flower's ``FedAvg.aggregate_train`` on the same replies (tested).

Messages: :mod:`fedrec.specs.fedavg`; client half (and what leaves a client):
:class:`fedrec.clients.classification.ClassifierClient`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from fedrec.protocol import ClientReply
from fedrec.specs import fedavg as spec
from fedrec.strategies.base import FedrecStrategy


def weighted_average(
    weight_lists: Sequence[Sequence[np.ndarray]], num_examples: Sequence[float]
) -> list[np.ndarray]:
    """Example-weighted average of equally shaped weight lists (pure)."""
    total = float(sum(num_examples))
    if total <= 0:
        raise ValueError("cannot average: the replies report 0 examples in total")
    out = []
    for layer in zip(*weight_lists):
        acc = np.zeros(layer[0].shape, dtype=np.float64)
        for w, n in zip(layer, num_examples):
            acc += np.asarray(w, dtype=np.float64) * (n / total)
        out.append(acc.astype(layer[0].dtype))
    return out


def weighted_metrics(
    replies: list[ClientReply], keys: tuple[str, ...] = (spec.TRAIN_LOSS,)
) -> dict[str, float]:
    """Example-weighted means of per-client scalar metrics (means, not ratios of sums)."""
    n = sum(r.num_examples for r in replies)
    out: dict[str, float] = {spec.NUM_EXAMPLES: n, spec.NUM_CLIENTS: len(replies)}
    for k in keys:
        if n and all(k in r.metrics for r in replies):
            out[k] = sum(float(r.metrics[k]) * r.num_examples for r in replies) / n
    return out


class FedAvg(FedrecStrategy):
    """Federated averaging of the full model."""

    #: central DP (privacy.mechanism = "central") wraps this aggregation (a mean of updates)
    privacy_central: ClassVar[bool] = True

    name = "fedavg"
    client_half = "fedrec.clients.classification:ClassifierClient"

    def aggregate(self, server_round, replies):
        replies = [r for r in replies if r.weights is not None]
        if not replies:
            return None, {}
        weights = weighted_average([r.weights for r in replies], [r.num_examples for r in replies])
        return weights, weighted_metrics(replies)
