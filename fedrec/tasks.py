"""What a logical client holds: its partition of a dataset, split into train/test.

Pure code (no flwr). Every node can rebuild any client's data from the run
configuration alone, because partitions and splits are deterministic functions of
(dataset, partition settings, run seed, client id). Nothing about the data has to
travel: the server learns partition sizes and label x group counts only from the
clients' handshake replies.

Choices: the dataset is partitioned as a whole (``partition.scheme``), then each
client's rows are split into train/test with ``dataset.test-fraction`` and a seed
derived from (run seed, "split", client id). :func:`initial_model` builds the classifier
both halves start from (the server's initial weights, the model a client loads them into).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedrec.config import RunConfig
from fedrec.data import TabularDataset, load_dataset, make_partitions, train_test_split_indices
from fedrec.errors import ConfigError
from fedrec.seeding import derive_seed


@dataclass
class ClientData:
    """One logical client's local data (never leaves the client)."""

    client_id: int
    X_train: np.ndarray
    y_train: np.ndarray
    a_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    a_test: np.ndarray
    num_classes: int
    num_groups: int

    @property
    def num_features(self) -> int:
        return int(self.X_train.shape[1])

    def counts(self, split: str = "train") -> np.ndarray:
        """Label x group counts, int64 (C, G)."""
        y, a = (self.y_train, self.a_train) if split == "train" else (self.y_test, self.a_test)
        out = np.zeros((self.num_classes, self.num_groups), dtype=np.int64)
        np.add.at(out, (y, a), 1)
        return out


def load_task_dataset(cfg: RunConfig) -> TabularDataset:
    from fedrec.recsys.data import parse_options

    ds = load_dataset(
        cfg.dataset.name,
        sensitive=cfg.dataset.sensitive or None,
        target=cfg.dataset.target or None,
        **parse_options(cfg.dataset.options),  # (the tabular loaders take none: rejected)
    )
    if not isinstance(ds, TabularDataset):
        raise ConfigError(
            f"config key 'dataset.name': '{cfg.dataset.name}' is a "
            "recommendation dataset; classifier strategies need a tabular one"
        )
    return ds


@functools.lru_cache(maxsize=8)
def _partitions(
    name: str,
    sensitive: str,
    target: str,
    scheme: str,
    num_clients: int,
    alpha: float,
    min_size: int,
    seed: int,
    gamma_min: float = 0.2,
    gamma_max: float = 0.8,
    min_per_group: int = 0,
) -> tuple[np.ndarray, ...]:
    ds = load_dataset(name, sensitive=sensitive or None, target=target or None)
    parts = make_partitions(
        scheme,
        n=len(ds.y),
        num_partitions=num_clients,
        seed=derive_seed(seed, "partition"),
        labels=ds.y,
        groups=ds.a,
        alpha=alpha,
        min_partition_size=min_size,
        gamma_min=gamma_min,
        gamma_max=gamma_max,
        min_per_value=min_per_group,
    )
    return tuple(parts)


def partitions(cfg: RunConfig) -> tuple[np.ndarray, ...]:
    """Row indices of every client's partition (cached per process)."""
    d, p = cfg.dataset, cfg.partition
    return _partitions(
        d.name,
        d.sensitive,
        d.target,
        p.scheme,
        p.num_clients,
        p.alpha,
        p.min_size,
        cfg.seed,
        p.gamma_min,
        p.gamma_max,
        p.min_per_group,
    )


def load_client_data(cfg: RunConfig, client_id: int) -> ClientData:
    """Client ``client_id``'s train/test data under ``cfg``."""
    if not 0 <= client_id < cfg.partition.num_clients:
        raise ConfigError(f"client id {client_id} is outside 0..{cfg.partition.num_clients - 1}")
    ds = load_task_dataset(cfg)
    idx = partitions(cfg)[client_id]
    train, test = train_test_split_indices(
        idx, cfg.dataset.test_fraction, derive_seed(cfg.seed, "split", client_id)
    )
    return ClientData(
        client_id,
        ds.X[train],
        ds.y[train],
        ds.a[train],
        ds.X[test],
        ds.y[test],
        ds.a[test],
        ds.num_classes,
        ds.num_groups,
    )


def initial_model(cfg: RunConfig, num_features: int, num_classes: int):
    """The global classifier before round 1 (``model.*`` of ``cfg``, seeded by the run
    seed only): built identically by the server (initial weights, preflight) and by every
    client (the model its received weights are loaded into)."""
    from fedrec.models import build_model

    return build_model(
        cfg.model.name,
        num_features,
        num_classes,
        seed=derive_seed(cfg.seed, "init"),
        **dict(cfg.model_params),
    )
