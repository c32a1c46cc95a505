"""Spec of ``fedavg`` and of the classifier messages every classification strategy shares.

Server half :mod:`fedrec.strategies.fedavg` (and its subclasses ``fedfact-*``, ``fairfed``,
``fedfb``, which extend these messages in their own specs); client half
:class:`fedrec.clients.classification.ClassifierClient`.

- handshake (``query.fedrec_hello``): sizes and the label x group counts of the client's
  train and test splits (``C * G`` ints each, label-major: :func:`pack_counts`);
- train: config ``lr`` / ``proximal-mu`` (optional); reply the model weights,
  :data:`NUM_EXAMPLES` and :data:`TRAIN_LOSS`;
- evaluate: reply the (group, label, prediction) confusion counts of the test split
  (``G * C * C`` ints, :func:`pack_confusion`), the summed test loss and, with
  :data:`SAVE_PREDICTIONS`, the per-row test labels, groups and predictions.

Array values are sent as numpy arrays (never as lists); list-valued metrics arrive at the
server as numpy arrays (:mod:`fedrec.protocol`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# handshake metric keys (client -> server)
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"
NUM_FEATURES = "num-features"
NUM_CLASSES = "num-classes"
NUM_GROUPS = "num-groups"
TRAIN_COUNTS = "train-counts"
TEST_COUNTS = "test-counts"
# train config keys (server -> client, optional)
LR = "lr"
PROXIMAL_MU = "proximal-mu"
# train reply metric keys
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
# evaluate config key and reply metric keys
SAVE_PREDICTIONS = "save-predictions"
LOSS_SUM = "loss-sum"
COUNTS = "counts"
PRED_LABEL = "pred-label"
PRED_GROUP = "pred-group"
PRED_VALUE = "pred-value"
# aggregated train metric (server side)
NUM_CLIENTS = "num-clients"


def pack_counts(counts: np.ndarray) -> np.ndarray:
    """Label x group counts ``(C, G)`` as sent: flat int64, label-major."""
    return np.asarray(counts, dtype=np.int64).ravel()


def unpack_counts(hello: Mapping[str, Any], key: str = TRAIN_COUNTS) -> np.ndarray:
    """A client's label x group counts ``(C, G)`` int64 from its handshake metrics."""
    C, G = int(hello[NUM_CLASSES]), int(hello[NUM_GROUPS])
    return np.asarray(hello[key], dtype=np.int64).reshape(C, G)


def pack_confusion(counts: np.ndarray) -> np.ndarray:
    """(group, label, prediction) confusion counts ``(G, C, C)`` as sent: flat int64."""
    return np.asarray(counts, dtype=np.int64).ravel()


def unpack_confusion(metrics: Mapping[str, Any], key: str = COUNTS) -> np.ndarray:
    """Confusion counts ``(G, C, C)`` int64 from a reply carrying ``num-groups`` and
    ``num-classes``."""
    G, C = int(metrics[NUM_GROUPS]), int(metrics[NUM_CLASSES])
    return np.asarray(metrics[key], dtype=np.int64).reshape(G, C, C)
