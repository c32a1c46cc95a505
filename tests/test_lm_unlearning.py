"""LM unlearning losses, MRD-weighted sampling and steps-to-forget (pure, tiny models)."""

from __future__ import annotations

import copy

import pytest
import torch

from fedrec.algorithms.lm_unlearning import (
    answer_logprob,
    forget_losses,
    objective,
    qa_mrd,
    sampling_probs,
    steps_to_forget,
    unlearn,
)
from fedrec.data.factworld import make_fact_world
from fedrec.models.causal_lm import (
    CausalLM,
    WordTokenizer,
    encode_qa,
    exact_match,
    sequence_nll,
    teacher_forced_match,
    train_lm,
)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    w = make_fact_world(num_people=10, attributes=("pet", "colour"), seed=1)
    tok = WordTokenizer(w.vocabulary())
    m = CausalLM(len(tok), d_model=24, n_layers=1, n_heads=2, context=24, seed=0)
    seqs = [tok.encode(d, bos=True, eos=True) for d in w.training_corpus()]
    train_lm(m, seqs, epochs=40, batch_size=16, lr=1e-2, seed=0)
    pairs = [(f.question, f.answer) for f in w.facts if f.split != "holdout"]
    ids, mask = encode_qa(tok, pairs)
    return w, tok, m, pairs, ids, mask


def test_encode_qa_masks_the_answer_and_eos(trained):
    w, tok, m, pairs, ids, mask = trained
    q, a = pairs[0]
    n_q = len(tok.encode(q, bos=True))
    n_a = len(tok.encode(a, eos=True))
    assert ids[0, 0] == 1 and not mask[0, :n_q].any() and mask[0, n_q : n_q + n_a].all()
    assert int(mask[0].sum()) == n_a and tok.decode(ids[0, n_q : n_q + n_a].tolist()) == a


def test_teacher_forced_match_equals_greedy_exact_match(trained):
    w, tok, m, pairs, ids, mask = trained
    tf = teacher_forced_match(m, ids, mask).tolist()
    assert tf == exact_match(m, tok, pairs)
    assert 0 < sum(tf)  # the model memorised some facts, so both outcomes occur


def test_losses_ga_npo_graddiff(trained):
    w, tok, m, pairs, ids, mask = trained
    lp = answer_logprob(m, ids[:4], mask[:4])
    assert torch.allclose(lp, -sequence_nll(m, ids[:4], mask[:4]))
    assert torch.allclose(forget_losses("ga", m, ids[:4], mask[:4]), lp)
    npo = forget_losses("npo", m, ids[:4], mask[:4], ref_lp=lp.detach(), beta=0.5)
    assert torch.allclose(npo, torch.full((4,), (2 / 0.5) * float(torch.log(torch.tensor(2.0)))))
    wts = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(objective("ga", m, ids[:4], mask[:4], wts), lp[0])
    gd = objective("graddiff", m, ids[:2], mask[:2], None, ids[4:6], mask[4:6], alpha=2.0)
    want = lp[:2].mean() + 2.0 * sequence_nll(m, ids[4:6], mask[4:6]).mean()
    assert torch.allclose(gd, want)
    with pytest.raises(ValueError, match="allowed: ga, graddiff, npo"):
        forget_losses("kl", m, ids, mask)
    with pytest.raises(ValueError, match="retain"):
        objective("graddiff", m, ids, mask)


def test_mrd_sampling_is_easy_first_then_uniform():
    mrd = torch.tensor([5.0, 1.0, 3.0, 2.0])
    p0 = sampling_probs(4, 0, 10, "mrd", mrd, 0.1, 10.0)
    assert int(p0.argmax()) == 1 and float(p0[0]) < 1e-3  # the lowest MRD first
    p_end = sampling_probs(4, 9, 10, "mrd", mrd, 0.1, 10.0)
    assert float(p_end.max() - p_end.min()) < 0.05  # nearly uniform at the end
    assert torch.allclose(
        sampling_probs(4, 0, 10, "uniform", None, 0.1, 10.0),
        torch.full((4,), 0.25, dtype=torch.float64),
    )
    with pytest.raises(ValueError, match="one MRD score"):
        sampling_probs(4, 0, 10, "mrd", mrd[:2], 0.1, 10.0)


def test_unlearn_forgets_and_is_seeded(trained):
    w, tok, m, pairs, ids, mask = trained
    f_ids, f_mask = ids[:8], mask[:8]
    mrd, frag = qa_mrd(m, f_ids, f_mask, K=4, sigma=1e-2, seed=3)
    assert mrd.shape == (8,) and bool((mrd > 0).all())
    again, _ = qa_mrd(m, f_ids, f_mask, K=4, sigma=1e-2, seed=3, chunk=3)
    assert torch.allclose(mrd, again)  # chunking changes nothing (common random numbers)
    outs = []
    for _ in range(2):
        mm = copy.deepcopy(m)
        unlearn(
            mm,
            f_ids,
            f_mask,
            "npo",
            steps=6,
            batch_size=4,
            lr=1e-2,
            sampling="mrd",
            mrd=mrd,
            seed=5,
        )
        outs.append([p.detach().clone() for p in mm.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    mm = copy.deepcopy(m)
    with torch.no_grad():
        before = float(sequence_nll(mm, f_ids, f_mask).mean())
    seen = []
    res = unlearn(
        mm, f_ids, f_mask, "ga", steps=5, batch_size=4, lr=1e-2, seed=5, on_step=seen.append
    )
    assert seen == [1, 2, 3, 4, 5] and res.steps == 5
    with torch.no_grad():
        assert float(sequence_nll(mm, f_ids, f_mask).mean()) > before + 0.5


def test_steps_to_forget_counts_ga_steps_per_sample(trained):
    w, tok, m, pairs, ids, mask = trained
    ok = teacher_forced_match(m, ids, mask)
    idx = torch.nonzero(ok).ravel()[:3]
    n = steps_to_forget(m, ids[idx], mask[idx], nll_threshold=50.0, lr=0.05, max_steps=40)
    assert bool((n >= 1).all()) and bool((n <= 41).all())
    bad = torch.nonzero(~ok).ravel()[:1]
    if len(bad):  # an already-forgotten sample needs 0 steps
        assert int(steps_to_forget(m, ids[bad], mask[bad], 50.0)[0]) == 0
    # one step fewer leaves a remembered sample unforgotten: replay by hand
    i = int(idx[0])
    mm = copy.deepcopy(m)
    opt = torch.optim.SGD(mm.parameters(), lr=0.05)
    for _ in range(int(n[0]) - 1):
        loss = -sequence_nll(mm, ids[i : i + 1], mask[i : i + 1]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert bool(teacher_forced_match(mm, ids[i : i + 1], mask[i : i + 1])[0])


def test_greedy_batch_equals_one_prompt_at_a_time(trained):
    from fedrec.models.causal_lm import generate, greedy_batch

    w, tok, m, pairs, ids, mask = trained
    prompts = [tok.encode(q, bos=True) for q, _ in pairs[:12]]
    assert greedy_batch(m, prompts, 10) == [generate(m, p, 10) for p in prompts]
