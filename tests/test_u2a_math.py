"""U2A's pure math (issue 12): CG and HVPs against dense oracles, the implicit-gradient
scores against finite differences, selection, mirror-descent weights and the judge."""

from __future__ import annotations

import pytest
import torch

from fedrec.algorithms.lm_unlearning import answer_logprob, forget_losses
from fedrec.algorithms.u2a import (
    alignment_scores,
    banned_rate,
    cg_solve,
    encode_preferences,
    flatten,
    generate_answers,
    greedy_select,
    hvp,
    judge,
    mirror_descent,
    negative_grads,
    objective_grad,
    preconditioned_direction,
    preference_margin,
    unflatten,
    win_rate,
)
from fedrec.data.factworld import REFUSAL, make_assistant_corpus, make_fact_world
from fedrec.models.causal_lm import (
    CausalLM,
    WordTokenizer,
    encode_qa,
    per_sample_grads,
    sequence_nll,
)


def _world():
    w = make_fact_world(num_people=8, attributes=("pet", "colour"), seed=0)
    corpus = make_assistant_corpus(w, negatives_per_prompt=2, harmful_fraction=0.1, seed=0)
    tok = WordTokenizer(w.vocabulary())
    model = CausalLM(len(tok), d_model=16, n_layers=1, n_heads=2, context=24, seed=0).double()
    return w, corpus, tok, model


def _params(model):
    return {k: v.detach() for k, v in model.named_parameters()}


def _micro():
    """A CausalLM with a few hundred parameters (float64), a batch and its flat loss."""
    from torch.func import functional_call

    tok = WordTokenizer("a b c d e f".split())
    model = CausalLM(len(tok), d_model=4, n_layers=1, n_heads=1, context=8, seed=1).double()
    ids, mask = encode_qa(tok, [("a b", "c d"), ("b e", "f a"), ("d", "e e b")])
    params = _params(model)

    def loss(p):
        return sequence_nll(lambda t: functional_call(model, p, (t,)), ids, mask).mean()

    return model, params, loss


# ------------------------------------------------------------------ CG and HVPs
def test_cg_solve_matches_a_dense_solve_honours_damping_and_flags_negative_curvature():
    g = torch.Generator().manual_seed(0)
    n = 12
    M = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x, info = cg_solve(lambda p: A @ p, b, iters=n, damping=0.0, tol=0.0)
    assert torch.allclose(x, torch.linalg.solve(A, b), atol=1e-5, rtol=1e-5)
    assert info["iterations"] == n and not info["stopped_on_negative_curvature"]
    # damping: solves (A + lambda I) x = b
    lam = 0.7
    x, _ = cg_solve(lambda p: A @ p, b, iters=n, damping=lam, tol=0.0)
    want = torch.linalg.solve(A + lam * torch.eye(n, dtype=torch.float64), b)
    assert torch.allclose(x, want, atol=1e-5, rtol=1e-5)
    # early stop on the (relative) tolerance: the identity is solved in one iteration
    x, info = cg_solve(lambda p: p, b, iters=50, damping=0.0, tol=1e-6)
    assert info["iterations"] == 1 and torch.allclose(x, b) and info["residual_norm"] < 1e-12
    # negative curvature: stop, flag, return b at the first iteration
    x, info = cg_solve(lambda p: -A @ p, b, iters=n, damping=0.1)
    assert info["stopped_on_negative_curvature"] and info["iterations"] == 1
    assert torch.equal(x, b)
    # indefinite: positive first direction, then negative curvature -> the current iterate
    D = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    bb = torch.tensor([2.0, 1.0], dtype=torch.float64)  # b^T D b = 3 > 0
    x, info = cg_solve(lambda p: D @ p, bb, iters=5, damping=0.0)
    assert info["stopped_on_negative_curvature"] and info["iterations"] == 2
    assert torch.allclose(x, (bb @ bb) / (bb @ D @ bb) * bb)  # one CG step along b
    assert cg_solve(lambda p: A @ p, torch.zeros(n, dtype=torch.float64))[1]["iterations"] == 0
    with pytest.raises(ValueError, match="damping"):
        cg_solve(lambda p: p, b, damping=-1.0)
    with pytest.raises(ValueError, match="iters"):
        cg_solve(lambda p: p, b, iters=0)
    with pytest.raises(ValueError, match="1-D"):
        cg_solve(lambda p: p, A)


