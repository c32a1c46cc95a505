"""Language-model unlearning: GA, GradDiff and NPO, MRD-weighted sampling, steps-to-forget.

The inner loop of issue 12's methods, on a :class:`fedrec.models.causal_lm.CausalLM` and
question-answer data encoded by :func:`fedrec.models.causal_lm.encode_qa` (``ids``, and a
``mask`` over the answer tokens and ``<eos>``). Pure torch, no flwr: the federated halves
(:mod:`clients.fedlm`, :mod:`fedrec.unlearning.methods`) and the experiments call these.

Per-sample forget losses (minimised; ``lp = -sequence_nll``, the **mean** log-probability
of the answer tokens, so answers of different lengths weigh the same; a choice of fedrec):

- ``ga`` (gradient ascent): ``l = lp``; minimising it pushes the answer's likelihood down;
- ``graddiff``: ``ga`` plus ``alpha`` times the mean NLL of a retain batch (descent on what
  is kept);
- ``npo`` (Zhang et al. 2024, negative preference optimisation):
  ``l = (2 / beta) * log(1 + exp(beta * (lp - lp_ref)))``, ``lp_ref`` the log-probability
  under the model before unlearning. Its gradient is GA's scaled by
  ``2 sigmoid(beta (lp - lp_ref))``, which vanishes once a sample is forgotten: NPO slows
  down on its own instead of diverging.

A forget batch is a weighted mean over samples. :func:`unlearn` draws batches either
**uniformly** or **MRD-weighted** (the paper's easy-first curriculum):
``P(i) ∝ exp(-rank(MRD_i) / tau_s)`` with ``tau_s`` annealed geometrically from ``tau0``
to ``tau_end`` (:func:`fedrec.algorithms.mrd.easy_first_probs`, :func:`annealed_tau`).
Batches are drawn without replacement within a batch, seeded by ``(seed, step)``. U2A's
sample weights enter through ``weights`` (a weighted mean instead of a draw).

:func:`steps_to_forget` is MRD's validation target: for each sample alone, the number of
plain gradient-ascent steps (SGD, ``lr``) from the trained model until the sample is
forgotten — its greedy answer no longer matches (:func:`teacher_forced_match`) **or** its
NLL exceeds ``nll_threshold`` (the holdout mean NLL, reference notes §4.6).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fedrec.algorithms.mrd import annealed_tau, easy_first_probs, mrd_scores
from fedrec.models.causal_lm import sequence_nll, teacher_forced_match
from fedrec.seeding import derive_seed

__all__ = [
    "LOSSES",
    "SAMPLINGS",
    "UnlearnResult",
    "answer_logprob",
    "forget_losses",
    "objective",
    "qa_mrd",
    "steps_to_forget",
    "unlearn",
]

LOSSES = ("ga", "graddiff", "npo")
SAMPLINGS = ("uniform", "mrd")


def answer_logprob(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean log-probability of the masked (answer) tokens per sequence: ``(B,)``."""
    return -sequence_nll(model, ids, mask)


def _check(kind: str) -> None:
    if kind not in LOSSES:
        raise ValueError(f"unknown unlearning loss {kind!r}; allowed: {', '.join(LOSSES)}")


def forget_losses(
    kind: str,
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ref_lp: torch.Tensor | None = None,
    beta: float = 0.1,
) -> torch.Tensor:
    """Per-sample forget loss ``(B,)`` of ``kind`` (module docstring); ``npo`` needs
    ``ref_lp``, the samples' :func:`answer_logprob` under the reference model."""
    _check(kind)
    lp = answer_logprob(model, ids, mask)
    if kind == "npo":
        if ref_lp is None:
            raise ValueError("npo needs ref_lp (the reference model's answer log-probabilities)")
        return (2.0 / beta) * torch.nn.functional.softplus(beta * (lp - ref_lp))
    return lp


def objective(
    kind: str,
    model: nn.Module,
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    f_weights: torch.Tensor | None = None,
    r_ids: torch.Tensor | None = None,
    r_mask: torch.Tensor | None = None,
    ref_lp: torch.Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
) -> torch.Tensor:
    """The scalar minimised by one unlearning step: the (weighted) mean forget loss, plus
    ``alpha`` times the retain NLL for ``graddiff``."""
    fl = forget_losses(kind, model, f_ids, f_mask, ref_lp, beta)
    if f_weights is None:
        loss = fl.mean()
    else:
        w = f_weights.to(fl.dtype)
        loss = (w * fl).sum() / w.sum().clamp_min(1e-12)
    if kind == "graddiff":
        if r_ids is None or r_mask is None or len(r_ids) == 0:
            raise ValueError("graddiff needs a retain batch (r_ids, r_mask)")
        loss = loss + alpha * sequence_nll(model, r_ids, r_mask).mean()
    return loss


