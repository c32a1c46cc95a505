"""Local training and prediction for the classifiers in :mod:`fedrec.models` (pure torch).

Determinism: :func:`train_classifier` and :func:`predict_proba` run with
``torch.set_num_threads(1)`` (the previous value is restored afterwards) so results do
not depend on the process' thread count. Minibatch order comes from
``np.random.default_rng(seed)`` (a fresh permutation per epoch) and any torch
randomness (dropout) from ``torch.manual_seed(seed)`` inside
:func:`torch.random.fork_rng`, so the caller's global RNG state is untouched and the
same model, data and seed give bit-identical weights.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.errors import ConfigError
from fedrec.optim import TorchAdam, TorchSGD

__all__ = ["OPTIMIZERS", "TrainResult", "predict_proba", "single_thread", "train_classifier"]

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """Outcome of one call to :func:`train_classifier`.

    ``loss`` is the mean per-example (weighted) cross-entropy over the **last** epoch,
    measured on the minibatches as they were trained (train mode, before each step) and
    excluding the proximal term. With ``epochs=0`` it is the loss of the unchanged model
    in eval mode. It is ``nan`` when there are no examples.
    """

    loss: float
    num_examples: int
    steps: int


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(1)``; restore the previous value afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for ``device`` (and the CPU) inside ``fork_rng``: nothing leaks out."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _as_features(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ConfigError(f"X must be a 2-D array (n, d), got shape {X.shape}")
    return np.ascontiguousarray(X)


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def _global_params(
    model: nn.Module, global_weights: list[np.ndarray] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """Anchor tensors for the FedProx term, keyed by parameter name."""
    if global_weights is None:
        return {name: p.detach().clone() for name, p in model.named_parameters()}
    state = model.state_dict()
    if len(global_weights) != len(state):
        raise ValueError(
            f"global_weights: expected {len(state)} arrays ({', '.join(state)}), "
            f"got {len(global_weights)}"
        )
    by_key = dict(zip(state.keys(), global_weights))
    anchors: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        array = np.asarray(by_key[name])
        if tuple(array.shape) != tuple(p.shape):
            raise ValueError(
                f"global_weights: shape mismatch for tensor {name!r}: model has {tuple(p.shape)}, "
                f"got {tuple(array.shape)}"
            )
        anchors[name] = torch.as_tensor(np.ascontiguousarray(array)).to(
            device=device, dtype=p.dtype
        )
    return anchors


def _weighted_ce(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> torch.Tensor:
    if weight is None:
        return F.cross_entropy(logits, target)
    return (F.cross_entropy(logits, target, reduction="none") * weight).mean()


def train_classifier(
    model: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    optimizer: str = "sgd",
    weight_decay: float = 0.0,
    sample_weight: np.ndarray | None = None,
    proximal_mu: float = 0.0,
    global_weights: list[np.ndarray] | None = None,
    soft_targets: np.ndarray | None = None,
) -> TrainResult:
    """Train ``model`` in place with minibatch SGD or Adam on (weighted) cross-entropy.

    - ``y`` holds integer class labels in ``[0, num_classes)``.
    - ``optimizer``: ``"sgd"`` (plain SGD, no momentum) or ``"adam"`` (betas 0.9/0.999,
      eps 1e-8): :class:`fedrec.optim.TorchSGD` / :class:`fedrec.optim.TorchAdam`, the update
      formulas of ``torch.optim.SGD`` / ``torch.optim.Adam`` with default settings. Fresh
      optimizer state per call. ``weight_decay`` is a coupled
      L2 penalty (added to the gradient, as in torch).
    - ``sample_weight`` (non-negative, length n): the minibatch objective is
      ``sum_i w_i * ce_i / batch_len`` (like sklearn's ``sample_weight``: weights are not
      renormalised, so their scale matters).
    - FedProx: when ``proximal_mu > 0`` the term ``(mu/2) * sum ||w - w_global||^2`` over
      all parameters is added to every minibatch objective. ``global_weights`` is a list
      in ``state_dict`` order (as from :func:`fedrec.models.get_weights`); when omitted,
      the model's weights at the start of this call are the anchor (the usual FedProx
      setting, where the client starts from the global model).
    - ``soft_targets`` (n, C), optional: the per-example loss becomes the soft-target
      cross-entropy ``-sum_j t_ij log softmax(logits_i)_j`` (cost-sensitive learning, e.g.
      FedFACT's rows of the calibration matrix); ``y`` is then only used for checks.
    - The last minibatch of an epoch may be smaller than ``batch_size`` (not dropped).
    - The model's train/eval mode is restored on return.
    """
    X = _as_features(X)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise ConfigError(
            f"y must be a 1-D array with one label per row of X ({X.shape[0]}), got shape {y.shape}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ConfigError("y must hold integer class labels")
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ConfigError(f"y must hold class labels >= 0, got {int(y.min())}")
    epochs = _check_int("epochs", epochs, 0)
    batch_size = _check_int("batch_size", batch_size, 1)
    lr = _check_float("lr", lr, positive=True)
    weight_decay = _check_float("weight_decay", weight_decay, positive=False)
    proximal_mu = _check_float("proximal_mu", proximal_mu, positive=False)
    seed = _check_int("seed", seed, 0)
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    w_np: np.ndarray | None = None
    if sample_weight is not None:
        w_np = np.asarray(sample_weight, dtype=np.float32)
        if w_np.shape != (X.shape[0],):
            raise ConfigError(f"sample_weight must have shape ({X.shape[0]},), got {w_np.shape}")
        if not np.all(np.isfinite(w_np)) or (w_np.size and w_np.min() < 0):
            raise ConfigError("sample_weight must be finite and non-negative")

    n = X.shape[0]
    t_np: np.ndarray | None = None
    if soft_targets is not None:
        t_np = np.asarray(soft_targets, dtype=np.float32)
        if t_np.ndim != 2 or t_np.shape[0] != n or not np.all(np.isfinite(t_np)):
            raise ConfigError(
                f"soft_targets must be a finite (n={n}, C) array, got shape {t_np.shape}"
            )
    if n == 0:
        return TrainResult(loss=float("nan"), num_examples=0, steps=0)

    device = _model_device(model)
    Xt = torch.from_numpy(X).to(device)
    yt = torch.from_numpy(y).to(device)
    wt = torch.from_numpy(w_np).to(device) if w_np is not None else None
    tt = torch.from_numpy(t_np).to(device) if t_np is not None else None

    def loss_of(logits: torch.Tensor, rows) -> torch.Tensor:
        w = None if wt is None else wt[rows]
        if tt is None:
            return _weighted_ce(logits, yt[rows], w)
        per = -(tt[rows] * torch.log_softmax(logits, dim=1)).sum(dim=1)
        return (per * w).sum() / per.shape[0] if w is not None else per.mean()

    was_training = model.training
    rng = np.random.default_rng(seed)
    steps = 0

    with single_thread(), _seeded_rng(seed, device):
        try:
            if epochs == 0:
                model.eval()
                with torch.no_grad():
                    total = 0.0
                    for start in range(0, n, batch_size):
                        sl = slice(start, start + batch_size)
                        logits = model(Xt[sl])
                        _check_labels(y, logits)
                        bl = loss_of(logits, sl)
                        total += float(bl) * (min(n, start + batch_size) - start)
                return TrainResult(loss=total / n, num_examples=n, steps=0)

            params: list[torch.Tensor] = [p for p in model.parameters() if p.requires_grad]
            opt = (TorchSGD if optimizer == "sgd" else TorchAdam)(params, lr, weight_decay)
            anchors = _global_params(model, global_weights, device) if proximal_mu > 0 else {}
            named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]

            model.train()
            checked = False
            epoch_loss = float("nan")
            for _ in range(epochs):
                perm = torch.from_numpy(rng.permutation(n)).to(device)
                total = 0.0
                for start in range(0, n, batch_size):
                    idx = perm[start : start + batch_size]
                    logits = model(Xt[idx])
                    if not checked:
                        _check_labels(y, logits)
                        checked = True
                    data_loss = loss_of(logits, idx)
                    objective = data_loss
                    if proximal_mu > 0:
                        prox = sum(((p - anchors[name]) ** 2).sum() for name, p in named)
                        objective = objective + (proximal_mu / 2.0) * prox
                    opt.zero_grad()
                    objective.backward()
                    opt.step()
                    steps += 1
                    total += float(data_loss.detach()) * idx.shape[0]
                epoch_loss = total / n
            return TrainResult(loss=epoch_loss, num_examples=n, steps=steps)
        finally:
            model.train(was_training)


def _check_labels(y: np.ndarray, logits: torch.Tensor) -> None:
    num_classes = logits.shape[1]
    if y.size and y.max() >= num_classes:
        raise ConfigError(
            f"label {int(y.max())} out of range for a model with {num_classes} classes "
            f"(0..{num_classes - 1})"
        )


def predict_proba(model: nn.Module, X: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Class probabilities ``(n, C)`` as float64 (softmax of the logits, computed in float64).

    Runs in eval mode under ``torch.no_grad()`` with one torch thread; the model's
    train/eval mode is restored on return.
    """
    X = _as_features(X)
    batch_size = _check_int("batch_size", batch_size, 1)
    device = _model_device(model)
    was_training = model.training
    chunks: list[np.ndarray] = []
    with single_thread():
        try:
            model.eval()
            with torch.no_grad():
                if X.shape[0] == 0:
                    logits = model(torch.from_numpy(X).to(device))
                    return np.zeros((0, logits.shape[1]), dtype=np.float64)
                for start in range(0, X.shape[0], batch_size):
                    logits = model(torch.from_numpy(X[start : start + batch_size]).to(device))
                    chunks.append(torch.softmax(logits.double(), dim=1).cpu().numpy())
        finally:
            model.train(was_training)
    return np.concatenate(chunks, axis=0)