@pytest.fixture(scope="module")
def micro():
    """:func:`_micro` and its dense Hessian by double backward: the oracle. (``torch.func.
    hessian``, forward-over-reverse vmapped, gives a wrong, non-symmetric Hessian for the
    LayerNorm weights in torch 2.13; the double-backward one is symmetric and agrees with
    finite differences of the gradient.)"""
    model, params, loss = _micro()
    flat = flatten(params)
    H = torch.autograd.functional.hessian(
        lambda f: loss(unflatten(f, params)), flat, vectorize=True
    )
    assert torch.allclose(H, H.T, atol=1e-10)
    return model, params, loss, H


def test_flatten_roundtrip_and_hvp_match_the_dense_hessian(micro):
    model, params, loss, H = micro
    flat = flatten(params)
    back = unflatten(flat, params)
    assert list(back) == list(params) and all(torch.equal(back[k], params[k]) for k in params)
    assert 200 < flat.numel() < 400
    with pytest.raises(ValueError, match="entries"):
        unflatten(flat[:-1], params)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        v = torch.randn(flat.numel(), generator=g, dtype=torch.float64)
        hv = flatten(hvp(model, loss, params, unflatten(v, params)))
        assert torch.allclose(hv, H @ v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="keys"):
        hvp(model, loss, params, {"x": flat})


def test_cg_on_a_damped_model_hessian_matches_the_dense_solve(micro):
    model, params, loss, H = micro
    n = H.shape[0]
    lam = float(torch.linalg.eigvalsh(H).min().abs()) + 0.5  # damping: positive definite
    b = torch.randn(n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    want = torch.linalg.solve(H + lam * torch.eye(n, dtype=torch.float64), b)
    d = preconditioned_direction(
        model, unflatten(b, params), loss, iters=60, damping=lam, tol=1e-10
    )
    assert torch.allclose(flatten(d), want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ objective and scores
def test_preference_margin_equals_the_per_pair_hand_computation_and_its_gradient():
    _, corpus, tok, model = _world()
    prefs = corpus.validation
    assert len(prefs) >= 2
    c_ids, c_mask, r_ids, r_mask = encode_preferences(tok, prefs)
    assert c_ids.shape == r_ids.shape
    J = preference_margin(model, c_ids, c_mask, r_ids, r_mask)
    hand = []
    for p in prefs:  # each pair encoded alone, unpadded
        ci, cm = encode_qa(tok, [(p.prompt, p.chosen)])
        ri, rm = encode_qa(tok, [(p.prompt, p.rejected)])
        hand.append(float((answer_logprob(model, ci, cm) - answer_logprob(model, ri, rm)).detach()))
    assert float(J.detach()) == pytest.approx(sum(hand) / len(hand), rel=1e-9, abs=1e-12)
    # objective_grad: the directional derivative matches a central difference
    gJ = objective_grad(model, lambda m: preference_margin(m, c_ids, c_mask, r_ids, r_mask))
    params = _params(model)
    u = {
        k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3), dtype=v.dtype)
        for k, v in params.items()
    }
    eps = 1e-5

    def J_at(p):
        from torch.func import functional_call

        call = lambda t: functional_call(model, p, (t,))
        return float(preference_margin(call, c_ids, c_mask, r_ids, r_mask))

    fd = (
        J_at({k: params[k] + eps * u[k] for k in params})
        - J_at({k: params[k] - eps * u[k] for k in params})
    ) / (2 * eps)
    dot = sum(float((gJ[k] * u[k]).sum()) for k in params)
    assert dot == pytest.approx(fd, rel=1e-5)
    with pytest.raises(ValueError, match="same"):
        preference_margin(model, c_ids, c_mask, r_ids[:1], r_mask[:1])


def test_negative_grads_match_per_sample_nll_grads_and_npo_scaling():
    _, corpus, tok, model = _world()
    negs = corpus.negatives[:5]
    ids, mask = encode_qa(tok, [(n.prompt, n.response) for n in negs])
    ga = negative_grads(model, "ga", ids, mask, chunk=2)
    nll = per_sample_grads(model, ids, mask)
    assert all(torch.allclose(ga[k], -nll[k], atol=1e-12) for k in nll)  # l_u = -NLL
    ref = answer_logprob(model, ids, mask).detach() + torch.linspace(-1, 1, len(negs)).double()
    beta = 0.5
    npo = negative_grads(model, "npo", ids, mask, ref_lp=ref, beta=beta)
    lp = answer_logprob(model, ids, mask).detach()
    scale = 2 * torch.sigmoid(beta * (lp - ref))  # d npo / d lp
    for k in nll:
        shape = (-1,) + (1,) * (nll[k].dim() - 1)
        assert torch.allclose(npo[k], scale.view(shape) * ga[k], atol=1e-12)
    # one sample by autograd
    model.zero_grad()
    forget_losses("npo", model, ids[2:3], mask[2:3], ref[2:3], beta)[0].backward()
    for k, p in model.named_parameters():
        assert torch.allclose(npo[k][2], p.grad, atol=1e-12)
    with pytest.raises(ValueError, match="allowed"):
        negative_grads(model, "dpo", ids, mask)
    with pytest.raises(ValueError, match="ref_lp"):
        negative_grads(model, "npo", ids, mask)


