"""Row-wise Byzantine-robust aggregation: equal to Flower's dense rules when every client
touches every row, FedAvg for the mean, hand-checked sparse cases, clipping, anomaly scores
and validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.server.strategy import aggregate as fa

from fedrec.algorithms import robust as rb
from fedrec.errors import ConfigError

TOL = 1e-10


# ------------------------------------------------------------------ helpers
def _full_case(seed):
    """Every client touches every row (ids given in a random order per client)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 26))
    R, d = int(rng.integers(1, 6)), int(rng.integers(1, 5))
    p = int(rng.choice([0, 1, 7]))
    tables = rng.normal(size=(n, R, d)) * rng.uniform(0.5, 2.0, size=(n, 1, 1))
    dense = rng.normal(size=(n, p))
    w = rng.integers(1, 100, size=n)
    perms = [rng.permutation(R) for _ in range(n)]
    upd = rb.RowUpdates.from_lists(
        perms, [tables[c][perms[c]] for c in range(n)], R, dense=dense, weights=w
    )
    return upd, tables, dense, w


def _flower_results(tables, dense, w):
    """Flower's ``results``: ``[([rows_c (R, d), dense_c (p,)], n_c)]`` (no dense if p=0)."""
    p = dense.shape[1]
    return [
        ([tables[c].copy(), dense[c].copy()] if p else [tables[c].copy()], int(w[c]))
        for c in range(len(w))
    ]


def _assert_equal_flower(res, flower, p):
    assert np.abs(res.rows - flower[0]).max() <= TOL
    if p:
        assert np.abs(res.dense - flower[1]).max() <= TOL
    else:
        assert res.dense.shape == (0,)
    assert res.touched.all()
    np.testing.assert_allclose(res.voter_share, 1.0)


def _sparse_case(seed, n=12, R=9, d=3, p=4, cover=0.4):
    rng = np.random.default_rng(seed)
    ids = [np.flatnonzero(rng.random(R) < cover) for _ in range(n)]
    rows = [rng.normal(size=(len(i), d)) for i in ids]
    dense = rng.normal(size=(n, p))
    w = rng.integers(1, 50, size=n)
    return rb.RowUpdates.from_lists(ids, rows, R, dense=dense, weights=w, d=d)


def _ref_distances(upd):
    """Loop reference: squared distance over shared rows plus the dense part."""
    n = upd.n
    tab = [dict(zip(i.tolist(), r)) for i, r in zip(upd.ids, upd.rows)]
    D = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            shared = tab[i].keys() & tab[j].keys()
            D[i, j] = sum(float(np.sum((tab[i][r] - tab[j][r]) ** 2)) for r in shared)
            D[i, j] += float(np.sum((upd.dense[i] - upd.dense[j]) ** 2))
    return D


# ------------------------------------------------------------------ THE KEY TEST
@pytest.mark.parametrize("seed", range(12))
def test_full_touch_equals_flower_median_and_trimmed(seed):
    upd, tables, dense, w = _full_case(seed)
    beta = [0.0, 0.1, 0.2, 0.3, 0.45][seed % 5]
    flower = fa.aggregate_median(_flower_results(tables, dense, w))
    _assert_equal_flower(rb.rowwise_median(upd), flower, upd.p)
    flower = fa.aggregate_trimmed_avg(_flower_results(tables, dense, w), beta)
    _assert_equal_flower(rb.rowwise_trimmed_mean(upd, beta), flower, upd.p)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("keep_frac", [0.0, 0.3, 0.5, 1.0])
def test_full_touch_equals_flower_krum(seed, keep_frac):
    upd, tables, dense, w = _full_case(seed)
    beta = [0.0, 0.1, 0.2, 0.3, 0.45][seed % 5]
    n = upd.n
    to_keep = 0 if keep_frac == 0 else min(n, max(1, math.ceil(round(keep_frac * n, 9))))
    flower = fa.aggregate_krum(_flower_results(tables, dense, w), int(beta * n), to_keep)
    res = rb.rowwise_krum(upd, beta, keep_frac)
    _assert_equal_flower(res, flower, upd.p)
    assert res.info["num_voter_sets"] == 1  # one shared selection for every row
    assert res.info["selected_rows"].sum() == upd.num_rows * max(1, to_keep)


