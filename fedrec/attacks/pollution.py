"""The baselines of the profile-pollution experiments (no flwr import).

Every profile-pollution attack here obeys CREAT's threat model (arXiv 2511.09392, §2.1 of
``unlearning_attack.md``): an attacker rewrites **at most K positions** of an existing profile to
the target item ``v*``; no fake users, no other item is written. Only the last ``window`` items
of a profile can change (what a sequential model with ``max_len = window`` reads). The baselines
differ in *where* the target goes:

* :func:`random_pollution` ("Random"): K positions drawn uniformly (seeded).
* :func:`popular_pollution` ("Popular"): the K positions right after the profile's most popular
  items (training popularity), so that the new transitions are "popular item -> v*": the
  popular-filler heuristic of data poisoning (the paper's Popular appends the target with popular
  fillers; under the K-replacement budget the fillers are the profile's own popular items).
* :func:`substitution_pollution` ("Replace", after Yue et al. 2022): white-box, gradient-selected
  fragile positions. With the surrogate's next-item score of ``v*`` after the profile,
  ``s(v*) = phi(s) . e(v*)``, and ``g_t`` its gradient with respect to the input embedding at
  position ``t``, the first-order gain of writing ``v*`` at ``t`` is
  ``(e(v*) - e(v_t)) . g_t``; the K positions with the largest gains are replaced (one shot).
  Yue et al. may write any adversarial item; the PPA budget allows only ``v*``.

:func:`craft_target_row` is the model-poisoning baseline (FedRecAttack, Rong et al. 2022, adapted
to sequential recommenders): with sequence representations ``h_u`` of the profiles the attacker
knows (its own and a public share), it minimises ``-mean_u log sigmoid(h_u . e* - s_u^(k))``
(``s_u^(k)``: the user's k-th highest score, so the target climbs into every top-k) in the target
row ``e*`` only; the upload is the negative gradient direction scaled to a chosen norm (the
caller picks it from its honest row norms, so the crafted row looks like an ordinary one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedrec.errors import ConfigError


def _check(seqs: Sequence, K: int, target: int, num_items: int | None = None) -> None:
    if int(K) != K or K < 1:
        raise ConfigError(f"K (the pollution budget) must be an integer >= 1 (got {K})")
    if num_items is not None and not 0 <= int(target) < num_items:
        raise ConfigError(f"target item {target} outside [0, {num_items})")


def candidates(seq: np.ndarray, target: int, window: int) -> np.ndarray:
    """Positions (indices into ``seq``) an attacker may rewrite: the last ``window``, not
    already ``target``."""
    s = np.asarray(seq, dtype=np.int64)
    lo = max(0, s.size - int(window))
    pos = np.arange(lo, s.size)
    return pos[s[pos] != target]


def apply(seq: np.ndarray, positions: np.ndarray, target: int) -> np.ndarray:
    """``seq`` with ``positions`` set to ``target`` (a copy)."""
    out = np.array(seq, dtype=np.int64, copy=True)
    out[np.asarray(positions, dtype=np.int64)] = int(target)
    return out


def random_pollution(
    seqs: Sequence, target: int, K: int, window: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Random: K uniformly drawn candidate positions per profile."""
    _check(seqs, K, target)
    out = []
    for s in seqs:
        c = candidates(s, target, window)
        pick = rng.choice(c, size=min(K, c.size), replace=False) if c.size else c
        out.append(apply(s, pick, target))
    return out


def popular_pollution(
    seqs: Sequence, target: int, K: int, window: int, item_counts: np.ndarray
) -> list[np.ndarray]:
    """Popular: the positions right after the profile's K most popular items (ties: later
    position first)."""
    _check(seqs, K, target)
    counts = np.asarray(item_counts)
    out = []
    for s in seqs:
        s = np.asarray(s, dtype=np.int64)
        c = candidates(s, target, window)
        c = c[c >= 1]  # a position with a predecessor
        if not c.size:
            out.append(s.copy())
            continue
        pop = counts[s[c - 1]]
        order = np.lexsort((-c, -pop))  # most popular predecessor first, later positions first
        out.append(apply(s, c[order[:K]], target))
    return out


def _input_embedding_grads(model, tokens: torch.Tensor, target: int):
    """(input embeddings (B, L, d), gradients of the target's next-item score w.r.t. them)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_mod, _inp, out):
        out = out.detach().requires_grad_(True)
        store["x"] = out
        return out

    h = model.item_emb.register_forward_hook(hook)
    try:
        hidden = model(tokens)[:, -1, :]
    finally:
        h.remove()
    score = (hidden * model.item_emb.weight[target + 1].detach()).sum()
    (g,) = torch.autograd.grad(score, store["x"])
    return store["x"].detach(), g


def substitution_pollution(model, seqs: Sequence, target: int, K: int) -> list[np.ndarray]:
    """Replace: the K candidate positions of largest first-order gain (module docstring);
    ``model`` is the white-box surrogate (kept in eval mode, not modified)."""
    from fedrec.models.recsys import to_tokens

    _check(seqs, K, target, model.num_items)
    L = model.max_len
    was = model.training
    model.eval()
    e_star = model.item_emb.weight[target + 1].detach()
    out = []
    try:
        for a in range(0, len(seqs), 128):
            chunk = [np.asarray(s, dtype=np.int64) for s in seqs[a : a + 128]]
            tok = to_tokens(chunk, L)
            x, g = _input_embedding_grads(model, tok, target)
            # the input embedding is scaled inside the model (e.g. sqrt(d)): the gain of writing
            # v* is the change of the embedding-layer output, e* - e_t, in the same units
            gain = ((e_star[None, None, :] - x) * g).sum(-1).numpy()  # (B, L)
            for b, s in enumerate(chunk):
                c = candidates(s, target, L)
                if not c.size:
                    out.append(s.copy())
                    continue
                col = c - s.size + L  # token column of each candidate position
                order = np.lexsort((-c, -gain[b, col]))
                out.append(apply(s, c[order[:K]], target))
    finally:
        model.train(was)
    return out


def sequence_representations(model, seqs: Sequence) -> torch.Tensor:
    """``phi(s)``: the last position's hidden state of each profile, ``(len(seqs), d)``."""
    from fedrec.models.recsys import to_tokens

    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat(
                [
                    model(to_tokens(list(seqs[a : a + 256]), model.max_len))[:, -1, :]
                    for a in range(0, len(seqs), 256)
                ]
            )
    finally:
        model.train(was)


def craft_target_row(
    hidden: torch.Tensor, item_emb: torch.Tensor, target: int, k: int = 10
) -> np.ndarray:
    """Unit direction ``(d,)`` in which the target's embedding row should move (module
    docstring). ``hidden`` (m, d): representations of known profiles; ``item_emb`` (I, d): the
    0-based item table (no padding row)."""
    E = item_emb.detach().double()
    H = hidden.detach().double()
    if H.numel() == 0:
        raise ConfigError("craft_target_row needs at least one known profile")
    if not 0 <= target < E.shape[0]:
        raise ConfigError(f"target item {target} outside [0, {E.shape[0]})")
    scores = H @ E.T
    kth = torch.topk(scores, min(k, E.shape[0]), dim=1).values[:, -1]
    e = E[target].clone().requires_grad_(True)
    loss = -torch.nn.functional.logsigmoid(H @ e - kth).mean()
    (g,) = torch.autograd.grad(loss, e)
    step = -g
    n = float(step.norm())
    if n == 0.0:
        return np.zeros(E.shape[1])
    return (step / n).numpy()
