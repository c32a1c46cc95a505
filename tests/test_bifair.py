"""BiFair: the group-weighted estimator, the one-step-unrolled hypergradient (against
finite differences), the per-group gradients, the balancing rules and federated runs."""

import json

import numpy as np
import pytest
import torch

import fedrec
from fedrec.algorithms import bifair as B
from fedrec.errors import ConfigError, FedrecError


def _problem(seed=0, n_items=12, d_in=6, n_users=4):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n_items, d_in)).astype(np.float32)
    phi = B.init_projector(d_in, 5, 3, seed)
    P = rng.normal(size=(n_users, 3)).astype(np.float32)
    pos = [np.sort(rng.choice(n_items, 3, replace=False)) for _ in range(n_users)]
    return rng, Z, phi, P, pos


def test_group_multipliers_and_the_weighted_estimator():
    np.testing.assert_allclose(
        B.group_multipliers(np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.75, 0.0])),
        [2.0, 2.0 / 3.0, 0.0],
    )
    with pytest.raises(ConfigError, match="same shape"):
        B.group_multipliers(np.ones(2), np.ones(3))
    # over the full set, mean_j a(i_j) l_j == sum_g w_g L_g when pi is the empirical share
    rng = np.random.default_rng(1)
    groups = rng.integers(0, 3, size=40)
    losses = rng.random(40)
    pi = np.bincount(groups, minlength=3) / 40
    w = np.array([0.2, 0.3, 0.5])
    a = B.group_multipliers(w, pi)[groups]
    L = np.array([losses[groups == g].mean() for g in range(3)])
    assert np.mean(a * losses) == pytest.approx(float(w @ L))


def test_local_train_lowers_the_loss_and_is_seeded():
    rng, Z, phi, P, pos = _problem()
    tr = B.sample_triples(pos, 12, 2, rng)
    assert len(tr[0]) == 2 * sum(len(p) for p in pos)
    for u, _i, j in zip(*tr):  # negatives are never the user's positives
        assert j not in pos[u]
    mult = np.ones(12)
    runs = [
        B.local_train(P, phi, Z, tr, mult, epochs=e, lr=0.05, batch_size=8, seed=3) for e in (1, 30)
    ]
    assert runs[1][2] < runs[0][2]
    again = B.local_train(P, phi, Z, tr, mult, epochs=1, lr=0.05, batch_size=8, seed=3)
    np.testing.assert_array_equal(again[0], runs[0][0])


def _val_loss(P, phi, Z, tr, val, mult, alpha):
    """An independent evaluation of L_val(phi'(Z), Z) in float64 (no autograd through Z)."""
    Pt = torch.as_tensor(P, dtype=torch.float64)
    Zt = torch.as_tensor(Z, dtype=torch.float64)
    ph = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in phi]
    m = torch.as_tensor(mult, dtype=torch.float64)

    def bpr(ph_, u, i, j):
        V = B.project(ph_, Zt)
        return torch.nn.functional.softplus(-((Pt[u] * (V[i] - V[j])).sum(-1)))

    tu, ti, tj = (torch.as_tensor(x) for x in tr)
    inner = (m[ti] * bpr(ph, tu, ti, tj)).mean()
    g = torch.autograd.grad(inner, ph)
    ph2 = [p - alpha * gi for p, gi in zip(ph, g)]
    vu, vi, vj = (torch.as_tensor(x) for x in val)
    return float((m[vi] * bpr(ph2, vu, vi, vj)).sum().detach())


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_unrolled_hypergradient_matches_finite_differences(alpha):
    rng, Z, phi, P, pos = _problem(seed=2)
    tr = B.sample_triples(pos, 12, 1, rng)
    val = (np.array([0, 1, 2, 3]), np.array([5, 6, 7, 8]), np.array([9, 10, 11, 0]))
    mult = np.linspace(0.5, 2.0, 12)
    hyper, loss, n = B.unrolled_hypergrad(P, phi, Z, tr, val, mult, alpha)
    assert n == 4
    assert loss == pytest.approx(_val_loss(P, phi, Z, tr, val, mult, alpha), rel=1e-4)
    dense = np.zeros_like(Z, dtype=np.float64)
    dense[hyper.ids] = hyper.rows
    eps = 1e-3
    for r, c in [(5, 0), (9, 3), (int(tr[1][0]), 2), (int(tr[2][1]), 5)]:
        Zp, Zm = Z.astype(np.float64).copy(), Z.astype(np.float64).copy()
        Zp[r, c] += eps
        Zm[r, c] -= eps
        up, down = (_val_loss(P, phi, Zx, tr, val, mult, alpha) for Zx in (Zp, Zm))
        fd = (up - down) / (2 * eps)
        assert dense[r, c] == pytest.approx(fd, rel=2e-3, abs=1e-5)
    # rows outside both batches are not sent
    touched = set(np.concatenate([tr[1], tr[2], val[1], val[2]]).tolist())
    assert set(hyper.ids.tolist()) == touched


