"""FedFACT maths (fedrec.algorithms.fedfact): invariants, sanity checks, signs, projections,
smoothing, gradients, closed forms and a small federated post-processing run.

References are to ``reference/fedfact.md``. Fast: the whole file runs in seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fedfact_synthetic import label_counts, synthetic_scores

from fedrec.algorithms import fedfact as ff
from fedrec.errors import ConfigError
from fedrec.metrics import confusion_counts, metrics_from_counts


# ----------------------------------------------------------------- helpers
def random_client_data(rng, K=3, A=3, m=4, n=(400, 250, 300)):
    """Per client (y, yhat, a) with group/label/prediction dependence and an empty cell."""
    data = []
    for k in range(K):
        a = rng.integers(0, A, n[k])
        if k == 0:
            a[a == A - 1] = 0  # client 0 has no rows of the last group
        y = (a + rng.integers(0, m, n[k]) * (rng.random(n[k]) < 0.7)) % m
        yhat = np.where(rng.random(n[k]) < 0.6, y, rng.integers(0, m, n[k]))
        yhat = np.where((a == 1) & (rng.random(n[k]) < 0.2), 0, yhat)
        data.append((y, yhat, a))
    return data


# ------------------------------------------------------- constraint matrices
@pytest.mark.parametrize("criterion", ff.CRITERIA)
def test_invariant_5_4(criterion):
    """sum p<M,C> = sum p<I,C> - lam.D^g(h) - sum_k mu_k.D^k(h) on random tables (§5.4)."""
    rng = np.random.default_rng(0)
    K, A, m = 4, 3, 4
    for _trial in range(5):
        counts = rng.integers(0, 15, size=(K, A, m)).astype(float)
        counts[0, 1] = 0  # empty (a, k) cell
        counts[2, 0, 3] = 0
        pooled = counts.sum(0)
        N = pooled.sum()
        C = rng.random((K, A, m, m))
        C /= C.sum(axis=(2, 3), keepdims=True)
        Dg = [ff.global_constraints(criterion, counts[k], pooled) for k in range(K)]
        Dl = [ff.local_constraints(criterion, counts[k]) for k in range(K)]
        lam = rng.normal(size=Dg[0].shape[0])
        mus = [rng.normal(size=Dl[k].shape[0]) for k in range(K)]
        lhs = rhs = 0.0
        for k in range(K):
            p_ak = counts[k].sum(1) / N
            M = ff.calibration_matrix(counts[k], pooled, Dg[k], lam, Dl[k], mus[k])
            lhs += p_ak @ np.einsum("aij,aij->a", M, C[k])
            rhs += p_ak @ np.trace(C[k], axis1=1, axis2=2) - mus[k] @ ff.constraint_values(
                Dl[k], C[k]
            )
        rhs -= lam @ sum(ff.constraint_values(Dg[k], C[k]) for k in range(K))
        assert lhs == pytest.approx(rhs, abs=1e-10)


@pytest.mark.parametrize("criterion", ff.CRITERIA)
def test_shapes_and_local_is_single_client_global(criterion):
    counts = np.array([[3, 4, 0], [2, 0, 5]])
    U = (2 if criterion == "eo" else 1) * 2 * 3
    assert ff.num_constraints(criterion, 2, 3) == U
    Dg = ff.global_constraints(criterion, counts, counts * 3)
    Dl = ff.local_constraints(criterion, counts)
    assert Dg.shape == Dl.shape == (U, 2, 3, 3)
    np.testing.assert_array_equal(Dl, ff.global_constraints(criterion, counts, counts))


def _pooled_rates(data, A, m):
    y = np.concatenate([d[0] for d in data])
    yhat = np.concatenate([d[1] for d in data])
    a = np.concatenate([d[2] for d in data])
    return y, yhat, a


def _subgroup_rates(y, yhat, a, A, m, kind):
    """(A, m) and (m,) rates: sel P(yhat=y'|a), tpr P(yhat=y'|Y=y',a), fpr P(yhat=y'|Y!=y',a)."""
    out_a, out = np.zeros((A, m)), np.zeros(m)
    for c in range(m):
        if kind == "sel":
            cond_a = [a == g for g in range(A)]
            cond = np.ones_like(y, dtype=bool)
        elif kind == "tpr":
            cond_a = [(a == g) & (y == c) for g in range(A)]
            cond = y == c
        else:
            cond_a = [(a == g) & (y != c) for g in range(A)]
            cond = y != c
        out[c] = np.mean(yhat[cond] == c)
        for g in range(A):
            out_a[g, c] = np.mean(yhat[cond_a[g]] == c) if cond_a[g].any() else np.nan
    return out_a, out


@pytest.mark.parametrize(
    "criterion,kind,part", [("dp", "sel", 0), ("eop", "tpr", 0), ("eo", "tpr", 0), ("eo", "fpr", 1)]
)
def test_sanity_checks_3_2(criterion, kind, part):
    """Global values = pooled group rate - pooled rate; local values likewise per client (§3.2)."""
    rng = np.random.default_rng(1)
    K, A, m = 3, 3, 4
    data = random_client_data(rng, K, A, m)
    counts = np.stack([label_counts(y, a, A, m) for y, _, a in data])
    pooled = counts.sum(0)
    Cs = [ff.confusion_from_predictions(y, yh, a, A, m) for y, yh, a in data]
    U = A * m
    glob = sum(
        ff.constraint_values(ff.global_constraints(criterion, counts[k], pooled), Cs[k])
        for k in range(K)
    )
    glob = glob[part * U : (part + 1) * U].reshape(A, m)
    rate_a, rate = _subgroup_rates(*_pooled_rates(data, A, m), A, m, kind)
    expected = np.where(np.isnan(rate_a), 0.0, rate_a - rate)  # undefined -> dropped (0)
    np.testing.assert_allclose(glob, expected, atol=1e-12)
    for k, (y, yh, a) in enumerate(data):
        loc = ff.constraint_values(ff.local_constraints(criterion, counts[k]), Cs[k])[
            part * U : (part + 1) * U
        ]
        rate_a, rate = _subgroup_rates(y, yh, a, A, m, kind)
        np.testing.assert_allclose(
            loc.reshape(A, m), np.where(np.isnan(rate_a), 0.0, rate_a - rate), atol=1e-12
        )


def test_global_dp_matches_fedrec_metrics_subgroup():
    rng = np.random.default_rng(2)
    K, A, m = 3, 3, 4
    data = random_client_data(rng, K, A, m)
    counts = np.stack([label_counts(y, a, A, m) for y, _, a in data])
    C_counts = np.stack([confusion_counts(y, yh, a, m, A) for y, yh, a in data])
    glob = sum(
        ff.constraint_values(
            ff.global_constraints("dp", counts[k], counts.sum(0)),
            ff.confusion_from_predictions(*data[k], A, m),
        )
        for k in range(K)
    )
    assert np.abs(glob).max() == pytest.approx(
        metrics_from_counts(C_counts.sum(0))["dp_subgroup_max"], abs=1e-12
    )
    gaps = ff.fairness_gap("dp", C_counts)
    assert gaps["global"] == pytest.approx(np.abs(glob).max(), abs=1e-12)
    local_max = max(
        np.abs(
            ff.constraint_values(
                ff.local_constraints("dp", counts[k]), ff.confusion_from_predictions(*data[k], A, m)
            )
        ).max()
        for k in range(K)
    )
    assert gaps["local_max"] == pytest.approx(local_max, abs=1e-12)
    assert set(gaps) == {
        "accuracy",
        "global",
        "global_pairwise",
        "local_max",
        "local_mean",
        "local_max_pairwise",
    }


def test_confusion_from_predictions_normalised_and_empty_group_zero():
    C = ff.confusion_from_predictions([0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 2], A=3, m=2)
    np.testing.assert_allclose(C.sum(axis=(1, 2)), [1, 0, 1])
    np.testing.assert_allclose(C[0], [[1 / 3, 0], [1 / 3, 1 / 3]])


def test_calibration_matrix_torch_matches_numpy_and_empty_group_identity():
    rng = np.random.default_rng(3)
    own = np.array([[5, 3], [0, 0], [4, 1]])
    pooled = own + np.array([[2, 2], [3, 4], [1, 1]])
    Dg = ff.global_constraints("eo", own, pooled)
    Dl = ff.local_constraints("eo", own)
    lam, mu = rng.normal(size=Dg.shape[0]), rng.normal(size=Dl.shape[0])
    M = ff.calibration_matrix(own, pooled, Dg, lam, Dl, mu)
    Mt = ff.calibration_matrix(
        own, pooled, Dg, torch.tensor(lam, requires_grad=True), Dl, torch.tensor(mu)
    )
    assert isinstance(Mt, torch.Tensor) and Mt.requires_grad
    np.testing.assert_allclose(Mt.detach().numpy(), M, atol=1e-12)
    np.testing.assert_array_equal(M[1], np.eye(2))  # p_{a,k} = 0
    np.testing.assert_array_equal(
        ff.calibration_matrix(own, pooled, Dg, np.zeros(Dg.shape[0])),
        np.broadcast_to(np.eye(2), (3, 2, 2)),
    )


# --------------------------------------------------------------- sign tests
def _binary_two_clients(seed=4, sizes=(1500, 1000)):
    rng = np.random.default_rng(seed)
    data = synthetic_scores(rng, sizes, [0.3, 0.6], [[0.15, 0.6], [0.3, 0.7]])
    counts = np.stack([label_counts(y, a, 2, 2) for _, a, y in data])
    return data, counts


def _local_dp_violation(client, y, a, pred):
    return np.abs(
        ff.constraint_values(client.Dl, ff.confusion_from_predictions(y, pred, a, 2, 2))
    ).max()


def test_local_dual_step_reduces_violated_local_constraint():
    """One prox step on mu (scope local) lowers the local DP violation.

    The opposite sign raises it.
    """
    data, counts = _binary_two_clients()
    for k, (eta, a, y) in enumerate(data):
        c = ff.PostProcessingClient(
            eta,
            a,
            counts[k],
            counts.sum(0),
            "dp",
            "local",
            0.0,
            0.02,
            bound=5.0,
            lr=0.1,
            local_steps=1,
        )
        before = _local_dp_violation(c, y, a, c.predict(np.zeros(0)))
        assert before > 0.1  # violated
        mu, g_lam = c.step(np.zeros(0))
        assert g_lam.shape == (0,) and np.abs(mu).sum() > 0
        after = _local_dp_violation(c, y, a, c.predict(np.zeros(0)))
        c.mu = -mu
        wrong = _local_dp_violation(c, y, a, c.predict(np.zeros(0)))
        assert after < before < wrong


def test_global_dual_step_reduces_violated_global_constraint():
    data, counts = _binary_two_clients()
    pooled = counts.sum(0)
    clients = [
        ff.PostProcessingClient(eta, a, counts[k], pooled, "dp", "global", 0.02, 0.0, bound=5.0)
        for k, (eta, a, _) in enumerate(data)
    ]

    def violation(lam):
        C = np.stack(
            [confusion_counts(y, c.predict(lam), a, 2, 2) for c, (_, a, y) in zip(clients, data)]
        )
        return ff.fairness_gap("dp", C)["global"]

    lam0 = np.zeros(4)
    grads = [c.step(lam0)[1] for c in clients]
    lam1 = ff.server_lambda_step(lam0, grads, [c.p_k for c in clients], 0.25, 0.02, 5.0)
    assert violation(lam1) < violation(lam0) < violation(-lam1)


# -------------------------------------------------------------- projections
def _cvxpy_prox(v, radius, t=0.0, nonneg=False):
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable(v.size, nonneg=nonneg)
    obj = 0.5 * cp.sum_squares(x - v) + t * cp.norm1(x)
    cp.Problem(cp.Minimize(obj), [cp.norm1(x) <= radius]).solve(
        solver="CLARABEL", tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, tol_ktratio=1e-10
    )
    return x.value


def test_projections_feasible_idempotent_and_match_cvxpy():
    rng = np.random.default_rng(5)
    for _trial in range(12):
        v = rng.normal(size=rng.integers(1, 25)) * rng.choice([0.1, 1.0, 5.0])
        r = float(rng.choice([0.0, 0.5, 2.0, 100.0]))
        for proj, nonneg in ((ff.project_l1_ball, False), (ff.project_simplex_ball, True)):
            x = proj(v, r)
            assert np.abs(x).sum() <= r + 1e-9 and (not nonneg or x.min() >= 0)
            np.testing.assert_allclose(proj(x, r), x, atol=1e-12)
            np.testing.assert_allclose(x, _cvxpy_prox(v, r, nonneg=nonneg), atol=1e-6)
        # the proximal dual step is the exact prox of lr*xi*||.||_1 + indicator(L1 ball)
        g, lr, xi = rng.normal(size=v.size), 0.3, 0.2
        np.testing.assert_allclose(
            ff.dual_prox_step(v, g, lr, xi, r), _cvxpy_prox(v - lr * g, r, t=lr * xi), atol=1e-6
        )
    np.testing.assert_allclose(ff.soft_threshold([-2.0, 0.5, 3.0], 1.0), [-1.0, 0.0, 2.0])


def test_server_step_applies_xi_once():
    lam, g = np.array([0.5, -0.2, 0.0]), np.array([0.1, -0.3, 0.05])
    single = ff.dual_prox_step(lam, g, 0.5, 0.1, 10.0)
    np.testing.assert_allclose(
        ff.server_lambda_step(lam, [g, g, g], [0.2, 0.3, 0.5], 0.5, 0.1, 10.0), single
    )


# ------------------------------------------------------- smoothing, gradients
def test_soft_max_average_tends_to_max():
    rng = np.random.default_rng(6)
    z = torch.tensor(rng.normal(size=(50, 4)))
    errs = [
        float((z.max(dim=1).values - ff.soft_max_average(z, b)).abs().max())
        for b in (0.5, 0.1, 0.01, 1e-4)
    ]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:])) and errs[-1] < 1e-8
    assert np.allclose(ff.soft_max_average(z.numpy(), 1e-4), z.numpy().max(axis=1), atol=1e-8)


