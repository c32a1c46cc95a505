"""fedrec.recsys.splits, fedrec.models.recsys and the centralised trainers on small synthetic data:
splits and negatives, the cohort BPR step (batched == user by user, == autograd), BPR loss
decrease, SASRec's causal and padding masks, seeds and the caller's RNG state."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fedrec.data.recsys import RecDataset, synthetic_recommendation
from fedrec.errors import ConfigError
from fedrec.models.recsys import (
    SASRec,
    bpr_loss,
    init_mf,
    mf_bpr_user_step,
    mf_scores,
    sum_item_deltas,
    to_tokens,
)
from fedrec.recsys import (
    Ragged,
    evaluate_full_ranking,
    leave_one_out,
    mf_score_fn,
    ratio_split,
    sample_negatives,
    sample_negatives_rows,
    sasrec_score_fn,
    train_mf_bpr,
    train_sasrec,
)
from fedrec.seeding import derive_seed


def _ds(user, item, ts, num_users, num_items) -> RecDataset:
    n = len(user)
    return RecDataset(
        "tiny",
        num_users,
        num_items,
        np.asarray(user),
        np.asarray(item),
        np.ones(n, np.float32),
        np.asarray(ts, np.int64),
        {},
        {},
    )


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a busy shared box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def synth() -> RecDataset:
    return synthetic_recommendation(
        num_users=60, num_items=40, dim=4, interactions_per_user=12, seed=3
    )


# --------------------------------------------------------------------------- splits


def test_leave_one_out_by_hand():
    # user 0: times 5, 1, 3, 3 (tie: items 7 < 9), 9 -> order 2, 7, 9, 4, 6 -> test 6, valid 4
    # user 1: two interactions -> all train; user 2: none
    ds = _ds([0, 0, 0, 0, 0, 1, 1], [4, 2, 9, 7, 6, 1, 0], [5, 1, 3, 3, 9, 2, 1], 3, 10)
    ud = leave_one_out(ds)
    assert ud.test[0].tolist() == [6] and ud.valid[0].tolist() == [4]
    assert ud.train_seq[0].tolist() == [2, 7, 9] and ud.train[0].tolist() == [2, 7, 9]
    assert ud.train_seq[1].tolist() == [0, 1] and ud.train[1].tolist() == [0, 1]
    assert ud.valid[1].size == ud.test[1].size == 0 and ud.train[2].size == 0
    assert ud.sequences("test")[0].tolist() == [2, 7, 9, 4]
    assert ud.history("test")[0].tolist() == [2, 4, 7, 9]
    by_order = leave_one_out(ds, by="order")
    assert by_order.test[0].tolist() == [6] and by_order.train_seq[0].tolist() == [4, 2, 9]
    # a repeated pair is collapsed to its first occurrence (item 2 at t=1, again at t=8)
    dup = _ds([0, 0, 0, 0], [2, 3, 5, 2], [1, 2, 3, 8], 1, 6)
    ud = leave_one_out(dup)
    assert (
        ud.test[0].tolist() == [5] and ud.valid[0].tolist() == [3] and ud.train[0].tolist() == [2]
    )
    assert leave_one_out(dup, dedupe=False).test[0].tolist() == [2]
    with pytest.raises(ConfigError, match="by must be one of: time, order, random"):
        leave_one_out(ds, by="rating")


def test_leave_one_out_properties(synth):
    ud = leave_one_out(synth)
    order = np.lexsort((synth.item, synth.timestamp, synth.user))
    last = {int(u): int(i) for u, i in zip(synth.user[order], synth.item[order])}  # last write wins
    for u in range(synth.num_users):
        assert ud.test[u].tolist() == [last[u]]
        parts = [set(ud.train[u]), set(ud.valid[u]), set(ud.test[u])]
        assert sum(map(len, parts)) == len(set.union(*parts)) == 12  # disjoint, complete
        assert np.all(np.diff(ud.train[u]) > 0)
        assert sorted(ud.train_seq[u]) == ud.train[u].tolist()
    assert ud.item_counts().sum() == 60 * 10


def test_random_leave_one_out(synth):
    """``by="random"``: a seeded shuffle per user (for untimed data): the same seed gives
    the same split, another seed another one; each user's items are split completely."""
    a, b = leave_one_out(synth, by="random", seed=1), leave_one_out(synth, by="random", seed=1)
    c = leave_one_out(synth, by="random", seed=2)
    np.testing.assert_array_equal(a.test.indices, b.test.indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    t = leave_one_out(synth)
    assert not np.array_equal(a.test.indices, t.test.indices)
    for u in range(synth.num_users):
        parts = [set(a.train[u]), set(a.valid[u]), set(a.test[u])]
        assert sum(map(len, parts)) == len(set.union(*parts)) == 12
        assert set.union(*parts) == set(synth.item[synth.user == u].tolist())
    # the test items are spread like the interactions, not the highest ids of each user
    top = [int(np.max(synth.item[synth.user == u])) for u in range(synth.num_users)]
    assert np.mean([a.test[u][0] == top[u] for u in range(synth.num_users)]) < 0.3


def test_ratio_split(synth):
    a = ratio_split(synth, 0.25, seed=7, valid_fraction=0.1)
    b = ratio_split(synth, 0.25, seed=7, valid_fraction=0.1)
    c = ratio_split(synth, 0.25, seed=8, valid_fraction=0.1)
    for f in ("train", "train_seq", "valid", "test"):
        np.testing.assert_array_equal(getattr(a, f).indices, getattr(b, f).indices)
    assert not np.array_equal(a.test.indices, c.test.indices)
    assert (
        np.all(a.test.lengths == 3)
        and np.all(a.valid.lengths == 1)
        and np.all(a.train.lengths == 8)
    )
    for u in range(synth.num_users):
        parts = [set(a.train[u]), set(a.valid[u]), set(a.test[u])]
        assert sum(map(len, parts)) == len(set.union(*parts)) == 12
    # small users: n=1 stays in train, n=2 -> one test item, at least one train item kept
    ds = _ds([0, 1, 1], [0, 1, 2], [1, 2, 3], 2, 3)
    s = ratio_split(ds, 0.9, seed=0)
    assert s.train[0].tolist() == [0] and s.test[0].size == 0
    assert s.test[1].size == 1 and s.train[1].size == 1
    for bad in (0.0, 1.0, -0.1, "0.2"):
        with pytest.raises(ConfigError, match="test_fraction"):
            ratio_split(synth, bad, seed=0)


def test_sample_negatives():
    pos = np.array([0, 3, 4, 5, 9])
    neg = sample_negatives(10, pos, 5000, seed=1)
    assert not np.isin(neg, pos).any()
    counts = np.bincount(neg, minlength=10)[np.setdiff1d(np.arange(10), pos)]
    assert counts.min() > 850 and counts.max() < 1150  # uniform over 5 items: 1000 each
    np.testing.assert_array_equal(neg, sample_negatives(10, pos, 5000, seed=1))
    seed = derive_seed(0, "neg", 3, 17)
    np.testing.assert_array_equal(
        sample_negatives(10, pos, 7, seed), sample_negatives(10, pos, 7, seed)
    )
    distinct = sample_negatives(10, pos, 5, seed=2, replace=False)
    assert sorted(distinct) == [1, 2, 6, 7, 8]
    assert sample_negatives(10, pos, 0, seed=0).size == 0
    with pytest.raises(ConfigError, match="positives"):
        sample_negatives(10, np.array([3, 1]), 2, seed=0)
    with pytest.raises(ConfigError, match="non-positive"):
        sample_negatives(3, np.array([0, 1, 2]), 1, seed=0)
    # batched rows version: same exclusion, every user
    positives = Ragged.from_lists([[0, 1, 2], [], [5, 6], [0, 2, 4, 6]])
    users = np.repeat(np.arange(4), 500)
    neg = sample_negatives_rows(7, positives, users, np.random.default_rng(0))
    for u in range(4):
        got = set(neg[users == u].tolist())
        assert got == set(range(7)) - set(positives[u].tolist())


# --------------------------------------------------------------------------- MF-BPR cohort step


def _cohort(rng, U=9, I=25, d=6, dtype=torch.float64, epochs=2):
    P = torch.randn(U, d, dtype=dtype, generator=torch.Generator().manual_seed(1))
    Q = 0.5 * torch.randn(I, d, dtype=dtype, generator=torch.Generator().manual_seed(2))
    b = 0.1 * torch.randn(I, dtype=dtype, generator=torch.Generator().manual_seed(3))
    pos = [np.sort(rng.choice(I, size=int(rng.integers(0, 10)), replace=False)) for _ in range(U)]
    neg = [
        sample_negatives(I, p, epochs * p.size, derive_seed(0, "neg", 1, u))
        for u, p in enumerate(pos)
    ]
    seeds = [derive_seed(0, "local", 1, u) for u in range(U)]
    return P, Q, b, pos, neg, seeds


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("batch_size", [None, 2, 3])
@pytest.mark.parametrize("bias", [False, True])
def test_cohort_step_equals_user_by_user(dtype, tol, batch_size, bias):
    P, Q, b, pos, neg, seeds = _cohort(np.random.default_rng(0), dtype=dtype)
    b = b if bias else None
    kw = dict(lr=0.3, reg=0.05, epochs=2, batch_size=batch_size, item_bias=b)
    Q0 = Q.clone()
    up = mf_bpr_user_step(P, Q, pos, neg, seed=seeds, **kw)
    assert torch.equal(Q, Q0)  # the global rows are never modified
    for j in range(len(pos)):
        alone = mf_bpr_user_step(
            P[j : j + 1], Q, pos[j : j + 1], neg[j : j + 1], seed=[seeds[j]], **kw
        )
        p, ids, rows, bias_rows = up.user(j)
        np.testing.assert_array_equal(ids, np.union1d(pos[j], neg[j]))
        np.testing.assert_array_equal(ids, alone.item_ids)
        torch.testing.assert_close(p, alone.P[0], atol=tol, rtol=0)
        torch.testing.assert_close(rows, alone.item_rows, atol=tol, rtol=0)
        if bias:
            torch.testing.assert_close(bias_rows, alone.item_bias, atol=tol, rtol=0)
        np.testing.assert_allclose(up.losses[j], alone.losses[0], atol=1e-6, equal_nan=True)
        if pos[j].size == 0:
            assert torch.equal(p, P[j]) and ids.size == 0 and np.isnan(up.losses[j]).all()


def test_cohort_step_is_sgd_on_bpr_loss():
    P, Q, b, _, _, _ = _cohort(np.random.default_rng(1))
    pos, neg = np.array([1, 4, 7, 9]), np.array([2, 2, 5, 20])  # a repeated negative row
    up = mf_bpr_user_step(P[:1], Q, [pos], [neg], lr=0.1, reg=0.2, item_bias=b)
    Pl, Ql, bl = (t.clone().requires_grad_() for t in (P[:1], Q, b))
    loss = bpr_loss(Pl.expand(4, -1), Ql[pos], Ql[neg], 0.2, bl[pos], bl[neg])
    loss.backward()
    ids = torch.as_tensor(up.item_ids)
    torch.testing.assert_close(up.P, (Pl - 0.1 * Pl.grad).detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(up.item_rows, (Ql - 0.1 * Ql.grad).detach()[ids], atol=1e-12, rtol=0)
    torch.testing.assert_close(up.item_bias, (bl - 0.1 * bl.grad).detach()[ids], atol=1e-12, rtol=0)
    assert up.losses[0, 0] == pytest.approx(float(loss.detach()), abs=1e-12)


def test_cohort_step_seeds_losses_and_deltas():
    P, Q, _, pos, neg, _ = _cohort(np.random.default_rng(2), epochs=1)
    a = mf_bpr_user_step(P, Q, pos, neg, lr=0.2, epochs=6, seed=5, batch_size=2)
    b = mf_bpr_user_step(P, Q, pos, neg, lr=0.2, epochs=6, seed=[5] * len(pos), batch_size=2)
    assert torch.equal(a.P, b.P) and torch.equal(a.item_rows, b.item_rows)
    c = mf_bpr_user_step(P, Q, pos, neg, lr=0.2, epochs=6, seed=6, batch_size=2)
    assert not torch.equal(a.P, c.P)  # the mini-batch order depends on the seed
    ok = ~np.isnan(a.losses[:, 0])
    assert np.all(a.losses[ok, -1] < a.losses[ok, 0])  # the local BPR objective decreases
    delta, count, bias_sum = sum_item_deltas(a, Q, weights=np.arange(len(pos)) + 1.0)
    assert bias_sum is None
    exp_count = torch.zeros(Q.shape[0], dtype=Q.dtype)
    exp_delta = torch.zeros_like(Q)
    for j in range(len(pos)):
        _, ids, rows, _ = a.user(j)
        exp_count[ids] += j + 1.0
        exp_delta[ids] += (j + 1.0) * (rows - Q[ids])
    torch.testing.assert_close(count, exp_count)
    torch.testing.assert_close(delta, exp_delta, atol=1e-12, rtol=0)


def test_cohort_step_errors():
    P, Q, _, pos, neg, _ = _cohort(np.random.default_rng(3))
    for kw, culprit in (
        (dict(lr=0.0), "lr"),
        (dict(lr=0.1, epochs=0), "epochs"),
        (dict(lr=0.1, batch_size=0), "batch_size"),
        (dict(lr=0.1, reg=-1.0), "reg"),
        (dict(lr=0.1, seed=[1, 2]), "seed"),
    ):
        with pytest.raises(ConfigError, match=culprit):
            mf_bpr_user_step(P, Q, pos, neg, **kw)
    with pytest.raises(ConfigError, match="neg_lists\\[0\\]"):
        mf_bpr_user_step(P, Q, pos, [np.zeros(pos[0].size + 1, int)] + neg[1:], lr=0.1)
    with pytest.raises(ConfigError, match="pos_lists"):
        mf_bpr_user_step(P, Q, pos[:-1], neg, lr=0.1)
    with pytest.raises(ConfigError, match="pos_lists must hold item ids"):
        mf_bpr_user_step(P[:1], Q, [np.array([99])], [np.array([0])], lr=0.1)


# --------------------------------------------------------------------------- centralised MF-BPR


def test_train_mf_bpr_loss_decreases_and_beats_random(synth):
    ud = leave_one_out(synth)
    losses = []
    params = train_mf_bpr(
        ud,
        d=8,
        epochs=8,
        lr=0.02,
        reg=1e-3,
        batch_size=64,
        seed=0,
        callback=lambda e, loss, p: losses.append(loss),
    )
    assert len(losses) == 8 and losses[-1] < 0.8 * losses[0]
    assert params.P.shape == (60, 8) and params.Q.shape == (40, 8) and params.b is None
    again = train_mf_bpr(ud, d=8, epochs=8, lr=0.02, reg=1e-3, batch_size=64, seed=0)
    assert torch.equal(params.P, again.P) and torch.equal(params.Q, again.Q)
    m = evaluate_full_ranking(mf_score_fn(params), ud, k_list=(10,), split="valid")
    assert m["hr@10"] > 0.35  # random ranking of 30 candidates gives 1/3
    torch.testing.assert_close(mf_scores(params, np.array([2, 5])), params.P[[2, 5]] @ params.Q.T)
    with_bias = train_mf_bpr(ud, d=4, epochs=1, item_bias=True, optimizer="sgd", lr=0.05)
    assert with_bias.b is not None and with_bias.b.shape == (40,)
    with pytest.raises(ConfigError, match="optimizer must be one of: adam, sgd"):
        train_mf_bpr(ud, epochs=1, optimizer="lbfgs")


def test_init_mf_is_seeded_without_global_state():
    state = torch.get_rng_state()
    a, b = init_mf(5, 7, 3, seed=4), init_mf(5, 7, 3, seed=4)
    assert torch.equal(a.P, b.P) and torch.equal(a.Q, b.Q)
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------- SASRec


def test_to_tokens_pads_left_and_shifts():
    t = to_tokens([[4, 5, 6], [], [0, 1, 2, 3, 4, 5]], 4)
    np.testing.assert_array_equal(t.numpy(), [[0, 5, 6, 7], [0, 0, 0, 0], [3, 4, 5, 6]])


def test_sasrec_causal_and_padding_masks():
    state = torch.get_rng_state()
    model = SASRec(20, d=16, max_len=8, num_blocks=2, num_heads=2, dropout=0.2, seed=1).eval()
    assert torch.equal(torch.get_rng_state(), state)
    seqs = to_tokens([[3, 1, 4, 1, 5, 9], [2, 6, 5, 3, 5, 8, 9, 7]], 8)
    with torch.no_grad():
        h = model(seqs)
        changed = seqs.clone()
        changed[:, 5] = 12  # a later item
        h2 = model(changed)
        torch.testing.assert_close(h[:, :5], h2[:, :5], atol=1e-6, rtol=0)
        assert (h[:, 5:] - h2[:, 5:]).abs().max() > 1e-3
        assert torch.all(model.item_emb.weight[0] == 0)
        # more or less left padding does not change the real positions
        short = to_tokens([[3, 1, 4, 1, 5, 9]], 6)
        torch.testing.assert_close(model(short)[0], h[0, 2:], atol=1e-5, rtol=0)
        s = model.score_all(seqs)
        assert s.shape == (2, 20)
        torch.testing.assert_close(s, h[:, -1] @ model.item_emb.weight[1:].T)
    same = SASRec(20, d=16, max_len=8, num_blocks=2, num_heads=2, dropout=0.2, seed=1)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values())
    )
    with pytest.raises(ConfigError, match="max_len"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_heads"):
        SASRec(20, d=10, num_heads=3)


def test_train_sasrec_loss_decreases_and_is_seeded(synth):
    ud = leave_one_out(synth)
    kw = dict(d=16, max_len=10, num_blocks=1, dropout=0.2, epochs=6, lr=5e-3, batch_size=32, seed=0)
    losses = []
    state = torch.get_rng_state()
    model = train_sasrec(ud, callback=lambda e, loss, m: losses.append(loss), **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert losses[-1] < losses[0]
    again = train_sasrec(ud, **kw)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )
    m = evaluate_full_ranking(sasrec_score_fn(model, ud, "test"), ud, k_list=(10,))
    assert 0.0 <= m["ndcg@10"] <= 1.0 and m["num_users"] == 60


def test_bce_loss_ignores_padding():
    model = SASRec(10, d=8, max_len=4, num_blocks=1, dropout=0.0, seed=0).eval()
    seqs = torch.tensor([[0, 0, 1, 2]])
    pos = torch.tensor([[0, 0, 2, 3]])
    neg = torch.tensor([[0, 0, 5, 6]])
    h = model(seqs)
    lp = model.item_logits(h[0, 2:], pos[0, 2:])
    ln = model.item_logits(h[0, 2:], neg[0, 2:])
    exp = torch.nn.functional.softplus(-lp).mean() + torch.nn.functional.softplus(ln).mean()
    torch.testing.assert_close(model.bce_loss(seqs, pos, neg), exp)


# --------------------------------------------------------------------------- ML-100K (real data)


def test_ml100k_leave_one_out_and_cohort_step():
    if not os.environ.get("FEDREC_DATA_DIR"):
        pytest.skip("FEDREC_DATA_DIR not set")
    from fedrec.data import load_dataset

    try:
        ds = load_dataset("ml-100k")
    except Exception as exc:  # the folder may lack ml-100k
        pytest.skip(f"ml-100k not available: {exc}")
    ud = leave_one_out(ds)
    assert ud.num_users == 943 and np.all(ud.test.lengths == 1) and np.all(ud.valid.lengths == 1)
    assert ud.train.indices.size == 100_000 - 2 * 943
    users = np.arange(ud.num_users)
    pos = [ud.train[u] for u in users]
    neg = [
        sample_negatives(ud.num_items, p, p.size, derive_seed(0, "neg", 1, int(u)))
        for u, p in zip(users, pos)
    ]
    init = init_mf(ud.num_users, ud.num_items, 16, seed=0)
    up = mf_bpr_user_step(init.P, init.Q, pos, neg, lr=0.05, reg=1e-4, seed=0, batch_size=64)
    for j in (0, 12, 404):
        alone = mf_bpr_user_step(
            init.P[j : j + 1],
            init.Q,
            pos[j : j + 1],
            neg[j : j + 1],
            lr=0.05,
            reg=1e-4,
            seed=0,
            batch_size=64,
        )
        torch.testing.assert_close(up.user(j)[0], alone.P[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(up.user(j)[2], alone.item_rows, atol=1e-6, rtol=0)


def test_pointwise_kernels_do_not_depend_on_position():
    """An element's sigmoid/softplus bits do not depend on where it sits in the input
    (torch's scalar tail and thread split would make a user's result cohort-dependent)."""
    from torch.nn import functional as F

    from fedrec.models.recsys import _pointwise

    x = torch.randn(50_000, generator=torch.Generator().manual_seed(0))
    for fn in (torch.sigmoid, F.softplus):
        whole = _pointwise(fn, x)
        for lo, hi in ((0, 7), (3, 70), (49_990, 50_000), (1000, 40_000)):
            assert torch.equal(_pointwise(fn, x[lo:hi]), whole[lo:hi])


@pytest.mark.parametrize("batch_size", [None, 8])
def test_cohort_step_is_bit_identical_to_user_by_user_in_float32(batch_size):
    rng = np.random.default_rng(5)
    U, I, d = 40, 300, 8
    P = torch.randn(U, d, generator=torch.Generator().manual_seed(1))
    Q = 0.5 * torch.randn(I, d, generator=torch.Generator().manual_seed(2))
    pos = [np.sort(rng.choice(I, size=int(rng.integers(1, 60)), replace=False)) for _ in range(U)]
    neg = [sample_negatives(I, p, p.size, derive_seed(0, "neg", 1, u)) for u, p in enumerate(pos)]
    seeds = [derive_seed(0, "local", 1, u) for u in range(U)]
    up = mf_bpr_user_step(P, Q, pos, neg, lr=0.5, reg=0.01, seed=seeds, batch_size=batch_size)
    for j in range(U):
        alone = mf_bpr_user_step(
            P[j : j + 1],
            Q,
            pos[j : j + 1],
            neg[j : j + 1],
            lr=0.5,
            reg=0.01,
            seed=[seeds[j]],
            batch_size=batch_size,
        )
        p, _, rows, _ = up.user(j)
        assert torch.equal(p, alone.P[0]) and torch.equal(rows, alone.item_rows)