def test_group_gradients_add_up_to_the_total():
    rng, Z, phi, P, pos = _problem(seed=4)
    val = (np.array([0, 1, 2, 3, 0]), np.array([1, 2, 3, 4, 5]), np.array([6, 7, 8, 9, 10]))
    groups = np.array([0, 1, 1, 2, 0, 2, 0, 0, 1, 1, 2, 2])
    sums, losses, counts = B.group_gradients(P, phi, Z, val, groups, 4)
    np.testing.assert_array_equal(counts, np.bincount(groups[val[1]], minlength=4))
    assert counts[3] == 0 and not sums[3].any()
    ph = [torch.tensor(a, requires_grad=True) for a in phi]
    V = B.project(ph, torch.as_tensor(Z))
    Pt = torch.as_tensor(P)
    total = torch.nn.functional.softplus(-((Pt[val[0]] * (V[val[1]] - V[val[2]])).sum(-1))).sum()
    gW, gb = torch.autograd.grad(total, [ph[2], ph[3]])
    np.testing.assert_allclose(
        sums.sum(0), torch.cat([gW.reshape(-1), gb]).numpy(), rtol=1e-5, atol=1e-6
    )
    assert losses.sum() == pytest.approx(float(total.detach()), rel=1e-6)


def test_balance_rules():
    pi = np.array([0.6, 0.3, 0.1])
    sums = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    counts = np.array([1.0, 1.0, 0.0])
    losses = np.array([1.0, 1.0, 0.0])
    np.testing.assert_allclose(B.balance_weights("none", sums, losses, counts, pi), pi)
    np.testing.assert_allclose(B.balance_weights("uniform", sums, losses, counts, pi), 1 / 3)
    w = B.balance_weights("mgda", sums, losses, counts, pi, "none")
    np.testing.assert_allclose(w, [0.5, 0.5, 0.0], atol=1e-8)  # orthogonal: the midpoint
    # 'loss' normalisation: the group with the higher loss gets the shorter gradient, hence
    # more weight in the min-norm point
    w = B.balance_weights("mgda", sums, np.array([1.0, 3.0, 0.0]), counts, pi, "loss")
    assert w[1] > w[0] and w.sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="allowed: mgda, uniform, none"):
        B.balance_weights("dro", sums, losses, counts, pi)


BASE = {
    "strategy.name": "bifair",
    "dataset.name": "synthetic-rec",
    "dataset.options": "num_users=120,num_items=80",
    "strategy.params.users-per-client": 30,
    "partition.num-clients": 4,
    "strategy.params.representation": "svd-pop",
    "strategy.params.repr-dim": 16,
    "strategy.params.dim": 8,
    "strategy.params.hidden": 16,
    "strategy.params.outer-every": 1,
    "num-server-rounds": 3,
    "train.lr": 0.02,
    "train.batch-size": 64,
    "output.plots": False,
    "output.progress": False,
    "output.client-metrics": False,
    "runtime.num-nodes": 1,
}


