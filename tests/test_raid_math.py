"""RAID maths (fedrec.algorithms.raid): OT checks against closed forms, POT and an
independent fixed point; federated summability; marginals; determinism; errors.

Small problems only: the whole file runs in a few seconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import ot
import pytest
import scipy.linalg

from fedrec.algorithms import raid as R
from fedrec.errors import ConfigError


def _spd(rng, d, scale=1.0):
    L = rng.normal(size=(d, d))
    return scale * (L @ L.T / d + 0.2 * np.eye(d))


def _gaussians(seed=0, G=3, d=4):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=2.0, size=(G, d))
    covs = np.stack([_spd(rng, d, scale=0.5 + a) for a in range(G)])
    return means, covs


def _exact_moment_samples(rng, m, C, n):
    """``n`` samples whose empirical mean is ``m`` and population covariance is ``C``."""
    z = rng.normal(size=(n, m.shape[0]))
    z -= z.mean(axis=0)
    L = np.linalg.cholesky(np.cov(z.T, bias=True))
    z = z @ np.linalg.inv(L).T  # identity covariance
    return z @ np.linalg.cholesky(C).T + m


def _fixed_point_barycenter(covs, w, iters=500):
    """Independent implementation: C <- sum_a w_a (C^1/2 C_a C^1/2)^1/2."""
    C = np.eye(covs.shape[1])
    for _ in range(iters):
        r = np.real(scipy.linalg.sqrtm(C))
        new = sum(wa * np.real(scipy.linalg.sqrtm(r @ Ca @ r)) for wa, Ca in zip(w, covs))
        new = 0.5 * (new + new.T)
        if np.linalg.norm(new - C) < 1e-13:
            return new
        C = new
    return C


# ---------------------------------------------------------------- layering
def test_module_imports_no_flwr():
    src = Path(R.__file__).read_text()
    assert "flwr" not in src
    mods = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module.split(".")[0])
    assert mods <= {
        "__future__",
        "collections",
        "contextlib",
        "io",
        "warnings",
        "typing",
        "numpy",
        "ot",
        "scipy",
        "sklearn",
        "fedrec",
    }


# ------------------------------------------------- OT check 1: 1-D free support
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.3, 0.7), (0.2, 0.3, 0.5)])
def test_free_support_barycenter_1d_is_quantile_average(weights):
    rng = np.random.default_rng(1)
    n = 40
    samples = [rng.normal(loc=3 * a, scale=1 + a, size=n) for a in range(len(weights))]
    measures = [(x[:, None], np.full(n, 1.0 / n)) for x in samples]
    X = R.free_support_barycenter(measures, np.array(weights), support_size=n, seed=0)
    assert X.shape == (n, 1)
    expected = sum(w * np.sort(x) for w, x in zip(weights, samples))
    np.testing.assert_allclose(np.sort(X[:, 0]), expected, atol=1e-6)


def test_free_support_barycenter_raw_masses_and_determinism():
    rng = np.random.default_rng(2)
    n = 30
    xs = [rng.normal(size=n), rng.normal(loc=5, size=n)]
    # masses (not normalised) give the same result as normalised weights
    m_raw = [(x[:, None], np.full(n, 7.0)) for x in xs]
    m_norm = [(x[:, None], np.full(n, 1.0 / n)) for x in xs]
    X1 = R.free_support_barycenter(m_raw, np.array([3.0, 1.0]), n, seed=4)
    X2 = R.free_support_barycenter(m_norm, np.array([0.75, 0.25]), n, seed=4)
    np.testing.assert_allclose(np.sort(X1[:, 0]), np.sort(X2[:, 0]), atol=1e-9)
    np.testing.assert_array_equal(
        X1, R.free_support_barycenter(m_raw, np.array([3.0, 1.0]), n, seed=4)
    )
    # an empty measure is dropped
    X3 = R.free_support_barycenter(
        m_norm + [(np.zeros((0, 1)), np.zeros(0))], np.array([0.75, 0.25, 0.0]), n, seed=4
    )
    np.testing.assert_allclose(np.sort(X3[:, 0]), np.sort(X2[:, 0]), atol=1e-9)


def test_free_support_barycenter_2d_matches_pot_and_beats_inputs():
    rng = np.random.default_rng(3)
    locs = [rng.normal(size=(25, 2)), rng.normal(loc=(4, 0), size=(35, 2)) * [1, 2]]
    wts = [rng.uniform(1, 3, size=25), np.ones(35)]
    s = 20
    X = R.free_support_barycenter(list(zip(locs, wts)), np.array([0.4, 0.6]), s, seed=0)
    assert X.shape == (s, 2)
    # it is a fixed point of POT's iteration started at X
    Xp = ot.lp.free_support_barycenter(
        locs,
        [w / w.sum() for w in wts],
        X.copy(),
        b=np.full(s, 1 / s),
        weights=np.array([0.4, 0.6]),
        numItermax=1,
    )
    np.testing.assert_allclose(Xp, X, atol=1e-3)

    def objective(Y):
        return sum(
            wa * ot.emd2(np.full(s, 1 / s), w / w.sum(), ot.dist(Y, L))
            for wa, L, w in zip([0.4, 0.6], locs, wts)
        )

    init_like = locs[1][:s]
    assert objective(X) < objective(init_like)


# ----------------------------------------------------- OT check 2: Gaussian bary
@pytest.mark.parametrize("weights", [None, [0.2, 0.3, 0.5]])
def test_gaussian_barycenter_matches_pot_and_independent_fixed_point(weights):
    means, covs = _gaussians()
    m, C = R.gaussian_barycenter(means, covs, None if weights is None else np.array(weights))
    w = np.full(3, 1 / 3) if weights is None else np.array(weights)
    # POT directly
    mp, Cp = ot.gaussian.bures_wasserstein_barycenter(
        means, covs, weights=w, num_iter=1000, eps=1e-12
    )
    np.testing.assert_allclose(m, mp, atol=1e-12)
    np.testing.assert_allclose(C, Cp, atol=1e-8)
    # independent fixed point (scipy sqrtm)
    np.testing.assert_allclose(m, w @ means, atol=1e-12)
    np.testing.assert_allclose(C, _fixed_point_barycenter(covs, w), atol=1e-8)
    # barycenter equation residual
    r = np.real(scipy.linalg.sqrtm(C))
    rhs = sum(wa * np.real(scipy.linalg.sqrtm(r @ Ca @ r)) for wa, Ca in zip(w, covs))
    np.testing.assert_allclose(C, rhs, atol=1e-8)
    # optimality: the objective does not decrease when C is perturbed
    obj = lambda M, S: sum(wa * R.bures_w2(M, S, ma, Ca) for wa, ma, Ca in zip(w, means, covs))
    base = obj(m, C)
    rng = np.random.default_rng(0)
    for _ in range(5):
        E = rng.normal(size=C.shape) * 1e-2
        assert obj(m, C + E @ E.T) >= base - 1e-12
        assert obj(m + rng.normal(size=m.shape) * 1e-2, C) >= base - 1e-12


def test_gaussian_barycenter_1d_and_commuting_closed_forms():
    w = np.array([0.25, 0.75])
    means = np.array([[1.0], [-3.0]])
    covs = np.array([[[4.0]], [[0.25]]])
    m, C = R.gaussian_barycenter(means, covs, w)
    np.testing.assert_allclose(m, [0.25 - 2.25])
    np.testing.assert_allclose(np.sqrt(C[0, 0]), 0.25 * 2 + 0.75 * 0.5, atol=1e-9)
    # diagonal (commuting) covariances: coordinate-wise 1-D formula
    diag = np.array([[1.0, 4.0, 9.0], [16.0, 1.0, 0.25]])
    m, C = R.gaussian_barycenter(np.zeros((2, 3)), np.stack([np.diag(v) for v in diag]), w)
    np.testing.assert_allclose(C, np.diag((w @ np.sqrt(diag)) ** 2), atol=1e-8)


# -------------------------------------------------- OT check 3: maps push moments
def test_gaussian_maps_push_moments_exactly_and_are_optimal():
    means, covs = _gaussians(seed=5)
    w = np.array([0.5, 0.3, 0.2])
    m, C = R.gaussian_barycenter(means, covs, w)
    A, b = R.gaussian_maps(means, covs, m, C)
    assert A.shape == (3, 4, 4) and b.shape == (3, 4)
    rng = np.random.default_rng(0)
    for a in range(3):
        np.testing.assert_allclose(A[a] @ covs[a] @ A[a].T, C, atol=1e-9)
        np.testing.assert_allclose(A[a] @ means[a] + b[a], m, atol=1e-12)
        np.testing.assert_allclose(A[a], A[a].T, atol=1e-10)
        assert np.linalg.eigvalsh(A[a]).min() > 0  # Brenier map: gradient of a convex function
        x = _exact_moment_samples(rng, means[a], covs[a], 500)
        t = R.gaussian_targets(x, np.full(500, a), A, b)
        np.testing.assert_allclose(t.mean(axis=0), m, atol=1e-9)
        np.testing.assert_allclose(np.cov(t.T, bias=True), C, atol=1e-9)
        # transport cost of the map = squared Bures-Wasserstein distance (optimality)
        np.testing.assert_allclose(
            np.mean(np.sum((t - x) ** 2, axis=1)), R.bures_w2(means[a], covs[a], m, C), rtol=1e-8
        )


def test_pot_mapping_row_convention():
    means, covs = _gaussians(seed=6, G=2, d=3)
    m, C = R.gaussian_barycenter(means, covs)
    A, b = R.gaussian_maps(means, covs, m, C)
    Ap, bp = ot.gaussian.bures_wasserstein_mapping(means[1], m, covs[1], C)
    x = np.random.default_rng(0).normal(size=(10, 3))
    np.testing.assert_allclose(
        R.gaussian_targets(x, np.ones(10, dtype=int), A, b), x @ Ap + bp, atol=1e-10
    )


def test_gaussian_maps_small_groups_go_to_the_barycenter_mean():
    rng = np.random.default_rng(7)
    emb = np.vstack([rng.normal(size=(50, 3)), rng.normal(loc=4, size=(1, 3))])
    groups = np.r_[np.zeros(50, dtype=int), 1]
    counts, sums, outer = R.group_moment_sums(emb, groups, 2)
    means, covs = R.moments_from_sums(counts, sums, outer)
    np.testing.assert_allclose(covs[1], 1e-6 * np.eye(3), atol=1e-12)  # single user: ridge only
    m, C = R.gaussian_barycenter(means, covs, counts / counts.sum())
    A, b = R.gaussian_maps(means, covs, m, C, counts=counts)
    np.testing.assert_array_equal(A[1], 0)
    np.testing.assert_allclose(b[1], m)
    t = R.gaussian_targets(emb + 0.1, groups, A, b)
    np.testing.assert_allclose(t[-1], m)


def test_gaussian_maps_groups_of_at_most_d_users_are_only_shifted():
    """A group of 2..d users has a singular covariance: the Brenier map to a full-rank
    target would blow its users' off-span drift up by ~ridge^-1/2; it is shifted instead."""
    rng = np.random.default_rng(9)
    d = 4
    emb = np.vstack([rng.normal(size=(60, d)), rng.normal(loc=2, size=(3, d))])
    groups = np.r_[np.zeros(60, dtype=int), np.ones(3, dtype=int)]
    counts, sums, outer = R.group_moment_sums(emb, groups, 2)
    means, covs = R.moments_from_sums(counts, sums, outer)
    m, C = R.gaussian_barycenter(means, covs, counts / counts.sum())
    A, b = R.gaussian_maps(means, covs, m, C, counts=counts)
    np.testing.assert_array_equal(A[1], np.eye(d))
    np.testing.assert_allclose(b[1], m - means[1])
    drift = emb + 1e-3  # a small drift off the group's affine span moves the target by as much
    t = R.gaussian_targets(drift, groups, A, b)
    np.testing.assert_allclose(t[60:] - R.gaussian_targets(emb, groups, A, b)[60:], 1e-3)
    A_full, _ = R.gaussian_maps(means, covs, m, C)  # without counts: the ill-conditioned map
    assert np.linalg.norm(A_full[1], 2) > 100


