"""UFO's building blocks (fedrec.algorithms.ufo): the geometric mixture, the SPIN / DPO
losses and the judger's margin, fair target weights and sampling, the categorical
sampler, and the two baselines (exposure re-ranking, inverse-frequency weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedrec.algorithms.ufo import (
    dpo_loss,
    exposure_rerank,
    fair_group_weights,
    geometric_mixture,
    inverse_frequency_weights,
    judger_margin,
    sample_fair_targets,
    sample_from_logprobs,
    spin_loss,
)
from fedrec.errors import ConfigError

torch.set_num_threads(1)


# ------------------------------------------------------------------ geometric mixture
def test_geometric_mixture_endpoints_normalisation_and_interpolation():
    g = torch.Generator().manual_seed(0)
    cur = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3  # logits, unnormalised
    ref = torch.randn(4, 7, generator=g, dtype=torch.float64) * 3
    lc, lr = torch.log_softmax(cur, -1), torch.log_softmax(ref, -1)
    assert torch.equal(geometric_mixture(cur, ref, 1.0), lc)
    assert torch.equal(geometric_mixture(cur, ref, 0.0), lr)
    for a in (0.0, 0.25, 0.5, 0.9, 1.0):
        mix = geometric_mixture(cur, ref, a)
        torch.testing.assert_close(torch.logsumexp(mix, -1), torch.zeros(4, dtype=mix.dtype))
        # logits or log-probs give the same mixture
        torch.testing.assert_close(mix, geometric_mixture(lc, lr, a))
        # log-odds between two items interpolate linearly in alpha
        odds = mix[:, 0] - mix[:, 1]
        torch.testing.assert_close(
            odds, a * (lc[:, 0] - lc[:, 1]) + (1 - a) * (lr[:, 0] - lr[:, 1])
        )
    # hand case: pi_mix ∝ sqrt(p q)
    p = torch.tensor([0.5, 0.5], dtype=torch.float64)
    q = torch.tensor([0.9, 0.1], dtype=torch.float64)
    want = torch.sqrt(p * q) / torch.sqrt(p * q).sum()
    torch.testing.assert_close(geometric_mixture(p.log(), q.log(), 0.5).exp(), want)


def test_geometric_mixture_infinities_and_errors():
    cur = torch.tensor([0.0, float("-inf"), 1.0])
    ref = torch.tensor([0.0, 0.0, 0.0])
    assert not torch.isnan(geometric_mixture(cur, ref, 0.0)).any()
    mix = geometric_mixture(cur, ref, 0.5)
    assert mix[1] == float("-inf") and torch.logsumexp(mix, 0).abs() < 1e-6
    with pytest.raises(ConfigError, match=r"alpha must be a number in \[0, 1\]"):
        geometric_mixture(cur, ref, 1.5)
    with pytest.raises(ConfigError, match="alpha"):
        geometric_mixture(cur, ref, float("nan"))
    with pytest.raises(ConfigError, match="same shape"):
        geometric_mixture(cur, ref[:2], 0.5)


# ------------------------------------------------------------------ SPIN / DPO
def test_spin_loss_is_log2_at_equal_policies():
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(6, generator=g, dtype=torch.float64)
    neg = torch.randn(6, 3, generator=g, dtype=torch.float64)
    assert spin_loss(pos, pos, neg[:, 0], neg[:, 0]).item() == math.log(2)
    assert spin_loss(pos, pos, neg, neg, beta=2.0).item() == math.log(2)
    assert spin_loss(pos, pos, neg, neg, weights=[1, 2, 0, 1, 1, 3]).item() == math.log(2)
    assert judger_margin(pos, pos, neg, neg) == 0.0
    assert dpo_loss(pos, pos, neg, neg).item() == math.log(2)


def test_spin_loss_hand_values():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)
    # d_pos = 1, d_neg = -1, beta = 0.5: margin 1, loss softplus(-1) = log(1 + e^-1)
    loss = spin_loss(t(1.0), t(0.0), t(-1.0), t(0.0), beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    assert judger_margin(t(1.0), t(0.0), t(-1.0), t(0.0), beta=0.5) == pytest.approx(1.0)
    # two prompts, two negatives each: d_pos = (0, 2), d_neg = ((0, 2), (1, 0)), beta = 1
    pos, pos_old = t(0.0, 2.0), t(0.0, 0.0)
    neg, neg_old = t([0.0, 2.0], [1.0, 0.0]), torch.zeros(2, 2, dtype=torch.float64)
    sp = lambda z: math.log1p(math.exp(-z))
    l0 = (sp(0.0) + sp(-2.0)) / 2  # margins 0, -2
    l1 = (sp(1.0) + sp(2.0)) / 2  # margins 1, 2
    assert spin_loss(pos, pos_old, neg, neg_old, beta=1.0).item() == pytest.approx((l0 + l1) / 2)
    w = spin_loss(pos, pos_old, neg, neg_old, beta=1.0, weights=[1.0, 3.0])
    assert w.item() == pytest.approx((l0 + 3 * l1) / 4)
    # per-prompt mean margins -1 and 1.5
    assert judger_margin(pos, pos_old, neg, neg_old, beta=1.0) == pytest.approx(0.25)
    assert judger_margin(pos, pos_old, neg, neg_old, 1.0, [1.0, 3.0]) == pytest.approx(0.875)
    # paired (n, m) positives
    pp = t([0.0, 1.0], [2.0, 2.0])
    paired = spin_loss(pp, torch.zeros(2, 2, dtype=torch.float64), neg, neg_old, beta=1.0)
    want = (sp(0.0) + sp(-1.0) + sp(1.0) + sp(2.0)) / 4
    assert paired.item() == pytest.approx(want)
    # dpo_loss is the same formula with a fixed reference
    assert dpo_loss(pos, pos_old, neg, neg_old, beta=1.0).item() == pytest.approx((l0 + l1) / 2)


def test_spin_loss_gradient_raises_positives_and_lowers_negatives():
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(5, generator=g, dtype=torch.float64).requires_grad_()
    neg = torch.randn(5, 4, generator=g, dtype=torch.float64).requires_grad_()
    pos_old = torch.randn(5, generator=g, dtype=torch.float64)
    neg_old = torch.randn(5, 4, generator=g, dtype=torch.float64)
    loss = spin_loss(pos, pos_old, neg, neg_old, beta=0.7)
    gp, gn = torch.autograd.grad(loss, (pos, neg))
    assert torch.all(gp < 0) and torch.all(gn > 0)  # descent: logp_pos up, logp_neg down
    with torch.no_grad():
        new = spin_loss(pos - 0.1 * gp, pos_old, neg - 0.1 * gn, neg_old, beta=0.7)
        assert new < loss
        m0 = judger_margin(pos, pos_old, neg, neg_old, beta=0.7)
        assert judger_margin(pos - 0.1 * gp, pos_old, neg - 0.1 * gn, neg_old, 0.7) > m0


def test_spin_loss_errors():
    x = torch.zeros(3)
    with pytest.raises(ConfigError, match="beta must be a number in"):
        spin_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ConfigError, match="logp_pos and logp_pos_old"):
        spin_loss(x, x[:2], x, x)
    with pytest.raises(ConfigError, match=r"logp_pos must have shape \(3,\)"):
        spin_loss(torch.zeros(2), torch.zeros(2), x, x)
    with pytest.raises(ConfigError, match="weights must have shape"):
        spin_loss(x, x, x, x, weights=[1.0, 1.0])
    with pytest.raises(ConfigError, match="non-negative"):
        spin_loss(x, x, x, x, weights=[1.0, -1.0, 1.0])


# ------------------------------------------------------------------ fair targets
def test_fair_group_weights_hand_case():
    gp = [0.5, 0.3, 0.2, 0.0]
    gr = [0.7, 0.3, 0.0, 0.1]
    w = fair_group_weights(gp, gr)
    np.testing.assert_allclose(w, [0.5 / 0.7, 1.0, 10.0, 0.0])
    np.testing.assert_allclose(
        fair_group_weights(gp, gr, power=2.0, max_weight=5.0), [(0.5 / 0.7) ** 2, 1.0, 5.0, 0.0]
    )
    np.testing.assert_allclose(fair_group_weights(gp, gr, power=0.0), [1.0, 1.0, 1.0, 0.0])
    with pytest.raises(ConfigError, match="gp and gr"):
        fair_group_weights([0.5, 0.5], [1.0])
    with pytest.raises(ConfigError, match="gr must be finite and non-negative"):
        fair_group_weights([0.5, 0.5], [1.0, -0.1])
    with pytest.raises(ConfigError, match="max_weight"):
        fair_group_weights(gp, gr, max_weight=0.0)


def test_sample_fair_targets_frequencies():
    cands = np.array([10, 11, 12, 13])
    groups = np.array([0, 0, 1, 2])
    weights = np.array([1.0, 0.0, 3.0])
    n = 20_000
    draws = sample_fair_targets(cands, groups, weights, n, np.random.default_rng(0))
    assert draws.shape == (n,) and draws.dtype == np.int64
    assert set(np.unique(draws)) <= {10, 11, 13}  # group 1 has weight 0
    p = np.array([0.2, 0.2, 0.0, 0.6])
    counts = np.array([(draws == c).sum() for c in cands])
    keep = p > 0
    chi2 = (((counts - n * p) ** 2)[keep] / (n * p)[keep]).sum()
    assert chi2 < 13.8  # chi-square, 2 dof, 0.999 quantile
    np.testing.assert_allclose(counts / n, p, atol=0.015)
    # deterministic for the generator's state
    again = sample_fair_targets(cands, groups, weights, n, np.random.default_rng(0))
    np.testing.assert_array_equal(draws, again)
    # all weights zero: uniform over the candidates
    uni = sample_fair_targets(cands, groups, np.zeros(3), n, np.random.default_rng(1))
    np.testing.assert_allclose([(uni == c).mean() for c in cands], 0.25, atol=0.015)
    assert sample_fair_targets(cands, groups, weights, 0, np.random.default_rng(0)).size == 0


def test_sample_fair_targets_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="candidate_groups must have one label"):
        sample_fair_targets([1, 2], [0], [1.0], 3, rng)
    with pytest.raises(ConfigError, match=r"group labels in \[0, 2\)"):
        sample_fair_targets([1, 2], [0, 2], [1.0, 1.0], 3, rng)
    with pytest.raises(ConfigError, match="candidates is empty"):
        sample_fair_targets([], [], [1.0], 3, rng)
    with pytest.raises(ConfigError, match="group_weights must be finite"):
        sample_fair_targets([1], [0], [-1.0], 3, rng)
    with pytest.raises(ConfigError, match="rng"):
        sample_fair_targets([1], [0], [1.0], 3, 0)


# ------------------------------------------------------------------ categorical sampler
def test_sample_from_logprobs_respects_exclusions_and_is_deterministic():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 30, generator=g)
    exclude = [np.array([0, 1, 2]), [], np.arange(5, 30), torch.tensor([7])]
    out = sample_from_logprobs(logp, 5, torch.Generator().manual_seed(0), exclude)
    assert out.shape == (4, 5) and out.dtype == torch.long
    for r, ex in enumerate(exclude):
        drawn = set(out[r].tolist())
        assert not drawn & set(np.asarray(ex).tolist())
        assert len(drawn) == 5  # without replacement: n <= allowed count
    again = sample_from_logprobs(logp, 5, torch.Generator().manual_seed(0), exclude)
    assert torch.equal(out, again)
    mask = torch.zeros(4, 30, dtype=torch.bool)
    for r, ex in enumerate(exclude):
        mask[r, torch.as_tensor(np.asarray(ex, dtype=np.int64))] = True
    via_mask = sample_from_logprobs(logp, 5, torch.Generator().manual_seed(0), mask)
    assert torch.equal(out, via_mask)
    via_np = sample_from_logprobs(logp, 5, torch.Generator().manual_seed(0), mask.numpy())
    assert torch.equal(out, via_np)
    # more draws than allowed items: with replacement, still only allowed items
    many = sample_from_logprobs(logp, 12, torch.Generator().manual_seed(0), exclude)
    assert set(many[2].tolist()) <= set(range(5))
    assert len(set(many[0].tolist())) == 12  # the other rows stay without replacement
    assert sample_from_logprobs(logp, 0, torch.Generator()).shape == (4, 0)


def test_sample_from_logprobs_frequencies():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.5]])
    rows = logits.expand(20_000, 5).contiguous()
    out = sample_from_logprobs(rows, 1, torch.Generator().manual_seed(4), [[3]] * 20_000)
    freq = torch.bincount(out.ravel(), minlength=5).double() / 20_000
    p = torch.softmax(logits[0].masked_fill(torch.arange(5) == 3, float("-inf")).double(), 0)
    assert freq[3] == 0
    torch.testing.assert_close(freq, p, atol=0.015, rtol=0)


def test_sample_from_logprobs_errors():
    logp = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="no item left"):
        sample_from_logprobs(logp, 1, torch.Generator(), [[0, 1, 2], []])
    with pytest.raises(ConfigError, match="one sequence of item ids per row"):
        sample_from_logprobs(logp, 1, torch.Generator(), [[0]])
    with pytest.raises(ConfigError, match=r"outside \[0, 3\)"):
        sample_from_logprobs(logp, 1, torch.Generator(), [[3], []])
    with pytest.raises(ConfigError, match="exclude mask must have shape"):
        sample_from_logprobs(logp, 1, torch.Generator(), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="logp must be 2-D"):
        sample_from_logprobs(torch.zeros(3), 1, torch.Generator())


# ------------------------------------------------------------------ exposure re-ranking
def _tv(lists, groups, target):
    share = np.bincount(groups[lists.ravel()], minlength=len(target)) / lists.size
    return 0.5 * np.abs(share - target).sum()


def test_exposure_rerank_lam0_is_plain_topk():
    rng = np.random.default_rng(5)
    S = rng.standard_normal((50, 80))
    S[rng.random(S.shape) < 0.2] = -np.inf  # excluded (e.g. training) items
    groups = rng.integers(0, 3, 80)
    out = exposure_rerank(S, groups, np.full(3, 1 / 3), k=10, lam=0.0, candidates=40)
    want = np.argsort(-S, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(out, want)
    assert np.all(np.isfinite(S[np.arange(50)[:, None], out]))
    # ties go to the lower id
    T = np.array([[1.0, 2.0, 2.0, 0.0, 2.0]])
    np.testing.assert_array_equal(
        exposure_rerank(T, [0, 0, 1, 1, 0], [0.5, 0.5], k=3, lam=0.0, candidates=5), [[1, 2, 4]]
    )


def test_exposure_rerank_hand_case_and_padding():
    S = np.array([[4.0, 3.0, 2.0, 1.0]] * 2)
    groups = [0, 0, 1, 1]
    target = [0.5, 0.5]
    # user 0: E = 0, equal penalties -> item 0. user 1: E = (1, 0), penalties
    # (0.5 lam, -0.5 lam); z = (1.342, 0.447, -0.447, -1.342): item 2 wins iff lam > 1.789
    np.testing.assert_array_equal(
        exposure_rerank(S, groups, target, k=1, lam=1.0, candidates=4), [[0], [0]]
    )
    np.testing.assert_array_equal(
        exposure_rerank(S, groups, target, k=1, lam=10.0, candidates=4), [[0], [2]]
    )
    # within one user the running counts move too: k = 2, lam = 10 -> (0, 2)
    np.testing.assert_array_equal(
        exposure_rerank(S[:1], groups, target, k=2, lam=10.0, candidates=4), [[0, 2]]
    )
    # fewer allowed items than slots: padded with -1, -inf never chosen
    P = np.array([[1.0, -np.inf, 0.5, -np.inf]])
    np.testing.assert_array_equal(
        exposure_rerank(P, groups, target, k=3, lam=5.0, candidates=4), [[0, 2, -1]]
    )


def test_exposure_rerank_moves_exposure_towards_target():
    rng = np.random.default_rng(6)
    n_users, n_items = 200, 300
    groups = rng.integers(0, 3, n_items)
    bias = np.array([1.0, 0.0, -1.0])[groups]  # group 0 popular, group 2 long tail
    S = rng.standard_normal((n_users, n_items)) + bias
    target = np.full(3, 1 / 3)
    tvs = [
        _tv(exposure_rerank(S, groups, target, k=10, lam=lam, candidates=100), groups, target)
        for lam in (0.0, 1.0, 10.0, 100.0, 1000.0)
    ]
    # plain top-10 gives group 0 about 90% of the slots (TV ~ 0.57); TV falls with lam
    assert tvs[0] > 0.5
    assert all(a > b for a, b in zip(tvs, tvs[1:]))
    assert tvs[2] < 0.2 and tvs[-1] < 0.01


def test_exposure_rerank_errors():
    S = np.zeros((2, 4))
    with pytest.raises(ConfigError, match="target must be"):
        exposure_rerank(S, [0, 0, 1, 1], [0.5, 0.6])
    with pytest.raises(ConfigError, match="groups must have one label per item"):
        exposure_rerank(S, [0, 1], [0.5, 0.5], k=1, candidates=2)
    with pytest.raises(ConfigError, match="candidates must be an integer >= 3"):
        exposure_rerank(S, [0, 0, 1, 1], [0.5, 0.5], k=3, candidates=2)
    with pytest.raises(ConfigError, match="lam"):
        exposure_rerank(S, [0, 0, 1, 1], [0.5, 0.5], k=1, lam=-1.0, candidates=2)
    with pytest.raises(ConfigError, match="NaN"):
        exposure_rerank(np.full((1, 4), np.nan), [0, 0, 1, 1], [0.5, 0.5], k=1, candidates=2)


# ------------------------------------------------------------------ inverse frequency
def test_inverse_frequency_weights_hand_case():
    item_groups = [0, 0, 1, 2, 3]
    train = [0, 1, 0, 2, 3, 3]  # group frequencies f = (3, 1, 2, 0), mean over seen 2
    w = inverse_frequency_weights(item_groups, train, 4)
    np.testing.assert_allclose(w, [2 / 3, 2 / 3, 2.0, 1.0, 0.0])
    assert w[np.array(train)].mean() == pytest.approx(1.0)
    w2 = inverse_frequency_weights(item_groups, train, 4, power=2.0)
    raw = np.array([4 / 9, 4 / 9, 4.0, 1.0, 0.0])
    np.testing.assert_allclose(w2, raw * 6 / raw[np.array(train)].sum())
    assert w2[np.array(train)].mean() == pytest.approx(1.0)
    np.testing.assert_allclose(
        inverse_frequency_weights(item_groups, train, 4, power=0.0), [1, 1, 1, 1, 0]
    )
    with pytest.raises(ConfigError, match=r"train_items must hold item ids in \[0, 5\)"):
        inverse_frequency_weights(item_groups, [5], 4)
    with pytest.raises(ConfigError, match=r"item_groups must hold group labels in \[0, 3\)"):
        inverse_frequency_weights(item_groups, train, 3)
    with pytest.raises(ConfigError, match="train_items is empty"):
        inverse_frequency_weights(item_groups, [], 4)
