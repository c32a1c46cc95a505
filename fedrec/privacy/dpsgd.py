r"""Sample-level DP-SGD for a client's local training, through Opacus (pure torch, no flwr).

:func:`dp_sgd_train` is :func:`fedrec.training.train_classifier` with DP-SGD (Abadi et al.
2016) in place of plain minibatch training, implemented by ``opacus.PrivacyEngine``:

- **Poisson sampling**: every step includes each of the client's ``n`` examples
  independently with probability ``q = 1 / ceil(n / batch_size)`` (Opacus's rate: one
  expected pass over the data per ``ceil(n / batch_size)`` steps; the expected batch size
  is ``n q``). An epoch is ``ceil(n / batch_size)`` steps, whatever the batch sizes drawn.
- **Per-example clipping** of the whole gradient (all parameters together, Opacus's
  ``"flat"`` clipping) to L2 norm ``max_grad_norm``, the clipped gradients summed, Gaussian
  noise :math:`\mathcal N(0, (z \cdot \mathrm{max\_grad\_norm})^2)` added, divided by the
  expected batch size ``n q``, then an SGD or Adam step (``torch.optim.SGD`` /
  ``torch.optim.Adam`` with the formulas of :mod:`fedrec.optim`, coupled weight decay).
- **Accounting**: the engine's RDP accountant composes ``steps`` sampled Gaussian
  releases with ``(z, q)``; :attr:`DPTrainResult.epsilon` is its ε at ``delta``. Opacus's
  RDP analysis agrees with :func:`fedrec.privacy.accountant.epsilon` (dp-accounting's) to
  well under 1 % (the two libraries use slightly different order grids).

**What is protected**: each single *example* of this client's local data (add or remove one
example), with respect to everything computed from the trained weights of this call --
e.g. the update the client uploads. The guarantee is for this call only: a client that
trains in ``R`` rounds composes ``R`` such runs (``epsilon(z, q, R * steps, delta)`` on
the same data, by the composition theorem; the server does not compose for it).

**What is not protected**: a user (or client) as a whole -- a person with many examples is
protected per example only, so the bound for all of their data grows with their count
(group privacy); the number of examples ``n`` (it sets ``q`` and is usually reported to the
server as the FedAvg weight); the fact that the client took part; and the ``loss`` returned
here, which is computed from the data without noise and must not be released if the
guarantee is to hold. ``secure_mode=False``: the noise comes from torch's seeded
pseudo-random generator (reproducible, but not a cryptographic source, and floating-point
attacks on the Gaussian sampler are not mitigated).

Determinism: the Poisson batches and the noise come from two ``torch.Generator`` seeded
from ``seed`` (via ``numpy.random.SeedSequence``); any other torch randomness (dropout) from
``torch.manual_seed(seed)`` inside ``torch.random.fork_rng``; one torch thread. The same
model, data and seed give bit-identical weights.

Opacus (the ``privacy`` extra) is imported lazily; a missing install raises a one-line
:class:`~fedrec.errors.ConfigError`.

References
----------
.. [1] Abadi, M. et al. "Deep Learning with Differential Privacy", CCS 2016.
.. [2] Yousefpour, A. et al. "Opacus: User-Friendly Differential Privacy Library in
    PyTorch", 2021.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.errors import ConfigError
from fedrec.training import OPTIMIZERS, TrainResult, single_thread

__all__ = ["MISSING_OPACUS", "DPTrainResult", "dp_sgd_train"]

MISSING_OPACUS = (
    "DP-SGD needs the 'privacy' extra: pip install 'fedrec[privacy]' (opacus, dp-accounting)"
)


@dataclass
class DPTrainResult(TrainResult):
    """A :class:`fedrec.training.TrainResult` plus the privacy of the call.

    ``loss`` is the mean cross-entropy over the examples drawn in the last epoch (train
    mode, before each step); it is *not* private. ``epsilon`` is Opacus's RDP ε at
    ``delta`` after ``steps`` sampled Gaussian steps with ``sample_rate`` and
    ``noise_multiplier`` (0.0 when nothing was trained, inf when ``noise_multiplier == 0``).
    """

    epsilon: float
    delta: float
    sample_rate: float
    noise_multiplier: float
    max_grad_norm: float


def _opacus() -> Any:
    try:
        import opacus
    except ImportError as exc:
        raise ConfigError(MISSING_OPACUS) from exc
    return opacus


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise ConfigError(
            f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}"
        )
    return x


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """``torch.manual_seed(seed)`` (and the model's CUDA device) inside ``fork_rng``."""
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def _generator(seed: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


def dp_sgd_train(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    noise_multiplier: float,
    max_grad_norm: float,
    delta: float,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
) -> DPTrainResult:
    """Train ``model`` in place with DP-SGD (Opacus) on cross-entropy; see the module
    docstring for the mechanism and what it protects.

    Parameters
    ----------
    model : nn.Module
        A classifier ``(n, d) -> (n, C)`` logits whose layers Opacus supports (no
        BatchNorm); trained in place, returned unwrapped (Opacus's hooks removed).
    X, y : arrays (n, d) and (n,)
        Features and integer labels in ``[0, C)``.
    epochs : int
        ``>= 0``; each is ``ceil(n / batch_size)`` Poisson-sampled steps.
    batch_size : int
        ``>= 1``: the *expected* batch size (``q = 1 / ceil(n / batch_size)``).
    lr, weight_decay, optimizer
        As :func:`fedrec.training.train_classifier` (``"sgd"`` or ``"adam"``).
    seed : int
        ``>= 0``.
    noise_multiplier : float
        ``z >= 0``: noise std over ``max_grad_norm`` (0: clipping only, ε = inf).
    max_grad_norm : float
        ``> 0``: the per-example clip norm.
    delta : float
        In ``(0, 1)``: the δ of the reported ε (e.g. below ``1 / n``).
    """
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2:
        raise ConfigError(f"X must be a 2-D array (n, d), got shape {X.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ConfigError(
            f"y must be a 1-D array with one label per row of X ({X.shape[0]}), got shape {y.shape}"
        )
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise ConfigError("y must hold integer class labels")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ConfigError(f"y must hold class labels >= 0, got {int(y.min())}")
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    seed = _check_int("seed", seed, 0)
    lr = _check_float("lr", lr, positive=True)
    weight_decay = _check_float("weight_decay", weight_decay, positive=False)
    z = _check_float("noise_multiplier", noise_multiplier, positive=False)
    clip = _check_float("max_grad_norm", max_grad_norm, positive=True)
    delta = _check_float("delta", delta, positive=True)
    if delta >= 1:
        raise ConfigError(f"delta must be a number in (0, 1), got {delta!r}")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    opacus = _opacus()

    n = X.shape[0]
    steps_per_epoch = math.ceil(n / batch_size) if n else 0
    sample_rate = 1.0 / steps_per_epoch if steps_per_epoch else 0.0

    def result(loss: float, steps: int, eps: float) -> DPTrainResult:
        return DPTrainResult(loss, n, steps, eps, delta, sample_rate, z, clip)

    if n == 0:
        return result(float("nan"), 0, 0.0)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    was_training = model.training

    with single_thread(), _seeded(seed, device):
        if epochs == 0:
            try:
                model.eval()
                with torch.no_grad():
                    logits = model(Xt)
                    _check_labels(y, logits)
                    return result(float(F.cross_entropy(logits, yt)), 0, 0.0)
            finally:
                model.train(was_training)

        sample_seed, noise_seed = np.random.SeedSequence(seed).generate_state(2)
        params = [p for p in model.parameters() if p.requires_grad]
        base_opt: torch.optim.Optimizer
        if optimizer == "sgd":
            base_opt = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        else:
            base_opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(Xt, yt),
            batch_size=batch_size,
            generator=_generator(int(sample_seed), torch.device("cpu")),
        )
        with warnings.catch_warnings():
            # Opacus's reminder that secure_mode is off (a documented choice) and torch's
            # note on full backward hooks of a first layer whose input needs no gradient.
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG turned off.*")
            warnings.filterwarnings("ignore", message=".*[Ff]ull backward hook is firing.*")
            engine = opacus.PrivacyEngine(accountant="rdp", secure_mode=False)
            try:
                gsm, dp_opt, dp_loader = engine.make_private(
                    module=model,
                    optimizer=base_opt,
                    data_loader=loader,
                    noise_multiplier=z,
                    max_grad_norm=clip,
                    poisson_sampling=True,
                    noise_generator=_generator(int(noise_seed), device),
                )
            except opacus.validators.errors.UnsupportedModuleError as exc:
                raise ConfigError(f"Opacus cannot train this model with DP-SGD: {exc}") from exc
            try:
                steps, epoch_loss = _run_epochs(gsm, dp_opt, dp_loader, y, epochs)
                eps = float(engine.get_epsilon(delta)) if z > 0 else math.inf
            finally:
                gsm._close()  # remove Opacus's hooks and per-sample attributes from `model`
                model.train(was_training)
    return result(epoch_loss, steps, eps)


def _run_epochs(
    gsm: nn.Module, dp_opt: Any, dp_loader: Any, y: np.ndarray, epochs: int
) -> tuple[int, float]:
    """The DP-SGD loop; returns (steps, mean loss over the last epoch's drawn examples)."""
    gsm.train()
    steps, checked = 0, False
    epoch_loss = float("nan")
    for _ in range(epochs):
        total, count = 0.0, 0
        for xb, yb in dp_loader:
            dp_opt.zero_grad()
            logits = gsm(xb)
            if len(yb):
                if not checked:
                    _check_labels(y, logits)
                    checked = True
                loss = F.cross_entropy(logits, yb)
                total += float(loss.detach()) * len(yb)
                count += len(yb)
            else:  # an empty Poisson batch: a step of pure noise (still accounted)
                loss = logits.sum() * 0.0
            loss.backward()
            dp_opt.step()
            steps += 1
        epoch_loss = total / count if count else float("nan")
    return steps, epoch_loss


def _check_labels(y: np.ndarray, logits: torch.Tensor) -> None:
    num_classes = logits.shape[1]
    if y.size and y.max() >= num_classes:
        raise ConfigError(
            f"label {int(y.max())} out of range for a model with {num_classes} classes "
            f"(0..{num_classes - 1})"
        )
