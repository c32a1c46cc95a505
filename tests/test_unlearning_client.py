"""The client side of unlearning requests and the unlearning math (pure, hand-checked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.algorithms.unlearning import (
    bpr_influence_stats,
    calibrate,
    calibrate_rows,
    graddiff_upload,
    influence_step,
)
from fedrec.messages import RowSparse
from fedrec.recsys.splits import Ragged, UserData
from fedrec.unlearning import client as ul
from fedrec.unlearning.requests import load_requests


def _ud() -> UserData:
    train = Ragged.from_lists([[0, 1, 2], [1, 3], [2, 4]])
    seq = Ragged.from_lists([[2, 0, 1], [3, 1], [4, 2]])
    held = Ragged.from_lists([[5], [5], [5]])
    return UserData(3, 6, train, seq, held, held)


def _reqs(*tables):
    return load_requests({"request": list(tables)})


def test_forget_view_removes_users_pairs_and_items_from_train_and_sequences():
    ud = _ud()
    v = ul.forget_view(ud, users=[2], pairs=[(0, 1)], items=[3])
    assert v.train.to_lists()[0].tolist() == [0, 2]
    assert v.train.to_lists()[1].tolist() == [1]
    assert v.train.to_lists()[2].tolist() == []
    assert v.train_seq.to_lists()[0].tolist() == [2, 0]  # time order kept
    assert v.test is ud.test and v.valid is ud.valid  # held-out items are not training data
    only = ul.forget_view(ud, users=[2], pairs=[(0, 1)], items=[3], only=True)
    assert [r.tolist() for r in only.train.to_lists()] == [[1], [3], [2, 4]]
    assert ul.forget_view(ud) is ud


def test_poll_records_privately_and_replies_counts_only():
    reqs = _reqs(
        {"kind": "interactions", "pairs": [[0, 1], [0, 2], [7, 1]]},
        {"kind": "users", "users": [1]},
        {"kind": "items", "items": [4]},
        {"kind": "client", "clients": [5], "round": 3},
    )
    state: dict = {}
    idx = ul.due(reqs, None)
    assert idx == [0, 1, 2]
    reply = ul.poll(reqs, idx, client_id=0, owned_users=np.array([0, 1]), state=state)
    assert reply[ul.N_PAIRS] == 2 and reply[ul.N_USERS] == 1 and reply[ul.N_ITEMS] == 1
    assert reply[ul.LEAVE] == 0 and reply[ul.N_REQUESTS] == 3
    assert reply[ul.ITEM_IDS].tolist() == [4]  # item ids are public, pairs are not
    assert not any(isinstance(v, np.ndarray) and v.ndim == 2 for v in reply.values())
    assert state[ul.FORGET_PAIRS].tolist() == [[0, 1], [0, 2]]
    assert state[ul.FORGET_USERS].tolist() == [1]
    # polling the same requests again changes nothing
    again = ul.poll(reqs, idx, 0, np.array([0, 1]), state)
    assert again[ul.N_PAIRS] == 0 and again[ul.N_ITEMS] == 0
    # a client whose every user is forgotten leaves; the target of a client request too
    assert ul.poll(_reqs({"kind": "users", "users": [3]}), [0], 1, np.array([3]), {})[ul.LEAVE]
    assert ul.poll(reqs, ul.due(reqs, 3), 5, np.zeros(0, int), {})[ul.LEAVE] == 1
    assert ul.poll(reqs, ul.due(reqs, 3), 4, np.zeros(0, int), {})[ul.N_REQUESTS] == 0


def test_calibration_keeps_old_magnitude_and_new_direction():
    old = [np.array([3.0, 4.0]), np.array([[1.0, 0.0]])]
    new = [np.array([0.0, 2.0]), np.array([[0.0, 0.0]])]
    out = calibrate(old, new)
    assert np.allclose(out[0], [0.0, 5.0]) and np.allclose(out[1], 0.0)
    o = RowSparse(np.array([1, 4]), np.array([[3.0, 4.0], [1.0, 1.0]]), np.array([1, 1]))
    n = RowSparse(np.array([1, 2]), np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([1, 2]))
    c = calibrate_rows(o, n)
    assert c.ids.tolist() == [1, 2]
    assert np.allclose(c.rows, [[5.0, 0.0], [0.5, 0.5]])  # row 2 has no stored norm: kept
    assert c.counts.tolist() == [1, 2]


def test_graddiff_upload_is_retain_minus_forget():
    f = RowSparse(np.array([1, 3]), np.array([[1.0], [2.0]], np.float32), np.array([1, 1]))
    r = RowSparse(np.array([3, 5]), np.array([[10.0], [20.0]], np.float32), np.array([1, 2]))
    u = graddiff_upload(f, r)
    assert u.ids.tolist() == [1, 3, 5]
    assert np.allclose(u.rows[:, 0], [-1.0, 8.0, 20.0]) and u.counts.tolist() == [1, 1, 2]


def test_bpr_influence_stats_match_autograd():
    rng = np.random.default_rng(0)
    Q = rng.normal(size=(6, 3))
    p = rng.normal(size=3)
    pos, neg = np.array([0, 1, 1]), np.array([2, 3, 0])
    grad, hdiag = bpr_influence_stats(p, Q, pos, neg)
    Qt = torch.tensor(Q, requires_grad=True)
    pt = torch.tensor(p)
    loss = -torch.nn.functional.logsigmoid((Qt[pos] - Qt[neg]) @ pt).sum()
    (g,) = torch.autograd.grad(loss, Qt, create_graph=True)
    dense = np.zeros_like(Q)
    dense[grad.ids] = grad.rows
    assert np.allclose(dense, g.detach().numpy(), atol=1e-12)
    H = np.zeros_like(Q)  # the Hessian diagonal, element by element
    for i in range(6):
        for j in range(3):
            (h,) = torch.autograd.grad(g[i, j], Qt, retain_graph=True)
            H[i, j] = h[i, j].item()
    dh = np.zeros_like(Q)
    dh[hdiag.ids] = hdiag.rows
    assert np.allclose(dh, H, atol=1e-12)


def test_influence_step_is_a_damped_diagonal_newton_step():
    Q = np.zeros((3, 2), dtype=np.float32)
    g = RowSparse(np.array([1]), np.array([[2.0, -4.0]]), np.array([1]))
    h = RowSparse(np.array([0, 1]), np.array([[9.0, 9.0], [1.0, 3.0]]), np.array([1, 1]))
    newQ, moved = influence_step(Q, [g], [h], damping=1.0)
    assert moved == 1 and np.allclose(newQ[1], [1.0, -1.0]) and np.all(newQ[[0, 2]] == 0)
    with pytest.raises(ValueError):
        influence_step(Q, [g], [h], damping=0.0)


def test_row_calibration_matches_a_row_by_row_loop():
    rng = np.random.default_rng(3)
    old = RowSparse(np.array([7, 2, 9, 4]), rng.normal(size=(4, 5)), np.ones(4, int))
    new = RowSparse(np.array([1, 2, 4, 8, 9]), rng.normal(size=(5, 5)), np.arange(5))
    got = calibrate_rows(old, new)
    for k, i in enumerate(new.ids):
        hit = np.flatnonzero(old.ids == i)
        want = new.rows[k]
        if hit.size:
            want = want * np.linalg.norm(old.rows[hit[0]]) / np.linalg.norm(new.rows[k])
        assert np.allclose(got.rows[k], want)


@pytest.mark.parametrize("loss", ["logistic", "mixture"])
def test_sisa_aggregator_gradient_matches_autograd(loss):
    from fedrec.algorithms.sisa import aggregator_grad, softmax

    rng = np.random.default_rng(1)
    E = rng.normal(size=(7, 4)) if loss == "logistic" else rng.uniform(0.05, 1, size=(7, 4))
    theta = rng.normal(size=4)
    g, total = aggregator_grad(E, theta, loss)
    t = torch.tensor(theta, requires_grad=True)
    a = torch.softmax(t, 0)
    z = torch.tensor(E) @ a
    ref = -torch.nn.functional.logsigmoid(z).sum() if loss == "logistic" else -torch.log(z).sum()
    (gt,) = torch.autograd.grad(ref, t)
    assert np.allclose(g, gt.numpy(), atol=1e-12) and np.isclose(total, ref.item())
    assert np.isclose(softmax(theta).sum(), 1.0)
    # gradient steps move the weight to the shard whose evidence is best
    E2 = np.tile([[0.9, 0.1, 0.1]], (20, 1))
    th = np.zeros(3)
    for _ in range(200):
        th -= aggregator_grad(E2, th, "mixture")[0] / 20
    assert softmax(th).argmax() == 0
