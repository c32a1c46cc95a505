"""Optimizers with explicit state, shared by every method: SGD and Adam.

One update formula per optimizer, written once:

- :func:`adam_direction` — the Adam step of ``torch.optim.Adam`` (no weight decay, no
  amsgrad), elementwise and **batched over leading axes**: ``m, v, g`` may be stacks of
  per-user / per-row / per-client arrays and the step counter ``t`` a scalar or an array
  that broadcasts against them (one counter per row: lazy or per-user Adam).

  .. math::
      m_t = \\beta_1 m_{t-1} + (1-\\beta_1) g, \\quad v_t = \\beta_2 v_{t-1} + (1-\\beta_2) g^2,
      \\quad \\Delta = -\\frac{lr}{1-\\beta_1^t}
      \\frac{m_t}{\\sqrt{v_t}/\\sqrt{1-\\beta_2^t} + \\epsilon}

- numpy front ends: :func:`adam_step` (a list of parameter arrays, one step counter:
  server-side FedAdam, estimator training), :class:`RowAdam` (lazy Adam on the rows a
  round touched, like ``torch.optim.SparseAdam``: untouched rows and their moments stay
  bit-for-bit unchanged), :func:`sgd_step`;
- torch front ends for local training loops: :class:`TorchSGD`, :class:`TorchAdam`
  (hand-written because constructing a ``torch.optim`` optimizer imports
  ``torch._dynamo``, about 2 s per client process; same formulas as ``torch.optim``).

States are plain dataclasses of arrays, so a strategy can declare and checkpoint them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedrec.errors import ConfigError

if TYPE_CHECKING:  # torch is imported only by the torch front ends, when first used
    import torch


def _torch() -> Any:
    import torch

    return torch


__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "AdamState",
    "RowAdam",
    "TorchAdam",
    "TorchSGD",
    "adam_direction",
    "adam_moments",
    "adam_step",
    "sgd_step",
]

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def adam_moments(
    m: np.ndarray, v: np.ndarray, g: np.ndarray, betas: tuple[float, float] = ADAM_BETAS
) -> tuple[np.ndarray, np.ndarray]:
    """New first and second moments ``(m_t, v_t)`` (elementwise, any shape)."""
    b1, b2 = betas
    return b1 * m + (1.0 - b1) * g, b2 * v + (1.0 - b2) * g * g


def adam_direction(
    m: np.ndarray,
    v: np.ndarray,
    t: np.ndarray | float,
    lr: np.ndarray | float,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> np.ndarray:
    """The Adam update ``Delta`` to **add** to the parameters, from the new moments.

    ``t`` (step count after this step, >= 1) and ``lr`` broadcast against ``m``: pass
    ``t[..., None]`` for one counter per row. ``(lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)``
    with ``bc_i = 1 - beta_i^t``, negated (the torch formula, same operation order).
    """
    b1, b2 = betas
    if np.ndim(t) == 0:  # Python's power, as torch.optim.Adam (numpy's can differ by an ulp)
        bc1: Any = 1.0 - b1 ** float(t)
        bc2: Any = 1.0 - b2 ** float(t)
    else:
        bc1 = 1.0 - b1 ** np.asarray(t, dtype=np.float64)
        bc2 = 1.0 - b2 ** np.asarray(t, dtype=np.float64)
    return -((lr / bc1) * m / (np.sqrt(v) / np.sqrt(bc2) + eps))


def sgd_step(
    params: Sequence[np.ndarray], grads: Sequence[np.ndarray], lr: float
) -> list[np.ndarray]:
    """``p - lr * g`` per array (float64 arithmetic, each result in its input dtype)."""
    return [
        (np.asarray(p, np.float64) - lr * np.asarray(g, np.float64)).astype(_dtype(p))
        for p, g in zip(params, grads)
    ]


def _dtype(p: np.ndarray) -> np.dtype:
    a = np.asarray(p)
    return a.dtype if np.issubdtype(a.dtype, np.floating) else np.dtype(np.float64)


@dataclass
class AdamState:
    """Adam state of a list of parameter arrays: ``m``, ``v`` (float64) and step ``t``."""

    m: list[np.ndarray]
    v: list[np.ndarray]
    t: int = 0

    @classmethod
    def zeros(cls, params: Sequence[np.ndarray]) -> AdamState:
        return cls(
            [np.zeros(np.shape(p)) for p in params], [np.zeros(np.shape(p)) for p in params], 0
        )


def adam_step(
    params: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
    state: AdamState | None = None,
    lr: float = 1e-3,
    *,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> tuple[list[np.ndarray], AdamState]:
    """One Adam step on a list of arrays (float64 arithmetic; :func:`adam_direction`).

    Pure: returns new parameter arrays (each in its input dtype) and a new
    :class:`AdamState`; ``state=None`` starts from zeros.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if len(params) != len(grads):
        raise ConfigError(f"grads must have {len(params)} arrays like params, got {len(grads)}")
    if state is None:
        state = AdamState.zeros(params)
    if len(state.m) != len(params):
        raise ConfigError("state does not match params (different number of arrays)")
    t = state.t + 1
    new_p, new_m, new_v = [], [], []
    for p, g, m0, v0 in zip(params, grads, state.m, state.v):
        p_arr = np.asarray(p)
        g = np.asarray(g, dtype=np.float64)
        if g.shape != p_arr.shape or m0.shape != p_arr.shape:
            raise ConfigError(
                f"grads / state shape {g.shape} does not match parameter {p_arr.shape}"
            )
        m1, v1 = adam_moments(m0, v0, g, betas)
        new_p.append(
            (p_arr.astype(np.float64) + adam_direction(m1, v1, t, lr, betas, eps)).astype(
                _dtype(p_arr)
            )
        )
        new_m.append(m1)
        new_v.append(v1)
    return new_p, AdamState(new_m, new_v, t)


