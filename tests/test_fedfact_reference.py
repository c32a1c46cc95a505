"""FedFACT against external oracles (reference/fedfact.md §12 item 4, §13): the fair LP solved
by cvxpy/CLARABEL and scipy/HiGHS, Theorem 5 (LP duals -> plug-in classifier), Fairlearn's
ThresholdOptimizer in the centralized binary DP case, and the LP as an upper bound of the
federated post-processing. All tests are marked ``reference``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from fedfact_synthetic import synthetic_scores

from fedrec.algorithms import fedfact as ff
from fedrec.algorithms import lp

pytestmark = pytest.mark.reference


def random_problem(rng, n=300, K=3, A=2, m=3):
    logits = rng.normal(size=(n, m)) * 1.5
    a = rng.integers(0, A, n)
    k = rng.integers(0, K, n)
    logits[:, 0] += 0.8 * a  # group-dependent scores -> active constraints
    eta = np.exp(logits)
    eta /= eta.sum(axis=1, keepdims=True)
    return eta, a, k


@pytest.mark.parametrize("scope", ["global", "both"])
@pytest.mark.parametrize("criterion", ff.CRITERIA)
def test_cvxpy_and_highs_agree(criterion, scope):
    pytest.importorskip("cvxpy")
    rng = np.random.default_rng(0)
    for trial in range(2):
        eta, a, k = random_problem(rng)
        labels = (
            None if trial == 0 else np.array([rng.choice(3, p=e) for e in eta])
        )  # transductive oracle
        r1 = lp.fair_lp(eta, a, k, criterion, scope, 0.03, 0.05, labels=labels, solver="CLARABEL")
        r2 = lp.fair_lp_scipy(
            eta, a, k, criterion, scope, 0.03, 0.05, labels=labels, method="highs"
        )
        assert r1.status == "optimal" and r2.status == "optimal"
        assert abs(r1.objective - r2.objective) <= 1e-6
        for r in (r1, r2):
            np.testing.assert_allclose(r.h.sum(axis=1), 1.0, atol=1e-6)
        # the LP's constraint rows are those of the fedfact matrices
        S = eta if labels is None else np.eye(3)[labels]
        g, loc = lp.plugin_constraint_values(S, r2.h, a, k, criterion, r2.counts)
        assert np.abs(g).max() <= 0.03 + 1e-7
        if scope == "both":
            assert max(np.abs(v).max() for v in loc.values()) <= 0.05 + 1e-7
        unconstrained = (S.max(axis=1)).mean()
        assert r2.objective <= unconstrained + 1e-9


@pytest.mark.parametrize("criterion", ff.CRITERIA)
def test_lp_duals_define_the_fair_classifier(criterion):
    """Theorem 5: argmax (M(a,k)^T eta) with the LP's signed duals reproduces the LP's solution
    on every row the LP does not randomize, its accuracy up to those rows and the constraints
    up to their weight."""
    rng = np.random.default_rng(1)
    eta, a, k = random_problem(rng, n=2000)
    xi_g, xi_k = 0.02, 0.04
    r = lp.fair_lp_scipy(eta, a, k, criterion, "both", xi_g, xi_k)
    pred = lp.lp_classifier_predict(eta, a, k, criterion, "both", r.lam, r.mu, r.counts)
    integral = r.h.max(axis=1) > 1 - 1e-6
    n_frac = int((~integral).sum())
    assert n_frac <= 2 * (
        r.lam.size + sum(v.size for v in r.mu.values())
    )  # a vertex: few randomized rows
    assert np.array_equal(pred[integral], r.h[integral].argmax(axis=1))
    acc = eta[np.arange(len(pred)), pred].mean()
    assert abs(acc - r.objective) <= n_frac / len(pred) + 1e-9
    g, loc = lp.plugin_constraint_values(eta, pred, a, k, criterion, r.counts)
    slack = (
        3.0 * n_frac / min(np.bincount(k * 2 + a))
    )  # each changed row moves a rate by <= ~1/n_{a,k}
    assert np.abs(g).max() <= xi_g + slack + 1e-9
    assert max(np.abs(v).max() for v in loc.values()) <= xi_k + slack + 1e-9


def test_matches_fairlearn_threshold_optimizer_binary_dp():
    """One client, global DP: FedFACT-Post (beta=0.02, xi=0) vs ThresholdOptimizer (exact DP).
    Tolerances: accuracy within 0.01, pairwise DP gap within 0.02 (fedfact.md §13.1)."""
    fl = pytest.importorskip("fairlearn.postprocessing")
    from fairlearn.metrics import demographic_parity_difference
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    n = 10000
    a = (rng.random(n) < 0.35).astype(int)
    y = (rng.random(n) < np.where(a == 1, 0.2, 0.45)).astype(int)
    X = (
        rng.normal(size=(n, 3))
        + y[:, None] * np.array([1.0, 0.5, 0.0])
        + a[:, None] * np.array([0.0, 0.3, 0.8])
    )
    Xa = np.column_stack([X, a])
    p1 = LogisticRegression().fit(Xa, y).predict_proba(Xa)[:, 1]

    class PrefitScores(ClassifierMixin, BaseEstimator):
        """Returns the stored scores (feature 0) as predict_proba."""

        def fit(self, X, y):
            self.classes_ = np.array([0, 1])
            return self

        def predict_proba(self, X):
            s = np.asarray(X)[:, 0]
            return np.column_stack([1 - s, s])

        def predict(self, X):
            return (np.asarray(X)[:, 0] > 0.5).astype(int)

    to = fl.ThresholdOptimizer(
        estimator=PrefitScores().fit(p1[:, None], y),
        constraints="demographic_parity",
        objective="accuracy_score",
        prefit=True,
        predict_method="predict_proba",
    )
    to.fit(p1[:, None], y, sensitive_features=a)
    y_to = to.predict(p1[:, None], sensitive_features=a, random_state=0)

    counts = np.stack([np.bincount(y[a == g], minlength=2) for g in range(2)])
    client = ff.PostProcessingClient(
        np.column_stack([1 - p1, p1]),
        a,
        counts,
        counts,
        "dp",
        "global",
        xi_g=0.0,
        xi_k=0.0,
        bound=5.0,
        beta=0.02,
    )
    lam = np.zeros(client.num_global)
    for t in range(80):
        _, grad = client.step(lam)
        lam = ff.server_lambda_step(lam, [grad], [1.0], 0.5 / np.sqrt(1 + t / 20), 0.0, 5.0)
    y_ff = client.predict(lam)

    acc_to, acc_ff = (y_to == y).mean(), (y_ff == y).mean()
    gap_to = demographic_parity_difference(y, y_to, sensitive_features=a)
    gap_ff = demographic_parity_difference(y, y_ff, sensitive_features=a)
    assert (
        demographic_parity_difference(y, (p1 > 0.5).astype(int), sensitive_features=a) > 0.2
    )  # unfair start
    assert abs(acc_ff - acc_to) <= 0.01
    assert abs(gap_ff - gap_to) <= 0.02


@pytest.mark.parametrize("criterion,scope", [("dp", "global"), ("dp", "both"), ("eo", "both")])
def test_lp_upper_bounds_federated_post_processing(criterion, scope):
    """The LP at the slack the post-processed classifier actually attains bounds its plug-in
    accuracy (>= -1e-6); at the nominal xi the federated result is also close to the LP."""
    data = synthetic_scores(
        np.random.default_rng(3), [1500, 1000], [0.3, 0.6], [[0.15, 0.6], [0.3, 0.7]]
    )
    eta = np.concatenate([d[0] for d in data])
    a = np.concatenate([d[1] for d in data])
    k = np.repeat([0, 1], [len(d[1]) for d in data])
    counts = lp.sample_counts(eta, a, k)  # expected counts: same D matrices for LP and clients
    pooled, xi = counts.sum(0), 0.02
    clients = [
        ff.PostProcessingClient(
            d[0],
            d[1],
            counts[j],
            pooled,
            criterion,
            scope,
            xi,
            xi,
            bound=5.0,
            beta=0.02,
            lr=0.05,
            local_steps=5,
        )
        for j, d in enumerate(data)
    ]
    lam = np.zeros(clients[0].num_global)
    for t in range(60):
        grads = [c.step(lam)[1] for c in clients]
        if lam.size:
            lam = ff.server_lambda_step(
                lam, grads, [c.p_k for c in clients], 0.25 / np.sqrt(1 + t / 20), xi, 5.0
            )
    pred = np.concatenate([c.predict(lam) for c in clients])
    acc = eta[np.arange(len(pred)), pred].mean()
    g, loc = lp.plugin_constraint_values(eta, pred, a, k, criterion, counts)
    xi_g = max(xi, np.abs(g).max())
    xi_k = max(xi, max(np.abs(v).max() for v in loc.values()))
    relaxed = lp.fair_lp_scipy(eta, a, k, criterion, scope, xi_g, xi_k)
    assert relaxed.objective >= acc - 1e-6
    nominal = lp.fair_lp_scipy(eta, a, k, criterion, scope, xi, xi)
    assert acc >= nominal.objective - 0.01
    assert xi_g <= xi + 0.01 and (scope == "global" or xi_k <= xi + 0.01)


def test_adult_size_lp_with_highs_is_fast():
    """n = 27,000, m = 2, K = 5, A = 2, global + local DP: HiGHS well under a minute."""
    rng = np.random.default_rng(4)
    n = 27000
    a, k = rng.integers(0, 2, n), rng.integers(0, 5, n)
    e1 = 1 / (1 + np.exp(-(rng.normal(size=n) * 2 + a - 1)))
    eta = np.column_stack([1 - e1, e1])
    start = time.perf_counter()
    r = lp.fair_lp_scipy(eta, a, k, "dp", "both", 0.01, 0.02)
    elapsed = time.perf_counter() - start
    assert r.status == "optimal" and r.h.shape == (n, 2)
    assert elapsed < 45.0