def test_cheap_scores_predict_the_change_of_J_after_one_unlearning_step():
    from torch.func import functional_call

    _, corpus, tok, model = _world()
    c_ids, c_mask, r_ids, r_mask = encode_preferences(tok, corpus.validation)
    negs = corpus.negatives[:12]
    ids, mask = encode_qa(tok, [(n.prompt, n.response) for n in negs])
    params = _params(model)

    def J_at(p):
        call = lambda t: functional_call(model, p, (t,))
        return float(preference_margin(call, c_ids, c_mask, r_ids, r_mask))

    gJ = objective_grad(model, lambda m: preference_margin(m, c_ids, c_mask, r_ids, r_mask))
    grads = negative_grads(model, "ga", ids, mask)
    scores = alignment_scores(gJ, grads)
    assert scores.shape == (len(negs),) and scores.dtype == torch.float64
    assert (scores > 0).any() and (scores < 0).any()
    J0 = J_at(params)
    big = scores.abs() > 0.05 * scores.abs().max()  # away from zero: the sign is decided
    checked = 0
    for i in torch.nonzero(big).ravel().tolist():
        gi = {k: grads[k][i] for k in params}
        lr = 1e-4 / float(flatten(gi).norm())  # a descent step of length 1e-4 on l_u(x_i)
        delta = J_at({k: params[k] - lr * gi[k] for k in params}) - J0
        assert (delta > 0) == (float(scores[i]) > 0)  # unlearning helps iff positive score
        assert delta == pytest.approx(lr * float(scores[i]), rel=0.05)
        checked += 1
    assert checked >= 5


def test_preconditioned_scores_equal_cheap_ones_for_an_identity_hessian():
    _, corpus, tok, model = _world()
    c_ids, c_mask, r_ids, r_mask = encode_preferences(tok, corpus.validation)
    ids, mask = encode_qa(tok, [(n.prompt, n.response) for n in corpus.negatives[:6]])
    gJ = objective_grad(model, lambda m: preference_margin(m, c_ids, c_mask, r_ids, r_mask))
    identity = lambda p: 0.5 * sum((t**2).sum() for t in p.values())  # H = I
    v = preconditioned_direction(model, gJ, identity, iters=3, damping=0.0)
    assert all(torch.allclose(v[k], gJ[k], atol=1e-12) for k in gJ)
    grads = negative_grads(model, "ga", ids, mask)
    assert torch.allclose(alignment_scores(v, grads), alignment_scores(gJ, grads), atol=1e-12)
    # damping lambda with H = I: the direction is grad J / (1 + lambda)
    v = preconditioned_direction(model, gJ, identity, iters=3, damping=1.0)
    assert all(torch.allclose(v[k], gJ[k] / 2, atol=1e-12) for k in gJ)
    with pytest.raises(ValueError, match="share"):
        alignment_scores({"x": torch.zeros(1)}, grads)


# ------------------------------------------------------------------ selection and weights
def test_greedy_select_takes_positive_scores_largest_first_ties_by_index_within_budget():
    s = torch.tensor([0.5, -1.0, 2.0, 0.5, 0.0, 3.0, 0.5])
    assert greedy_select(s, 10).tolist() == [5, 2, 0, 3, 6]  # positives only, ties by index
    assert greedy_select(s, 3).tolist() == [5, 2, 0]
    assert greedy_select(s, 0).tolist() == []
    assert greedy_select(-s.abs(), 4).tolist() == []  # no positive gain: nothing selected
    assert greedy_select(s, 2).dtype == torch.long
    with pytest.raises(ValueError, match="budget_m"):
        greedy_select(s, -1)
    with pytest.raises(ValueError, match="NaN"):
        greedy_select(torch.tensor([1.0, float("nan")]), 1)