@dataclass
class RowAdam:
    """Lazy (sparse) Adam over the rows of one matrix, one step counter per row.

    Like ``torch.optim.SparseAdam``: :meth:`direction` advances the moments and counters
    of the given rows only, so an untouched row's moments, counter and parameters stay
    bit-for-bit unchanged.
    """

    m: np.ndarray
    v: np.ndarray
    t: np.ndarray
    betas: tuple[float, float] = ADAM_BETAS
    eps: float = ADAM_EPS

    @classmethod
    def zeros(
        cls, shape: tuple[int, ...], betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS
    ) -> RowAdam:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape[0]), betas, eps)

    def direction(self, rows: np.ndarray, grad: np.ndarray, lr: float = 1.0) -> np.ndarray:
        """Advance ``rows`` by one step with gradient ``grad`` (len(rows), ...) and return
        the update to add to those rows (``lr`` times the Adam direction)."""
        self.t[rows] += 1
        m1, v1 = adam_moments(self.m[rows], self.v[rows], grad, self.betas)
        self.m[rows], self.v[rows] = m1, v1
        t = self.t[rows].reshape((-1,) + (1,) * (grad.ndim - 1))
        return adam_direction(m1, v1, t, lr, self.betas, self.eps)


class TorchSGD:
    """Plain SGD with coupled L2 weight decay, in place on tensors (``torch.optim.SGD``,
    no momentum)."""

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self._torch = _torch()

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        with self._torch.no_grad():
            self._step()

    def _step(self) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            p.add_(grad, alpha=-self.lr)


class TorchAdam(TorchSGD):
    """Adam (betas 0.9/0.999, eps 1e-8, coupled L2 weight decay) in place on tensors; the
    update of ``torch.optim.Adam`` with its defaults (single-tensor path)."""

    beta1, beta2 = ADAM_BETAS
    eps = ADAM_EPS

    def __init__(self, params: list[torch.Tensor], lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, weight_decay)
        self.t = 0
        self.m = [self._torch.zeros_like(p) for p in params]
        self.v = [self._torch.zeros_like(p) for p in params]

    def _step(self) -> None:
        self.t += 1
        bc1 = 1 - self.beta1**self.t
        bc2_sqrt = math.sqrt(1 - self.beta2**self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            grad = p.grad if self.weight_decay == 0 else p.grad.add(p, alpha=self.weight_decay)
            m.lerp_(grad, 1 - self.beta1)
            v.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)