# --------------------------------------------------- OT check 4: plan marginals
@pytest.mark.parametrize("b_weights", [None, "random"])
def test_group_plans_marginals_and_targets(b_weights):
    rng = np.random.default_rng(8)
    emb = rng.normal(size=(37, 3))
    groups = rng.integers(0, 3, size=37)
    X = rng.normal(size=(11, 3))
    beta = None if b_weights is None else rng.uniform(0.5, 2, size=11)
    beta_n = np.full(11, 1 / 11) if beta is None else beta / beta.sum()
    plans = R.group_plans(emb, groups, X, beta)
    assert sorted(plans) == sorted(np.unique(groups).tolist())
    t = R.ot_targets(emb, groups, X, beta)
    for a, (idx, plan) in plans.items():
        np.testing.assert_array_equal(idx, np.flatnonzero(groups == a))
        assert plan.shape == (idx.size, 11) and plan.min() >= 0
        np.testing.assert_allclose(plan.sum(axis=1), 1 / idx.size, atol=1e-12)
        np.testing.assert_allclose(plan.sum(axis=0), beta_n, atol=1e-12)
        np.testing.assert_allclose(t[idx], idx.size * plan @ X, atol=1e-12)
        # the plan is optimal: its cost equals ot.emd2
        M = ot.dist(emb[idx], X)
        np.testing.assert_allclose(
            np.sum(plan * M), ot.emd2(np.full(idx.size, 1 / idx.size), beta_n, M), rtol=1e-9
        )


