"""A small decoder-only transformer and a word tokenizer (issue 12).

The language-model substrate of the LM-unlearning methods (MRD, U2A) and, later, of the
item-token recommender. Trained from scratch: no weights and no tokenizer are downloaded.

- :class:`WordTokenizer` — a closed word vocabulary (the corpus's words) plus ``<pad>``,
  ``<bos>``, ``<eos>`` and ``<unk>``; text is lower-case, whitespace-separated words.
- :class:`CausalLM` — pre-LayerNorm transformer blocks with hand-written causal
  multi-head attention (plain tensor ops, so :mod:`torch.func` transforms such as ``vmap``
  and ``jvp`` apply), learned position embeddings and an output layer tied to the token
  embedding. Initialisation is seeded.
- :func:`token_logprobs` / :func:`sequence_nll` — per-token log-likelihoods and the mean
  NLL over a mask (e.g. the answer tokens of a question-answer pair);
- :func:`generate` — greedy or seeded sampled continuation;
- :func:`per_sample_grads` — the gradient of every sample's NLL in one batched call
  (``torch.func.vmap`` over ``torch.func.grad``).

No flwr import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "CausalLM",
    "encode_qa",
    "exact_match",
    "teacher_forced_match",
    "train_lm",
    "WordTokenizer",
    "generate",
    "greedy_batch",
    "per_sample_grads",
    "sequence_nll",
    "token_logprobs",
]

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class WordTokenizer:
    """Whitespace words over a closed vocabulary (module docstring)."""

    def __init__(self, words: Sequence[str]):
        vocab = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.itos = vocab
        self.stoi = {w: i for i, w in enumerate(vocab)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = [self.stoi.get(w, UNK) for w in text.lower().split()]
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i not in (PAD, BOS, EOS))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        h = self.heads
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
        q = q.view(B, T, h, D // h).transpose(1, 2)
        k = k.view(B, T, h, D // h).transpose(1, 2)
        v = v.view(B, T, h, D // h).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // h)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class CausalLM(nn.Module):
    """A decoder-only transformer language model (module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        context: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} must be a multiple of n_heads {n_heads}")
        self.context = context
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tok = nn.Embedding(vocab_size, d_model)
            self.pos = nn.Embedding(context, d_model)
            self.blocks = nn.ModuleList([_Block(d_model, n_heads) for _ in range(n_layers)])
            self.ln = nn.LayerNorm(d_model)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, V)`` for token ids ``(B, T)`` (``T <= context``)."""
        T = ids.shape[-1]
        if T > self.context:
            raise ValueError(f"sequence length {T} exceeds the context {self.context}")
        x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.ln(x) @ self.tok.weight.T


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def pad_batch(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Right-padded ``(B, T)`` int64 ids."""
    T = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), T), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s)[:T], dtype=torch.long)
    return out


