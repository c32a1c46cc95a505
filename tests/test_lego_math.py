"""LEGO maths (fedrec.algorithms.lego): vCLUB forms, summable classifier / combination
gradients, per-user calibration, the centralized drivers vs a simulated federated loop,
the eps balls, unlearning quality on planted attributes and dynamic add / withdraw.

References are to ``reference/unlearning_attack.md`` §1. Synthetic data: 300 users,
d = 16, three attributes (2, 3, 2 classes) planted along orthogonal directions. Fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from fedrec.algorithms import lego as L
from fedrec.errors import ConfigError
from fedrec.optim import adam_step

N, D = 300, 16
NAMES = ("A", "B", "C")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def planted(n=N, d=D, seed=0, sep=1.5):
    """Embeddings with three attributes planted along orthogonal directions."""
    rng = np.random.default_rng(seed)
    labels = {"A": rng.integers(0, 2, n), "B": rng.integers(0, 3, n), "C": rng.integers(0, 2, n)}
    dirs = np.linalg.qr(rng.standard_normal((d, 6)))[0].T
    U = (
        rng.standard_normal((n, d))
        + sep * (2 * labels["A"] - 1)[:, None] * dirs[0]
        + 1.5 * sep * np.eye(3)[labels["B"]] @ dirs[1:4]
        + sep * (2 * labels["C"] - 1)[:, None] * dirs[4]
    )
    return U, labels


@pytest.fixture(scope="module")
def data():
    return planted()


@pytest.fixture(scope="module")
def calibrations(data):
    U0, labels = data
    return {  # without the early stop (patience 0): 100 steps each
        a: L.calibrate(
            U0, labels[a], eps=0.5, steps=100, warmup_phi=50, patience=0, seed=L.attr_seed(0, a)
        )
        for a in NAMES
    }


def attack_auc(U, y, seed=0):
    """A fresh attacker (logistic regression) trained on half of the users, AUC on the rest."""
    tr, te = train_test_split(np.arange(len(y)), test_size=0.5, random_state=seed, stratify=y)
    proba = LogisticRegression(max_iter=2000).fit(U[tr], y[tr]).predict_proba(U[te])
    if proba.shape[1] == 2:
        return roc_auc_score(y[te], proba[:, 1])
    return roc_auc_score(y[te], proba, multi_class="ovr")


def torch_mlp(params):
    return [torch.tensor(np.asarray(p, dtype=np.float64), requires_grad=True) for p in params]


def torch_logits(tp, x):
    W1, b1, W2, b2 = tp
    return torch.relu(x @ W1.T + b1) @ W2.T + b2


def trained_classifier(U, y, K, rounds=60, seed=3):
    params, state = L.classifier_init(U.shape[1], K, seed=seed), None
    for _ in range(rounds):
        g, c, _ = L.classifier_grad_sums(params, U, y)
        params, state = L.classifier_step(params, g, c, state, 1e-2)
    return params


# ----------------------------------------------------------------- 1. vCLUB forms
def test_vclub_batch_equals_prior_form_on_whole_set(data):
    U0, labels = data
    y = labels["B"]
    params = trained_classifier(U0, y, 3)
    prior = L.attribute_prior(y, 3)
    terms = L.vclub_prior_terms(params, U0, y, prior)
    assert terms.shape == (N,)
    assert L.vclub_batch(params, U0, y) == pytest.approx(terms.mean(), abs=1e-12)
    # the log-partition cancels: m_u = z[a_u] - prior . z
    logq = L.log_probs(params, U0)
    np.testing.assert_allclose(np.exp(logq).sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(terms, logq[np.arange(N), y] - logq @ prior, atol=1e-12)


def test_vclub_batch_agrees_in_expectation_with_prior_form(data):
    U0, labels = data
    y = labels["A"]
    params = trained_classifier(U0, y, 2)
    prior_form = L.vclub_prior_terms(params, U0, y, L.attribute_prior(y, 2)).mean()
    rng = np.random.default_rng(0)
    B = 150
    batches = [rng.choice(N, B, replace=False) for _ in range(400)]
    mc = np.mean([L.vclub_batch(params, U0[b], y[b]) for b in batches])
    # exact expectation over batches drawn without replacement
    logq = L.log_probs(params, U0)
    own = logq[np.arange(N), y]
    others = (logq[:, y].sum(axis=1) - own) / (N - 1)
    exact = np.mean(own - own / B - (B - 1) / B * others)
    assert mc == pytest.approx(exact, abs=0.03 * abs(exact) + 1e-3)
    assert exact == pytest.approx(prior_form, rel=0.02)


# ----------------------------------------------------------------- 2. classifier gradients
def test_classifier_grad_sums_match_autograd_and_are_additive(data):
    U0, labels = data
    y = labels["B"]
    params = L.classifier_init(D, 3, hidden=64, seed=5)
    assert [p.dtype for p in params] == [np.float32] * 4
    assert [p.shape for p in params] == [(64, D), (64,), (3, 64), (3,)]
    for a, b in zip(params, L.classifier_init(D, 3, hidden=64, seed=5)):
        np.testing.assert_array_equal(a, b)
    mask = np.random.default_rng(1).random(N) < 0.7
    grads, count, loss_sum = L.classifier_grad_sums(params, U0, y, mask)
    assert count == mask.sum()

    tp = torch_mlp(params)
    loss = torch.nn.functional.cross_entropy(
        torch_logits(tp, torch.from_numpy(U0[mask])), torch.from_numpy(y[mask])
    )
    (loss * count).backward()
    for g, t in zip(grads, tp):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-10)
    assert loss_sum == pytest.approx(loss.item() * count, rel=1e-12)

    half = np.arange(N) < N // 2
    g1, c1, l1 = L.classifier_grad_sums(params, U0[half], y[half], mask[half])
    g2, c2, l2 = L.classifier_grad_sums(params, U0[~half], y[~half], mask[~half])
    assert c1 + c2 == count and l1 + l2 == pytest.approx(loss_sum, rel=1e-12)
    for g, a, b in zip(grads, g1, g2):
        np.testing.assert_allclose(a + b, g, rtol=1e-10, atol=1e-12)
    empty, c0, l0 = L.classifier_grad_sums(params, U0, y, np.zeros(N, bool))
    assert c0 == 0 and l0 == 0.0 and all(not e.any() for e in empty)


def test_adam_step_matches_torch_adam():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((4, 3)), rng.standard_normal(3)]
    tparams = [torch.tensor(p, requires_grad=True) for p in params]
    opt = torch.optim.Adam(tparams, lr=0.01)
    state = None
    for _ in range(5):
        grads = [rng.standard_normal(p.shape) for p in params]
        for t, g in zip(tparams, grads):
            t.grad = torch.tensor(g)
        opt.step()
        params, state = adam_step(params, grads, state, 0.01)
    assert state.t == 5
    for p, t in zip(params, tparams):
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=1e-12, atol=1e-14)
    # classifier_step = mean gradient + Adam; float32 parameters stay float32
    p32 = [np.ones((2, 2), np.float32)]
    new, st = L.classifier_step(p32, [np.full((2, 2), 6.0)], 3, None, 0.1)
    assert new[0].dtype == np.float32 and st.t == 1
    np.testing.assert_allclose(new[0], 0.9, rtol=1e-6)
    same, st0 = L.classifier_step(p32, [np.ones((2, 2))], 0, None, 0.1)
    np.testing.assert_array_equal(same[0], p32[0])
    assert st0.t == 0


# ----------------------------------------------------------------- 3. per-user calibration
def test_calibration_step_gradient_matches_autograd(data):
    U0, labels = data
    y = labels["B"]
    params = trained_classifier(U0, y, 3, rounds=20)
    prior = L.attribute_prior(y, 3)
    # first Adam step moves every coordinate by lr * sign(g) (bias-corrected m / sqrt(v))
    lr = 1e-4
    new, state, mi_sum = L.calibration_step(params, U0, U0, y, prior, lr, 10.0)
    x = torch.tensor(U0, requires_grad=True)
    logq = torch.log_softmax(torch_logits(torch_mlp(params), x), dim=1)
    terms = logq[torch.arange(N), torch.from_numpy(y)] - logq @ torch.from_numpy(prior)
    terms.sum().backward()
    g = x.grad.numpy()
    np.testing.assert_allclose(state.m, 0.1 * g, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(new, U0 - lr * np.sign(g), atol=1e-9)
    assert mi_sum == pytest.approx(terms.sum().item(), rel=1e-10)
    assert mi_sum == pytest.approx(L.vclub_prior_terms(params, U0, y, prior).sum(), rel=1e-10)


def test_calibration_step_is_per_user(data):
    U0, labels = data
    y = labels["A"]
    n = 40
    E0, y = U0[:n], y[:n]
    params = trained_classifier(U0, labels["A"], 2, rounds=20)
    prior = np.array([0.4, 0.6])
    eps = L.eps_rows(E0, 0.05)  # small radii: projection is active for some rows
    lr = np.linspace(0.01, 0.05, n)
    mask = np.arange(n) % 3 != 0
    together, state, total = E0.copy(), None, []
    alone = [E0[u : u + 1].copy() for u in range(n)]
    alone_state, alone_total = [None] * n, []
    for _ in range(4):
        together, state, s = L.calibration_step(
            params, together, E0, y, prior, lr, eps, opt_state=state, mask=mask
        )
        total.append(s)
        step_sum = 0.0
        for u in range(n):
            alone[u], alone_state[u], s_u = L.calibration_step(
                params,
                alone[u],
                E0[u : u + 1],
                y[u : u + 1],
                prior,
                lr[u : u + 1],
                eps[u : u + 1],
                opt_state=alone_state[u],
                mask=mask[u : u + 1],
            )
            step_sum += s_u
        alone_total.append(step_sum)
    np.testing.assert_allclose(np.concatenate(alone), together, atol=1e-6, rtol=0)
    merged = L.EmbAdamState.concat(alone_state)
    np.testing.assert_allclose(merged.m, state.m, atol=1e-6)
    np.testing.assert_allclose(merged.v, state.v, atol=1e-6)
    np.testing.assert_array_equal(merged.t, state.t)
    np.testing.assert_allclose(alone_total, total, atol=1e-6)
    assert L.max_row_shift(together, E0) > 0
    assert np.all(L.row_shifts(together, E0) <= eps + 1e-9)
    # a client's rows of the state continue exactly like the whole
    part = state.take(np.arange(10))
    nxt_part, _, _ = L.calibration_step(
        params, together[:10], E0[:10], y[:10], prior, lr[:10], eps[:10], opt_state=part
    )
    nxt_all, _, _ = L.calibration_step(params, together, E0, y, prior, lr, eps, opt_state=state)
    np.testing.assert_allclose(nxt_part, nxt_all[:10], atol=1e-6)


# ----------------------------------------------------------------- drivers == federated loop
def test_calibrate_equals_a_simulated_federated_loop(data):
    U0, labels = data
    y = labels["B"]
    mask = np.random.default_rng(2).random(N) < 0.8
    kw = dict(steps=6, n_phi=2, warmup_phi=3, lr_phi=1e-2, lr_emb=0.05, seed=11)
    ref = L.calibrate(U0, y, mask, eps=0.3, **kw)

    clients = np.array_split(np.arange(N), 7)
    counts = sum(L.label_counts(y[c], 3, mask[c]) for c in clients)
    prior = counts / counts.sum()
    eps = L.eps_rows(U0, 0.3)
    lr = 0.05 * eps / np.sqrt(D)
    params = L.classifier_init(D, 3, seed=11)
    phi_state = None
    emb = {i: U0[c].copy() for i, c in enumerate(clients)}
    emb_state = {i: None for i in emb}

    def classifier_round(params, phi_state):
        parts = [
            L.classifier_grad_sums(params, emb[i], y[c], mask[c]) for i, c in enumerate(clients)
        ]
        grads = [sum(p[0][j] for p in parts) for j in range(4)]
        return L.classifier_step(params, grads, sum(p[1] for p in parts), phi_state, 1e-2)

    for _ in range(3):
        params, phi_state = classifier_round(params, phi_state)
    for _ in range(6):
        for _ in range(2):
            params, phi_state = classifier_round(params, phi_state)
        for i, c in enumerate(clients):
            emb[i], emb_state[i], _ = L.calibration_step(
                params, emb[i], U0[c], y[c], prior, lr[c], eps[c], opt_state=emb_state[i]
            )
    np.testing.assert_allclose(np.concatenate([emb[i] for i in emb]), ref.U, atol=1e-6)
    for a, b in zip(params, ref.params):
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(ref.prior, prior)
    assert len(ref.history["mi"]) == 6 and len(ref.history["ce"]) == 3 + 12


# ----------------------------------------------------------------- 4. unlearning quality
def test_calibrate_stays_in_balls_and_defeats_a_fresh_attacker(data):
    U0, labels = data
    y = labels["A"]
    before = attack_auc(U0, y)
    res = L.calibrate(U0, y, eps=0.5)  # defaults: 200 steps
    assert res.U.shape == U0.shape and res.eps.shape == (N,)
    np.testing.assert_allclose(res.eps, 0.5 * np.linalg.norm(U0, axis=1))
    assert np.all(L.row_shifts(res.U, U0) <= res.eps + 1e-6)
    assert L.max_row_shift(res.U, U0) <= res.eps.max() + 1e-6
    after = attack_auc(res.U, y)
    assert before > 0.9
    assert after < 0.65, (before, after)
    assert res.history["mi"][-1] < res.history["mi"][0]
    # the other attributes survive a single-attribute calibration
    assert attack_auc(res.U, labels["C"]) > 0.85


# ----------------------------------------------------------------- 5. combination
def test_combine_grad_matches_autograd_and_is_additive(data, calibrations):
    _, labels = data
    S = [calibrations[a].U for a in NAMES]
    params = [calibrations[a].params for a in NAMES]
    ys = [labels[a] for a in NAMES]
    priors = [calibrations[a].prior for a in NAMES]
    masks = [np.random.default_rng(i).random(N) < 0.8 for i in range(3)]
    w = np.array([1 / m.sum() for m in masks])
    at = np.array([0.3, -0.2, 0.1])
    g, mi = L.combine_grad(at, S, params, ys, priors, masks=masks, weights=w)

    ta = torch.tensor(at, requires_grad=True)
    Ua = torch.tensordot(torch.softmax(ta, 0), torch.from_numpy(np.stack(S)), dims=1)
    total = 0
    for t in range(3):
        logq = torch.log_softmax(torch_logits(torch_mlp(params[t]), Ua), dim=1)
        terms = logq[torch.arange(N), torch.from_numpy(ys[t])] - logq @ torch.from_numpy(priors[t])
        s = terms[torch.from_numpy(masks[t])].sum()
        assert mi[t] == pytest.approx(s.item(), rel=1e-10)
        total = total + w[t] * s
    total.backward()
    np.testing.assert_allclose(g, ta.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert g.sum() == pytest.approx(0.0, abs=1e-10)  # softmax is shift invariant

    clients = np.array_split(np.arange(N), 4)
    parts = [
        L.combine_grad(
            at,
            [s[c] for s in S],
            params,
            [y[c] for y in ys],
            priors,
            masks=[m[c] for m in masks],
            weights=w,
        )
        for c in clients
    ]
    np.testing.assert_allclose(sum(p[0] for p in parts), g, atol=1e-10)
    np.testing.assert_allclose(sum(p[1] for p in parts), mi, rtol=1e-10)
    np.testing.assert_allclose(
        np.concatenate([L.mix(at, [s[c] for s in S]) for c in clients]), L.mix(at, S), atol=1e-12
    )


def refit_objective(U, labels, rounds=150, scaled=False):
    """Sum over attributes of the prior-form vCLUB with a fresh estimator fitted on U
    (``scaled``: each divided by the entropy of its attribute, the normalised objective)."""
    total = 0.0
    for a in NAMES:
        K = labels[a].max() + 1
        params, state = L.classifier_init(D, K, seed=7), None
        for _ in range(rounds):
            g, c, _ = L.classifier_grad_sums(params, U, labels[a])
            params, state = L.classifier_step(params, g, c, state, 1e-3)
        prior = L.attribute_prior(labels[a], K)
        term = L.vclub_prior_terms(params, U, labels[a], prior).mean()
        total += term / L.entropy(prior) if scaled else term
    return total


@pytest.mark.parametrize("balance", ["sum", "normalized"])
def test_combination_on_simplex_in_balls_and_lowers_its_objective(data, calibrations, balance):
    U0, labels = data
    cal = {a: calibrations[a].U for a in NAMES}
    res = L.combine(cal, labels, balance=balance)
    alpha = np.array([res.alpha[a] for a in NAMES])
    assert list(res.alpha) == list(NAMES)
    assert np.all(alpha > 0) and alpha.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(
        res.U, sum(alpha[i] * cal[a] for i, a in enumerate(NAMES)), atol=1e-12
    )
    eps = calibrations["A"].eps
    assert np.all(L.row_shifts(res.U, U0) <= eps + 1e-6)
    assert len(res.history["objective"]) == 50 and res.steps_run == 50
    np.testing.assert_allclose(res.history["alpha"][0], 1 / 3)
    # the scales are the attributes' entropies, the same for a CalibrationResult
    for a in NAMES:
        assert res.scales[a] == pytest.approx(L.entropy(calibrations[a].prior), rel=1e-12)
        assert calibrations[a].scale == pytest.approx(res.scales[a], rel=1e-12)
    scaled = balance == "normalized"
    combined = refit_objective(res.U, labels, scaled=scaled)
    uniform = refit_objective(L.mix(np.zeros(3), cal), labels, scaled=scaled)
    singles = [refit_objective(cal[a], labels, scaled=scaled) for a in NAMES]
    assert combined <= min(singles), (combined, singles)  # better than any single brick
    if balance == "sum":  # (normalized: this planted world is symmetric, its optimum is
        assert combined <= uniform + 1e-9, (combined, uniform)  # near uniform alpha)
    else:
        assert combined <= 1.03 * uniform, (combined, uniform)

    one = L.combine({"A": cal["A"]}, {"A": labels["A"]})
    assert one.alpha == {"A": 1.0} and one.classifiers == {} and one.steps_run == 0
    np.testing.assert_array_equal(one.U, cal["A"])


def test_combine_takes_calibration_results(data, calibrations):
    _, labels = data
    kw = dict(steps=3, warmup_phi=5, n_phi=1)
    a = L.combine({t: calibrations[t] for t in NAMES}, labels, **kw)
    b = L.combine(
        {t: calibrations[t].U for t in NAMES},
        labels,
        priors={t: calibrations[t].prior for t in NAMES},
        **kw,
    )
    np.testing.assert_array_equal(a.alpha_tilde, b.alpha_tilde)


# ----------------------------------------------------------------- 5b. balanced objectives
def _objective(at, S, params, ys, priors, scales, balance, temperature=0.1):
    means = np.array(
        [L.vclub_prior_terms(params[t], L.mix(at, S), ys[t], priors[t]).mean() for t in range(3)]
    )
    return L.balanced_objective(means, scales, balance, temperature), means


@pytest.mark.parametrize("balance", ["sum", "normalized", "minmax"])
def test_balanced_gradient_matches_finite_differences(data, calibrations, balance):
    _, labels = data
    S = [calibrations[a].U for a in NAMES]
    params = [
        trained_classifier(S[i], labels[a], labels[a].max() + 1, rounds=30, seed=i)
        for i, a in enumerate(NAMES)
    ]
    ys = [labels[a] for a in NAMES]
    priors = [calibrations[a].prior for a in NAMES]
    scales = np.array([0.7, 1.3, 0.4])
    at = np.array([0.3, -0.2, 0.1])
    J, means = _objective(at, S, params, ys, priors, scales, balance)
    # minmax: the weights of the current point give the gradient of the smooth maximum
    c = L.balance_weights(scales, balance, 0.1, previous=means / scales)
    g, mi = L.combine_grad(at, S, params, ys, priors, weights=c / N)
    np.testing.assert_allclose(mi / N, means, rtol=1e-10)
    h = 1e-6
    fd = np.array(
        [
            (
                _objective(at + h * e, S, params, ys, priors, scales, balance)[0]
                - _objective(at - h * e, S, params, ys, priors, scales, balance)[0]
            )
            / (2 * h)
            for e in np.eye(3)
        ]
    )
    np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-8)
    assert abs(g).max() > 1e-4


def test_normalized_with_equal_scales_is_the_sum(data, calibrations):
    _, labels = data
    np.testing.assert_array_equal(L.balance_weights(np.ones(3), "sum"), np.ones(3))
    np.testing.assert_allclose(L.balance_weights(np.full(3, 2.0), "normalized"), np.full(3, 0.5))
    cal = {a: calibrations[a].U for a in NAMES}
    kw = dict(steps=8, warmup_phi=10, n_phi=2, lr=0.05)
    plain = L.combine(cal, labels, balance="sum", **kw)
    scaled = L.combine(cal, labels, balance="normalized", scales=dict.fromkeys(NAMES, 2.0), **kw)
    # Adam is invariant to the gradient's scale up to its epsilon
    np.testing.assert_allclose(scaled.alpha_tilde, plain.alpha_tilde, atol=1e-5)
    np.testing.assert_allclose(
        np.array(scaled.history["objective"]) * 2, plain.history["objective"], rtol=1e-6
    )
    # and the minmax weights with equal normalised terms are the normalized ones / k
    np.testing.assert_allclose(
        L.balance_weights(np.full(3, 2.0), "minmax", previous=np.full(3, 0.4)), np.full(3, 0.5 / 3)
    )


def test_minmax_picks_the_worst_attribute(data, calibrations):
    s = np.array([0.5, 1.0, 2.0])
    r = np.array([0.2, 0.9, 0.3])
    np.testing.assert_allclose(
        L.balance_weights(s, "minmax", 1e-3, previous=r), [0, 1.0, 0], atol=1e-12
    )
    np.testing.assert_allclose(
        L.balance_weights(s, "minmax", 1e3, previous=r), 1 / (3 * s), rtol=1e-3
    )
    np.testing.assert_allclose(L.balance_weights(s, "minmax"), 1 / (3 * s))  # first step: uniform
    means = r * s
    smooth = L.balanced_objective(means, s, "minmax", 0.01)
    assert r.max() <= smooth <= r.max() + 0.01 * np.log(3)
    assert L.balanced_objective(means, s, "normalized") == pytest.approx(r.sum())
    assert L.balanced_objective(means, s, "sum") == pytest.approx(means.sum())
    # in the driver each step weights the attribute that was worst at the previous step
    _, labels = data
    res = L.combine(
        {a: calibrations[a] for a in NAMES},
        labels,
        balance="minmax",
        temperature=1e-3,
        steps=6,
        warmup_phi=10,
        n_phi=1,
    )
    sc = np.array([res.scales[a] for a in NAMES])
    np.testing.assert_allclose(res.history["weights"][0], 1 / (3 * sc))
    for prev, w in zip(res.history["mi"][:-1], res.history["weights"][1:]):
        worst = int(np.argmax(np.array(prev) / sc))
        np.testing.assert_allclose(np.array(w) * sc, np.eye(3)[worst], atol=1e-9)


@pytest.mark.parametrize("balance", ["sum", "normalized", "minmax"])
def test_combine_equals_a_simulated_federated_loop(data, calibrations, balance):
    _, labels = data
    names = ("A", "B")
    cal = {a: calibrations[a].U for a in names}
    masks = {a: np.random.default_rng(4).random(N) < 0.9 for a in names}
    ref = L.combine(
        cal, labels, masks, steps=4, n_phi=2, warmup_phi=3, lr=0.05, seed=9, balance=balance
    )

    clients = np.array_split(np.arange(N), 5)
    ys = [labels[a] for a in names]
    ms = [masks[a] for a in names]
    priors = [L.attribute_prior(labels[a], labels[a].max() + 1, masks[a]) for a in names]
    inv = np.array([1 / m.sum() for m in ms])
    scales = np.array([L.entropy(p) for p in priors])  # the server's, from the summed counts
    params = [
        L.classifier_init(D, labels[a].max() + 1, seed=L.attr_seed(9, "combine:" + a))
        for a in names
    ]
    states = [None, None]
    at, at_state, previous = np.zeros(2), None, None
    for step in range(4):
        mixed = [L.mix(at, [cal[a][c] for a in names]) for c in clients]
        for _ in range(2 + (3 if step == 0 else 0)):
            for t in range(2):
                parts = [
                    L.classifier_grad_sums(params[t], mixed[i], ys[t][c], ms[t][c])
                    for i, c in enumerate(clients)
                ]
                grads = [sum(p[0][j] for p in parts) for j in range(4)]
                params[t], states[t] = L.classifier_step(
                    params[t], grads, sum(p[1] for p in parts), states[t], 1e-3
                )
        w = L.balance_weights(scales, balance, 0.1, previous) * inv
        parts = [
            L.combine_grad(
                at,
                [cal[a][c] for a in names],
                params,
                [y[c] for y in ys],
                priors,
                masks=[m[c] for m in ms],
                weights=w,
            )
            for c in clients
        ]
        g, mi = sum(p[0] for p in parts), sum(p[1] for p in parts)
        previous = mi * inv / scales
        (at,), at_state = adam_step([at], [g], at_state, 0.05)
    np.testing.assert_allclose(at, ref.alpha_tilde, atol=1e-8)
    np.testing.assert_allclose(L.mix(at, list(cal.values())), ref.U, atol=1e-8)


# ----------------------------------------------------------------- 6. dynamic requests
SMALL_CAL = {"steps": 30, "warmup_phi": 20}
SMALL_COMB = {"steps": 15, "warmup_phi": 20}


def test_lego_add_withdraw_reuses_calibrations(data, monkeypatch):
    U0, labels = data
    calls = []
    real = L.calibrate

    def counting(*args, **kwargs):
        calls.append(kwargs.get("seed"))
        return real(*args, **kwargs)

    monkeypatch.setattr(L, "calibrate", counting)
    lego = L.Lego(U0, eps=0.5, calibrate_options=SMALL_CAL, combine_options=SMALL_COMB)
    np.testing.assert_array_equal(lego.embeddings(), U0)
    lego.add("A", labels["A"])
    np.testing.assert_array_equal(lego.embeddings(), lego.calibrations["A"].U)
    lego.add("B", labels["B"])
    cal_a, u_a = lego.calibrations["A"], lego.calibrations["A"].U
    lego.add("C", labels["C"])
    cal_c, u_c = lego.calibrations["C"], lego.calibrations["C"].U
    assert set(lego.alpha) == {"A", "B", "C"}
    lego.withdraw("B")
    assert lego.calibrate_calls == 3 and len(calls) == 3
    assert lego.calibrations["A"] is cal_a and lego.calibrations["A"].U is u_a
    assert lego.calibrations["C"] is cal_c and lego.calibrations["C"].U is u_c
    assert lego.attributes == ["A", "C"]
    assert [t["op"] for t in lego.timings] == ["add", "add", "add", "withdraw"]
    # A alone: no Step 2; A + B: cold; + C and - B: warm from the previous solution
    assert [t["warm"] for t in lego.timings] == [False, False, True, True]
    warm = L.DEFAULT_WARM_STEPS
    assert [t["combine_steps"] for t in lego.timings] == [0, 15, warm, warm]
    assert lego.timings[-1]["calibrate_s"] == 0.0 and lego.timings[-1]["combine_s"] > 0
    assert lego.timings[-1]["messages"]["calibrate"] == 0
    assert [t["calibration_steps"] for t in lego.timings[:3]] == [
        {"A": 30},
        {"B": 30},
        {"C": 30},
    ]
    cost = lego.cost_summary()
    assert 0 < cost["fraction"] < 1 and cost["full_s"] > cost["last_s"]
    assert np.all(L.row_shifts(lego.embeddings(), U0) <= lego.eps + 1e-6)

    # calibrations depend on (seed, attribute) only: a fresh request reuses nothing but
    # computes the same bricks; with warm_steps = 0 (Step 2 from scratch every time) the
    # dynamic sequence equals the fresh request bit for bit
    cold = L.Lego(
        U0, eps=0.5, calibrate_options=SMALL_CAL, combine_options={**SMALL_COMB, "warm_steps": 0}
    )
    cold.add("A", labels["A"]).add("B", labels["B"]).add("C", labels["C"]).withdraw("B")
    fresh = L.Lego(U0, eps=0.5, calibrate_options=SMALL_CAL, combine_options=SMALL_COMB)
    fresh.request({"A": labels["A"], "C": labels["C"]})
    assert calls[3:6] == calls[0:3] and calls[6:] == calls[0:1] + calls[2:3]
    np.testing.assert_allclose(fresh.calibrations["A"].U, u_a, atol=1e-12)
    np.testing.assert_allclose(fresh.calibrations["C"].U, u_c, atol=1e-12)
    np.testing.assert_allclose(fresh.embeddings(), cold.embeddings(), atol=1e-10)
    assert fresh.alpha == pytest.approx(cold.alpha, abs=1e-10)
    assert [t["warm"] for t in cold.timings] == [False] * 4

    lego.withdraw("A").withdraw("C")
    np.testing.assert_array_equal(lego.embeddings(), U0)
    assert lego.alpha == {} and lego.combination is None


def test_warm_start_reuses_alpha_and_estimators(data, calibrations):
    U0, labels = data
    assert list(L.initial_alpha_tilde(["A", "B", "C"], {"A": 0.5, "B": -0.2})) == [
        0.5,
        -0.2,
        0.15,
    ]
    assert list(L.initial_alpha_tilde(["A", "B"], None)) == [0.0, 0.0]
    # warm estimators skip the warm-up: with n_phi = 0 only the cold one is trained
    first = L.combine({a: calibrations[a] for a in "AB"}, labels, steps=3, warmup_phi=5, n_phi=1)
    warm = L.combine(
        {a: calibrations[a] for a in NAMES},
        labels,
        steps=1,
        warmup_phi=5,
        n_phi=0,
        classifiers=first.classifiers,
        classifier_states=first.classifier_states,
        alpha_tilde=dict(zip("AB", first.alpha_tilde)),
    )
    assert warm.warm and warm.steps_run == 1
    start = np.array(warm.history["alpha"][0])
    np.testing.assert_allclose(
        start, L.softmax(np.r_[first.alpha_tilde, first.alpha_tilde.mean()]), atol=1e-15
    )
    for a in "AB":
        for x, y in zip(warm.classifiers[a], first.classifiers[a]):
            np.testing.assert_array_equal(x, y)
        assert warm.classifier_states[a].t == first.classifier_states[a].t
    assert warm.classifier_states["C"].t == 5
    # the dynamic driver: the add starts where the previous request ended, near the full
    # request's solution, and costs fewer messages than the full request
    comb = {"steps": 30, "warmup_phi": 20, "lr": 0.05}
    lego = L.Lego(U0, eps=0.5, calibrate_options=SMALL_CAL, combine_options=comb)
    lego.request({"A": labels["A"], "B": labels["B"]})
    before = lego.combination.alpha_tilde.copy()
    lego.add("C", labels["C"])
    np.testing.assert_allclose(
        lego.combination.history["alpha"][0], L.softmax(np.r_[before, before.mean()]), atol=1e-15
    )
    full = L.Lego(U0, eps=0.5, calibrate_options=SMALL_CAL, combine_options=comb)
    full.request({a: labels[a] for a in NAMES})
    add, whole = lego.timings[-1], full.timings[-1]
    assert add["warm"] and not whole["warm"]
    assert add["messages"]["combine"] < whole["messages"]["combine"]
    assert add["messages"]["calibrate"] == whole["messages"]["calibrate"]  # same length
    # what holds instead of bit equality: the objective (refitted estimators) of the warm
    # solution is that of the full request's (alpha itself is not identified: the
    # objective is flat along the simplex), and both beat uniform alpha
    warm_j = refit_objective(lego.embeddings(), labels, scaled=True)
    full_j = refit_objective(full.embeddings(), labels, scaled=True)
    uniform = refit_objective(
        L.mix(np.zeros(3), [full.calibrations[a].U for a in NAMES]), labels, scaled=True
    )
    assert abs(warm_j - full_j) < 0.01 * full_j, (warm_j, full_j)
    assert max(warm_j, full_j) < uniform, (warm_j, full_j, uniform)


# ----------------------------------------------------------------- 6b. early stops
def test_calibration_plateau_and_alpha_convergence():
    mi = [1.0, 0.8, 0.7, 0.71, 0.72, 0.705]
    assert not L.calibration_plateau(mi, 0)
    assert not L.calibration_plateau(mi[:3], 2)  # still improving
    assert L.calibration_plateau(mi[:5], 2)  # no new best in the last 2 steps
    assert not L.calibration_plateau(mi[:4], 3)  # 0.7 is a new best among the last 3
    assert L.calibration_plateau([1.0, 0.995, 0.992], 2, tol=0.01)  # gains below 1% of peak
    assert not L.calibration_plateau([1.0, 0.995, 0.992], 2, tol=0.0)
    # a rising estimate (the estimator catching up) never stops; the count starts at the peak
    rising = [0.3, 0.8, 0.9, 0.85, 0.7, 0.72, 0.71]
    assert not any(L.calibration_plateau(rising[:s], 2) for s in range(1, 6))
    assert L.calibration_plateau(rising, 2)
    alphas = [[0.5, 0.5], [0.6, 0.4], [0.61, 0.39], [0.612, 0.388]]
    assert not L.alpha_converged(alphas, 0.0, 1)
    assert L.alpha_converged(alphas, 0.05, 2) and not L.alpha_converged(alphas, 0.01, 2)
    assert not L.alpha_converged(alphas[:2], 0.5, 2)
    # the schedule of a calibration stopped after s steps is the prefix of the full one
    full = L.calibration_schedule(10, 3, 4)
    for s in range(1, 10):
        part = L.calibration_schedule(s, 3, 4)
        assert len(part) == 4 + 3 * s + 1 and part[:-1] == full[: len(part) - 1]
        assert part[-1][0] and full[len(part) - 1][0]  # both end on that step


def test_calibrate_stops_on_a_plateau(data):
    U0, labels = data
    kw = dict(eps=0.5, steps=120, warmup_phi=20, seed=3)
    long = L.calibrate(U0, labels["A"], patience=0, **kw)
    short = L.calibrate(U0, labels["A"], patience=10, **kw)
    assert long.steps_run == 120 and 10 < short.steps_run < 120
    np.testing.assert_array_equal(short.history["mi"], long.history["mi"][: short.steps_run])
    assert L.calibration_plateau(short.history["mi"], 10)
    assert not any(
        L.calibration_plateau(short.history["mi"][:s], 10) for s in range(1, short.steps_run)
    )
    assert attack_auc(short.U, labels["A"]) < 0.65
    # Step 2's early stop: alpha stops moving
    other = L.calibrate(U0, labels["C"], eps=0.5, steps=30, warmup_phi=20)
    res = L.combine({"A": long, "C": other}, labels, steps=200, warmup_phi=5, tol=0.02, window=3)
    assert res.steps_run < 200
    alphas = res.history["alpha"] + [list(res.alpha.values())]
    assert L.alpha_converged(alphas, 0.02, 3) and not L.alpha_converged(alphas[:-1], 0.02, 3)


# ----------------------------------------------------------------- helpers and baselines
def test_eps_rows_noise_and_projection(data):
    U0, _ = data
    norms = np.linalg.norm(U0, axis=1)
    np.testing.assert_allclose(L.eps_rows(U0, 0.2), 0.2 * norms)
    np.testing.assert_allclose(L.eps_rows(U0, 0.2, relative=False), 0.2)
    radii = L.eps_rows(U0, 0.1)
    noisy = L.gaussian_noise(U0, radii / np.sqrt(D), seed=3)
    np.testing.assert_array_equal(noisy, L.gaussian_noise(U0, radii / np.sqrt(D), seed=3))
    assert np.median(L.row_shifts(noisy, U0) / radii) == pytest.approx(1.0, abs=0.2)
    proj = L.project_rows(noisy, U0, radii)
    assert np.all(L.row_shifts(proj, U0) <= radii + 1e-12)
    inside = L.row_shifts(noisy, U0) <= radii
    np.testing.assert_array_equal(proj[inside], noisy[inside])
    assert L.max_row_shift(U0, U0) == 0.0


# ----------------------------------------------------------------- 7. errors
def test_user_errors_raise_config_error(data):
    U0, labels = data
    y = labels["A"]
    params = L.classifier_init(D, 2)
    prior = np.array([0.5, 0.5])
    cases = [
        (lambda: L.calibrate(U0, y, eps=-0.1), "eps"),
        (lambda: L.eps_rows(U0, -1.0), "eps"),
        (lambda: L.calibrate(U0[:, :5], y, eps=0.1, num_classes=2, prior=[0.5, 0.6]), "prior"),
        (lambda: L.calibrate(U0, y[:-1], eps=0.1), "labels"),
        (lambda: L.calibrate(U0, y, np.ones(N - 1, bool), eps=0.1), "mask"),
        (lambda: L.calibrate(U0, y, eps=0.1, steps=-1), "steps"),
        (lambda: L.calibrate(U0, y, eps=0.1, lr_emb=0), "lr_emb"),
        (lambda: L.calibration_step(params, U0, U0[:-1], y, prior, 0.1, 0.1), "emb0"),
        (lambda: L.calibration_step(params, U0, U0, y + 1, prior, 0.1, 0.1), "labels"),
        (lambda: L.calibration_step(params, U0, U0, y, prior, 0.1, -1.0), "eps"),
        (lambda: L.calibration_step(params, U0, U0, y, prior, 0.1, np.ones(3)), "eps"),
        (lambda: L.calibration_step(params, U0[:, :4], U0[:, :4], y, prior, 0.1, 0.1), "params"),
        (lambda: L.classifier_grad_sums(params, U0, y - 1), "labels"),
        (lambda: L.classifier_grad_sums(params, U0, y.astype(float) + 0.5), "labels"),
        (lambda: L.classifier_grad_sums(params, U0, y, y), "mask"),
        (lambda: L.classifier_grad_sums(params[:3], U0, y), "params"),
        (lambda: L.vclub_prior_terms(params, U0, y, [1.0]), "prior"),
        (lambda: L.combine_grad(np.zeros(2), [U0], [params], [y], [prior]), "alpha_tilde"),
        (
            lambda: L.combine_grad(np.zeros(2), [U0, U0[:-1]], [params] * 2, [y] * 2, [prior] * 2),
            "calibrated",
        ),
        (lambda: L.combine({"A": U0}, {"B": y}), "labels"),
        (lambda: L.combine({}, {}), "calibrated"),
        (lambda: L.attribute_prior(y, 2, np.zeros(N, bool)), "mask"),
        (lambda: adam_step([np.ones(2)], [np.ones(3)], None, 0.1), "grads"),
        (lambda: L.Lego(U0, eps=0.1, calibrate_options={"bogus": 1}), "calibrate_options"),
        (lambda: L.Lego(U0, eps=0.1, combine_options={"warm_steps": -1}), "warm_steps"),
        (lambda: L.combine({"A": U0}, {"A": y}, balance="bogus"), "balance"),
        (lambda: L.combine({"A": U0}, {"A": y}, temperature=0), "temperature"),
        (lambda: L.combine({"A": U0}, {"A": y}, tol=-1), "tol"),
        (lambda: L.combine({"A": U0}, {"A": y}, window=0), "window"),
        (lambda: L.combine({"A": U0}, {"A": y}, scales={"A": -1.0}), "scales"),
        (lambda: L.combine({"A": U0}, {"A": y}, alpha_tilde={"B": 1.0}), "alpha_tilde"),
        (lambda: L.calibrate(U0, y, eps=0.1, patience=-1), "patience"),
        (lambda: L.calibrate(U0, y, eps=0.1, plateau_tol=-0.1), "plateau_tol"),
        (lambda: L.balance_weights([1.0, 0.0], "normalized"), "scales"),
        (lambda: L.balance_weights([1.0, 1.0], "minmax", previous=[1.0]), "previous"),
        (lambda: L.Lego(U0, eps=0.1).withdraw("A"), "attr"),
        (lambda: L.gaussian_noise(U0, -1.0), "sigma"),
    ]
    for fn, name in cases:
        with pytest.raises(ConfigError, match=name) as info:
            fn()
        assert "\n" not in str(info.value)

    lego = L.Lego(U0, eps=0.1, calibrate_options={"steps": 1, "warmup_phi": 0})
    lego.add("A", y)
    with pytest.raises(ConfigError, match="already"):
        lego.add("A", y)


def test_module_imports_no_flower():
    import subprocess
    import sys

    code = (
        "import sys, fedrec.algorithms.lego\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('flwr', 'torch'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