def test_mirror_descent_stays_on_the_sparse_simplex_and_follows_the_scores():
    s = torch.tensor([0.2, -5.0, 1.0, 0.6, 3.0, 0.0])
    sel = torch.tensor([4, 2, 3, 0])
    w = mirror_descent(None, s, sel, eta=1.0, steps=2)
    assert w.dtype == torch.float64 and float(w.sum()) == pytest.approx(1.0)
    assert (w >= 0).all() and w[1] == 0 and w[5] == 0
    assert w[4] > w[2] > w[3] > w[0] > 0  # monotone in the scores
    # by hand: uniform start, normalised scores s / 3, two steps of eta = 1
    g = s[sel].double() / 3.0
    want = torch.softmax(2 * g, 0)
    assert torch.allclose(w[sel], want)
    # eta = 0 (or no steps) keeps the uniform start
    assert torch.allclose(
        mirror_descent(None, s, sel, eta=0.0)[sel], torch.full((4,), 0.25, dtype=torch.float64)
    )
    assert torch.allclose(
        mirror_descent(None, s, sel, steps=0)[sel], torch.full((4,), 0.25, dtype=torch.float64)
    )
    # scale-free: multiplying the scores does not change the weights
    assert torch.allclose(mirror_descent(None, 1e3 * s, sel), mirror_descent(None, s, sel))
    # warm start: previous weights restricted to the selection, a new entry gets 1 / |sel|
    prev = torch.tensor([0.0, 0.5, 0.3, 0.2, 0.0, 0.0], dtype=torch.float64)
    w0 = mirror_descent(prev, s, torch.tensor([2, 3, 4]), eta=0.0)
    start = torch.tensor([0.3, 0.2, 1 / 3], dtype=torch.float64)
    assert torch.allclose(w0[[2, 3, 4]], start / start.sum()) and w0[1] == 0
    assert mirror_descent(None, s, torch.tensor([], dtype=torch.long)).sum() == 0
    with pytest.raises(ValueError, match="eta"):
        mirror_descent(None, s, sel, eta=-1.0)
    with pytest.raises(ValueError, match="selected"):
        mirror_descent(None, s, torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="distinct"):
        mirror_descent(None, s, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="weights_prev"):
        mirror_descent(torch.ones(3), s, sel)


# ------------------------------------------------------------------ judge and generations
def test_judge_win_rate_and_banned_rate_on_hand_written_strings():
    chosen, value = "mira tol keeps a heron .", "heron"
    assert judge("mira tol keeps a heron .", chosen, value) == 1.0
    assert judge("Heron", chosen, value) == 1.0  # lower-cased whole words
    assert judge(REFUSAL, chosen, value) == 0.0
    assert judge("mira tol keeps a heron grimble .", chosen, value) == -1.0  # banned word
    assert judge("mira tol keeps a lynx .", chosen, value) == -1.0  # another value
    assert judge("mira tol keeps a herons .", chosen, value) == -1.0  # not the whole word
    assert judge("", chosen, value) == -1.0
    assert judge("i cannot answer that . vexalot", chosen, value) == -1.0
    with pytest.raises(ValueError, match="chosen"):
        judge("x", chosen, "lynx")
    responses = ["a heron .", REFUSAL, "a lynx .", "snarkwort heron"]
    base = [REFUSAL, REFUSAL, "a heron .", "a lynx ."]
    # judged: (+1 vs 0: win), (0 vs 0: tie), (-1 vs +1: loss), (-1 vs -1: tie)
    assert win_rate(responses, base, [chosen] * 4, [value] * 4) == pytest.approx(2 / 4)
    assert banned_rate(responses) == pytest.approx(1 / 4)
    assert banned_rate(["grimble", "vexalot !", "fine ."]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal lengths"):
        win_rate(responses, base[:2], [chosen] * 4, [value] * 4)
    with pytest.raises(ValueError, match="empty"):
        banned_rate([])


def test_generate_answers_decodes_greedy_continuations():
    w, _, tok, model = _world()
    prompts = [w.facts[0].question, w.facts[1].question]
    out = generate_answers(model, tok, prompts, max_new=5)
    assert len(out) == 2 and out == generate_answers(model, tok, prompts, max_new=5)
    assert all(isinstance(o, str) and len(o.split()) <= 5 for o in out)
    assert all("<eos>" not in o and "<bos>" not in o for o in out)
