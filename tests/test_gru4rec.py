"""GRU4Rec (fedrec.models.recsys): shapes, padding invariance, torch.nn.GRU as the oracle of the
hand-written GRU, seeded per-user dropout, the federated user step (cohort independence, touched
rows, loss decrease) and a short centralised training on block-Markov sequences."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from fedrec.data.recsys import RecDataset
from fedrec.errors import ConfigError
from fedrec.models.recsys import GRU4Rec, SASRec, sasrec_user_step, to_tokens
from fedrec.recsys import evaluate_full_ranking, leave_one_out, sasrec_score_fn
from fedrec.recsys.train import train_gru4rec


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny tensors: intra-op threads only add synchronisation (and stall on a busy shared box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _user_batch(num_items: int, num_users: int, max_len: int, epochs: int, seed: int):
    """Random training sequences (lengths 1 .. max_len + 3) and ``epochs`` negatives per target."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, num_items, int(rng.integers(1, max_len + 4))) for _ in range(num_users)]
    n_t = [min(max(len(s) - 1, 0), max_len) for s in seqs]
    negs = [rng.integers(0, num_items, epochs * n) for n in n_t]
    return seqs, negs, n_t


def test_shapes_seed_rng_and_errors():
    state = torch.get_rng_state()
    model = GRU4Rec(20, d=8, max_len=6, num_layers=2, dropout=0.2, seed=1).eval()
    assert torch.equal(torch.get_rng_state(), state)
    assert (model.num_items, model.d, model.max_len) == (20, 8, 6)
    assert torch.all(model.item_emb.weight[0] == 0) and model.item_emb.padding_idx == 0
    seqs = to_tokens([[3, 1, 4], [2, 7, 1, 8, 2, 8, 1, 8]], 6)
    with torch.no_grad():
        h = model(seqs)
        assert h.shape == (2, 6, 8)
        assert torch.all(h[0, :3] == 0) and bool((h[0, 3:] != 0).any())  # padding gives 0
        s = model.score_all(seqs)
        assert s.shape == (2, 20)
        torch.testing.assert_close(s, h[:, -1] @ model.item_emb.weight[1:].T)
        assert model(seqs[:, 2:]).shape == (2, 4, 8)  # shorter L is fine
    same = GRU4Rec(20, 8, 6, 2, 0.2, 1)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values())
    )
    other = GRU4Rec(20, 8, 6, 2, 0.2, seed=2)
    assert not torch.equal(other.item_emb.weight, model.item_emb.weight)
    with pytest.raises(ConfigError, match="max_len"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ConfigError, match="num_layers"):
        GRU4Rec(20, 8, 6, num_layers=0)
    with pytest.raises(ConfigError, match="dropout"):
        GRU4Rec(20, 8, 6, dropout=1.0)


def test_left_padding_does_not_change_real_positions():
    model = GRU4Rec(30, d=8, max_len=12, num_layers=2, dropout=0.3, seed=4).eval()
    with torch.no_grad():  # random biases: padding would move h away from 0 without the mask
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    seq = [5, 2, 9, 9, 17, 0, 3]
    with torch.no_grad():
        short = model(to_tokens([seq], len(seq)))[0]
        for L in (8, 12):
            padded = model(to_tokens([seq], L))[0]
            torch.testing.assert_close(padded[-len(seq) :], short, atol=1e-6, rtol=0)
            assert torch.all(padded[: L - len(seq)] == 0)
        torch.testing.assert_close(
            model.score_all(to_tokens([seq], 12))[0], model.score_all(to_tokens([seq], 7))[0]
        )


@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_equals_torch_nn_gru(num_layers):
    """The external oracle: the same weights in ``torch.nn.GRU`` give the same outputs."""
    d = 8
    model = GRU4Rec(25, d=d, max_len=10, num_layers=num_layers, dropout=0.2, seed=7).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases, so that the (r, z, n) bias layout is checked too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    ref = torch.nn.GRU(d, d, num_layers=num_layers, batch_first=True)
    with torch.no_grad():
        for k in range(num_layers):
            layer = model.layers[k]
            getattr(ref, f"weight_ih_l{k}").copy_(layer.ih.weight)
            getattr(ref, f"bias_ih_l{k}").copy_(layer.ih.bias)
            getattr(ref, f"weight_hh_l{k}").copy_(layer.hh.weight)
            getattr(ref, f"bias_hh_l{k}").copy_(layer.hh.bias)
    tokens = torch.randint(1, 26, (4, 10), generator=g)  # no padding: nn.GRU has no mask
    with torch.no_grad():
        out, h_n = ref(model.item_emb(tokens))
        torch.testing.assert_close(model(tokens), model.proj(out), atol=1e-5, rtol=1e-5)
        # with padding: the real suffix of a left-padded row equals nn.GRU on the suffix alone
        padded = tokens.clone()
        padded[:, :4] = 0
        out_s, _ = ref(model.item_emb(tokens[:, 4:]))
        torch.testing.assert_close(model(padded)[:, 4:], model.proj(out_s), atol=1e-5, rtol=1e-5)


