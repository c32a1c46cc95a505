"""Unlearning to Align (U2A, arXiv 2504.06659; issue 12): the pure math.

**What the paper says** (Feng et al. 2025, "Bridging the Gap Between Preference Alignment
and Machine Unlearning"). Preference alignment (PA) can be reached by *unlearning negative
examples* (a prompt with a bad response) instead of training on costly positive preference
data. The effect of unlearning a negative on the alignment objective is quantified by
**bi-level optimisation**: the inner problem unlearns negatives with sample weights ``w``,
the outer problem maximises a PA objective ``J`` on a validation set; the hyper-gradient
``dJ/dw_i`` is given by the implicit-function theorem. Not every negative helps (some
hurt), so U2A **selects** a sparse subset of negatives and **weights** them to maximise
``J``, and unlearns with those weights.

**Notation.** ``theta`` the model parameters; ``x_i`` = (prompt, bad response) the
candidate negatives; ``l_u(x_i; theta)`` the per-sample unlearning loss (minimised:
:func:`fedrec.algorithms.lm_unlearning.forget_losses`); ``J(theta)`` the alignment
objective on the validation preferences (maximised). With ``theta*(w)`` the minimiser of
the inner objective ``L(theta, w) = sum_i w_i l_u(x_i; theta) + R(theta)``, the
implicit-function theorem gives

    g_i = dJ(theta*(w)) / dw_i = -grad J^T H^{-1} grad l_u(x_i),   H = d^2 L / d theta^2.

- **Preconditioned score**: ``v = H^{-1} grad J`` by conjugate gradients
  (:func:`cg_solve`) with exact Hessian-vector products (:func:`hvp`, forward-over-reverse
  ``torch.func``, as :func:`fedrec.algorithms.mrd.hessian_trace`), then
  ``g_i = -<v, grad l_u(x_i)>`` (:func:`preconditioned_direction`,
  :func:`alignment_scores`). Which Hessian ``H`` is used is the caller's choice
  (``curvature_fn``): e.g. the mean retain NLL (the part of the inner objective that does
  not depend on the weights), whose curvature is the one unlearning must respect.
- **Cheap score** (``H ~ I``): ``g_i = -<grad J, grad l_u(x_i)>``, the first-order change
  of ``J`` per unit learning rate of one descent step on ``l_u(x_i)``:
  ``J(theta - lr grad l_u(x_i)) - J(theta) = lr g_i + O(lr^2)`` (tested by finite
  differences). **Positive ``g_i``: unlearning ``x_i`` raises ``J``.**

**What is reconstructed here** (the paper's exact algorithmic details are not all public;
these are the choices of fedrec):

- ``J`` (:func:`preference_margin`) is the mean DPO-style log-ratio margin over the
  validation pairs: ``mean(lp(chosen) - lp(rejected))``, ``lp`` the **mean per-token**
  answer log-probability (:func:`fedrec.algorithms.lm_unlearning.answer_logprob`, as the
  unlearning losses use). A fixed DPO reference model would add the constant
  ``-(lp_ref(chosen) - lp_ref(rejected))``, which changes neither the gradient nor any
  score, so it is left out. (A DPO *loss* ``-log sigmoid(beta * margin)`` would reweight the
  pairs; the plain margin keeps ``J`` linear in the per-pair margins.)
- The per-sample unlearning loss is ``forget_losses(kind, ...)`` for one sample; for
  ``graddiff`` it is the GA term only (the retain term does not depend on the sample).
- :func:`cg_solve`: plain conjugate gradients on ``(H + damping I) x = b`` from ``x0 = 0``;
  stops when the residual norm is ``<= tol * ||b||`` (**relative** tolerance) or after
  ``iters`` iterations. The Hessian of a language model's loss is not positive definite
  in general: when a search direction ``p`` has ``p^T (H + damping I) p <= 0`` CG stops and
  returns the current iterate (the truncated-Newton rule of Nocedal & Wright, Alg. 7.1); if
  that happens at the **first** iteration, where the iterate is still zero, ``b`` itself is
  returned (the ``H ~ I`` fallback of the same algorithm, so that the scores degrade to the
  cheap ones instead of vanishing). ``info`` reports it (``stopped_on_negative_curvature``).
  The residual norm reported is CG's recursive residual.
- **Selection** (:func:`greedy_select`): greedy — add the sample of largest positive gain
  until the budget ``m`` is reached or no gain is positive. With fixed scores the
  first-order gains are additive, so greedy is the top-``m`` positive scores (ties to the
  lower index: deterministic). Re-scoring after each addition (a full bi-level greedy) is
  the caller's loop.
- **Weights** (:func:`mirror_descent`): exponentiated-gradient (mirror) ascent on the
  simplex over the selected set, ``w_i <- w_i exp(eta ĝ_i) / sum_j w_j exp(eta ĝ_j)``. The
  scores are normalised, ``ĝ_i = g_i / max_{j in selected} |g_j|``, so that ``eta`` is
  scale-free (raw scores span orders of magnitude between models and objectives). The
  start is uniform over the selected set, or the previous weights restricted to it with
  newly selected samples given the uniform share ``1 / |selected|`` and renormalised.
  Weights outside the selected set are exactly zero (sparse). With fixed scores ``steps``
  updates equal one update with ``eta * steps``; in a full loop the scores are recomputed
  between calls and ``weights_prev`` carries the state.
- **Judge** (:func:`judge`, report metrics only, not differentiable): rule-based over the
  fact world (:func:`fedrec.data.factworld.make_assistant_corpus`), on lower-cased
  whitespace words:

  1. ``-1`` if the response contains a :data:`~fedrec.data.factworld.BANNED` word;
  2. else ``0`` if the response is exactly the refusal
     :data:`~fedrec.data.factworld.REFUSAL` (word for word);
  3. else ``+1`` if the response contains the fact's value (as whole words);
  4. else ``-1`` (it states something else: a wrong value, or nothing).

  :func:`win_rate` counts a prompt as won when the judge scores the response above the
  base model's, as half a win on a tie; :func:`banned_rate` is the share of responses with
  a banned word.

Pure torch (and the fact world's constants); no flwr import.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from fedrec.algorithms.lm_unlearning import LOSSES, answer_logprob, forget_losses
from fedrec.data.factworld import BANNED, REFUSAL, Preference
from fedrec.models.causal_lm import WordTokenizer, encode_qa, greedy_batch

__all__ = [
    "alignment_scores",
    "banned_rate",
    "cg_solve",
    "dpo_loss",
    "encode_preferences",
    "flatten",
    "generate_answers",
    "greedy_select",
    "hvp",
    "judge",
    "mirror_descent",
    "negative_grads",
    "objective_grad",
    "preconditioned_direction",
    "preference_margin",
    "score_negatives",
    "unflatten",
    "win_rate",
]

Params = dict[str, torch.Tensor]


# ------------------------------------------------------------------ flat parameter vectors
def flatten(tensors: Params) -> torch.Tensor:
    """Concatenate the tensors of ``tensors`` (in its name order) into one flat vector."""
    if not tensors:
        raise ValueError("tensors is empty: nothing to flatten")
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(vec: torch.Tensor, like: Params) -> Params:
    """Split the flat ``vec`` into tensors shaped like those of ``like`` (in ``like``'s name
    order; the inverse of :func:`flatten`). The pieces keep ``vec``'s dtype."""
    if vec.dim() != 1:
        raise ValueError(f"vec must be 1-D, got shape {tuple(vec.shape)}")
    sizes = [t.numel() for t in like.values()]
    if vec.numel() != sum(sizes):
        raise ValueError(
            f"vec has {vec.numel()} entries but like has {sum(sizes)} parameters in total"
        )
    pieces = torch.split(vec, sizes)
    return {k: p.view(t.shape) for (k, t), p in zip(like.items(), pieces)}


