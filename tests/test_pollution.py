"""Threat models, pollution baselines and target-item metrics (pure parts of the attack suite)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.attacks import pollution, threat
from fedrec.errors import ConfigError
from fedrec.metrics.ranking import target_item_metrics


def test_attacker_ids_fraction_explicit_and_none():
    a = threat.attacker_ids("random", 0.1, "", 50, seed=3)
    assert a.size == 5 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 50
    assert np.array_equal(a, threat.attacker_ids("random", 0.1, "", 50, seed=3))
    assert not np.array_equal(a, threat.attacker_ids("random", 0.1, "", 50, seed=4))
    assert threat.attacker_ids("random", 0.001, "", 50, seed=0).size == 1  # at least one
    assert threat.attacker_ids("none", 0.5, "", 50, seed=0).size == 0
    assert threat.attacker_ids("random", 0.0, "", 50, seed=0).size == 0
    assert threat.attacker_ids("creat", 0.1, "7, 3", 50, seed=0).tolist() == [3, 7]
    with pytest.raises(ConfigError, match="attack.client-ids"):
        threat.attacker_ids("creat", 0.1, "3,x", 50, seed=0)
    with pytest.raises(ConfigError, match=r"outside \[0, 50\)"):
        threat.attacker_ids("creat", 0.1, "50", 50, seed=0)


def test_popularity_bands_and_targets():
    counts = np.array([0, 9, 8, 7, 6, 5, 4, 3, 2, 1])  # item 0 never seen
    assert threat.popularity_band(counts, "head").tolist() == [1, 2, 3]
    assert threat.popularity_band(counts, "medium").tolist() == [4, 5, 6]
    assert threat.popularity_band(counts, "tail").tolist() == [7, 8, 9]
    t = threat.target_items("tail", counts, seed=1)
    assert t.size == 1 and t[0] in (7, 8, 9)
    assert threat.target_items("4,2", counts, seed=0).tolist() == [2, 4]
    with pytest.raises(ConfigError, match="allowed values: head, medium, tail"):
        threat.target_items("middle", counts, seed=0)
    with pytest.raises(ConfigError, match="item ids must be in"):
        threat.target_items("10", counts, seed=0)


def test_pollute_view_replaces_only_the_named_users():
    from fedrec.recsys.splits import Ragged, UserData

    seq = Ragged.from_lists([[0, 1, 2], [3, 4], [1]])
    items = Ragged.from_lists([[0, 1, 2], [3, 4], [1]])
    one = Ragged.from_lists([[5], [5], [5]])
    ud = UserData(3, 6, items, seq, one, one)
    v = threat.pollute_view(ud, {1: np.array([3, 2])}, update_train=True)
    assert v.train_seq[1].tolist() == [3, 2] and v.train[1].tolist() == [2, 3]
    assert v.train_seq[0].tolist() == [0, 1, 2] and v.train_seq[2].tolist() == [1]
    w = threat.pollute_view(ud, {1: np.array([3, 2])}, update_train=False)
    assert w.train_seq[1].tolist() == [3, 2] and w.train[1].tolist() == [3, 4]
    assert ud.train_seq[1].tolist() == [3, 4]  # the original is untouched


def _budget_ok(old, new, target, K, window):
    old, new = np.asarray(old), np.asarray(new)
    assert old.shape == new.shape
    changed = np.flatnonzero(old != new)
    assert changed.size <= K
    assert np.all(new[changed] == target)
    assert np.all(changed >= old.size - window)


def test_random_and_popular_pollution_obey_the_budget():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 30, size=n) for n in (1, 4, 12, 40)]
    counts = np.bincount(np.concatenate(seqs), minlength=30)
    for new in (
        pollution.random_pollution(seqs, 7, 3, 10, np.random.default_rng(1)),
        pollution.popular_pollution(seqs, 7, 3, 10, counts),
    ):
        for o, n in zip(seqs, new):
            _budget_ok(o, n, 7, 3, 10)
    # popular: the positions right after the most popular predecessors
    s = np.array([0, 5, 1, 5, 2, 9])
    counts = np.zeros(10, int)
    counts[[0, 1, 2, 5, 9]] = [1, 2, 3, 10, 4]
    out = pollution.popular_pollution([s], 8, 2, 6, counts)[0]
    assert out.tolist() == [0, 5, 8, 5, 8, 9]  # after the two 5s (most popular)
    with pytest.raises(ConfigError, match="budget"):
        pollution.random_pollution(seqs, 7, 0, 10, np.random.default_rng(0))


def test_substitution_picks_the_largest_first_order_gain():
    from fedrec.models.recsys import SASRec, to_tokens

    torch.manual_seed(0)
    m = SASRec(20, d=8, max_len=6, num_blocks=1, dropout=0.0, seed=0)
    s = np.array([1, 2, 3, 4, 5, 6, 7, 8])
    new = pollution.substitution_pollution(m, [s], target=9, K=2)[0]
    _budget_ok(s, new, 9, 2, 6)
    # the brute-force first-order gains agree with the chosen positions
    x, g = pollution._input_embedding_grads(m, to_tokens([s], 6), 9)
    e = m.item_emb.weight[10].detach()
    gains = ((e - x[0]) * g[0]).sum(-1).numpy()
    best = set((np.argsort(-gains)[:2] + s.size - 6).tolist())
    assert set(np.flatnonzero(new != s).tolist()) == best


def test_craft_target_row_raises_the_target_scores():
    rng = np.random.default_rng(0)
    H = torch.tensor(rng.normal(size=(20, 6)))
    E = torch.tensor(rng.normal(size=(30, 6)))
    step = pollution.craft_target_row(H, E, target=4, k=5)
    assert np.isclose(np.linalg.norm(step), 1.0)
    before = (H @ E[4]).numpy()
    after = (H @ (E[4] + 0.5 * torch.tensor(step))).numpy()
    assert after.mean() > before.mean()


def test_target_item_metrics_by_hand():
    S = np.array(
        [
            [5.0, 4.0, 3.0, -np.inf, 1.0],  # target 2: rank 3 of the unseen items
            [1.0, 2.0, -np.inf, 0.0, 3.0],  # target 2 seen: not rankable
        ]
    )
    neg = np.array([[0, 4], [0, 4]])
    out = target_item_metrics(S, np.array([2]), neg, k=2)
    assert out["tgt_exposure@2"][0] == 0.0 and np.isnan(out["tgt_exposure@2"][1])
    assert out["tgt_hr@2_s"][0] == 1.0  # among {2, 0, 4} only item 0 (5.0) beats it: rank 2
    out3 = target_item_metrics(S, np.array([2]), neg, k=3)
    assert out3["tgt_exposure@3"][0] == 1.0
    assert np.isclose(out3["tgt_ndcg@3"][0], 1 / np.log2(4))
    assert np.isclose(out3["tgt_mrr_s"][0], 1 / 2)
    assert np.isclose(out3["tgt_ndcg@3_s"][0], 1 / np.log2(3))