@pytest.mark.parametrize("seed", range(16))
def test_full_touch_equals_flower_bulyan(seed):
    upd, tables, dense, w = _full_case(100 + seed)
    n = upd.n
    # the largest listed beta satisfying Bulyan's n >= 4 f + 3
    beta = max(b for b in (0.0, 0.05, 0.1, 0.15, 0.2) if n >= 4 * int(b * n) + 3)
    flower = fa.aggregate_bulyan(
        _flower_results(tables, dense, w),
        int(beta * n),
        aggregation_rule=fa.aggregate_krum,
        to_keep=0,
    )
    res = rb.rowwise_bulyan(upd, beta)
    _assert_equal_flower(res, flower, upd.p)
    assert res.info["fallback_rows"] == 0 and not res.info["fallback_dense"]


def test_full_touch_bulyan_exercises_f_positive():
    """The Bulyan cases above include f >= 1 (several Krum rounds on the shrinking set)."""
    fs = []
    for seed in range(16):
        n = _full_case(100 + seed)[0].n
        beta = max(b for b in (0.0, 0.05, 0.1, 0.15, 0.2) if n >= 4 * int(b * n) + 3)
        fs.append(int(beta * n))
    assert max(fs) >= 2 and min(fs) == 0


@pytest.mark.parametrize("seed", range(6))
def test_full_touch_distances_equal_flower(seed):
    upd, tables, dense, w = _full_case(seed)
    flower = fa._compute_distances([ws for ws, _ in _flower_results(tables, dense, w)])
    np.testing.assert_allclose(rb.pairwise_sq_distances(upd), flower, rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------ FedAvg
@pytest.mark.parametrize("seed", range(6))
def test_rowwise_mean_is_fedavg(seed):
    upd = _sparse_case(seed)
    N = upd.weights.sum()
    want_rows = np.zeros((upd.num_rows, upd.d))
    for i, r, n_c in zip(upd.ids, upd.rows, upd.weights):
        want_rows[i] += n_c * r
    want_rows /= N
    row_delta, dense = rb.fedavg_scale(rb.rowwise_mean(upd))
    np.testing.assert_allclose(row_delta, want_rows, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dense, upd.weights @ upd.dense / N, rtol=1e-12, atol=1e-14)
    # ... which is Flower's aggregate on the zero-filled updates
    U, _ = upd.to_dense()
    flower = fa.aggregate([([u], int(n_c)) for u, n_c in zip(U, upd.weights)])[0]
    np.testing.assert_allclose(np.concatenate([row_delta.ravel(), dense]), flower, atol=1e-14)


# ------------------------------------------------------------------ sparse cases
def test_distances_over_shared_coordinates():
    for seed in range(4):
        upd = _sparse_case(seed)
        np.testing.assert_allclose(
            rb.pairwise_sq_distances(upd), _ref_distances(upd), rtol=1e-10, atol=1e-12
        )


def test_single_voter_and_untouched_rows():
    # row 0: client 0 only; row 1: nobody; row 2: everyone
    rng = np.random.default_rng(1)
    n, d = 5, 2
    ids = [[0, 2]] + [[2]] * (n - 1)
    rows = [rng.normal(size=(len(i), d)) for i in ids]
    w = np.array([4.0, 1.0, 2.0, 3.0, 10.0])
    upd = rb.RowUpdates.from_lists(ids, rows, 3, dense=rng.normal(size=(n, 2)), weights=w)
    rules = [
        rb.rowwise_mean(upd),
        rb.rowwise_median(upd),
        rb.rowwise_trimmed_mean(upd, 0.2),
        rb.rowwise_krum(upd, 0.2),
        rb.rowwise_krum(upd, 0.2, 0.5),
        rb.rowwise_bulyan(upd, 0.2),
    ]
    for res in rules:
        np.testing.assert_allclose(res.rows[0], rows[0][0], rtol=1e-15)
        assert np.all(res.rows[1] == 0.0)
        np.testing.assert_array_equal(res.touched, [True, False, True])
        np.testing.assert_allclose(res.voter_share, [4 / 20, 0.0, 1.0])
        delta, _ = rb.fedavg_scale(res)
        np.testing.assert_allclose(delta[0], 4 * rows[0][0] / 20)
        assert np.all(delta[1] == 0.0)
        np.testing.assert_array_equal(res.info["num_voters"], [1, 0, 5])


def _planted(outlier):
    """Rows 0, 1: voters 1..8 (not the attacker); row 2 (target): voters 0..6;
    row 3: voters 0..8. Client 0's row-2 update is ``outlier``."""
    rng = np.random.default_rng(7)
    n, d = 9, 4
    ids = [[2, 3]] + [[0, 1, 2, 3]] * 6 + [[0, 1, 3]] * 2
    rows = [rng.normal(size=(len(i), d)) * 0.1 + 1.0 for i in ids]
    rows[0][0] = outlier
    return rb.RowUpdates.from_lists(ids, rows, 4, dense=rng.normal(size=(n, 3)))


@pytest.mark.parametrize(
    "rule",
    [
        rb.rowwise_median,
        lambda u: rb.rowwise_trimmed_mean(u, 0.2),
        lambda u: rb.rowwise_krum(u, 0.2),
        lambda u: rb.rowwise_krum(u, 0.2, 0.5),
    ],
    ids=["median", "trimmed", "krum", "multikrum"],
)
def test_planted_outlier_rejected_on_its_row_only(rule):
    clean = _planted(np.full(4, 1.0))
    attacked = _planted(np.full(4, 1e6))
    res_clean, res_att = rule(clean), rule(attacked)
    benign = np.stack([r[list(i).index(2)] for i, r in zip(attacked.ids[1:7], attacked.rows[1:7])])
    # the target row stays inside the benign voters' range (the outlier is rejected) ...
    assert np.all(res_att.rows[2] >= benign.min(0) - 1e-12)
    assert np.all(res_att.rows[2] <= benign.max(0) + 1e-12)
    # ... and rows whose voters do not include the attacker are exactly unaffected
    np.testing.assert_array_equal(res_att.rows[:2], res_clean.rows[:2])
    # the plain mean is dragged away
    assert rb.rowwise_mean(attacked).rows[2].min() > 1e4


def test_planted_outlier_coordinatewise_rules_row_local():
    """Median and trimmed mean are row-local: every other row is unchanged, including
    row 3 on which the attacker votes."""
    clean, attacked = _planted(np.full(4, 1.0)), _planted(np.full(4, 1e6))
    for rule in (rb.rowwise_median, lambda u: rb.rowwise_trimmed_mean(u, 0.2)):
        a, c = rule(attacked), rule(clean)
        np.testing.assert_array_equal(a.rows[[0, 1, 3]], c.rows[[0, 1, 3]])
        np.testing.assert_array_equal(a.dense, c.dense)


def test_krum_not_selecting_attacker_on_target_row():
    res = rb.rowwise_krum(_planted(np.full(4, 1e6)), 0.2)
    assert res.info["selected_rows"][0] == 0
    assert res.info["selected_share"][0] == 0.0
    assert res.info["selected_rows"].sum() == 4  # one voter per touched row


def _ref_rowwise_krum(upd, beta, keep_frac):
    """Reference: per row, Flower's Krum loop on the voters' block of the loop distances."""
    D = _ref_distances(upd)
    out = np.zeros((upd.num_rows, upd.d))
    for r in range(upd.num_rows):
        voters = [c for c in range(upd.n) if r in upd.ids[c]]
        if not voters:
            continue
        V, f = len(voters), int(beta * len(voters))
        sub = D[np.ix_(voters, voters)]
        k = max(1, V - f - 2)
        scores = [np.sum(sub[i, np.argsort(sub[i])[1 : k + 1]]) for i in range(V)]
        vals = np.stack([upd.rows[c][list(upd.ids[c]).index(r)] for c in voters])
        if keep_frac == 0:
            out[r] = vals[int(np.argmin(scores))]
        else:
            keep = min(V, max(1, math.ceil(round(keep_frac * V, 9))))
            best = np.argsort(scores)[:keep]
            ww = upd.weights[voters][best]
            out[r] = ww @ vals[best] / ww.sum()
    return out


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("keep_frac", [0.0, 0.4])
def test_sparse_krum_matches_loop_reference(seed, keep_frac):
    upd = _sparse_case(seed, n=14, R=8, cover=0.6)
    res = rb.rowwise_krum(upd, 0.2, keep_frac)
    np.testing.assert_allclose(res.rows, _ref_rowwise_krum(upd, 0.2, keep_frac), atol=1e-12)


def test_voter_sets_shared():
    # rows 0-2 share voters {0..5}, rows 3-4 share {2..9}: two distinct voter sets
    rng = np.random.default_rng(3)
    ids = [[0, 1, 2]] * 2 + [[0, 1, 2, 3, 4]] * 4 + [[3, 4]] * 4
    rows = [rng.normal(size=(len(i), 2)) for i in ids]
    upd = rb.RowUpdates.from_lists(ids, rows, 5)
    res = rb.rowwise_krum(upd, 0.1)
    assert res.info["num_voter_sets"] == 2
    assert res.dense.shape == (0,)


def test_bulyan_fallback_rows_are_medians():
    # beta = 0.2: row 0 has 11 voters (f = 2, 11 >= 4 f + 3: Bulyan), row 1 has 6 (f = 1,
    # 6 < 7: fallback), row 2 has 2 (f = 0, 2 < 3: fallback)
    rng = np.random.default_rng(5)
    n, d = 11, 3
    ids = [[0, 1, 2]] * 2 + [[0, 1]] * 4 + [[0]] * 5
    rows = [rng.normal(size=(len(i), d)) for i in ids]
    upd = rb.RowUpdates.from_lists(ids, rows, 3, dense=rng.normal(size=(n, 2)))
    res = rb.rowwise_bulyan(upd, 0.2)
    assert res.info["fallback_rows"] == 2 and not res.info["fallback_dense"]
    med = rb.rowwise_median(upd)
    np.testing.assert_array_equal(res.rows[1:], med.rows[1:])
    # row 0 runs Bulyan: theta = 11 - 2 * 2 selections
    assert res.info["selected_rows"].sum() == 11 - 2 * 2
    # dense part: n = 11, f = 2: Bulyan (no fallback); with beta = 0.45 it falls back
    res = rb.rowwise_bulyan(upd, 0.45)
    assert res.info["fallback_dense"] and res.info["fallback_rows"] == 3
    np.testing.assert_array_equal(res.dense, np.median(upd.dense, axis=0))


def test_bulyan_row_equals_flower_on_disjoint_voters():
    """With voters touching only that row and no dense part, the shared-coordinate
    distance is the row distance: a sparse row equals Flower's Bulyan on its voters."""
    rng = np.random.default_rng(11)
    ids = [[0]] * 15 + [[1]] * 4
    rows = [rng.normal(size=(1, 3)) for _ in ids]
    upd = rb.RowUpdates.from_lists(ids, rows, 3)
    res = rb.rowwise_bulyan(upd, 0.2)
    flower = fa.aggregate_bulyan(
        [([rows[c][0]], 1) for c in range(15)], 3, aggregation_rule=fa.aggregate_krum, to_keep=0
    )
    np.testing.assert_allclose(res.rows[0], flower[0], atol=TOL)
    # row 1: V = 4, f = 0 (4 >= 3, no fallback): every voter selected, their plain mean
    flower = fa.aggregate_bulyan(
        [([rows[c][0]], 1) for c in range(15, 19)], 0, aggregation_rule=fa.aggregate_krum, to_keep=0
    )
    np.testing.assert_allclose(res.rows[1], flower[0], atol=TOL)
    np.testing.assert_allclose(res.rows[1], np.mean([rows[c][0] for c in range(15, 19)], 0))
    assert res.info["fallback_rows"] == 0
    assert np.all(res.rows[2] == 0.0) and not res.touched[2]


# ------------------------------------------------------------------ layout
def test_to_dense_and_sorting():
    ids = [np.array([3, 0]), np.array([], dtype=np.int64), np.array([1])]
    rows = [np.array([[3.0, 3.5], [0.0, 0.5]]), np.zeros((0, 2)), np.array([[1.0, 1.5]])]
    upd = rb.RowUpdates.from_lists(ids, rows, 4, dense=[[9.0], [8.0], [7.0]], weights=[1, 2, 3])
    np.testing.assert_array_equal(upd.ids[0], [0, 3])
    np.testing.assert_array_equal(upd.rows[0], [[0.0, 0.5], [3.0, 3.5]])
    U, mask = upd.to_dense()
    np.testing.assert_array_equal(
        U,
        [
            [0.0, 0.5, 0, 0, 0, 0, 3.0, 3.5, 9.0],
            [0, 0, 0, 0, 0, 0, 0, 0, 8.0],
            [0, 0, 1.0, 1.5, 0, 0, 0, 0, 7.0],
        ],
    )
    np.testing.assert_array_equal(mask, [[1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 0, 0]])
    assert (upd.n, upd.p, upd.num_rows, upd.d) == (3, 1, 4, 2)


# ------------------------------------------------------------------ clipping
def test_clip_updates():
    upd = _sparse_case(0)
    norms = rb.update_norms(upd)
    U, _ = upd.to_dense()
    np.testing.assert_allclose(norms, np.linalg.norm(U, axis=1), rtol=1e-12)
    C = float(np.median(norms))
    clipped, factors = rb.clip_updates(upd, C)
    np.testing.assert_allclose(factors, np.minimum(1.0, C / norms), rtol=1e-15)
    new = rb.update_norms(clipped)
    assert np.all(new <= C * (1 + 1e-12))
    small = norms <= C
    np.testing.assert_array_equal(new[small], norms[small])
    np.testing.assert_allclose(new[~small], C, rtol=1e-12)
    Uc, _ = clipped.to_dense()
    np.testing.assert_allclose(Uc, U * factors[:, None], rtol=1e-15)
    assert C == rb.adaptive_clip_norm(norms, 0.5)
    assert rb.adaptive_clip_norm(norms, 0.9) == np.quantile(norms, 0.9)
    # a zero update keeps factor 1; max_norm 0 zeroes the others
    z = rb.RowUpdates.from_lists([[0], [0]], [[[0.0]], [[2.0]]], 1)
    _, f = rb.clip_updates(z, 0.0)
    np.testing.assert_array_equal(f, [1.0, 0.0])


# ------------------------------------------------------------------ anomaly scores
def _attack_case(scale):
    rng = np.random.default_rng(21)
    n, R, d, p = 30, 40, 8, 20
    ids = [np.sort(rng.choice(R, size=10, replace=False)) for _ in range(n)]
    ids[4] = np.union1d(ids[4], [7])
    rows = [rng.normal(size=(len(i), d)) * 0.1 for i in ids]
    dense = rng.normal(size=(n, p)) * 0.1 + 0.2
    rows[4][list(ids[4]).index(7)] *= scale  # huge update of the target row 7
    return rb.RowUpdates.from_lists(ids, rows, R, dense=dense, weights=rng.integers(1, 9, n))


def test_anomaly_scores_flag_planted_client():
    upd = _attack_case(1e3)
    scores = rb.anomaly_scores(upd)
    assert int(np.argmax(scores)) == 4
    assert rb.flag_anomalies(scores)[4]
    parts = rb.anomaly_components(upd)
    assert parts.norm_z[4] > 10 and parts.row_z[4] > 10
    np.testing.assert_array_equal(parts.score, scores)
    # deterministic
    np.testing.assert_array_equal(rb.anomaly_scores(upd), scores)
    # the unattacked round flags nobody at a high threshold and scores are >= 0
    clean = rb.anomaly_scores(_attack_case(1.0))
    assert np.all(clean >= 0) and clean.max() < scores[4] / 10


def test_anomaly_scores_permutation_equivariant():
    upd = _attack_case(1e3)
    perm = np.random.default_rng(0).permutation(upd.n)
    shuffled = rb.RowUpdates.from_lists(
        [upd.ids[c] for c in perm],
        [upd.rows[c] for c in perm],
        upd.num_rows,
        dense=upd.dense[perm],
        weights=upd.weights[perm],
    )
    np.testing.assert_allclose(rb.anomaly_scores(shuffled), rb.anomaly_scores(upd)[perm])


def test_anomaly_cosine_part_flags_sign_flip():
    rng = np.random.default_rng(2)
    n, p = 20, 50
    dense = rng.normal(size=(n, p)) * 0.1 + 1.0
    dense[3] = -dense[3]  # same norm, flipped direction
    upd = rb.RowUpdates.from_lists([[]] * n, [np.zeros((0, 1))] * n, 1, dense=dense, d=1)
    parts = rb.anomaly_components(upd)
    assert parts.cosine_distance[3] > 1.9
    assert int(np.argmax(parts.score)) == 3 and parts.cosine_z[3] > 100
    assert abs(parts.norm_z[3]) < 3


def test_flag_anomalies():
    np.testing.assert_array_equal(rb.flag_anomalies([0.0, 3.5, 3.6]), [False, False, True])
    np.testing.assert_array_equal(rb.flag_anomalies([1.0, 2.0], threshold=1.5), [False, True])


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ids": [[0], [1]], "rows": [[[1.0]]]}, "2 clients but rows has 1"),
        ({"ids": [[0], [5]]}, r"client 1: row id 5 out of range \[0, 3\)"),
        ({"ids": [[0], [-1]]}, "client 1: row id -1 out of range"),
        ({"ids": [[0], [1, 1]], "rows": [[[1.0]], [[1.0], [2.0]]]}, "client 1: duplicate row id 1"),
        ({"rows": [[[1.0]], [[np.nan]]]}, "client 1: rows must be finite"),
        ({"rows": [[[1.0]], [[1.0], [2.0]]]}, "client 1: 1 ids but 2 row updates"),
        ({"rows": [[[1.0]], [[1.0, 2.0]]]}, r"client 1: rows must have shape \(k, 1\)"),
        ({"ids": [[0], [0.5]]}, "client 1: ids must be integers"),
        ({"dense": [[1.0], [np.inf]]}, "dense must be finite"),
        ({"dense": [[1.0], [1.0, 2.0]]}, "dense updates of different shapes"),
        ({"weights": [1.0, 0.0]}, "weights must be > 0; client 1"),
        ({"weights": [1.0]}, r"weights must have shape \(2,\)"),
        ({"weights": [1.0, np.nan]}, "weights must be finite"),
    ],
)
def test_validation_errors(kwargs, match):
    base = {"ids": [[0], [1]], "rows": [[[1.0]], [[2.0]]], "num_rows": 3}
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        rb.RowUpdates.from_lists(**base)


def test_validation_errors_rules():
    upd = _sparse_case(0)
    with pytest.raises(ConfigError, match="beta"):
        rb.rowwise_krum(upd, 0.5)
    with pytest.raises(ConfigError, match="beta"):
        rb.rowwise_trimmed_mean(upd, -0.1)
    with pytest.raises(ConfigError, match="beta"):
        rb.rowwise_bulyan(upd, True)
    with pytest.raises(ConfigError, match="keep_frac"):
        rb.rowwise_krum(upd, 0.1, 1.5)
    with pytest.raises(ConfigError, match="max_norm"):
        rb.clip_updates(upd, -1.0)
    with pytest.raises(ConfigError, match="quantile"):
        rb.adaptive_clip_norm([1.0, 2.0], 1.5)
    with pytest.raises(ConfigError, match="norms"):
        rb.adaptive_clip_norm([], 0.5)
    with pytest.raises(ConfigError, match="threshold"):
        rb.flag_anomalies([1.0], -1.0)
    with pytest.raises(ConfigError, match="pass d explicitly"):
        rb.RowUpdates.from_lists([[]], [[]], 2)
    with pytest.raises(ConfigError, match="at least one client"):
        rb.RowUpdates.from_lists([], [], 2, d=1)