def test_dropout_noise_layout_and_seeding():
    model = GRU4Rec(30, d=8, max_len=6, num_layers=2, dropout=0.3, seed=0)
    a = model.dropout_noise([5, 9], 6)
    assert a["emb"].shape == (2, 6, 8)
    assert len(a["blocks"]) == 2 and all(
        len(b) == 1 and b[0].shape == (2, 6, 8) for b in a["blocks"]
    )
    b = model.dropout_noise([9], 6)
    assert torch.equal(a["emb"][1], b["emb"][0])
    assert all(torch.equal(x[0][1], y[0][0]) for x, y in zip(a["blocks"], b["blocks"]))
    keep = (a["emb"] > 0).float().mean()
    assert 0.6 < float(keep) < 0.8 and torch.allclose(a["emb"][a["emb"] > 0], torch.tensor(1 / 0.7))
    assert not torch.equal(a["blocks"][0][0], a["blocks"][1][0])
    # SASRec's scheme: the same generator stream, the embedding mask first
    s = SASRec(30, 8, 6, num_blocks=1, dropout=0.3, seed=0).dropout_noise([5, 9], 6)
    assert torch.equal(a["emb"], s["emb"])
    assert model.dropout_noise([], 6)["emb"].shape == (0, 6, 8)
    # all-ones noise is the eval-mode forward; real noise changes it
    seqs = to_tokens([[1, 2, 3, 4], [5, 6]], 6)
    ones = {"emb": torch.ones(2, 6, 8), "blocks": [(torch.ones(2, 6, 8),)] * 2}
    with torch.no_grad():
        torch.testing.assert_close(model.train()(seqs, ones), model.eval()(seqs))
        assert not torch.allclose(model(seqs, a), model(seqs))


def test_user_step_is_cohort_independent_and_plain_sgd():
    num_items, L, E, lr = 40, 8, 2, 0.5
    model = GRU4Rec(num_items, d=8, max_len=L, num_layers=2, dropout=0.2, seed=3)
    seqs, negs, n_t = _user_batch(num_items, 7, L, E, seed=1)
    seeds = [10 + j for j in range(7)]
    up = sasrec_user_step(model, seqs, negs, lr=lr, epochs=E, seeds=seeds, chunk=3)
    names = [n for n, _ in model.named_parameters()]
    assert set(up.dense) == set(names[1:])
    for j in range(7):
        # alone: the same deltas and losses as inside the cohort
        alone = sasrec_user_step(model, seqs[j : j + 1], negs[j : j + 1], lr, E, seeds[j : j + 1])
        sl = slice(int(up.indptr[j]), int(up.indptr[j + 1]))
        np.testing.assert_array_equal(alone.item_ids, up.item_ids[sl])
        torch.testing.assert_close(alone.item_deltas, up.item_deltas[sl], atol=1e-6, rtol=0)
        for n in names[1:]:
            torch.testing.assert_close(alone.dense[n][0], up.dense[n][j], atol=1e-6, rtol=0)
        np.testing.assert_allclose(alone.losses[0], up.losses[j], atol=1e-6, rtol=0)
        # reference: plain autograd SGD on the full model with the user's own dropout masks
        ref = copy.deepcopy(model).train()
        s = seqs[j]
        x, y = to_tokens([s[:-1]], L), to_tokens([s[1:]], L)
        for e in range(E):
            neg = torch.zeros_like(y)
            if n_t[j]:
                neg[0, L - n_t[j] :] = torch.from_numpy(negs[j].reshape(E, -1)[e] + 1)
            loss = ref.masked_bce(x, y, neg, ref.dropout_noise([seeds[j] + e], L))
            if n_t[j]:
                assert abs(float(loss.detach()) - up.losses[j, e]) < 1e-5
            else:
                assert np.isnan(up.losses[j, e])
            grads = torch.autograd.grad(loss, list(ref.parameters()), allow_unused=True)
            with torch.no_grad():
                for prm, gg in zip(ref.parameters(), grads):
                    if gg is not None:
                        prm -= lr * gg
        delta = {
            n: (b - a).detach()
            for (n, a), (_, b) in zip(model.named_parameters(), ref.named_parameters())
        }
        for n in names[1:]:
            torch.testing.assert_close(up.dense[n][j], delta[n], atol=1e-6, rtol=1e-5)
        ids = torch.as_tensor(up.item_ids[sl]) + 1
        torch.testing.assert_close(
            up.item_deltas[sl], delta["item_emb.weight"][ids], atol=1e-6, rtol=1e-5
        )
        rest = torch.ones(num_items + 1, dtype=torch.bool)
        rest[ids] = False
        assert float(delta["item_emb.weight"][rest].abs().max()) == 0.0  # untouched rows
    assert up.num_targets.tolist() == n_t


