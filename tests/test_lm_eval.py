"""The LM-unlearning evaluation suite over the fact world (fedrec.unlearning.lm_eval): tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.data.factworld import ATTRIBUTES, make_fact_world
from fedrec.models.causal_lm import (
    CausalLM,
    WordTokenizer,
    encode_qa,
    exact_match,
    sequence_nll,
    teacher_forced_match,
    token_logprobs,
    train_lm,
)
from fedrec.unlearning import lm_eval as E
from fedrec.unlearning.metrics import min_k_score, truth_ratio, zlib_ratio_score


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: one thread avoids OpenMP contention on busy CPUs (first in the module)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def world():
    # fractions raised so the forget and holdout splits hold 6 facts each (quartiles need 4)
    return make_fact_world(
        num_people=12,
        attributes=("pet", "colour"),
        forget_fraction=0.25,
        holdout_fraction=0.25,
        seed=0,
    )


@pytest.fixture(scope="module")
def tok(world):
    return WordTokenizer(world.vocabulary())


@pytest.fixture(scope="module")
def ev(world, tok):
    return E.prepare(world, tok, num_perturbed=3, seed=0)


def _model(tok, ev, seed=0):
    return CausalLM(len(tok), d_model=16, n_layers=1, n_heads=2, context=ev.length, seed=seed)


@pytest.fixture(scope="module")
def trained(world, tok, ev):
    torch.manual_seed(0)
    model = _model(tok, ev)
    seqs = [tok.encode(d, bos=True, eos=True) for d in world.training_corpus()]
    train_lm(model, seqs, epochs=30, lr=1e-2, seed=0)
    return model


def test_prepare_shapes_and_split_membership(world, ev):
    assert set(ev.splits) == {"forget", "retain", "holdout"}
    for s in ("forget", "retain", "holdout"):
        sp, facts = ev.split(s), world.split(s)
        assert len(sp) == len(facts) and sp.facts == facts
        assert sp.answers == [f.answer for f in facts]
        assert sp.questions == [f.question for f in facts]
        assert sp.ids.shape == sp.mask.shape == (len(facts), ev.length)
        assert sp.mask.any(1).all() and not sp.mask[:, 0].any()
    assert len(ev.split("forget")) == 6 and len(ev.split("holdout")) == 6
    for s in ("forget", "retain"):
        sp = ev.split(s)
        assert sp.perturbed_ids is not None and sp.perturbed_mask is not None
        assert sp.perturbed_ids.shape == (len(sp), 3, ev.length)
        assert sp.perturbed_answers is not None and len(sp.perturbed_answers) == len(sp)
    assert ev.split("holdout").perturbed_ids is None
    # the common length is the longest encoding: some sequence ends at the last column
    last = torch.cat(
        [ev.split(s).mask[:, -1] for s in ev.splits]
        + [ev.split(s).perturbed_mask[..., -1].ravel() for s in ("forget", "retain")]
    )
    assert last.any()
    with pytest.raises(ValueError, match="split must be one of"):
        ev.split("train")


def test_prepare_is_deterministic_and_perturbations_are_wrong_same_attribute(world, tok, ev):
    again = E.prepare(world, tok, num_perturbed=3, seed=0)
    other = E.prepare(world, tok, num_perturbed=3, seed=1)
    for s in ("forget", "retain"):
        a, b = ev.split(s), again.split(s)
        assert a.perturbed_answers == b.perturbed_answers
        assert torch.equal(a.perturbed_ids, b.perturbed_ids)
    assert any(
        ev.split(s).perturbed_answers != other.split(s).perturbed_answers
        for s in ("forget", "retain")
    )
    for s in ("forget", "retain"):
        sp = ev.split(s)
        for f, answers in zip(sp.facts, sp.perturbed_answers):
            template, vocab = ATTRIBUTES[f.attribute][1], ATTRIBUTES[f.attribute][2]
            pool = set(vocab) | {g.value for g in world.facts if g.attribute == f.attribute}
            values = set()
            for v in pool - {f.value}:
                if template.format(name=f.name, value=v) in answers:
                    values.add(v)
            assert len(values) == len(answers) == 3  # distinct wrong values of the attribute
            assert f.answer not in answers
        # the encodings are those of the perturbed texts
        flat = [(f.question, a) for f, ans in zip(sp.facts, sp.perturbed_answers) for a in ans]
        ids, mask = encode_qa(tok, flat, length=ev.length)
        assert torch.equal(ids.view(len(sp), 3, -1), sp.perturbed_ids)
        assert torch.equal(mask.view(len(sp), 3, -1), sp.perturbed_mask)


def test_prepare_validates(world, tok):
    with pytest.raises(ValueError, match="num_perturbed"):
        E.prepare(world, tok, num_perturbed=0)
    with pytest.raises(ValueError, match="fewer than num_perturbed=100"):
        E.prepare(world, tok, num_perturbed=100)
    small = WordTokenizer([w for w in world.vocabulary() if w != world.facts[0].value])
    with pytest.raises(ValueError, match="world.vocabulary"):
        E.prepare(world, small)


def test_sample_stats_agree_with_hand_computations(tok, ev, trained):
    for s in ("forget", "retain", "holdout"):
        sp = ev.split(s)
        st = E.sample_stats(trained, ev, s)
        assert all(v.shape == (len(sp),) for v in st.values())
        with torch.no_grad():
            nll = sequence_nll(trained, sp.ids, sp.mask).double().numpy()
            lp = token_logprobs(trained, sp.ids).double().numpy()
        np.testing.assert_allclose(st["nll"], nll, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st["loss_score"], -nll, rtol=1e-5, atol=1e-6)
        assert st["em"].dtype == bool
        assert st["em"].tolist() == teacher_forced_match(trained, sp.ids, sp.mask).tolist()
        tgt = sp.mask[:, 1:].numpy()
        zlib = [zlib_ratio_score(row[m].sum(), t) for row, m, t in zip(lp, tgt, sp.answers)]
        mink = [min_k_score(row[m], 0.2) for row, m in zip(lp, tgt)]
        np.testing.assert_allclose(st["zlib_score"], zlib, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(st["mink_score"], mink, rtol=1e-5, atol=1e-6)
        assert ("truth_ratio" in st) == (s != "holdout")
        # small batches give the same numbers
        st2 = E.sample_stats(trained, ev, s, batch_size=4)
        np.testing.assert_allclose(st2["nll"], st["nll"], rtol=1e-5, atol=1e-6)
        assert st2["em"].tolist() == st["em"].tolist()
    # EM against the generation-based oracle on a few pairs (trained: some are right)
    sp = ev.split("retain")
    st = E.sample_stats(trained, ev, "retain")
    pairs = list(zip(sp.questions, sp.answers))[:6]
    assert st["em"][:6].tolist() == exact_match(trained, tok, pairs)
    # the truth ratio of one fact by hand
    sp = ev.split("forget")
    st = E.sample_stats(trained, ev, "forget")
    with torch.no_grad():
        correct = -float(sequence_nll(trained, sp.ids[:1], sp.mask[:1])[0])
        pert = -sequence_nll(trained, sp.perturbed_ids[0], sp.perturbed_mask[0]).double().numpy()
    assert st["truth_ratio"][0] == pytest.approx(truth_ratio(correct, pert), rel=1e-5)
    with pytest.raises(ValueError, match="split must be one of"):
        E.sample_stats(trained, ev, "train")


def test_evaluate_report_privleak_quality_and_quartiles(ev, trained):
    own = E.truth_ratios(trained, ev)
    assert own.shape == (len(ev.split("forget")),)
    base = E.evaluate(trained, ev)
    assert "forget_quality" not in base and not any(k.startswith("q1_") for k in base)
    retrain = {k: base[f"mia_auc_{k}"] for k in E.MIA_SCORES}
    mrd = np.array([0.3, 0.1, 0.1, 0.9, 0.5, 0.2])
    rep = E.evaluate(trained, ev, reference_truth_ratios=own, retrain_auc=retrain, mrd=mrd)
    for s in ("forget", "retain", "holdout"):
        assert rep[f"{s}_nll"] == pytest.approx(base[f"{s}_nll"])
        assert 0.0 <= rep[f"{s}_em"] <= 1.0
    assert rep["forget_truth_ratio"] == pytest.approx(own.mean())
    assert rep["forget_quality"] == pytest.approx(1.0)
    for k in E.MIA_SCORES:
        assert 0.0 <= rep[f"mia_auc_{k}"] <= 1.0
        assert rep[f"privleak_{k}"] == pytest.approx(0.0)
    # the report's own key names work too
    r2 = E.evaluate(trained, ev, retrain_auc={"mia_auc_loss": 0.5})
    assert r2["privleak_loss"] == pytest.approx((r2["mia_auc_loss"] - 0.5) / 0.5)
    assert "privleak_zlib" not in r2
    # quartiles: a partition of the forget set, nearly equal, lowest MRD first
    qs = E.mrd_quartiles(mrd)
    assert sorted(np.concatenate(qs).tolist()) == list(range(6))
    sizes = [len(q) for q in qs]
    assert max(sizes) - min(sizes) <= 1
    assert qs[0].tolist() == [1, 2] and qs[-1].tolist() == [3]  # ties keep the split order
    assert all(mrd[a].max() <= mrd[b].min() for a, b in zip(qs, qs[1:]))
    st = E.sample_stats(trained, ev, "forget")
    for q, idx in enumerate(qs, start=1):
        for key in ("forget_em", "forget_nll", "mia_auc_loss", "forget_quality"):
            assert f"q{q}_{key}" in rep
        assert rep[f"q{q}_forget_nll"] == pytest.approx(st["nll"][idx].mean())
        assert rep[f"q{q}_forget_quality"] == pytest.approx(1.0)
        assert 0.0 <= rep[f"q{q}_mia_auc_loss"] <= 1.0


def test_evaluate_validates_inputs(ev, trained):
    with pytest.raises(ValueError, match=r"mrd must hold one value per forget sample \(6"):
        E.evaluate(trained, ev, mrd=np.zeros(5))
    with pytest.raises(ValueError, match=r"reference_truth_ratios .* \(6\)"):
        E.evaluate(trained, ev, reference_truth_ratios=np.ones(3))
    with pytest.raises(ValueError, match="not an MIA score"):
        E.evaluate(trained, ev, retrain_auc={"bleu": 0.5})
    with pytest.raises(ValueError, match="at least 4"):
        E.mrd_quartiles([1.0, 2.0, 3.0])
    short = CausalLM(10_000, d_model=8, n_layers=1, n_heads=2, context=4)
    with pytest.raises(ValueError, match="context"):
        E.sample_stats(short, ev, "forget")


def test_trained_model_scores_point_the_right_way(ev, trained):
    rep = E.evaluate(trained, ev)
    assert rep["forget_em"] > rep["holdout_em"]
    assert rep["forget_nll"] < rep["holdout_nll"]
    assert rep["mia_auc_loss"] > 0.5
    assert rep["forget_truth_ratio"] < 1.0  # the true answer is preferred


def test_relearn_copies_the_model(tok, ev, trained):
    model = _model(tok, ev)  # untrained: relearning visibly lowers the held-out NLL
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = E.relearn(model, ev, steps=5, lr=1e-2, share=0.5, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out["relearn_n_train"] + out["relearn_n_eval"] == len(ev.split("forget"))
    assert out["relearn_nll_after"] < out["relearn_nll_before"]
    assert out["relearn_recovery"] == pytest.approx(
        out["relearn_em_after"] - out["relearn_em_before"]
    )
    assert E.relearn(model, ev, steps=5, lr=1e-2, seed=0) == out  # seeded
    t_before = {k: v.clone() for k, v in trained.state_dict().items()}
    E.relearn(trained, ev, steps=2)
    assert all(torch.equal(t_before[k], v) for k, v in trained.state_dict().items())
    with pytest.raises(ValueError, match="share"):
        E.relearn(model, ev, share=1.0)


def test_report_table():
    rows = {
        "Original": {"forget_em": 1.0, "mia_auc_loss": 0.9},
        "Retrain": {"forget_em": 0.0, "mia_auc_loss": 0.5},
        "GA": {"forget_em": 0.25},
    }
    table = E.report_table(rows, ["forget_em", "mia_auc_loss"])
    lines = table.splitlines()
    assert lines[0] == "| model | forget_em | mia_auc_loss |"
    assert lines[2] == "| Original | 1.0000 | 0.9000 |"
    assert lines[4] == "| GA | 0.2500 | – |"
    assert len(lines) == 5
    with pytest.raises(ValueError, match="at least one key"):
        E.report_table(rows, [])