def encode_qa(
    tok: WordTokenizer, pairs: Sequence[tuple[str, str]], length: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` of question-answer pairs: ids ``<bos> question answer <eos>``
    right-padded ``(B, T)``; ``mask`` marks the answer tokens and ``<eos>`` (the targets
    of the answer's likelihood)."""
    seqs, masks = [], []
    for q, a in pairs:
        qi, ai = tok.encode(q, bos=True), tok.encode(a, eos=True)
        seqs.append(qi + ai)
        masks.append([False] * len(qi) + [True] * len(ai))
    ids = pad_batch(seqs, length)
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for i, m in enumerate(masks):
        mask[i, : len(m)] = torch.as_tensor(m[: ids.shape[1]])
    return ids, mask


def token_logprobs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """``log p(x_t | x_<t)`` for ``t = 1..T-1``: ``(B, T-1)``."""
    logits = model(ids[:, :-1])
    return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)


def sequence_nll(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL per sequence over the target positions where ``mask`` (``(B, T)``, aligned
    with ``ids``; position 0 is never a target) is true: ``(B,)``."""
    lp = token_logprobs(model, ids)
    m = mask[:, 1:].to(lp.dtype)
    return -(lp * m).sum(-1) / m.sum(-1).clamp_min(1.0)


@torch.no_grad()
def generate(
    model: CausalLM,
    prompt: Sequence[int],
    max_new: int,
    greedy: bool = True,
    temperature: float = 1.0,
    seed: int = 0,
    stop: int | None = EOS,
) -> list[int]:
    """Continue ``prompt`` by up to ``max_new`` tokens (greedy, or sampled with a seeded
    generator); stops after ``stop``. Returns the new tokens."""
    g = torch.Generator().manual_seed(seed)
    dev = _device(model)
    ids = list(prompt)
    out: list[int] = []
    for _ in range(max_new):
        window = torch.as_tensor([ids[-model.context :]], dtype=torch.long, device=dev)
        logits = model(window)[0, -1].cpu()
        if greedy:
            nxt = int(logits.argmax())
        else:
            probs = (logits / temperature).softmax(-1)
            nxt = int(torch.multinomial(probs, 1, generator=g))
        ids.append(nxt)
        out.append(nxt)
        if stop is not None and nxt == stop:
            break
    return out


@torch.no_grad()
def greedy_batch(
    model: CausalLM, prompts: Sequence[Sequence[int]], max_new: int, stop: int = EOS
) -> list[list[int]]:
    """:func:`generate` (greedy) for many prompts at once: prompts of equal length are
    decoded together (no padding enters the model), each stopping after ``stop``. Equals
    ``[generate(model, p, max_new) for p in prompts]``."""
    out: list[list[int]] = [[] for _ in prompts]
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for _, idx in sorted(by_len.items()):
        ids = torch.as_tensor(
            [list(prompts[i]) for i in idx], dtype=torch.long, device=_device(model)
        )
        done = torch.zeros(len(idx), dtype=torch.bool)
        for _ in range(max_new):
            nxt = model(ids[:, -model.context :])[:, -1].argmax(-1).cpu()
            for j, i in enumerate(idx):
                if not done[j]:
                    out[i].append(int(nxt[j]))
            done |= nxt == stop
            if bool(done.all()):
                break
            ids = torch.cat([ids, nxt[:, None].to(ids.device)], dim=1)
    return out


def per_sample_grads(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The gradient of each sequence's :func:`sequence_nll` w.r.t. every parameter,
    stacked along a new first axis (one batched ``vmap(grad)`` call)."""
    from torch.func import functional_call, grad, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, x, m):
        return sequence_nll(lambda t: functional_call(model, p, (t,)), x[None], m[None])[0]

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, ids, mask)


def train_lm(
    model: nn.Module,
    seqs: Sequence[Sequence[int]],
    epochs: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
) -> list[float]:
    """Next-token training of ``model`` on ``seqs`` (``adam`` or ``sgd`` with fresh state,
    seeded mini-batch order); returns the mean loss of every epoch."""
    if optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}; allowed: adam, sgd")
    g = torch.Generator().manual_seed(seed)
    opt_cls = torch.optim.Adam if optimizer == "adam" else torch.optim.SGD
    opt = opt_cls(model.parameters(), lr=lr, weight_decay=weight_decay)
    ids = pad_batch(seqs).to(_device(model))  # on the model's device (a GPU if it is there)
    mask = ids != PAD
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(seqs), generator=g)
        total, n = 0.0, 0
        for a in range(0, len(seqs), batch_size):
            b = order[a : a + batch_size]
            loss = sequence_nll(model, ids[b], mask[b]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            n += len(b)
        losses.append(total / max(n, 1))
    model.eval()
    return losses


@torch.no_grad()
def teacher_forced_match(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per sequence: the arg-max next token equals the reference at every target position
    of ``mask`` (:func:`encode_qa`'s answer and ``<eos>``). Greedy decoding follows the
    reference as long as every arg-max matches, so this equals :func:`exact_match` (ties
    aside) in one batched forward pass."""
    pred = model(ids[:, :-1]).argmax(-1)
    ok = (pred == ids[:, 1:]) | ~mask[:, 1:]
    return ok.all(-1)


def exact_match(
    model: CausalLM, tok: WordTokenizer, pairs: Sequence[tuple[str, str]]
) -> list[bool]:
    """Greedy answer to each question (``<bos> question`` then generation until
    ``<eos>``) equals the reference answer, word for word."""
    out = []
    for q, a in pairs:
        want = tok.encode(a)
        got = generate(model, tok.encode(q, bos=True), len(want) + 1)
        out.append(got[: len(want)] == want and (len(got) == len(want) or got[len(want)] == EOS))
    return out