def test_client_objective_gradient_matches_finite_differences():
    rng = np.random.default_rng(7)
    A, m, n = 2, 3, 60
    eta = rng.dirichlet(np.ones(m), size=n)
    a = rng.integers(0, A, n)
    own = np.array([[10, 12, 8], [9, 14, 7]])
    pooled = own + np.array([[20, 5, 9], [3, 11, 30]])
    Dg, Dl = ff.global_constraints("eo", own, pooled), ff.local_constraints("eo", own)
    lam0 = rng.uniform(0.05, 0.3, Dg.shape[0]) * rng.choice([-1, 1], Dg.shape[0])
    mu0 = rng.uniform(0.05, 0.3, Dl.shape[0]) * rng.choice([-1, 1], Dl.shape[0])

    def f(lam, mu):
        return float(
            ff.client_objective(eta, a, own, pooled, Dg, lam, Dl, mu, 0.03, 0.05, beta=0.1)
        )

    lam_t = torch.tensor(lam0, requires_grad=True)
    mu_t = torch.tensor(mu0, requires_grad=True)
    ff.client_objective(eta, a, own, pooled, Dg, lam_t, Dl, mu_t, 0.03, 0.05, beta=0.1).backward()
    eps = 1e-6
    fd_lam = [
        (f(lam0 + eps * e, mu0) - f(lam0 - eps * e, mu0)) / (2 * eps) for e in np.eye(lam0.size)
    ]
    fd_mu = [
        (f(lam0, mu0 + eps * e) - f(lam0, mu0 - eps * e)) / (2 * eps) for e in np.eye(mu0.size)
    ]
    np.testing.assert_allclose(lam_t.grad.numpy(), fd_lam, atol=1e-7)
    np.testing.assert_allclose(mu_t.grad.numpy(), fd_mu, atol=1e-7)
    # the client's smooth gradient (no penalty) + the L1 subgradients = full gradient
    c = ff.PostProcessingClient(
        eta,
        a,
        own,
        pooled,
        "eo",
        "both",
        0.03,
        0.05,
        bound=5.0,
        mu=mu0,
        smoothing="softmax-average",
    )
    _, g_lam, g_mu = c._smooth_and_grads(lam0, mu0)
    np.testing.assert_allclose(g_lam + 0.03 * np.sign(lam0), lam_t.grad.numpy(), atol=1e-10)
    np.testing.assert_allclose(g_mu + 0.05 / c.p_k * np.sign(mu0), mu_t.grad.numpy(), atol=1e-10)
    assert c.objective(lam0) == pytest.approx(f(lam0, mu0), abs=1e-12)


