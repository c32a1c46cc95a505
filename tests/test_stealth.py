"""Stealth metrics (fedrec.attacks.stealth): the detector AUC on same vs separated
distributions, its input checks, the co-OT distance (the one of CREAT) and the embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.attacks import creat as C
from fedrec.attacks import stealth as S
from fedrec.errors import ConfigError
from fedrec.models.recsys import SASRec, to_tokens


def test_detector_auc_chance_on_one_distribution_and_one_on_separated_ones():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(150, 8)), rng.normal(size=(150, 8))
    same = S.detector_auc(a, b, seed=0)
    assert abs(same.auc - 0.5) < 0.1 and same.auc_sym == max(same.auc, 1 - same.auc)
    assert (same.n_clean, same.n_polluted, same.folds, len(same.fold_aucs)) == (150, 150, 5, 5)
    far = S.detector_auc(a, b + 3.0, seed=0, folds=3)
    assert far.auc > 0.99 and far.auc_sym == far.auc
    assert S.detector_auc(a, b, seed=0).to_dict() == same.to_dict()  # deterministic
    assert set(same.to_dict()) == {"auc", "auc_sym", "fold_aucs", "n_clean", "n_polluted", "folds"}
    assert S.detector_auc(torch.from_numpy(a), torch.from_numpy(b + 3.0)).auc > 0.99


def test_detector_auc_input_checks():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3))
    with pytest.raises(
        ConfigError, match=r"at least folds=5 embeddings per class \(got 10 clean, 4"
    ):
        S.detector_auc(a, a[:4])
    with pytest.raises(ConfigError, match="folds must be an integer >= 2"):
        S.detector_auc(a, a, folds=1)
    with pytest.raises(ConfigError, match="same width"):
        S.detector_auc(a, a[:, :2])
    with pytest.raises(ConfigError, match="2-D"):
        S.detector_auc(a[0], a)
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError, match="non-finite"):
        S.detector_auc(a, bad)


def test_coot_distance_is_creat_dlot_zero_when_identical_growing_with_a_shift():
    rng = np.random.default_rng(2)
    X, W = rng.normal(size=(20, 6)), rng.normal(size=(30, 6))
    assert abs(S.coot_distance(X, X)) < 1e-4
    assert abs(S.coot_distance(X, X, W, W)) < 1e-4
    d = [S.coot_distance(X, X + s) for s in (0.2, 0.6, 1.2)]
    assert 0 < d[0] < d[1] < d[2]
    assert S.coot_distance(X, X + 0.5, W, W + 0.5) > S.coot_distance(X, X + 0.5)
    # one implementation: the value of creat.dlot_distance
    ref = C.dlot_distance(X, X[::-1] + 0.3, W, W + 0.1, pattern_weight=0.5)
    got = S.coot_distance(X, X[::-1] + 0.3, W, W + 0.1, pattern_weight=0.5)
    assert got == pytest.approx(ref.value, rel=1e-12)
    # different set sizes are fine (no correspondence is assumed)
    assert S.coot_distance(X, X[:12] + 0.2) > 0


def test_sequence_and_window_embeddings():
    model = SASRec(15, 8, 6, 1, 1, 0.3, seed=0)
    model.train()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 15, n) for n in (3, 6, 9, 1, 6)]
    seqs.append(seqs[1].copy())  # a duplicate row
    emb = S.sequence_embeddings(model, seqs, batch_size=2)
    assert model.training  # restored
    assert emb.shape == (6, 8) and emb.dtype == np.float32
    model.eval()
    with torch.no_grad():
        for s, e in zip(seqs, emb):
            ref = model(to_tokens([s], 6))[:, -1][0].numpy()  # last max_len items
            np.testing.assert_allclose(e, ref, rtol=1e-5, atol=1e-5)
    assert S.sequence_embeddings(model, []).shape == (0, 8)
    with pytest.raises(ConfigError, match="empty"):
        S.sequence_embeddings(model, [np.array([1, 2]), np.array([], dtype=np.int64)])
    win = S.window_embeddings(model, seqs[:3], k=2)
    assert win.shape == (2 + 5 + 5, 8)  # windows of the last max_len = 6 items
    with torch.no_grad():
        ref = model(to_tokens([seqs[0][1:3]], 6))[:, -1][0].numpy()
    np.testing.assert_allclose(win[1], ref, rtol=1e-5, atol=1e-5)
    sub = S.window_embeddings(model, seqs[:3], k=2, max_windows=4, seed=1)
    assert sub.shape == (4, 8)
    assert np.all([np.any(np.all(np.isclose(w, win, atol=1e-6), axis=1)) for w in sub])
    with pytest.raises(ConfigError, match="k must be"):
        S.window_embeddings(model, seqs, k=0)