def test_untouched_rows_have_zero_gradient():
    num_items, L = 50, 8
    model = GRU4Rec(num_items, d=8, max_len=L, num_layers=1, dropout=0.2, seed=5).train()
    s = np.array([3, 14, 15, 9, 26])
    x, y = to_tokens([s[:-1]], L), to_tokens([s[1:]], L)
    neg = torch.zeros_like(y)
    neg[0, L - 4 :] = torch.tensor([41, 7, 33, 2]) + 1
    loss = model.masked_bce(x, y, neg, model.dropout_noise([1], L))
    (g,) = torch.autograd.grad(loss, [model.item_emb.weight])
    touched = torch.zeros(num_items + 1, dtype=torch.bool)
    touched[torch.cat([x, y, neg]).reshape(-1)] = True
    assert float(g[~touched].abs().max()) == 0.0 and float(g[0].abs().max()) == 0.0
    assert bool((g[touched].abs().sum(1) > 0)[1:].all())  # every real touched row moves
    up = sasrec_user_step(model, [s], [neg[0, L - 4 :].numpy() - 1], lr=0.1, seeds=[1])
    np.testing.assert_array_equal(up.item_ids, np.flatnonzero(touched.numpy()[1:]))


def test_user_step_loss_decreases():
    num_items, L, E = 30, 10, 8
    model = GRU4Rec(num_items, d=16, max_len=L, num_layers=1, dropout=0.0, seed=0)
    seqs, negs, n_t = _user_batch(num_items, 6, L, 1, seed=2)
    negs = [np.tile(ng, E) for ng in negs]  # the same negatives each step: a fixed objective
    up = sasrec_user_step(model, seqs, negs, lr=0.5, epochs=E, seeds=list(range(6)))
    ok = np.array(n_t) > 0
    assert np.all(np.diff(up.losses[ok], axis=1) < 0)
    assert np.all(np.isnan(up.losses[~ok]))


def _block_markov(num_users: int, blocks: int, per_block: int, length: int, seed: int):
    """Each user walks blocks ``b, b + 1, ...`` (mod ``blocks``), one unseen item of each block per
    step: the next item's block is determined by the current item's, the item is not."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(num_users):
        b = int(rng.integers(blocks))
        unused = [list(rng.permutation(per_block)) for _ in range(blocks)]
        for _ in range(length):
            items.append(b * per_block + int(unused[b].pop()))
            users.append(u)
            b = (b + 1) % blocks
    n = len(users)
    return RecDataset(
        "block-markov",
        num_users,
        blocks * per_block,
        np.asarray(users),
        np.asarray(items),
        np.ones(n, np.float32),
        np.arange(n, dtype=np.int64),
        {},
        {},
    )


def test_centralised_training_learns_block_markov():
    ud = leave_one_out(_block_markov(num_users=80, blocks=6, per_block=10, length=14, seed=0))
    kw = dict(d=16, max_len=12, num_layers=1, dropout=0.1, lr=1e-2, batch_size=32, seed=0)
    state = torch.get_rng_state()
    untrained = train_gru4rec(ud, epochs=0, **kw)
    losses: list[float] = []
    model = train_gru4rec(ud, epochs=30, callback=lambda e, loss, m: losses.append(loss), **kw)
    assert torch.equal(torch.get_rng_state(), state)
    assert not model.training and losses[-1] < losses[0]
    before = evaluate_full_ranking(sasrec_score_fn(untrained, ud), ud, k_list=(10,))
    after = evaluate_full_ranking(sasrec_score_fn(model, ud), ud, k_list=(10,))
    # the next block holds about 8 unseen items: a model that learned the chain ranks them all in
    # its top 10 (HR@10 = 1.0 here for seeds 0-4); chance is about 10 / 47
    assert before["hr@10"] < 0.4 and after["hr@10"] > 0.9, (before["hr@10"], after["hr@10"])
    again = train_gru4rec(ud, epochs=2, **kw)
    same = train_gru4rec(ud, epochs=2, **kw)
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), same.state_dict().values())
    )