def test_zero_duals_reduce_to_argmax_and_cross_entropy():
    rng = np.random.default_rng(8)
    A, m, n = 3, 4, 200
    eta = rng.dirichlet(np.ones(m), size=n)
    a = rng.integers(0, A, n)
    y = rng.integers(0, m, n)
    counts = label_counts(y, a, A, m)
    c = ff.PostProcessingClient(eta, a, counts, counts * 2, "eo", "both", 0.01, 0.01, bound=1.0)
    np.testing.assert_array_equal(c.predict(np.zeros(c.num_global)), np.argmax(eta, axis=1))
    M = ff.calibration_matrix(
        counts, counts * 2, c.Dg, np.zeros(c.num_global), c.Dl, np.zeros(c.num_local)
    )
    Mbar = ff.shift_positive(M)
    np.testing.assert_array_equal(Mbar, M)  # kappa = 0 for M = I
    logits = torch.tensor(rng.normal(size=(n, m)), requires_grad=True)
    loss = ff.cost_sensitive_loss(logits, y, a, Mbar)
    assert loss.item() == pytest.approx(
        F.cross_entropy(logits.detach(), torch.tensor(y)).item(), abs=1e-12
    )
    loss.backward()
    assert logits.grad is not None
    # kappa shift makes every entry positive and keeps argmax (M^T eta)
    M2 = ff.calibration_matrix(counts, counts * 2, c.Dg, rng.normal(size=c.num_global) * 0.3)
    M2bar = ff.shift_positive(M2)
    assert M2.min() < 0 < M2bar.min()
    s1, s2 = np.einsum("ni,nij->nj", eta, M2[a]), np.einsum("ni,nij->nj", eta, M2bar[a])
    np.testing.assert_array_equal(s1.argmax(1), s2.argmax(1))


