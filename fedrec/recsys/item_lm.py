"""The item-token LLM-based recommender: a causal LM over item ids (no flwr import).

UFO (:mod:`fedrec.algorithms.ufo`) needs an LLM-based recommender that is pre-trained and
then fine-tuned to emit the next item. Ours is issue 12's :class:`~fedrec.models.causal_lm.
CausalLM` run over **item-id tokens** (reference ``recsys_fairness_defense.md`` §2.6):

* tokens: ``<pad> = 0``, ``<bos> = 1``, item ``i`` = ``i + 2`` (vocabulary ``n_items + 2``);
* a user's history is the prompt ``<bos> i_1 ... i_t`` (the last ``context - 1`` items);
  the recommender's next-item distribution is the softmax of the logits at the last
  position **over the item tokens only** (:func:`next_item_logprobs`), so ranking is
  over the whole catalog;
* training windows (:func:`windows`) cut a sequence from its end into non-overlapping
  chunks of ``context - 1`` items, each prefixed with ``<bos>``.

The task (:class:`ItemLMTask`)
------------------------------
* The leave-one-out split of the dataset (:func:`fedrec.recsys.data.user_data`).
* **Public vs federated users.** A seeded ``public-fraction`` of the users is the
  server's *pre-training* population (a stand-in for web text: it is not evaluated); the
  others are the federation, dealt in order to silos of ``users-per-client``.
* **Pre-training corpus with planted prior bias** (:meth:`ItemLMTask.pretrain_corpus`):
  the public users' full sequences plus as many synthetic sequences from a
  popularity-skewed item Markov chain, ``P(j | i) ∝ (T_ij + 1/n) c_j^γ`` with ``T`` the
  public users' transition counts, ``c`` the public item counts (+1) and ``γ`` =
  ``pretrain-skew``; the start item ∝ ``c^γ``. ``γ = 0`` is the unbiased chain.

Training loops: :func:`train_next_item` (SFT, optionally with per-item loss weights: the
re-weighting baseline) and :func:`train_pairwise` (the SPIN / DPO corrector of UFO and
SPRec on next-item log-probabilities).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedrec.errors import ConfigError
from fedrec.models.causal_lm import CausalLM, pad_batch

PAD, BOS, OFFSET = 0, 1, 2

__all__ = [
    "ItemLMTask",
    "build_model",
    "item_lm_task",
    "next_item_logprobs",
    "prompt",
    "train_next_item",
    "train_pairwise",
    "windows",
]


def windows(items: Sequence[int] | np.ndarray, context: int) -> list[list[int]]:
    """Non-overlapping training windows ``<bos> + chunk`` (chunks of ``context - 1`` items
    from the end of the sequence; the first chunk may be shorter; chunks of < 2 items,
    which have no next-item target after the first, are kept if they have 1 item)."""
    items = [int(i) + OFFSET for i in items]
    out, L = [], context - 1
    end = len(items)
    while end > 0:
        start = max(0, end - L)
        out.append([BOS, *items[start:end]])
        end = start
    return out[::-1]


def prompt(history: Sequence[int] | np.ndarray, context: int) -> list[int]:
    """``<bos>`` + the last ``context - 1`` items of ``history`` as tokens."""
    h = [int(i) + OFFSET for i in history][-(context - 1) :] if context > 1 else []
    return [BOS, *h]


def build_model(num_items: int, d_model: int, n_layers: int, n_heads: int, context: int, seed: int):
    """A :class:`CausalLM` over ``num_items + 2`` tokens."""
    return CausalLM(num_items + OFFSET, d_model, n_layers, n_heads, context, seed)


def next_item_logprobs(model, prompts: Sequence[Sequence[int]], batch_size: int = 512):
    """``log p(item | prompt)`` over the items only, ``(len(prompts), n_items)``; with
    gradients when called under grad mode."""
    out = []
    for a in range(0, len(prompts), batch_size):
        chunk = prompts[a : a + batch_size]
        ids = pad_batch(chunk)
        last = torch.as_tensor([len(p) - 1 for p in chunk])
        logits = model(ids)[torch.arange(len(chunk)), last, OFFSET:]
        out.append(logits.log_softmax(-1))
    return torch.cat(out) if out else torch.zeros(0, 0)


def train_next_item(
    model,
    seqs: Sequence[Sequence[int]],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    item_weight: np.ndarray | None = None,
) -> float:
    """Next-item training (Adam, fresh state, seeded order) on token windows; the loss is
    the mean over target tokens of ``weight(item) * -log p(item | prefix)`` (weights 1
    without ``item_weight``; the logits are restricted to the item tokens). Returns the
    mean loss of the last epoch."""
    from fedrec.optim import TorchAdam

    if not seqs:
        return 0.0
    ids = pad_batch(seqs)
    tgt = ids[:, 1:]
    mask = (tgt >= OFFSET).float()
    w = None
    if item_weight is not None:
        wt = torch.as_tensor(np.concatenate([[0.0, 0.0], item_weight]).astype(np.float32))
        w = wt[tgt]
    opt = TorchAdam(list(model.parameters()), lr=lr)
    g = torch.Generator().manual_seed(int(seed) % 2**63)
    model.train()
    last = 0.0
    for _ in range(epochs):
        order = torch.randperm(len(seqs), generator=g)
        tot, n = 0.0, 0.0
        for a in range(0, len(seqs), batch_size):
            b = order[a : a + batch_size]
            logits = model(ids[b, :-1])[..., OFFSET:]
            t = (tgt[b] - OFFSET).clamp_min(0)
            nll = -logits.log_softmax(-1).gather(-1, t[..., None]).squeeze(-1)
            m = mask[b] if w is None else mask[b] * w[b]
            loss = (nll * m).sum() / mask[b].sum().clamp_min(1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * float(mask[b].sum())
            n += float(mask[b].sum())
        last = tot / max(n, 1.0)
    model.eval()
    return last


def train_pairwise(
    model,
    old_logp: torch.Tensor,
    prompts: Sequence[Sequence[int]],
    pos: np.ndarray,
    neg: np.ndarray,
    *,
    beta: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    nll_weight: float = 0.0,
) -> tuple[float, float]:
    """The self-play corrector (SPIN; DPO with the opponent as reference):

    .. math::
        \\ell = \\mathrm{softplus}\\big(-\\beta[(\\log\\pi_\\theta(y^+|x) - \\log\\pi_t(y^+|x))
        - (\\log\\pi_\\theta(y^-|x) - \\log\\pi_t(y^-|x))]\\big)

    averaged over the ``m`` negatives of each prompt and the prompts
    (:func:`fedrec.algorithms.ufo.spin_loss`), plus ``nll_weight * -log pi_theta(y+|x)``
    (the SFT half of SPRec's self-play; 0 for UFO). ``old_logp`` = ``log pi_t`` over the items
    ``(n, n_items)``, fixed; ``pos`` (n,), ``neg`` (n, m) item ids. Returns the mean loss
    and the judger margin ``beta * (Δpos - Δneg)`` of the last epoch."""
    from fedrec.algorithms.ufo import judger_margin, spin_loss
    from fedrec.optim import TorchAdam

    n = len(prompts)
    if not n:
        return 0.0, 0.0
    pos_t = torch.as_tensor(np.asarray(pos, dtype=np.int64))
    neg_t = torch.as_tensor(np.asarray(neg, dtype=np.int64)).reshape(n, -1)
    old_pos = old_logp.gather(1, pos_t[:, None]).squeeze(1)
    old_neg = old_logp.gather(1, neg_t)
    opt = TorchAdam(list(model.parameters()), lr=lr)
    g = torch.Generator().manual_seed(int(seed) % 2**63)
    model.train()
    loss_v, margin_v = 0.0, 0.0
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        tot, mar = 0.0, 0.0
        for a in range(0, n, batch_size):
            b = order[a : a + batch_size]
            lp = next_item_logprobs(model, [prompts[int(k)] for k in b])
            new_pos = lp.gather(1, pos_t[b, None]).squeeze(1)
            new_neg = lp.gather(1, neg_t[b])
            loss = spin_loss(new_pos, old_pos[b], new_neg, old_neg[b], beta=beta)
            if nll_weight:
                loss = loss - nll_weight * new_pos.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            m = judger_margin(new_pos, old_pos[b], new_neg, old_neg[b], beta=beta)
            tot += float(loss.detach()) * len(b)
            mar += m * len(b)
        loss_v, margin_v = tot / n, mar / n
    model.eval()
    return loss_v, margin_v


@dataclass
class ItemLMTask:
    """Users, silos and corpora of the item-token recommender (module docstring)."""

    ds: object
    ud: object
    public: np.ndarray  # user ids of the server's pre-training population
    fed: np.ndarray  # user ids of the federation, in client order

    @property
    def num_items(self) -> int:
        return int(self.ud.num_items)  # type: ignore[attr-defined]

    def num_clients(self, users_per_client: int) -> int:
        return -(-len(self.fed) // users_per_client)

    def client_users(self, client_id: int, users_per_client: int) -> np.ndarray:
        lo = client_id * users_per_client
        return self.fed[lo : lo + users_per_client]

    def full_sequence(self, u: int) -> np.ndarray:
        ud = self.ud
        return np.concatenate([ud.sequences("test")[u], ud.test[u]])  # type: ignore[attr-defined]

    def pretrain_corpus(self, context: int, skew: float, seed: int) -> list[list[int]]:
        """Public users' windows plus as many synthetic popularity-skewed chain sequences
        of ``context - 1`` items (module docstring)."""
        n = self.num_items
        seqs = [self.full_sequence(int(u)) for u in self.public]
        T = np.zeros((n, n))
        c = np.ones(n)
        for s in seqs:
            np.add.at(T, (s[:-1], s[1:]), 1.0)
            np.add.at(c, s, 1.0)
        logw = skew * np.log(c)
        logP = np.log(T + 1.0 / n) + logw[None, :]
        rng = np.random.default_rng(seed)
        m = len(seqs)
        cur = np.argmax(logw[None, :] + rng.gumbel(size=(m, n)), axis=1)
        out = [cur]
        for _ in range(context - 2):
            cur = np.argmax(logP[cur] + rng.gumbel(size=(m, n)), axis=1)
            out.append(cur)
        synth = np.stack(out, axis=1) if m else np.zeros((0, context - 1), dtype=np.int64)
        corpus = [w for s in seqs for w in windows(s, context)]
        corpus += [[BOS, *(row + OFFSET).tolist()] for row in synth]
        return corpus


@functools.lru_cache(maxsize=4)
def item_lm_task(
    dataset: str, options: str, public_fraction: float, seed: int, split: str = "time"
) -> ItemLMTask:
    """The task, cached per process; the public users are a seeded draw."""
    from fedrec.recsys.data import user_data

    if not 0.0 <= public_fraction < 1.0:
        raise ConfigError(
            f"config key 'strategy.params.public-fraction': {public_fraction} must be in [0, 1)"
        )
    ds, ud = user_data(dataset, options, split)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ud.num_users)
    k = int(round(public_fraction * ud.num_users))
    return ItemLMTask(ds, ud, np.sort(perm[:k]), np.sort(perm[k:]))
