"""MGDA min-norm weights: hand cases, Frank-Wolfe against two oracles (cvxpy QP and scipy
SLSQP), the KKT conditions, the common-descent property and the weighting rules."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from fedrec.algorithms.mgda import (
    balanced_weights,
    common_direction,
    line_search,
    min_norm_weights,
)
from fedrec.errors import ConfigError


def _obj(M, w):
    return float(w @ M @ w)


def _slsqp(M):
    k = M.shape[0]
    res = minimize(
        lambda w: w @ M @ w,
        np.full(k, 1.0 / k),
        jac=lambda w: 2 * M @ w,
        bounds=[(0.0, 1.0)] * k,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones(k)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    return res.x


def _cases(n, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        k, d = int(rng.integers(2, 9)), int(rng.integers(3, 51))
        G = rng.standard_normal((k, d))
        if rng.random() < 0.5:  # a shared component: the origin leaves the hull
            G += rng.standard_normal(d) * rng.uniform(0.5, 2.0)
        yield G


def _simplex(w, k):
    assert w.shape == (k,) and w.dtype == np.float64
    assert np.all(w >= 0)
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


# ------------------------------------------------------------------ hand cases
@pytest.mark.parametrize("method", ["frank-wolfe", "exact"])
def test_orthogonal_unit_vectors_get_equal_weight(method):
    G = np.eye(2, 5)
    np.testing.assert_allclose(min_norm_weights(G, method=method), [0.5, 0.5], atol=1e-12)
    G3 = np.eye(3, 4)  # three orthonormal vectors: 1/3 each, norm^2 1/3
    w = min_norm_weights(G3, method=method)
    np.testing.assert_allclose(w, np.full(3, 1 / 3), atol=1e-7)


@pytest.mark.parametrize("method", ["frank-wolfe", "exact"])
def test_dominated_vector_gets_all_weight(method):
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([2.0, 1.0, 0.0])  # a.b = 2 >= a.a = 1: the segment's closest point is a
    np.testing.assert_array_equal(min_norm_weights(np.stack([a, b]), method=method), [1, 0])
    np.testing.assert_array_equal(min_norm_weights(np.stack([b, a]), method=method), [0, 1])
    assert line_search(1.0, 2.0, 5.0) == 1.0
    assert line_search(5.0, 2.0, 1.0) == 0.0
    # a = (1, 0), b = (0, 2): gamma = (4 - 0) / (1 + 4) = 0.8, point (0.8, 0.4)
    assert line_search(1.0, 0.0, 4.0) == pytest.approx(0.8)


@pytest.mark.parametrize("method", ["frank-wolfe", "exact"])
def test_three_vectors_hand_cases(method):
    # e1, e2 and e1 + e2: the hull's closest point to 0 is (0.5, 0.5), on the segment
    # e1-e2; e1 + e2 gets no weight (its inner product with the point is 1 > 0.5)
    G = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    w = min_norm_weights(G, method=method, max_iter=2000)
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0], atol=1e-6)
    # 0 is inside the hull of three vectors at 120 degrees: uniform weights, theta = 0
    ang = np.deg2rad([90.0, 210.0, 330.0])
    G = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    w = min_norm_weights(G, method=method)
    np.testing.assert_allclose(w, np.full(3, 1 / 3), atol=1e-6)
    assert np.linalg.norm(common_direction(G, w)) < 1e-5
    # two vectors pointing the same way plus an orthogonal one (different lengths)
    G = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]])
    # min over the segment (2, 0)-(0, 1): gamma on (2,0) = 1 / 5 -> point (0.4, 0.8)
    w = min_norm_weights(G, method=method)
    np.testing.assert_allclose(w, [0.2, 0.0, 0.8], atol=1e-6)


def test_single_group_and_gram_input_agree():
    np.testing.assert_array_equal(min_norm_weights(np.ones((1, 4))), [1.0])
    G = next(_cases(1, seed=3))
    np.testing.assert_allclose(min_norm_weights(G), min_norm_weights(gram=G @ G.T), atol=1e-12)


@pytest.mark.parametrize("method", ["frank-wolfe", "exact"])
def test_zero_gradient_takes_all_weight(method):
    G = np.array([[1.0, 2.0], [0.0, 0.0], [-1.0, 0.5], [0.0, 0.0]])
    np.testing.assert_array_equal(min_norm_weights(G, method=method), [0, 1, 0, 0])
    np.testing.assert_array_equal(min_norm_weights(np.zeros((3, 2)), method=method), [1 / 3] * 3)


def test_deterministic():
    for G in _cases(5, seed=7):
        np.testing.assert_array_equal(min_norm_weights(G), min_norm_weights(G.copy()))


# ------------------------------------------------------------------ oracles and optimality
def test_frank_wolfe_matches_cvxpy_and_slsqp():
    for G in _cases(40):
        M = G @ G.T
        k = M.shape[0]
        w_fw = min_norm_weights(G)
        w_ex = min_norm_weights(G, method="exact")
        w_sl = _slsqp(M)
        _simplex(w_fw, k)
        _simplex(w_ex, k)
        f_fw, f_ex, f_sl = _obj(M, w_fw), _obj(M, w_ex), _obj(M, w_sl)
        assert f_fw == pytest.approx(f_ex, abs=1e-6)
        assert f_fw == pytest.approx(f_sl, abs=1e-6)
        assert f_fw <= f_ex + 1e-9 and f_fw <= f_sl + 1e-9  # never worse than the oracles


def test_plain_frank_wolfe_is_feasible_and_no_worse_than_uniform():
    for G in _cases(10, seed=1):
        M = G @ G.T
        w = min_norm_weights(G, away_steps=False)
        _simplex(w, M.shape[0])
        assert _obj(M, w) <= _obj(M, np.full(M.shape[0], 1 / M.shape[0])) + 1e-12
        assert _obj(M, w) >= _obj(M, min_norm_weights(G, method="exact")) - 1e-9


def test_kkt_and_common_descent_direction():
    for G in _cases(30, seed=2):
        M = G @ G.T
        scale = np.diag(M).max()
        w = min_norm_weights(G, max_iter=5000)
        Mw, wMw = M @ w, float(w @ M @ w)
        tol = 1e-8 * scale
        assert np.all(Mw >= wMw - tol)  # (M w)_g >= w^T M w for every g
        support = w > 1e-9
        np.testing.assert_allclose(Mw[support], wMw, atol=tol)  # equality on the support
        theta = common_direction(G, w)
        np.testing.assert_allclose(theta, w @ G)
        assert np.all(G @ theta >= theta @ theta - tol)  # <G_g, theta> >= ||theta||^2 >= 0
        assert np.all(G @ theta >= -tol)


# ------------------------------------------------------------------ rules and errors
def test_balanced_weights_rules():
    losses = np.array([1.0, 2.0, 0.5])
    np.testing.assert_array_equal(balanced_weights(losses, "uniform"), [1 / 3] * 3)
    w = balanced_weights(losses, "dro", eta=2.0)
    e = np.exp(2.0 * losses)
    np.testing.assert_allclose(w, e / e.sum())
    assert w.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(balanced_weights(losses, "dro", eta=0.0), [1 / 3] * 3)
    big = balanced_weights(np.array([1e3, 2e3]), "dro", eta=10.0)  # no overflow
    np.testing.assert_array_equal(big, [0.0, 1.0])
    G = np.eye(3, 4)
    np.testing.assert_allclose(balanced_weights(losses, "mgda", grads=G), [1 / 3] * 3, atol=1e-7)
    np.testing.assert_allclose(
        balanced_weights(losses, "mgda", gram=G @ G.T), [1 / 3] * 3, atol=1e-7
    )


def test_errors_name_the_argument():
    G = np.eye(2)
    with pytest.raises(ConfigError, match="exactly one of grads"):
        min_norm_weights()
    with pytest.raises(ConfigError, match="exactly one of grads"):
        min_norm_weights(G, gram=G)
    with pytest.raises(ConfigError, match="method must be one of 'frank-wolfe', 'exact'"):
        min_norm_weights(G, method="pgd")
    with pytest.raises(ConfigError, match="max_iter"):
        min_norm_weights(G, max_iter=0)
    with pytest.raises(ConfigError, match="gram must be square"):
        min_norm_weights(gram=np.ones((2, 3)))
    with pytest.raises(ConfigError, match="gram must be symmetric"):
        min_norm_weights(gram=np.array([[1.0, 0.0], [1.0, 1.0]]))
    with pytest.raises(ConfigError, match="grads must be finite"):
        min_norm_weights(np.array([[np.nan, 1.0]]))
    with pytest.raises(ConfigError, match="rule must be one of 'mgda', 'uniform', 'dro'"):
        balanced_weights([1.0, 2.0], "max")
    with pytest.raises(ConfigError, match="needs grads"):
        balanced_weights([1.0, 2.0], "mgda")
    with pytest.raises(ConfigError, match="losses has 3 entries"):
        balanced_weights([1.0, 2.0, 3.0], "mgda", grads=G)
    with pytest.raises(ConfigError, match="eta"):
        balanced_weights([1.0, 2.0], "dro", eta=-1.0)
    with pytest.raises(ConfigError, match="w has 3 entries"):
        common_direction(G, [1.0, 0.0, 0.0])


def test_torch_gradients_are_accepted():
    torch = pytest.importorskip("torch")
    G = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    np.testing.assert_allclose(min_norm_weights(G), [0.5, 0.5])
    np.testing.assert_allclose(common_direction(G, [0.5, 0.5]), [0.5, 0.5])