# ------------------------------------------------------------ closed forms §5.5
def test_dp_closed_form_group_thresholds():
    """Binary, one client, global DP: predict 1 iff eta_1 > (1 + c_{a,1} - c_{a,0}) / 2."""
    rng = np.random.default_rng(9)
    n, A, m = 2000, 2, 2
    eta1 = rng.random(n)
    eta = np.column_stack([1 - eta1, eta1])
    a = (rng.random(n) < 0.3).astype(int)
    counts = np.stack(
        [np.bincount(rng.integers(0, 2, (a == g).sum()), minlength=2) for g in range(A)]
    )
    c = ff.PostProcessingClient(eta, a, counts, counts, "dp", "global", 0.0, 0.0, bound=5.0)
    lam = rng.normal(size=A * m) * 0.2
    p_a = counts.sum(1) / counts.sum()
    L = lam.reshape(A, m)  # u = a' * m + y
    cc = (L - p_a[:, None] * L.sum(0)[None, :]) / p_a[:, None]
    thr = 0.5 * (1 + cc[:, 1] - cc[:, 0])
    np.testing.assert_array_equal(c.predict(lam), (eta1 > thr[a]).astype(int))


def test_eop_closed_form_multiplicative_rescaling():
    """EOP: M(a,k) is diagonal, so the score is eta_j times a per-(group, class) factor (§5.5)."""
    rng = np.random.default_rng(10)
    own = np.array([[10, 5, 3], [4, 8, 9]])
    pooled = own + 7
    M = ff.calibration_matrix(
        own,
        pooled,
        ff.global_constraints("eop", own, pooled),
        rng.normal(size=6),
        ff.local_constraints("eop", own),
        rng.normal(size=6),
    )
    for g in range(2):
        np.testing.assert_array_equal(M[g], np.diag(np.diag(M[g])))


