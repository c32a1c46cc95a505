"""Shard assignment for exact federated unlearning (SISA / UltraRE balanced clustering)."""

import numpy as np
import pytest

from fedrec.algorithms import sharding as sh
from fedrec.errors import ConfigError


def test_random_shards_are_balanced_and_seeded():
    a = sh.random_shards(95, 8, seed=3)
    sizes = sh.shard_sizes(a, 8)
    assert sizes.sum() == 95 and sizes.max() - sizes.min() <= 1
    np.testing.assert_array_equal(a, sh.random_shards(95, 8, seed=3))
    assert not np.array_equal(a, sh.random_shards(95, 8, seed=4))


def test_balanced_shards_recover_separated_blobs_with_equal_sizes():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = np.repeat(np.arange(4), 12)
    X = centers[truth] + rng.normal(scale=0.5, size=(48, 2))
    a = sh.balanced_shards(X, 4, seed=1)
    np.testing.assert_array_equal(sh.shard_sizes(a, 4), [12, 12, 12, 12])
    # same partition as the truth up to relabelling
    for s in range(4):
        assert len(set(truth[a == s])) == 1


def test_balanced_shards_stay_balanced_when_blobs_are_not():
    """Uniform shard mass forces equal sizes even if k-means would not: 30 points in one
    blob and 6 in another, 3 shards of 12."""
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(20, 1, (6, 3))])
    a = sh.balanced_shards(X, 3, seed=0)
    np.testing.assert_array_equal(np.sort(sh.shard_sizes(a, 3)), [12, 12, 12])
    np.testing.assert_array_equal(a, sh.balanced_shards(X, 3, seed=0))  # deterministic


def test_affected_shards_and_errors():
    a = np.array([0, 1, 1, 2, 0])
    np.testing.assert_array_equal(sh.affected_shards(a, [4, 0, 2]), [0, 1])
    with pytest.raises(ConfigError, match=r"unknown client id\(s\) \[5\]; clients are 0..4"):
        sh.affected_shards(a, [5])
    with pytest.raises(ConfigError, match="num_shards must be in 1..3"):
        sh.random_shards(3, 4, seed=0)
    with pytest.raises(ConfigError, match="features must be"):
        sh.balanced_shards(np.zeros(5), 2, seed=0)
