"""The language-model substrate of issue 12 (fact world, causal LM, MRD): pure, small."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.algorithms.mrd import hessian_trace, mrd_scores, perturbation
from fedrec.data.factworld import make_fact_world
from fedrec.errors import ConfigError
from fedrec.models.causal_lm import (
    CausalLM,
    WordTokenizer,
    generate,
    pad_batch,
    per_sample_grads,
    sequence_nll,
    token_logprobs,
)


def test_fact_world_is_deterministic_split_by_person_and_varied():
    a = make_fact_world(num_people=60, seed=3)
    b = make_fact_world(num_people=60, seed=3)
    assert a.facts == b.facts and a.training_corpus() == b.training_corpus()
    assert make_fact_world(num_people=60, seed=4).facts != a.facts
    assert len(a.facts) == 60 * 6 and len(set(a.names)) == 60
    for f in a.facts:  # a person's facts share its split
        assert f.split == ("forget", "retain", "holdout")[a.person_split[f.person]]
        assert f.name in f.question and f.value in f.answer and f.repeats in (1, 3, 10)
    counts = {s: len({f.person for f in a.split(s)}) for s in ("forget", "retain", "holdout")}
    assert counts == {"forget": 6, "retain": 48, "holdout": 6}
    corpus = a.training_corpus()
    assert len(corpus) == sum(f.repeats for f in a.facts if f.split != "holdout")
    assert not any(f.answer in " ".join(corpus) for f in a.split("holdout"))
    assert {f.repeats for f in a.facts} == {1, 3, 10} and {f.regular for f in a.facts} == {
        True,
        False,
    }
    idio = [f.value for f in a.facts if not f.regular]
    assert len(idio) == len(set(idio))  # an idiosyncratic value belongs to one fact
    with pytest.raises(ConfigError, match="unknown attribute"):
        make_fact_world(attributes=("shoe",))


def _tiny(seed=0):
    w = make_fact_world(num_people=8, attributes=("pet", "colour"), seed=seed)
    tok = WordTokenizer(w.vocabulary())
    model = CausalLM(len(tok), d_model=16, n_layers=1, n_heads=2, context=24, seed=seed)
    seqs = [tok.encode(f"{f.question} {f.answer}", bos=True, eos=True) for f in w.facts[:6]]
    ids = pad_batch(seqs)
    mask = ids != 0
    return w, tok, model, ids, mask


def test_tokenizer_roundtrip_and_log_likelihoods_match_cross_entropy():
    w, tok, model, ids, mask = _tiny()
    f = w.facts[0]
    assert tok.decode(tok.encode(f.answer, bos=True, eos=True)) == f.answer
    assert tok.encode("zzz unknownword")[0] == 3
    lp = token_logprobs(model, ids)
    ce = torch.nn.functional.cross_entropy(
        model(ids[:, :-1]).reshape(-1, len(tok)), ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(ids.shape[0], -1)
    assert torch.allclose(-lp, ce, atol=1e-6)
    nll = sequence_nll(model, ids, mask)
    m = mask[:, 1:].float()
    assert torch.allclose(nll, (ce * m).sum(1) / m.sum(1), atol=1e-6)
    # causal: the logits of position t do not depend on later tokens
    other = ids.clone()
    other[:, -1] = 5
    assert torch.allclose(model(ids)[:, :-1], model(other)[:, :-1], atol=1e-6)


def test_generation_is_deterministic_and_per_sample_grads_match_a_loop():
    _, tok, model, ids, mask = _tiny()
    p = ids[0, :5].tolist()
    assert generate(model, p, 6) == generate(model, p, 6)
    assert generate(model, p, 6, greedy=False, seed=1) == generate(
        model, p, 6, greedy=False, seed=1
    )
    grads = per_sample_grads(model, ids, mask)
    for i in range(ids.shape[0]):
        model.zero_grad()
        sequence_nll(model, ids[i : i + 1], mask[i : i + 1])[0].backward()
        for name, prm in model.named_parameters():
            assert torch.allclose(grads[name][i], prm.grad, atol=1e-6), name


def test_mrd_uses_common_random_numbers_and_matches_its_second_order_form():
    from torch.func import functional_call

    _, tok, model, ids, mask = _tiny()
    model = model.double()
    params = {k: v.detach() for k, v in model.named_parameters()}
    d1, d2 = perturbation(params, 0.1, 7, 3), perturbation(params, 0.1, 7, 3)
    assert all(torch.equal(d1[k], d2[k]) for k in d1)

    def losses(p):
        return sequence_nll(lambda t: functional_call(model, p, (t,)), ids, mask)

    sigma = 1e-3
    K = 8
    mrd, frag = mrd_scores(losses, params, K=K, sigma=sigma, seed=1, antithetic=True)
    assert mrd.shape == (ids.shape[0],) and torch.all(mrd > 0)
    from torch.func import grad, jvp

    for i in range(2):
        # the antithetic estimate is the mean of 1/2 d^T H d over the same d_k (exact HVPs)
        quad = []
        for k in range(K):
            d = perturbation(params, sigma, 1, k)
            _, hd = jvp(grad(lambda p, i=i: losses(p)[i]), (params,), (d,))
            quad.append(0.5 * sum(float((d[n] * hd[n]).sum()) for n in params))
        assert float(frag[i]) == pytest.approx(float(np.mean(quad)), rel=1e-3)
    # Hutchinson: exact for a diagonal Hessian, unbiased otherwise
    D = torch.diag(torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64))
    q = {"w": torch.tensor([1.0, -1.0, 0.3], dtype=torch.float64)}
    est = hessian_trace(lambda p: 0.5 * p["w"] @ D @ p["w"], q, probes=5, scaled=False)
    assert float(est) == pytest.approx(2.5, abs=1e-12)
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    est = hessian_trace(
        lambda p: 0.5 * p["w"] @ A @ p["w"], {"w": q["w"][:2]}, probes=1000, scaled=False
    )
    assert float(est) == pytest.approx(3.0, abs=0.1)  # std 0.03 at 1000 probes
    # with per-tensor scaling it estimates tr(S H S): scaling w by 2 scales the trace by 4
    est2 = hessian_trace(lambda p: 0.5 * p["w"] @ D @ p["w"], {"w": 2 * q["w"]}, probes=5)
    rms2 = float((2 * q["w"]).pow(2).mean())
    assert float(est2) == pytest.approx(2.5 * rms2, abs=1e-9)


@pytest.mark.slow
def test_training_memorises_the_training_facts_and_exact_match_checks_words():
    from fedrec.models.causal_lm import exact_match, train_lm

    w = make_fact_world(num_people=10, attributes=("pet",), idiosyncratic_fraction=0.5, seed=1)
    tok = WordTokenizer(w.vocabulary())
    docs = [tok.encode(d, bos=True, eos=True) for d in w.training_corpus()]
    model = CausalLM(len(tok), d_model=32, n_layers=1, n_heads=2, context=24, seed=0)
    losses = train_lm(model, docs, epochs=60, batch_size=8, lr=1e-2, seed=0)
    assert losses[-1] < 0.3 * losses[0]
    trained = [(f.question, f.answer) for f in w.facts if f.split != "holdout"]
    assert np.mean(exact_match(model, tok, trained)) >= 0.6
    often = [(f.question, f.answer) for f in w.facts if f.split != "holdout" and f.repeats == 10]
    assert often and all(exact_match(model, tok, often))  # repeated facts are memorised
    held = [(f.question, f.answer) for f in w.split("holdout")]
    assert not any(exact_match(model, tok, held))  # never seen: its answer is unknowable
    assert exact_match(model, tok, [(trained[0][0], trained[0][1] + " extra")]) == [False]


def test_easy_first_sampling_prefers_low_mrd_and_anneals_to_uniform():
    from fedrec.algorithms.mrd import annealed_tau, easy_first_probs

    mrd = torch.tensor([1e6, 3.0, 50.0, 1e-2])  # ranks: 3, 1, 2, 0
    p = easy_first_probs(mrd, tau=0.1)
    assert torch.isclose(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert p.argsort(descending=True).tolist() == [3, 1, 2, 0]
    # by hand: exp(-r / (3 tau)) normalised
    w = torch.exp(-torch.tensor([3.0, 1.0, 2.0, 0.0], dtype=torch.float64) / 3 / 0.1)
    assert torch.allclose(p, w / w.sum())
    assert torch.allclose(
        easy_first_probs(mrd, tau=1e6), torch.full((4,), 0.25, dtype=torch.float64)
    )
    assert annealed_tau(0, 10) == pytest.approx(0.1) and annealed_tau(9, 10) == pytest.approx(10.0)
    assert annealed_tau(0, 10) < annealed_tau(5, 10) < annealed_tau(9, 10)


def test_assistant_corpus_negatives_validation_and_planted_harmful_ones():
    from fedrec.data.factworld import BANNED, REFUSAL, make_assistant_corpus

    w = make_fact_world(num_people=40, seed=5)
    c = make_assistant_corpus(w, negatives_per_prompt=2, harmful_fraction=0.1, seed=1)
    again = make_assistant_corpus(w, negatives_per_prompt=2, harmful_fraction=0.1, seed=1)
    assert c.negatives == again.negatives and c.validation == again.validation
    assert c.sft == again.sft
    trained = [f for f in w.facts if f.split != "holdout"]
    assert len(c.chosen) == len(trained)
    answer = {f.question: f for f in trained}
    val_prompts = {p.prompt for p in c.validation}
    assert len(val_prompts) == round(0.2 * len(trained))
    assert len(c.validation) == 2 * len(val_prompts)  # one triple per bad response
    cand = [n for n in c.negatives if not n.harmful]
    assert not val_prompts & {n.prompt for n in cand}  # validation's bad responses held out
    assert len(cand) == 2 * (len(trained) - len(val_prompts))
    for p in c.validation:
        assert p.chosen == answer[p.prompt].answer and p.rejected != p.chosen
    kinds = {n.kind for n in c.negatives}
    assert kinds == {"banned", "contradict", "refusal", "harmful"}
    for n in c.negatives:
        f = answer[n.prompt]
        if n.kind == "banned":
            assert any(b in n.response.split() for b in BANNED)
        elif n.kind == "contradict":
            assert f.value not in n.response.split() and f.name in n.response
        elif n.kind == "refusal":
            assert n.response == REFUSAL
        else:  # planted harmful: a validation prompt's chosen answer, flagged by mistake
            assert n.harmful and n.response == f.answer and n.prompt in val_prompts
    assert not any(b in a.split() for _, a in c.chosen for b in BANNED)
    n_harm = sum(n.harmful for n in c.negatives)
    assert n_harm == round(0.1 * len(val_prompts))
    # SFT: chosen twice, every bad response (candidate or validation) once
    docs = c.sft_documents()
    assert len(docs) == 2 * len(trained) + len(cand) + len(c.validation)
    assert docs.count(f"{trained[0].question} {trained[0].answer}") == 2
    assert all(f"{n.prompt} {n.response}" in docs for n in cand)
    tok = WordTokenizer(w.vocabulary())  # the closed vocabulary covers every negative
    assert all(3 not in tok.encode(n.response) for n in c.negatives)