# ---------------------------------------------------------- federated run §7.2
def _run(data, counts, scope, rounds=30, lr=0.25, lr_mu=0.05, xi=0.02):
    """The paper's Algorithm 2 literally: softmax-average smoothing (beta 0.1), fixed-step
    proximal steps on mu and lambda, deterministic argmax."""
    pooled = counts.sum(0)
    clients = [
        ff.PostProcessingClient(
            eta,
            a,
            counts[k],
            pooled,
            "dp",
            scope,
            xi,
            xi,
            bound=5.0,
            lr=lr_mu,
            local_steps=5,
            smoothing="softmax-average",
        )
        for k, (eta, a, _) in enumerate(data)
    ]
    lam = np.zeros(clients[0].num_global)

    def gaps(lam):
        C = np.stack(
            [confusion_counts(y, c.predict(lam), a, 2, 2) for c, (_, a, y) in zip(clients, data)]
        )
        return ff.fairness_gap("dp", C)

    start = gaps(lam)
    for _ in range(rounds):
        grads = [c.step(lam)[1] for c in clients]
        if lam.size:
            lam = ff.server_lambda_step(lam, grads, [c.p_k for c in clients], lr, xi, 5.0)
    return start, gaps(lam)


def test_federated_post_processing_meets_global_dp():
    data, counts = _binary_two_clients(seed=11)
    xi = 0.02
    start, end = _run(data, counts, "global", xi=xi)
    assert start["global"] > 0.2
    assert end["global"] <= xi + 0.02
    assert (
        end["accuracy"] >= start["accuracy"] - 0.15
    )  # DP with base rates 0.15 vs 0.6 costs accuracy


