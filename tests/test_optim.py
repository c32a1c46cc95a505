"""fedrec.optim against torch.optim (the oracle) and its lazy-row contract."""

import numpy as np
import torch

from fedrec.optim import AdamState, RowAdam, TorchAdam, TorchSGD, adam_step, sgd_step


def _grads(rng, shape, steps):
    return [rng.normal(size=shape) for _ in range(steps)]


def test_adam_step_matches_torch_adam_over_many_steps():
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3))
    ref = torch.tensor(p0, requires_grad=True)
    opt = torch.optim.Adam([ref], lr=0.01)
    params, state = [p0.copy()], AdamState.zeros([p0])
    for g in _grads(rng, p0.shape, 60):
        ref.grad = torch.tensor(g)
        opt.step()
        params, state = adam_step(params, [g], state, lr=0.01)
    np.testing.assert_allclose(params[0], ref.detach().numpy(), rtol=0, atol=1e-15)
    assert state.t == 60


def test_row_adam_is_adam_per_row_and_leaves_untouched_rows():
    rng = np.random.default_rng(1)
    opt = RowAdam.zeros((5, 2))
    dense = [AdamState.zeros([np.zeros(2)]) for _ in range(5)]
    x = [np.zeros(2) for _ in range(5)]
    for step in range(6):
        rows = np.array([0, 2]) if step % 2 else np.array([0, 1, 2])
        g = rng.normal(size=(len(rows), 2))
        upd = opt.direction(rows, g, lr=0.1)
        for i, r in enumerate(rows):
            before = x[r].copy()
            (x[r],), dense[r] = adam_step([x[r]], [g[i]], dense[r], lr=0.1)
            np.testing.assert_allclose(before + upd[i], x[r], rtol=0, atol=1e-15)
    assert opt.t.tolist() == [6, 3, 6, 0, 0]
    assert not opt.m[3:].any() and not opt.v[3:].any()


def test_torch_front_ends_equal_torch_optim_bit_for_bit():
    rng = np.random.default_rng(2)
    w0 = torch.tensor(rng.normal(size=(3, 4)), dtype=torch.float32)
    for ours_cls, ref_cls in ((TorchSGD, torch.optim.SGD), (TorchAdam, torch.optim.Adam)):
        a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        ours, ref = (
            ours_cls([a], lr=0.05, weight_decay=0.01),
            ref_cls([b], lr=0.05, weight_decay=0.01),
        )
        for g in _grads(rng, (3, 4), 20):
            a.grad = torch.tensor(g, dtype=torch.float32)
            b.grad = torch.tensor(g, dtype=torch.float32)
            ours.step()
            ref.step()
        assert torch.equal(a, b), ours_cls.__name__


def test_sgd_step_keeps_dtypes():
    out = sgd_step([np.ones(2, np.float32), np.arange(2)], [np.ones(2), np.ones(2)], lr=0.5)
    assert out[0].dtype == np.float32 and out[1].dtype == np.float64
    np.testing.assert_array_equal(out[0], [0.5, 0.5])