def qa_mrd(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    K: int = 16,
    sigma: float = 1e-2,
    seed: int = 0,
    antithetic: bool = False,
    chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mrd, fragility)`` of question-answer samples (:func:`fedrec.algorithms.mrd.
    mrd_scores` on the answer NLL), in chunks of ``chunk`` samples (same perturbations)."""
    from torch.func import functional_call

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(p):
        return torch.cat(
            [
                sequence_nll(
                    lambda t: functional_call(model, p, (t,)),
                    ids[a : a + chunk],
                    mask[a : a + chunk],
                )
                for a in range(0, len(ids), chunk)
            ]
        )

    was = model.training
    model.eval()
    try:
        return mrd_scores(loss_fn, params, K=K, sigma=sigma, seed=seed, antithetic=antithetic)
    finally:
        model.train(was)


@dataclass
class UnlearnResult:
    steps: int
    losses: list[float]  # the objective at every step


def sampling_probs(
    n: int,
    step: int,
    steps: int,
    sampling: str,
    mrd: torch.Tensor | None,
    tau0: float,
    tau_end: float,
) -> torch.Tensor:
    """The forget-sample distribution at ``step`` of ``steps`` (module docstring)."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"unknown sampling {sampling!r}; allowed: {', '.join(SAMPLINGS)}")
    if sampling == "uniform":
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    if mrd is None or len(mrd) != n:
        raise ValueError("mrd sampling needs one MRD score per forget sample")
    return easy_first_probs(mrd, annealed_tau(step, steps, tau0, tau_end))


def unlearn(
    model: nn.Module,
    f_ids: torch.Tensor,
    f_mask: torch.Tensor,
    kind: str = "ga",
    steps: int = 20,
    batch_size: int = 16,
    lr: float = 1e-3,
    sampling: str = "uniform",
    mrd: torch.Tensor | None = None,
    tau0: float = 0.1,
    tau_end: float = 10.0,
    weights: torch.Tensor | None = None,
    r_ids: torch.Tensor | None = None,
    r_mask: torch.Tensor | None = None,
    ref_lp: torch.Tensor | None = None,
    beta: float = 0.1,
    alpha: float = 1.0,
    seed: int = 0,
    optimizer: str = "adam",
    step_offset: int = 0,
    total_steps: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> UnlearnResult:
    """``steps`` unlearning steps on ``model`` in place (module docstring).

    Each step draws ``batch_size`` forget samples (``sampling``; all of them with their
    ``weights`` when ``weights`` is given) and, for ``graddiff``, ``batch_size`` retain
    samples uniformly. ``step_offset`` / ``total_steps`` place these steps in a longer
    schedule (the temperature anneals over ``total_steps``; seeds use the global step), so
    a federation's rounds continue one curriculum. ``optimizer`` is ``adam`` (fresh moments
    per call) or ``sgd``. ``on_step(global_step)`` runs after every step (evaluation)."""
    _check(kind)
    n = len(f_ids)
    if n == 0:
        return UnlearnResult(0, [])
    if kind == "npo" and ref_lp is None:
        with torch.no_grad():
            ref_lp = answer_logprob(model, f_ids, f_mask)
    total = total_steps if total_steps is not None else step_offset + steps
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: adam, sgd")
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = opt_cls(model.parameters(), lr=lr)
    losses: list[float] = []
    model.train()
    for s in range(step_offset, step_offset + steps):
        g = torch.Generator().manual_seed(derive_seed(seed, "unlearn", s) % 2**63)
        if weights is not None:
            idx = torch.arange(n)
            w = torch.as_tensor(weights, dtype=torch.float32)
        else:
            p = sampling_probs(n, s, total, sampling, mrd, tau0, tau_end)
            idx = torch.multinomial(p, min(batch_size, n), replacement=False, generator=g)
            w = None
        rb = None
        if kind == "graddiff":
            if r_ids is None or r_mask is None or len(r_ids) == 0:
                raise ValueError("graddiff needs retain samples (r_ids, r_mask)")
            rb = torch.randperm(len(r_ids), generator=g)[:batch_size]
        loss = objective(
            kind,
            model,
            f_ids[idx],
            f_mask[idx],
            w,
            r_ids[rb] if rb is not None and r_ids is not None else None,
            r_mask[rb] if rb is not None and r_mask is not None else None,
            ref_lp[idx] if ref_lp is not None else None,
            beta,
            alpha,
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            model.eval()
            on_step(s + 1)
            model.train()
    model.eval()
    return UnlearnResult(steps, losses)


def steps_to_forget(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    nll_threshold: float,
    lr: float = 1e-2,
    max_steps: int = 200,
) -> torch.Tensor:
    """Per sample: plain GA steps (SGD on ``-NLL`` of that sample alone, from ``model``'s
    weights) until it is forgotten (module docstring); ``max_steps + 1`` if never."""
    out = torch.full((len(ids),), max_steps + 1, dtype=torch.long)
    for i in range(len(ids)):
        m = copy.deepcopy(model)
        m.eval()  # no dropout; the model has none, but keep evaluation semantics
        opt = torch.optim.SGD(m.parameters(), lr=lr)
        x, mk = ids[i : i + 1], mask[i : i + 1]
        for s in range(max_steps + 1):
            with torch.no_grad():
                nll = float(sequence_nll(m, x, mk)[0])
                if nll > nll_threshold or not bool(teacher_forced_match(m, x, mk)[0]):
                    out[i] = s
                    break
            if s == max_steps:
                break
            loss = -sequence_nll(m, x, mk).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return out