@pytest.mark.e2e
def test_bifair_runs_balances_and_is_deterministic(tmp_path):
    a = fedrec.run(BASE, backend="local", out=tmp_path / "a")
    b = fedrec.run(BASE, backend="local", out=tmp_path / "b")
    assert a["final"] == b["final"]
    g = a["final"]["global"]
    for k in ("ndcg@10", "pop_worst25@10", "pop_mgu@10", "pop_dgu@10", "pop_kl@10"):
        assert k in g
    log = json.loads((tmp_path / "a" / "bifair.json").read_text())
    assert [x["round"] for x in log["balance"]] == [1, 2, 3]
    assert all(x["z-drift"] > 0 for x in log["balance"])
    assert sum(log["final-w"]) == pytest.approx(1.0)
    assert log["final-w"] != pytest.approx(log["pi"])  # MGDA moved the weights


@pytest.mark.e2e
def test_ablations_freeze_what_they_say(tmp_path):
    frozen = fedrec.run(
        {**BASE, "strategy.params.update-z": False, "strategy.params.balance": "none"},
        backend="local",
        out=tmp_path / "plain",
    )
    log = json.loads((tmp_path / "plain" / "bifair.json").read_text())
    assert log["balance"] == [] and log["final-w"] == pytest.approx(log["pi"])
    fedrec.run({**BASE, "strategy.params.balance": "uniform"}, backend="local", out=tmp_path / "u")
    log = json.loads((tmp_path / "u" / "bifair.json").read_text())
    assert log["final-w"] == pytest.approx([0.2] * 5)
    assert all("w-mgda" not in x and x["z-drift"] > 0 for x in log["balance"])
    rr = fedrec.run(
        {**BASE, "strategy.params.update-z": False, "strategy.params.balance": "none",
         "strategy.params.rerank-lambda": 50.0},
        backend="local",
        out=tmp_path / "rr",
    )  # fmt: skip
    # the re-ranking baseline moves the exposure toward the training shares
    assert rr["final"]["global"]["pop_tv@10"] < frozen["final"]["global"]["pop_tv@10"]


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(FedrecError, match="has none; allowed here: svd-pop"):
        fedrec.run(
            {**BASE, "strategy.params.representation": "hashing"},
            backend="local",
            out=tmp_path / "x",
        )
    with pytest.raises(FedrecError, match="no item genres; allowed: popularity"):
        fedrec.run({**BASE, "strategy.params.groups": "genre"}, backend="local", out=tmp_path / "y")
    with pytest.raises(FedrecError, match="set it to 4"):
        fedrec.run({**BASE, "partition.num-clients": 3}, backend="local", out=tmp_path / "z")


@pytest.mark.e2e
def test_post_hoc_rerank_sweep_reproduces_the_run(tmp_path):
    """experiments/rerank_eval.py re-evaluates a finished run through the client half:
    lambda = 0 gives the run's own final metrics; a strong lambda moves exposure toward
    the training shares."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    from rerank_eval import rerank_sweep

    s = fedrec.run({**BASE, "num-server-rounds": 2}, backend="local", out=tmp_path / "r")
    r0, r1 = rerank_sweep(tmp_path / "r", [0.0, 50.0])
    g = s["final"]["global"]
    assert r0["ndcg@10"] == pytest.approx(g["ndcg@10"])
    assert r0["pop_mgu@10"] == pytest.approx(g["pop_mgu@10"])
    assert r1["pop_tv@10"] < r0["pop_tv@10"]


@pytest.mark.e2e
def test_random_split_reaches_every_part(tmp_path):
    """``dataset.split = random`` (untimed data): the strategy, the clients and the
    svd-pop representation all read the same split."""
    from fedrec.recsys.data import user_data
    from fedrec.recsys.item_repr import item_representations

    cfg = {**BASE, "dataset.split": "random", "num-server-rounds": 1}
    s = fedrec.run(cfg, backend="local", out=tmp_path / "r")
    assert s["final"]["global"]["num_users"] == 120
    _, ud_r = user_data("synthetic-rec", BASE["dataset.options"], "random")
    _, ud_t = user_data("synthetic-rec", BASE["dataset.options"], "time")
    assert not np.array_equal(ud_r.test.indices, ud_t.test.indices)
    z = {
        sp: item_representations(
            "synthetic-rec", BASE["dataset.options"], "svd-pop", 16, 0, cache=False, split=sp
        )
        for sp in ("random", "time")
    }
    assert not np.allclose(z["random"], z["time"])