def test_ot_targets_balanced_is_permutation_and_singleton_gets_mean():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(6, 2))
    emb = rng.normal(size=(7, 2))
    groups = np.array([0, 0, 0, 0, 0, 0, 1])
    t = R.ot_targets(emb, groups, X)
    np.testing.assert_allclose(np.sort(t[:6], axis=0), np.sort(X, axis=0), atol=1e-12)
    assert {tuple(r) for r in np.round(t[:6], 12)} == {tuple(r) for r in np.round(X, 12)}
    np.testing.assert_allclose(t[6], X.mean(axis=0), atol=1e-12)


# ---------------------------------------------------- OT check 5: moment sums
def test_moment_sums_are_summable_and_match_numpy():
    rng = np.random.default_rng(10)
    emb = rng.normal(size=(200, 5)) + np.arange(5)
    groups = rng.integers(0, 3, size=200)
    whole = R.group_moment_sums(emb, groups, 3)
    h1 = R.group_moment_sums(emb[:90], groups[:90], 3)
    h2 = R.group_moment_sums(emb[90:], groups[90:], 3)
    for w, a, b in zip(whole, h1, h2):
        assert w.dtype == np.float64
        np.testing.assert_allclose(a + b, w, rtol=1e-12, atol=1e-12)
    assert whole[0].shape == (3,) and whole[1].shape == (3, 5) and whole[2].shape == (3, 5, 5)
    means, covs = R.moments_from_sums(*whole, ridge=1e-3)
    for a in range(3):
        xa = emb[groups == a]
        assert whole[0][a] == xa.shape[0]
        np.testing.assert_allclose(means[a], xa.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(covs[a], np.cov(xa.T, bias=True) + 1e-3 * np.eye(5), atol=1e-10)
        np.testing.assert_array_equal(covs[a], covs[a].T)


# ------------------------------------------------------- OT check 6: bures_w2
def test_bures_w2_closed_forms_and_pot():
    rng = np.random.default_rng(11)
    m = rng.normal(size=4)
    C = _spd(rng, 4)
    assert abs(R.bures_w2(m, C, m, C)) < 1e-10
    s1, s2 = rng.uniform(0.1, 3, size=4), rng.uniform(0.1, 3, size=4)
    m2 = rng.normal(size=4)
    expected = np.sum((m - m2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    np.testing.assert_allclose(R.bures_w2(m, np.diag(s1), m2, np.diag(s2)), expected, rtol=1e-10)
    C2 = _spd(rng, 4, 2.0)
    # POT returns the distance, not its square
    np.testing.assert_allclose(
        R.bures_w2(m, C, m2, C2),
        ot.gaussian.bures_wasserstein_distance(m, m2, C, C2) ** 2,
        rtol=1e-9,
    )
    np.testing.assert_allclose(R.bures_w2(m, C, m2, C2), R.bures_w2(m2, C2, m, C), rtol=1e-9)


# ------------------------------------- OT check 7: alignment shrinks group W2
def test_gaussian_alignment_shrinks_w2_between_groups():
    rng = np.random.default_rng(12)
    d, n = 2, 400
    emb = np.vstack(
        [
            rng.normal(size=(n, d)) @ np.array([[2.0, 0.5], [0.0, 0.5]]) + [3.0, -1.0],
            rng.normal(size=(n, d)) @ np.array([[0.5, 0.0], [0.3, 1.5]]) - [1.0, 2.0],
            rng.normal(size=(n // 2, d)) * 0.7 + [0.0, 4.0],
        ]
    )
    groups = np.r_[np.zeros(n, int), np.ones(n, int), np.full(n // 2, 2)]
    before = R.w2_between_groups(emb, groups)
    counts, sums, outer = R.group_moment_sums(emb, groups, 3)
    means, covs = R.moments_from_sums(counts, sums, outer)
    m, C = R.gaussian_barycenter(means, covs, counts / counts.sum())
    A, b = R.gaussian_maps(means, covs, m, C, counts=counts)
    targets = R.gaussian_targets(emb, groups, A, b)
    after = R.w2_between_groups(targets, groups)
    assert set(before["pairs"]) == {(0, 1), (0, 2), (1, 2)}
    assert after["w2"] < 0.3 * before["w2"], (before, after)
    # the RAID penalty step moves embeddings toward the targets and shrinks W2 too
    _, grad = R.raid_penalty(emb, targets, gamma=1.0)
    stepped = emb - 0.25 * grad  # halfway to the targets
    assert after["w2"] < R.w2_between_groups(stepped, groups)["w2"] < before["w2"]


def test_free_support_alignment_shrinks_w2_between_groups_federated():
    rng = np.random.default_rng(13)
    n = 150
    emb = np.vstack([rng.normal(size=(n, 2)) + [2.0, 0.0], rng.normal(size=(n, 2)) * [0.5, 2.0]])
    groups = np.r_[np.zeros(n, int), np.ones(n, int)]
    silos = [np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)]
    uploads = [R.quantize_groups(emb[s], groups[s], 2, k=30, seed=0) for s in silos]
    pooled = [
        (np.vstack([u[a][0] for u in uploads]), np.concatenate([u[a][1] for u in uploads]))
        for a in range(2)
    ]
    counts = np.array([p[1].sum() for p in pooled])
    np.testing.assert_array_equal(counts, [n, n])
    X = R.free_support_barycenter(pooled, counts / counts.sum(), support_size=50, seed=0)
    targets = np.zeros_like(emb)
    for s in silos:
        targets[s] = R.ot_targets(emb[s], groups[s], X)
    before = R.w2_between_groups(emb, groups)["w2"]
    after = R.w2_between_groups(targets, groups)["w2"]
    assert after < 0.3 * before, (before, after)


# ---------------------------------------------------------- quantisation
def test_quantize_groups_shapes_masses_and_determinism():
    rng = np.random.default_rng(14)
    emb = rng.normal(size=(60, 3))
    groups = np.r_[np.zeros(50, int), np.ones(4, int), np.full(6, 3)]
    out = R.quantize_groups(emb, groups, 4, k=5, seed=0)
    assert len(out) == 4
    (X0, w0), (X1, w1), (X2, w2), (X3, w3) = out
    assert X0.shape == (5, 3) and w0.sum() == 50 and np.all(w0 >= 1)
    np.testing.assert_array_equal(X1, emb[50:54])
    np.testing.assert_array_equal(w1, np.ones(4))
    assert X2.shape == (0, 3) and w2.shape == (0,)
    assert X3.shape == (5, 3) and w3.sum() == 6
    # the centroids are the means of their clusters: masses preserve the group mean
    np.testing.assert_allclose(w0 @ X0 / 50, emb[:50].mean(axis=0), atol=1e-10)
    again = R.quantize_groups(emb, groups, 4, k=5, seed=0)
    for (a, b), (c, e) in zip(out, again):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, e)
    # duplicate embeddings: empty clusters are dropped, masses still add up
    dup = np.repeat(rng.normal(size=(2, 3)), 10, axis=0)
    ((Xd, wd),) = R.quantize_groups(dup, np.zeros(20, int), 1, k=5, seed=0)
    assert Xd.shape[0] <= 5 and wd.sum() == 20 and np.all(wd > 0)


# ---------------------------------------------------- diagnostic and penalty
def test_w2_between_groups_subsampling_and_standardisation():
    rng = np.random.default_rng(15)
    emb = np.vstack([rng.normal(size=(120, 2)), rng.normal(loc=1, size=(80, 2))])
    groups = np.r_[np.zeros(120, int), np.ones(80, int)]
    r1 = R.w2_between_groups(emb, groups, max_per_group=50, seed=3)
    r2 = R.w2_between_groups(emb, groups, max_per_group=50, seed=3)
    assert r1 == r2 and set(r1["pairs"]) == {(0, 1)}
    # scale invariance with standardisation, W2 = |shift| for a pure shift without it
    r3 = R.w2_between_groups(emb * 10 + 5, groups, max_per_group=None)
    r4 = R.w2_between_groups(emb, groups, max_per_group=None)
    assert r3["w2"] == pytest.approx(r4["w2"], rel=1e-9)
    x = rng.normal(size=(30, 2))
    r5 = R.w2_between_groups(
        np.vstack([x, x + [3.0, 4.0]]),
        np.r_[np.zeros(30, int), np.ones(30, int)],
        standardize=False,
    )
    assert r5["w2"] == pytest.approx(5.0, rel=1e-9)


def test_raid_penalty_value_and_gradient():
    rng = np.random.default_rng(16)
    e, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    val, grad = R.raid_penalty(e, t, gamma=0.7)
    np.testing.assert_allclose(val, 0.7 * np.sum((e - t) ** 2, axis=1))
    np.testing.assert_allclose(grad, 1.4 * (e - t))
    np.testing.assert_allclose(R.raid_penalty_grad(e, t, 0.7), grad)
    h = 1e-6
    for i, j in [(0, 0), (3, 2)]:
        ep = e.copy()
        ep[i, j] += h
        fd = (R.raid_penalty(ep, t, 0.7)[0][i] - val[i]) / h
        assert fd == pytest.approx(grad[i, j], abs=1e-4)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: R.moments_from_sums(
                np.array([3.0, 0.0]), np.zeros((2, 2)), np.zeros((2, 2, 2))
            ),
            r"counts must be > 0 .*groups \[1\] are empty",
        ),
        (
            lambda: R.moments_from_sums(np.array([3.0]), np.zeros((2, 2)), np.zeros((2, 2, 2))),
            "sums must have shape",
        ),
        (
            lambda: R.moments_from_sums(np.ones(2), np.zeros((2, 2)), np.zeros((2, 3, 3))),
            "outer must have shape",
        ),
        (
            lambda: R.moments_from_sums(
                np.ones(1), np.zeros((1, 2)), np.zeros((1, 2, 2)), ridge=-1
            ),
            "ridge",
        ),
        (
            lambda: R.group_moment_sums(np.zeros((4, 2)), np.zeros(3, int), 2),
            r"groups must have shape \(4,\)",
        ),
        (
            lambda: R.group_moment_sums(np.zeros((4, 2)), np.array([0, 1, 2, 0]), 2),
            r"outside 0\.\.1",
        ),
        (
            lambda: R.group_moment_sums(np.zeros(4), np.zeros(4, int), 2),
            r"emb must be a 2-D \(n, d\)",
        ),
        (
            lambda: R.group_moment_sums(np.zeros((4, 2)), np.array([0, 0.5, 1, 0]), 2),
            "integer group ids",
        ),
        (
            lambda: R.quantize_groups(np.zeros((4, 2)), np.zeros(4, int), 1, k=0, seed=0),
            r"k must be an integer >= 1",
        ),
        (
            lambda: R.quantize_groups(np.zeros((4, 2)), np.zeros(4, int), 1, k=2.5, seed=0),
            r"k must be an integer",
        ),
        (
            lambda: R.gaussian_barycenter(np.zeros((2, 3)), np.zeros((2, 2, 2))),
            r"covs must have shape \(2, 3, 3\)",
        ),
        (lambda: R.gaussian_barycenter(np.zeros((2, 2)), np.zeros((2, 2, 2))), "positive definite"),
        (
            lambda: R.gaussian_barycenter(
                np.zeros((2, 1)), np.ones((2, 1, 1)), np.array([1.0, -1.0])
            ),
            "weights",
        ),
        (
            lambda: R.gaussian_maps(
                np.zeros((2, 2)), np.stack([np.eye(2)] * 2), np.zeros(3), np.eye(3)
            ),
            "m_star and C_star must have shapes",
        ),
        (
            lambda: R.gaussian_targets(
                np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 3, 3)), np.zeros((1, 3))
            ),
            "A and b must have shapes",
        ),
        (
            lambda: R.free_support_barycenter(
                [(np.zeros((2, 1)), np.ones(2))], np.ones(1), 0, seed=0
            ),
            "support_size must be an integer >= 1",
        ),
        (
            lambda: R.free_support_barycenter(
                [(np.zeros((2, 1)), np.ones(2))], np.ones(2), 2, seed=0
            ),
            r"group_weights must have shape \(1,\)",
        ),
        (
            lambda: R.free_support_barycenter(
                [(np.zeros((2, 1)), np.ones(2)), (np.zeros((2, 2)), np.ones(2))],
                np.ones(2),
                2,
                seed=0,
            ),
            "dimension 2, expected 1",
        ),
        (
            lambda: R.free_support_barycenter(
                [(np.zeros((0, 1)), np.zeros(0))], np.ones(1), 2, seed=0
            ),
            "positive mass",
        ),
        (
            lambda: R.ot_targets(np.zeros((3, 2)), np.zeros(3, int), np.zeros((4, 3))),
            "X_star must have dimension 2",
        ),
        (
            lambda: R.ot_targets(np.zeros((3, 2)), np.zeros(3, int), np.zeros((4, 2)), np.ones(3)),
            r"b_weights must have shape \(4,\)",
        ),
        (
            lambda: R.w2_between_groups(np.zeros((3, 2)), np.zeros(3, int)),
            "at least 2 distinct groups",
        ),
        (
            lambda: R.w2_between_groups(np.zeros((4, 2)), np.array([0, 0, 1, 1]), max_per_group=0),
            "max_per_group",
        ),
        (
            lambda: R.raid_penalty(np.zeros((3, 2)), np.zeros((3, 3)), 1.0),
            "targets must have the shape",
        ),
        (
            lambda: R.raid_penalty(np.zeros((3, 2)), np.zeros((3, 2)), -1.0),
            "gamma must be a finite number >= 0",
        ),
    ],
)
def test_user_errors_raise_one_line_config_error(call, match):
    with pytest.raises(ConfigError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ resampled targets
def test_resampled_moments_by_hand_and_their_barycenter_is_the_input():
    rng = np.random.default_rng(0)
    d = 3
    B = rng.standard_normal((d, d))
    Cs = B @ B.T + np.eye(d)
    ms = rng.standard_normal(d)
    counts = np.array([50, 2, 0, 30])
    means, covs = R.resampled_moments(ms, Cs, counts, seed=7)
    again = R.resampled_moments(ms, Cs, counts, seed=7)
    assert np.array_equal(means, again[0]) and np.array_equal(covs, again[1])
    # by hand: draws z = eps @ C*^{1/2} + m*, groups in order (the empty one draws nothing)
    ev, V = np.linalg.eigh(Cs)
    root = (V * np.sqrt(ev)) @ V.T
    g = np.random.default_rng(7)
    z = [g.standard_normal((n, d)) @ root + ms for n in (50, 2, 30)]
    zbar = np.array([z[0].mean(0), z[1].mean(0), ms, z[2].mean(0)])
    w = counts / counts.sum()
    np.testing.assert_allclose(means, ms + zbar - w @ zbar, atol=1e-12)

    def brenier(C):  # symmetric A with A Cs A = C
        r = scipy.linalg.sqrtm(Cs).real
        ri = np.linalg.inv(r)
        return ri @ scipy.linalg.sqrtm(r @ C @ r).real @ ri

    R0 = [brenier(np.cov(z[0].T, bias=True)), np.eye(d), np.eye(d)]  # n <= d: identity
    R0.append(brenier(np.cov(z[2].T, bias=True)))
    Rbar = sum(wa * Ra for wa, Ra in zip(w, R0))
    ih = np.linalg.inv(scipy.linalg.sqrtm(Rbar).real)
    for a in range(4):
        Ra = ih @ R0[a] @ ih
        np.testing.assert_allclose(covs[a], Ra @ Cs @ Ra, atol=1e-8)
    # N(m*, C*) is the barycenter of the targets (weights n_a / N)
    keep = counts > 0
    mb, Cb = R.gaussian_barycenter(means[keep], covs[keep], w[keep], tol=1e-12, num_iter=500)
    np.testing.assert_allclose(mb, ms, atol=1e-10)
    np.testing.assert_allclose(Cb, Cs, atol=1e-7)
    with pytest.raises(ConfigError, match="counts"):
        R.resampled_moments(ms, Cs, [0, 0], seed=1)


def test_resampled_group_means_differ_like_those_of_a_fresh_sample():
    d, n0, n1 = 2, 40, 60
    Cs = np.array([[2.0, 0.3], [0.3, 1.0]])
    diffs = []
    for s in range(2000):
        m, _ = R.resampled_moments(np.zeros(d), Cs, [n0, n1], seed=s)
        diffs.append(m[1] - m[0])
        np.testing.assert_allclose((n0 * m[0] + n1 * m[1]) / (n0 + n1), 0.0, atol=1e-12)
    diffs = np.array(diffs)
    np.testing.assert_allclose(diffs.mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(np.cov(diffs.T), Cs * (1 / n0 + 1 / n1), rtol=0.1, atol=3e-3)


def test_gaussian_maps_to_per_group_targets():
    rng = np.random.default_rng(1)
    d, G = 3, 2
    x = rng.standard_normal((80, d)) * [1.0, 2.0, 0.5]
    g = np.arange(80) % 2
    x[g == 1] += 1.0
    counts, sums, outer = R.group_moment_sums(x, g, G)
    m, C = R.moments_from_sums(counts, sums, outer, ridge=0.0)
    mt, Ct = R.resampled_moments(m.mean(0), C.mean(0), counts, seed=3)
    A, b = R.gaussian_maps(m, C, mt, Ct, counts=counts)
    y = R.gaussian_targets(x, g, A, b)
    m2, C2 = R.moments_from_sums(*R.group_moment_sums(y, g, G), ridge=0.0)
    np.testing.assert_allclose(m2, mt, atol=1e-9)  # every group lands on its own draw
    np.testing.assert_allclose(C2, Ct, atol=1e-8)
    with pytest.raises(ConfigError, match="one per group"):
        R.gaussian_maps(m, C, mt[:1], Ct[:1])


def test_exact_matching_anti_aligns_random_splits_and_resampling_does_not():
    """The module docstring's claim: with the groups mapped exactly onto the barycenter,
    the group-mean difference of a random part of the users is the negative of the
    rest's (perfect anti-correlation); mapped onto resampled targets, the two are
    uncorrelated, as for users drawn from one distribution."""
    d, n = 2, 200
    corr = {"barycenter": [], "resampled": [], "iid": []}
    for rep in range(300):
        rng = np.random.default_rng(rep)
        g = (rng.random(n) < 0.3).astype(int)
        x = rng.standard_normal((n, d)) + 0.8 * g[:, None]
        cnt, s, o = R.group_moment_sums(x, g, 2)
        m, C = R.moments_from_sums(cnt, s, o)
        ms, Cs = R.gaussian_barycenter(m, C, cnt / cnt.sum())
        targets = {
            "barycenter": (ms, Cs),
            "resampled": R.resampled_moments(ms, Cs, cnt, seed=10_000 + rep),
        }
        part = np.zeros(n, dtype=bool)  # 80 % of each group (stratified, as the attack's folds)
        for a in (0, 1):
            idx = np.flatnonzero(g == a)
            part[rng.choice(idx, size=int(0.8 * idx.size), replace=False)] = True
        for kind, (mt, Ct) in targets.items():
            y = R.gaussian_targets(x, g, *R.gaussian_maps(m, C, mt, Ct, counts=cnt))
            corr[kind].append(_split_products(y, g, part))
        corr["iid"].append(_split_products(rng.standard_normal((n, d)), g, part))
    bary, res, iid = (np.array(corr[k]) for k in ("barycenter", "resampled", "iid"))
    # exact matching: delta_S = -(n_rest / n_S) delta_rest in every stratified split
    assert np.all(bary <= 1e-12) and bary.mean() < -3 * bary.std() / np.sqrt(len(bary))
    assert abs(res.mean()) < 3 * res.std() / np.sqrt(len(res))
    assert abs(iid.mean()) < 3 * iid.std() / np.sqrt(len(iid))


def _split_products(y, g, part):
    def delta(mask):
        return y[mask & (g == 1)].mean(0) - y[mask & (g == 0)].mean(0)

    return float(delta(part) @ delta(~part))


# ------------------------------------------------------------------ free-support: atom plans
def test_quantize_groups_labels_index_each_users_atom():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((30, 2))
    g = np.r_[np.zeros(20, int), np.ones(10, int)]
    meas, atom = R.quantize_groups(x, g, 2, k=4, seed=1, return_labels=True)
    assert R.quantize_groups(x, g, 2, k=4, seed=1)[0][0].shape == meas[0][0].shape
    for a, (C, w) in enumerate(meas):
        lab = atom[g == a]
        np.testing.assert_array_equal(np.bincount(lab, minlength=len(w)), w)
        # every user's atom is the mean of its members (k-means centroid)
        for j in range(len(w)):
            np.testing.assert_allclose(C[j], x[g == a][lab == j].mean(0), atol=1e-9)
    small, lab = R.quantize_groups(x[:3], np.zeros(3, int), 1, k=5, seed=0, return_labels=True)
    np.testing.assert_array_equal(lab, [0, 1, 2])  # n <= k: the users are the atoms


def test_atom_displacements_by_hand():
    X_star = np.array([[0.0, 0.0], [2.0, 0.0]])
    # one atom: all mass to both barycenter atoms, it moves to their mean
    np.testing.assert_allclose(R.atom_displacements([[5.0, 1.0]], [3.0], X_star), [[-4.0, -1.0]])
    # two atoms of equal mass near each barycenter atom: a permutation, each lands on its own
    A = np.array([[0.1, 0.2], [1.7, -0.3]])
    np.testing.assert_allclose(R.atom_displacements(A, [1.0, 1.0], X_star), X_star - A)
    # target weights move mass: all onto the second barycenter atom
    np.testing.assert_allclose(
        R.atom_displacements(A, [1.0, 1.0], X_star, [0.0, 1.0]), [[2.0, 0.0]] - A
    )
    with pytest.raises(ConfigError, match="masses"):
        R.atom_displacements(A, [0.0, 0.0], X_star)


def test_resampled_support_weights_are_a_seeded_multinomial_sample():
    w = R.resampled_support_weights(10, 37, seed=3)
    assert w.shape == (10,) and w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(w * 37, np.round(w * 37), atol=1e-9)
    np.testing.assert_array_equal(w, R.resampled_support_weights(10, 37, seed=3))
    mean = np.mean([R.resampled_support_weights(4, 5, seed=s) for s in range(4000)], axis=0)
    np.testing.assert_allclose(mean, 0.25, atol=0.01)