def test_federated_post_processing_both_scopes_shrinks_local_gaps():
    data, counts = _binary_two_clients(seed=11)
    xi = 0.02
    start, end = _run(data, counts, "both", xi=xi)
    assert end["global"] <= xi + 0.02
    assert end["local_max"] <= xi + 0.03 and end["local_max"] < 0.2 * start["local_max"]
    assert end["accuracy"] >= start["accuracy"] - 0.15


# ------------------------------------------------------------------ errors
def test_user_errors_are_one_line_config_errors():
    cases = [
        lambda: ff.check_choice("criterion", "dpp", ff.CRITERIA),
        lambda: ff.global_constraints("abc", np.ones((2, 2)), np.ones((2, 2))),
        lambda: ff.global_constraints("dp", np.ones((2, 2)) * 3, np.ones((2, 2))),
        lambda: ff.project_l1_ball([1.0, 2.0], -1.0),
        lambda: ff.soft_max_average(torch.zeros(3), 0.0),
        lambda: ff.PostProcessingClient(
            np.full((2, 2), 0.5),
            [0, 1],
            np.ones((2, 2)),
            np.ones((2, 2)),
            "dp",
            "everywhere",
            0.1,
            0.1,
            1.0,
        ),
        lambda: ff.calibration_matrix(
            np.ones((2, 2)), np.ones((2, 2)), np.zeros((4, 2, 2, 2)), np.zeros(3)
        ),
    ]
    for case in cases:
        with pytest.raises(ConfigError) as info:
            case()
        assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="scope must be one of 'global', 'local', 'both'"):
        cases[5]()


@pytest.mark.slow
def test_algorithm_modules_do_not_import_flwr():
    import subprocess
    import sys

    code = (
        "import sys\nimport fedrec.algorithms, fedrec.algorithms.fedfact, fedrec.algorithms.lp\n"
        "print(','.join(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


@pytest.mark.slow
def test_lbfgs_inner_solver_reaches_at_least_the_prox_optimum():
    """The quasi-Newton inner solve of min_mu H'_k is at least as good as many small
    proximal steps, and it meets the local constraints where fixed steps oscillate."""
    from fedrec.algorithms.fedfact import PostProcessingClient

    rng = np.random.default_rng(5)
    n = 600
    a = (rng.random(n) < 0.1).astype(int)  # a small group: badly conditioned
    logit = rng.normal(size=n) + 1.5 * a - 0.5
    eta1 = 1 / (1 + np.exp(-logit))
    eta = np.stack([1 - eta1, eta1], axis=1)
    own = np.array(
        [[np.sum((a == g) & (eta1 < 0.5)), np.sum((a == g) & (eta1 >= 0.5))] for g in (0, 1)]
    )
    pooled = own * 3
    kw = dict(
        eta=eta,
        a=a,
        own_counts=own,
        pooled_counts=pooled,
        criterion="dp",
        scope="local",
        xi_g=0.0,
        xi_k=0.01,
        bound=5.0,
        beta=0.1,
    )
    prox = PostProcessingClient(**kw, lr=1e-4, local_steps=3000)
    prox.step(np.zeros(0))
    lb = PostProcessingClient(**kw, inner="lbfgs", local_steps=20)
    lb.step(np.zeros(0))
    assert lb.objective(np.zeros(0)) <= prox.objective(np.zeros(0)) + 1e-6
    pred = lb.predict(np.zeros(0))
    gap = abs(pred[a == 1].mean() - pred.mean())
    base = abs((eta1[a == 1] >= 0.5).mean() - (eta1 >= 0.5).mean())
    assert gap < 0.5 * base