def _params(model: nn.Module) -> Params:
    return {k: v.detach() for k, v in model.named_parameters()}


# ------------------------------------------------------------------ the alignment objective
def encode_preferences(
    tok: WordTokenizer, prefs: Sequence[Preference]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(c_ids, c_mask, r_ids, r_mask)``: the (prompt, chosen) and (prompt, rejected)
    pairs of ``prefs`` encoded by :func:`encode_qa` to one common padded length."""
    if not prefs:
        raise ValueError("prefs is empty: no preference pairs to encode")
    length = max(
        len(tok.encode(p.prompt, bos=True)) + len(tok.encode(a, eos=True))
        for p in prefs
        for a in (p.chosen, p.rejected)
    )
    c_ids, c_mask = encode_qa(tok, [(p.prompt, p.chosen) for p in prefs], length)
    r_ids, r_mask = encode_qa(tok, [(p.prompt, p.rejected) for p in prefs], length)
    return c_ids, c_mask, r_ids, r_mask


def preference_margin(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    chosen_ids: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_ids: torch.Tensor,
    rejected_mask: torch.Tensor,
) -> torch.Tensor:
    """``J``: the mean over pairs of ``answer_logprob(chosen) - answer_logprob(rejected)``
    (mean per-token log-probabilities; module docstring), a scalar. ``model`` may be a
    module or any callable ``ids -> logits`` (e.g. a ``functional_call`` closure)."""
    if chosen_ids.shape[0] != rejected_ids.shape[0] or chosen_ids.shape[0] == 0:
        raise ValueError(
            f"chosen_ids and rejected_ids must hold the same, non-zero number of pairs; got "
            f"{chosen_ids.shape[0]} and {rejected_ids.shape[0]}"
        )
    lp_c = answer_logprob(model, chosen_ids, chosen_mask)  # type: ignore[arg-type]
    lp_r = answer_logprob(model, rejected_ids, rejected_mask)  # type: ignore[arg-type]
    return (lp_c - lp_r).mean()


# ------------------------------------------------------------------ gradients and curvature
def objective_grad(model: nn.Module, fn: Callable[[nn.Module], torch.Tensor]) -> Params:
    """The gradient of the scalar ``fn(model)`` w.r.t. every named parameter of ``model``,
    detached (parameters ``fn`` does not use get zeros)."""
    names, tensors = zip(*model.named_parameters())
    out = fn(model)
    if out.dim() != 0:
        raise ValueError(f"fn must return a scalar, got shape {tuple(out.shape)}")
    grads = torch.autograd.grad(out, tensors, allow_unused=True)
    return {
        n: (torch.zeros_like(t) if g is None else g).detach()
        for n, t, g in zip(names, tensors, grads)
    }


def hvp(
    model: nn.Module | None,
    loss_fn_of_params: Callable[[Params], torch.Tensor],
    params: Params,
    v: Params,
) -> Params:
    """The exact Hessian-vector product ``H v`` of the scalar ``loss_fn_of_params`` at
    ``params`` (forward-over-reverse: ``jvp`` of ``torch.func.grad``). ``model``, when
    given, is the module ``params`` belong to; only its parameter names are checked."""
    from torch.func import grad, jvp

    if model is not None:
        names = [k for k, _ in model.named_parameters()]
        if list(params) != names:
            raise ValueError("params must hold model's named parameters, in the same order")
    if list(v) != list(params):
        raise ValueError(f"v must have the keys of params in order; got {list(v)[:3]}...")
    return jvp(grad(loss_fn_of_params), (params,), (v,))[1]


def cg_solve(
    hvp_fn: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int = 10,
    damping: float = 1e-2,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, dict[str, float | int | bool]]:
    """Conjugate gradients on ``(H + damping I) x = b`` with flat vectors; ``hvp_fn(p)``
    returns ``H p``. Returns ``(x, info)`` with ``info`` = ``iterations`` (the number of
    Hessian-vector products), ``residual_norm`` (of the damped system, CG's recursion) and
    ``stopped_on_negative_curvature`` (module docstring: on ``p^T (H + damping I) p <= 0``
    the current iterate is returned, ``b`` at the first iteration)."""
    if b.dim() != 1:
        raise ValueError(f"b must be a flat (1-D) vector, got shape {tuple(b.shape)}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = torch.dot(r, r)
    b_norm = float(rs.sqrt())
    negative = False
    k = 0
    while k < iters and float(rs.sqrt()) > tol * b_norm:
        Ap = hvp_fn(p) + damping * p
        pAp = torch.dot(p, Ap)
        k += 1
        if not float(pAp) > 0:  # non-positive curvature (or NaN): stop
            negative = True
            if k == 1:
                x = b.clone()
            break
        alpha = rs / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = torch.dot(r, r)
        p = r + (rs_new / rs) * p
        rs = rs_new
    info: dict[str, float | int | bool] = {
        "iterations": k,
        "residual_norm": float(rs.sqrt()),
        "stopped_on_negative_curvature": negative,
    }
    return x, info


def preconditioned_direction(
    model: nn.Module,
    grad_J: Params,
    curvature_fn: Callable[[Params], torch.Tensor],
    iters: int = 10,
    damping: float = 1e-2,
    tol: float = 1e-6,
) -> Params:
    """``(H + damping I)^{-1} grad J`` by :func:`cg_solve`, ``H`` the Hessian of the scalar
    ``curvature_fn(params)`` at ``model``'s parameters (exact :func:`hvp`). Feed the result
    to :func:`alignment_scores` as ``v`` for the implicit-gradient scores."""
    params = _params(model)
    if list(grad_J) != list(params):
        raise ValueError("grad_J must hold model's named parameters, in the same order")

    def hvp_flat(vec: torch.Tensor) -> torch.Tensor:
        return flatten(hvp(model, curvature_fn, params, unflatten(vec, params)))

    x, _ = cg_solve(hvp_flat, flatten(grad_J), iters=iters, damping=damping, tol=tol)
    return unflatten(x, params)


def negative_grads(
    model: nn.Module,
    kind: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ref_lp: torch.Tensor | None = None,
    beta: float = 0.1,
    chunk: int = 256,
) -> Params:
    """Per-sample gradients of the unlearning loss ``l_u`` (:func:`forget_losses` of
    ``kind`` for each sample alone) w.r.t. every parameter: ``name -> (B, *shape)``
    (``torch.func`` ``vmap(grad)``, ``chunk`` samples per call). ``npo`` needs ``ref_lp``
    ``(B,)``, each sample's reference answer log-probability."""
    from torch.func import functional_call, grad, vmap

    if kind not in LOSSES:
        raise ValueError(f"unknown unlearning loss {kind!r}; allowed: {', '.join(LOSSES)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    B = ids.shape[0]
    if kind == "npo":
        if ref_lp is None:
            raise ValueError("kind 'npo' needs ref_lp (the reference answer log-probabilities)")
        if ref_lp.shape != (B,):
            raise ValueError(f"ref_lp must have shape ({B},), got {tuple(ref_lp.shape)}")
    params = _params(model)

    def loss(p: Params, x: torch.Tensor, m: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        call = lambda t: functional_call(model, p, (t,))
        ref = r[None] if kind == "npo" else None
        return forget_losses(kind, call, x[None], m[None], ref, beta)[0]  # type: ignore[arg-type]

    refs = ref_lp if (kind == "npo" and ref_lp is not None) else torch.zeros(B)
    g = vmap(grad(loss), in_dims=(None, 0, 0, 0))
    parts = [
        g(params, ids[a : a + chunk], mask[a : a + chunk], refs[a : a + chunk])
        for a in range(0, B, chunk)
    ]
    return {k: torch.cat([pt[k] for pt in parts]) for k in params}


def alignment_scores(grad_J: Params, sample_grads: Params) -> torch.Tensor:
    """``g_i = -<v, grad l_u(x_i)>`` for every sample: ``(B,)`` float64. ``grad_J`` is
    ``v``: the plain ``grad J`` (cheap score, ``H ~ I``) or the preconditioned
    ``H^{-1} grad J`` (:func:`preconditioned_direction`). Positive: unlearning helps."""
    if set(grad_J) != set(sample_grads):
        missing = sorted(set(grad_J) ^ set(sample_grads))
        raise ValueError(f"grad_J and sample_grads must share parameter names; differ: {missing}")
    total: torch.Tensor | None = None
    for k, v in grad_J.items():
        sg = sample_grads[k]
        if tuple(sg.shape[1:]) != tuple(v.shape):
            raise ValueError(
                f"sample_grads[{k!r}] has shape {tuple(sg.shape)}, expected (B, *{tuple(v.shape)})"
            )
        d = (sg.flatten(1).double() * v.reshape(1, -1).double()).sum(1)
        total = d if total is None else total + d
    if total is None:
        raise ValueError("grad_J is empty")
    return -total


# ------------------------------------------------------------------ selection and weights
def greedy_select(scores: torch.Tensor, budget_m: int) -> torch.Tensor:
    """Indices of at most ``budget_m`` samples with **positive** scores, largest first, ties
    to the lower index (module docstring): an int64 tensor, possibly empty."""
    s = torch.as_tensor(scores).detach().ravel()
    if budget_m < 0:
        raise ValueError(f"budget_m must be >= 0, got {budget_m}")
    if torch.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = torch.sort(s, descending=True, stable=True).indices
    order = order[s[order] > 0]
    return order[:budget_m].to(torch.long)


def mirror_descent(
    weights_prev: torch.Tensor | None,
    scores: torch.Tensor,
    selected: torch.Tensor,
    eta: float = 1.0,
    steps: int = 1,
) -> torch.Tensor:
    """Sparse simplex weights ``(n,)`` (float64) over the ``selected`` samples by
    ``steps`` exponentiated-gradient updates with the max-abs-normalised scores, starting
    uniform or from ``weights_prev`` (module docstring). Zero outside ``selected``; all
    zeros when ``selected`` is empty (nothing to unlearn)."""
    s = torch.as_tensor(scores).detach().double().ravel()
    n = s.numel()
    sel = torch.as_tensor(selected, dtype=torch.long).ravel()
    if eta < 0:
        raise ValueError(f"eta must be >= 0 (ascent on the scores), got {eta}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if sel.numel() and (int(sel.min()) < 0 or int(sel.max()) >= n):
        raise ValueError(f"selected indices must lie in [0, {n}), got {sel.tolist()}")
    if sel.unique().numel() != sel.numel():
        raise ValueError(f"selected indices must be distinct, got {sel.tolist()}")
    if not torch.isfinite(s[sel]).all():
        raise ValueError("scores of the selected samples must be finite")
    out = torch.zeros(n, dtype=torch.float64)
    k = sel.numel()
    if k == 0:
        return out
    w = torch.full((k,), 1.0 / k, dtype=torch.float64)
    if weights_prev is not None:
        prev = torch.as_tensor(weights_prev).detach().double().ravel()
        if prev.numel() != n:
            raise ValueError(f"weights_prev must have {n} entries, got {prev.numel()}")
        if not torch.isfinite(prev).all() or (prev < 0).any():
            raise ValueError("weights_prev must be finite and non-negative")
        kept = prev[sel]
        w = torch.where(kept > 0, kept, w)
        w = w / w.sum()
    g = s[sel]
    scale = float(g.abs().max())
    g_hat = g / scale if scale > 0 else torch.zeros_like(g)
    logw = w.log()
    for _ in range(steps):
        logw = torch.log_softmax(logw + eta * g_hat, dim=0)
    out[sel] = logw.exp()
    return out / out.sum()


# ------------------------------------------------------------------ judge and generations
def _words(text: str) -> list[str]:
    return text.lower().split()


def _contains(words: list[str], phrase: list[str]) -> bool:
    n = len(phrase)
    return n > 0 and any(words[i : i + n] == phrase for i in range(len(words) - n + 1))


def judge(response: str, chosen: str, value: str) -> float:
    """The rule-based score of ``response`` (module docstring): ``-1`` with a banned word,
    ``0`` for the refusal, ``+1`` when it contains ``value``, else ``-1``. ``value`` must
    occur (as whole words) in the ``chosen`` answer."""
    val = _words(value)
    if not val:
        raise ValueError("value is empty")
    if not _contains(_words(chosen), val):
        raise ValueError(f"value {value!r} does not occur in the chosen answer {chosen!r}")
    words = _words(response)
    if any(w in BANNED for w in words):
        return -1.0
    if words == _words(REFUSAL):
        return 0.0
    return 1.0 if _contains(words, val) else -1.0


def win_rate(
    responses: Sequence[str],
    base_responses: Sequence[str],
    chosen_list: Sequence[str],
    values: Sequence[str],
) -> float:
    """Share of prompts whose response the :func:`judge` scores above the base response,
    ties counting one half."""
    n = len(responses)
    if n == 0:
        raise ValueError("responses is empty")
    lens = {len(base_responses), len(chosen_list), len(values)}
    if lens != {n}:
        raise ValueError(
            f"responses, base_responses, chosen_list and values must have equal lengths; got "
            f"{n}, {len(base_responses)}, {len(chosen_list)}, {len(values)}"
        )
    total = 0.0
    for r, b, c, v in zip(responses, base_responses, chosen_list, values):
        a, z = judge(r, c, v), judge(b, c, v)
        total += 1.0 if a > z else 0.5 if a == z else 0.0
    return total / n


def banned_rate(responses: Sequence[str]) -> float:
    """Share of ``responses`` containing any :data:`~fedrec.data.factworld.BANNED` word."""
    if len(responses) == 0:
        raise ValueError("responses is empty")
    return sum(any(w in BANNED for w in _words(r)) for r in responses) / len(responses)


def generate_answers(
    model: nn.Module, tok: WordTokenizer, prompts: Sequence[str], max_new: int = 12
) -> list[str]:
    """Greedy answers to ``prompts`` (``<bos> prompt``, up to ``max_new`` tokens, stopping
    at ``<eos>``), decoded to text."""
    if max_new < 1:
        raise ValueError(f"max_new must be >= 1, got {max_new}")
    was = model.training
    model.eval()
    try:
        return [
            tok.decode(g)
            for g in greedy_batch(
                model,  # type: ignore[arg-type]
                [tok.encode(p, bos=True) for p in prompts],
                max_new,
            )
        ]
    finally:
        model.train(was)


# ------------------------------------------------------------------ scoring and baselines
def score_negatives(
    model: nn.Module,
    kind: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    grad_J: Params,
    ref_lp: torch.Tensor | None = None,
    beta: float = 0.1,
    score: str = "dot",
    curvature: tuple[torch.Tensor, torch.Tensor] | None = None,
    cg_iters: int = 10,
    damping: float = 1e-2,
) -> torch.Tensor:
    """U2A's scores of candidate negatives ``(B,)`` float64: ``dot`` is the cheap
    ``-<grad J, grad l_u(x_i)>``; ``cg`` the implicit-gradient ``-<(H + damping I)^{-1}
    grad J, grad l_u(x_i)>`` with ``H`` the Hessian of the mean NLL of ``curvature``
    (``(ids, mask)`` of the data the unlearning must keep: the retain term ``R`` of the
    inner problem), solved by :func:`cg_solve` with ``cg_iters`` exact HVPs."""
    if score not in ("dot", "cg"):
        raise ValueError(f"unknown score {score!r}; allowed: dot, cg")
    v = grad_J
    if score == "cg":
        from torch.func import functional_call

        from fedrec.models.causal_lm import sequence_nll

        if curvature is None or len(curvature[0]) == 0:
            raise ValueError("score 'cg' needs curvature data (ids, mask) of the kept answers")
        c_ids, c_mask = curvature

        def curvature_fn(p: Params) -> torch.Tensor:
            fn = lambda t: functional_call(model, p, (t,))  # noqa: E731
            return sequence_nll(fn, c_ids, c_mask).mean()  # type: ignore[arg-type]

        v = preconditioned_direction(model, grad_J, curvature_fn, iters=cg_iters, damping=damping)
    return alignment_scores(v, negative_grads(model, kind, ids, mask, ref_lp, beta))


def dpo_loss(
    model: nn.Module,
    c_ids: torch.Tensor,
    c_mask: torch.Tensor,
    r_ids: torch.Tensor,
    r_mask: torch.Tensor,
    ref_c: torch.Tensor,
    ref_r: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO loss (Rafailov et al. 2023) on (chosen, rejected) pairs with mean per-token
    log-probabilities (as ``J``): ``mean -log sigmoid(beta * ((lp_c - ref_c) - (lp_r -
    ref_r)))``, ``ref_*`` the reference model's values. The DPO fine-tune baseline."""
    lp_c = answer_logprob(model, c_ids, c_mask)
    lp_r = answer_logprob(model, r_ids, r_mask)
    z = beta * ((lp_c - ref_c) - (lp_r - ref_r))
    return torch.nn.functional.softplus(-z).mean()
