"""Evaluation suite for language-model unlearning on the synthetic fact world.

Built over :mod:`fedrec.data.factworld` (question-answer facts split by person into
``forget``, ``retain`` and ``holdout``) and :mod:`fedrec.models.causal_lm` (a word-level
causal LM). Every metric value comes from :mod:`fedrec.unlearning.metrics`' registry; this
module only prepares the inputs (log-likelihoods, texts, splits) and aggregates.

Preparation (:func:`prepare`, once per world and tokenizer)
    Every fact becomes ``<bos> question answer <eos>`` with a mask over the answer tokens
    and ``<eos>`` (:func:`~fedrec.models.causal_lm.encode_qa`). All encodings, the
    perturbed answers included, are right-padded to **one common length** (the longest
    sequence anywhere), so splits and subsets slice one tensor; evaluation runs in batches
    (default 512) under :func:`torch.no_grad`, each batch cut to its own longest sequence
    (the model is causal, so trailing padding changes nothing before it).

    A tokenizer that does not know a word of a fact is an error (an ``<unk>`` answer
    would make every likelihood meaningless): build it from ``world.vocabulary()``.

Per-sample statistics (:func:`sample_stats`), from one forward pass per batch
    - ``nll``: mean negative log-likelihood over the answer tokens and ``<eos>`` (exactly
      :func:`~fedrec.models.causal_lm.sequence_nll`);
    - ``em``: greedy exact match, computed teacher-forced (every arg-max next token of the
      answer and ``<eos>`` equals the reference: exactly
      :func:`~fedrec.models.causal_lm.teacher_forced_match`, which equals generation-based
      :func:`~fedrec.models.causal_lm.exact_match` up to arg-max ties);
    - membership-inference scores, all "higher = more likely a training member":
      ``loss_score = -nll`` (the LOSS attack); ``zlib_score`` = registry
      ``zlib_ratio_score(sum of the answer's token log-probs (answer tokens and <eos>),
      answer text)``; ``mink_score`` = registry ``min_k_score(answer token log-probs,
      k=0.2)`` (Min-K% prob over the same tokens);
    - ``truth_ratio`` (forget and retain splits only): registry
      ``truth_ratio(mean log-prob of the true answer, [mean log-prob of each perturbed
      answer])``, i.e. TOFU's ``mean_j P(perturbed_j)^(1/n_j) / P(paraphrase)^(1/n)``.
      Choices: the world has one answer template per attribute, so the **paraphrased
      answer is the answer itself**; the **perturbed answers** are the attribute's answer
      template filled with ``num_perturbed`` distinct *other* values of the same
      attribute. The candidate values are the attribute's shared vocabulary and every
      value (regular or idiosyncratic) the world's facts give that attribute, restricted
      to words the tokenizer knows; they are drawn without replacement from
      ``numpy.random.default_rng([seed, person, attribute index])``, so a fact's
      perturbations do not depend on the other facts or on the split order. The raw ratio
      is reported (TOFU's retain-side ``max(0, 1 - R)`` is left to the reader): lower =
      the model prefers the true answer; near 1 = it no longer does.

The report (:func:`evaluate`, one flat ``dict[str, float]``)
    - ``{forget,retain,holdout}_nll`` and ``_em``: split means;
    - ``{forget,retain}_truth_ratio``: means of the per-fact truth ratios;
    - ``forget_quality``: TOFU's forget quality, the Kolmogorov-Smirnov p-value between
      this model's forget truth ratios and a reference's (the retain-only model's, from
      :func:`truth_ratios`), via the registry; only when a reference is given;
    - ``mia_auc_{loss,zlib,mink}``: registry ``mia_auc`` of the forget facts (members)
      against the holdout facts (never trained: non-members), per score; 0.5 = chance;
    - ``privleak_{score}``: MUSE PrivLeak, registry ``privacy_leakage(own AUC, retrain
      AUC)``, for each score whose retrain AUC is given (``retrain_auc``, keys ``loss``,
      ``zlib``, ``mink`` or the report keys ``mia_auc_loss``, ``mia_auc_zlib``, ``mia_auc_mink``);
    - per-MRD quartile (``mrd`` given: one memorisation-difficulty value per forget fact,
      in the forget split's order): the forget facts are ranked by MRD
      (``numpy.argsort``, stable, so ties keep the split order) and the rank order is cut
      into 4 nearly equal chunks (``numpy.array_split``: sizes differ by at most one);
      quartile 1 holds the lowest MRD (easiest to forget). For each quartile ``q``:
      ``q{q}_forget_em``, ``q{q}_forget_nll``, ``q{q}_mia_auc_loss`` (the quartile's facts
      against *all* holdout facts) and, with a reference, ``q{q}_forget_quality`` (KS
      between the quartile's truth ratios and the reference's truth ratios of the same
      facts).

Robustness (:func:`relearn`)
    A deep copy of the model is fine-tuned for ``steps`` full-batch Adam steps on the mean
    answer NLL (:func:`~fedrec.models.causal_lm.sequence_nll`) of a seeded ``share`` of the
    forget facts; EM and NLL on the *other* forget facts are reported before and after,
    with the registry's ``relearn_recovery`` on EM (after minus before). A model that
    truly forgot recovers like the retrained one; hidden traces recover faster. The input
    model is never modified.

:func:`report_table` renders reports (Original / Retrain / methods) as a markdown table.

Pure: torch, numpy and scipy (through the registry); no flwr import.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.data.factworld import ATTRIBUTES, SPLITS, Fact, FactWorld
from fedrec.errors import ConfigError
from fedrec.models.causal_lm import WordTokenizer, encode_qa, sequence_nll
from fedrec.unlearning.metrics import (
    forget_quality,
    mia_auc,
    min_k_score,
    privacy_leakage,
    relearn_recovery,
    truth_ratio,
    zlib_ratio_score,
)

__all__ = [
    "MIA_SCORES",
    "EvalSplit",
    "FactEval",
    "evaluate",
    "mrd_quartiles",
    "prepare",
    "relearn",
    "report_table",
    "sample_stats",
    "truth_ratios",
]

#: membership-inference score names (report keys ``mia_auc_<name>``, ``privleak_<name>``)
MIA_SCORES: tuple[str, ...] = ("loss", "zlib", "mink")
MINK_K = 0.2
_PERTURBED_SPLITS = ("forget", "retain")


@dataclass(frozen=True)
class EvalSplit:
    """One split's encoded facts (all tensors padded to :attr:`FactEval.length`)."""

    name: str
    facts: list[Fact]
    questions: list[str]
    answers: list[str]
    ids: torch.Tensor  # (n, T) int64: <bos> question answer <eos> <pad>...
    mask: torch.Tensor  # (n, T) bool: the answer tokens and <eos>
    perturbed_answers: list[list[str]] | None = None  # (n, P) texts (forget / retain)
    perturbed_ids: torch.Tensor | None = None  # (n, P, T)
    perturbed_mask: torch.Tensor | None = None  # (n, P, T)

    def __len__(self) -> int:
        return len(self.facts)


@dataclass(frozen=True)
class FactEval:
    """A prepared, reusable evaluation set over one (world, tokenizer): :func:`prepare`."""

    splits: dict[str, EvalSplit]
    length: int  # the common padded length of every encoding
    num_perturbed: int
    seed: int

    def split(self, name: str) -> EvalSplit:
        if name not in self.splits:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {name!r}")
        return self.splits[name]


# ------------------------------------------------------------------ preparation
def _perturbed_values(
    world: FactWorld, tok: WordTokenizer, num: int, seed: int
) -> dict[tuple[int, str], list[str]]:
    """(person, attribute) -> ``num`` distinct wrong values of the same attribute."""
    pools: dict[str, list[str]] = {}
    for a in {f.attribute for f in world.facts}:
        cands = set(ATTRIBUTES[a][2]) | {f.value for f in world.facts if f.attribute == a}
        pools[a] = sorted(v for v in cands if all(w in tok.stoi for w in v.split()))
    attr_index = {a: i for i, a in enumerate(ATTRIBUTES)}
    out: dict[tuple[int, str], list[str]] = {}
    for f in world.facts:
        if f.split not in _PERTURBED_SPLITS:
            continue
        pool = [v for v in pools[f.attribute] if v != f.value]
        if len(pool) < num:
            raise ConfigError(
                f"attribute {f.attribute!r} has only {len(pool)} other known values, fewer than "
                f"num_perturbed={num}"
            )
        rng = np.random.default_rng([seed, f.person, attr_index[f.attribute]])
        pick = rng.choice(len(pool), size=num, replace=False)
        out[(f.person, f.attribute)] = [pool[int(i)] for i in pick]
    return out


def prepare(
    world: FactWorld, tok: WordTokenizer, num_perturbed: int = 3, seed: int = 0
) -> FactEval:
    """Encode every split of ``world`` once (module docstring), with ``num_perturbed``
    seeded perturbed answers per forget and retain fact."""
    if int(num_perturbed) < 1:
        raise ConfigError(f"num_perturbed must be >= 1, got {num_perturbed!r}")
    num_perturbed = int(num_perturbed)
    unknown = sorted(
        {w for f in world.facts for w in f"{f.question} {f.answer}".split() if w not in tok.stoi}
    )
    if unknown:
        raise ConfigError(
            f"the tokenizer does not know {len(unknown)} word(s) of the world's facts "
            f"(e.g. {', '.join(unknown[:5])}); build it from world.vocabulary()"
        )
    pert = _perturbed_values(world, tok, num_perturbed, seed)
    by_split = {s: world.split(s) for s in SPLITS}
    for s, facts in by_split.items():
        if not facts:
            raise ConfigError(f"the world has no {s} facts")

    def n_tokens(q: str, a: str) -> int:
        return len(tok.encode(q, bos=True)) + len(tok.encode(a, eos=True))

    def perturbed_answer(f: Fact, value: str) -> str:
        return ATTRIBUTES[f.attribute][1].format(name=f.name, value=value)

    pert_text = {
        s: [[perturbed_answer(f, v) for v in pert[(f.person, f.attribute)]] for f in facts]
        for s, facts in by_split.items()
        if s in _PERTURBED_SPLITS
    }
    length = max(
        max(n_tokens(f.question, f.answer) for facts in by_split.values() for f in facts),
        max(
            (
                n_tokens(f.question, a)
                for s, texts in pert_text.items()
                for f, answers in zip(by_split[s], texts)
                for a in answers
            ),
            default=0,
        ),
    )
    splits: dict[str, EvalSplit] = {}
    for s, facts in by_split.items():
        ids, mask = encode_qa(tok, [(f.question, f.answer) for f in facts], length=length)
        p_texts = pert_text.get(s)
        p_ids = p_mask = None
        if p_texts is not None:
            flat = [(f.question, a) for f, answers in zip(facts, p_texts) for a in answers]
            pi, pm = encode_qa(tok, flat, length=length)
            p_ids = pi.view(len(facts), num_perturbed, length)
            p_mask = pm.view(len(facts), num_perturbed, length)
        splits[s] = EvalSplit(
            name=s,
            facts=list(facts),
            questions=[f.question for f in facts],
            answers=[f.answer for f in facts],
            ids=ids,
            mask=mask,
            perturbed_answers=p_texts,
            perturbed_ids=p_ids,
            perturbed_mask=p_mask,
        )
    return FactEval(splits=splits, length=length, num_perturbed=num_perturbed, seed=int(seed))


# ------------------------------------------------------------------ forward passes
def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_context(model: nn.Module, ev: FactEval) -> None:
    ctx = getattr(model, "context", None)
    if isinstance(ctx, int) and ev.length - 1 > ctx:
        raise ConfigError(
            f"the evaluation sequences need a context of {ev.length - 1} tokens, the model "
            f"has {ctx}"
        )


@torch.no_grad()
def _token_stats(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, batch_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence, from one forward pass per batch: the target token log-probs ``(n,
    T-1)`` (zero where not a target), the target mask ``(n, T-1)`` and teacher-forced exact
    match ``(n,)``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    n, T = ids.shape
    lp_out = np.zeros((n, max(T - 1, 0)), dtype=np.float64)
    em_out = np.zeros(n, dtype=bool)
    tgt = mask[:, 1:].cpu().numpy().astype(bool)
    dev = _device(model)
    was_training = model.training
    model.eval()
    try:
        for a in range(0, n, batch_size):
            x, m = ids[a : a + batch_size], mask[a : a + batch_size]
            cols = m.any(0).nonzero()
            L = int(cols.max()) + 1 if cols.numel() else 1  # trailing padding is irrelevant
            x, m = x[:, :L].to(dev), m[:, :L].to(dev)
            logits = model(x[:, :-1])
            lp = logits.log_softmax(-1).gather(-1, x[:, 1:, None]).squeeze(-1)
            hit = (logits.argmax(-1) == x[:, 1:]) | ~m[:, 1:]
            lp = lp.masked_fill(~m[:, 1:], 0.0)
            lp_out[a : a + len(x), : L - 1] = lp.double().cpu().numpy()
            em_out[a : a + len(x)] = hit.all(-1).cpu().numpy()
    finally:
        model.train(was_training)
    return lp_out, tgt, em_out


def _mean_logprob(lp: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    return lp.sum(-1) / np.maximum(tgt.sum(-1), 1)


def sample_stats(
    model: nn.Module, ev: FactEval, split: str, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """Per-sample statistics of ``split`` (module docstring): ``nll``, ``em``,
    ``loss_score``, ``zlib_score``, ``mink_score`` and, for forget and retain,
    ``truth_ratio``; numpy arrays in the split's fact order."""
    sp = ev.split(split)
    _check_context(model, ev)
    lp, tgt, em = _token_stats(model, sp.ids, sp.mask, batch_size)
    mean_lp = _mean_logprob(lp, tgt)
    out: dict[str, np.ndarray] = {
        "nll": -mean_lp,
        "em": em,
        "loss_score": mean_lp.copy(),
        "zlib_score": np.array(
            [zlib_ratio_score(float(s), t) for s, t in zip(lp.sum(-1), sp.answers)]
        ),
        "mink_score": np.array([min_k_score(row[m], MINK_K) for row, m in zip(lp, tgt)]),
    }
    if sp.perturbed_ids is not None and sp.perturbed_mask is not None:
        n, P, T = sp.perturbed_ids.shape
        plp, ptgt, _ = _token_stats(
            model,
            sp.perturbed_ids.reshape(n * P, T),
            sp.perturbed_mask.reshape(n * P, T),
            batch_size,
        )
        pert_lp = _mean_logprob(plp, ptgt).reshape(n, P)
        out["truth_ratio"] = np.array([truth_ratio(float(c), p) for c, p in zip(mean_lp, pert_lp)])
    return out


def truth_ratios(model: nn.Module, ev: FactEval, batch_size: int = 512) -> np.ndarray:
    """The forget facts' truth ratios: the reference for :func:`evaluate`'s forget quality
    when computed with the retain-only (retrained) model."""
    return sample_stats(model, ev, "forget", batch_size)["truth_ratio"]


# ------------------------------------------------------------------ the report
def mrd_quartiles(mrd: Sequence[float] | np.ndarray) -> list[np.ndarray]:
    """Indices of the 4 MRD quartiles, lowest MRD first: the stable rank order cut into 4
    nearly equal chunks (sizes differ by at most one)."""
    arr = np.asarray(mrd, dtype=np.float64).ravel()
    if arr.size < 4:
        raise ConfigError(f"MRD quartiles need at least 4 forget samples, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ConfigError("mrd must hold finite numbers")
    return [np.sort(c) for c in np.array_split(np.argsort(arr, kind="stable"), 4)]


def _retrain_key(k: str) -> str:
    name = k[len("mia_auc_") :] if k.startswith("mia_auc_") else k
    if name not in MIA_SCORES:
        raise ConfigError(
            f"retrain_auc key {k!r} is not an MIA score; use one of {', '.join(MIA_SCORES)}"
        )
    return name


def evaluate(
    model: nn.Module,
    ev: FactEval,
    reference_truth_ratios: Sequence[float] | np.ndarray | None = None,
    retrain_auc: Mapping[str, float] | None = None,
    mrd: Sequence[float] | np.ndarray | None = None,
    batch_size: int = 512,
) -> dict[str, float]:
    """The flat report of ``model`` on ``ev`` (module docstring for every key)."""
    n_forget = len(ev.split("forget"))
    ref = None
    if reference_truth_ratios is not None:
        ref = np.asarray(reference_truth_ratios, dtype=np.float64).ravel()
        if ref.size != n_forget:
            raise ConfigError(
                f"reference_truth_ratios must hold one value per forget sample ({n_forget}), "
                f"got {ref.size}"
            )
    mrd_arr = None
    if mrd is not None:
        mrd_arr = np.asarray(mrd, dtype=np.float64).ravel()
        if mrd_arr.size != n_forget:
            raise ConfigError(
                f"mrd must hold one value per forget sample ({n_forget}, in the forget split's "
                f"order), got {mrd_arr.size}"
            )
    retrain = {_retrain_key(k): float(v) for k, v in (retrain_auc or {}).items()}

    stats = {s: sample_stats(model, ev, s, batch_size) for s in SPLITS}
    rep: dict[str, float] = {}
    for s in SPLITS:
        rep[f"{s}_nll"] = float(stats[s]["nll"].mean())
        rep[f"{s}_em"] = float(stats[s]["em"].mean())
    for s in _PERTURBED_SPLITS:
        rep[f"{s}_truth_ratio"] = float(stats[s]["truth_ratio"].mean())
    fs, hs = stats["forget"], stats["holdout"]
    if ref is not None:
        rep["forget_quality"] = forget_quality(fs["truth_ratio"], ref)
    for name in MIA_SCORES:
        rep[f"mia_auc_{name}"] = mia_auc(fs[f"{name}_score"], hs[f"{name}_score"])
    for name, auc in retrain.items():
        rep[f"privleak_{name}"] = privacy_leakage(rep[f"mia_auc_{name}"], auc)
    if mrd_arr is not None:
        for q, idx in enumerate(mrd_quartiles(mrd_arr), start=1):
            rep[f"q{q}_forget_em"] = float(fs["em"][idx].mean())
            rep[f"q{q}_forget_nll"] = float(fs["nll"][idx].mean())
            rep[f"q{q}_mia_auc_loss"] = mia_auc(fs["loss_score"][idx], hs["loss_score"])
            if ref is not None:
                rep[f"q{q}_forget_quality"] = forget_quality(fs["truth_ratio"][idx], ref[idx])
    return rep


# ------------------------------------------------------------------ robustness
def relearn(
    model: nn.Module,
    ev: FactEval,
    steps: int = 5,
    lr: float = 1e-3,
    share: float = 0.5,
    seed: int = 0,
    batch_size: int = 512,
) -> dict[str, float]:
    """Relearning attack on a copy of ``model`` (module docstring): ``relearn_em_before``,
    ``relearn_em_after``, ``relearn_nll_before``, ``relearn_nll_after``,
    ``relearn_recovery`` (EM after minus before) on the held-out forget facts, plus
    ``relearn_n_train`` and ``relearn_n_eval``."""
    sp = ev.split("forget")
    n = len(sp)
    if n < 2:
        raise ConfigError(f"relearning needs at least 2 forget samples, got {n}")
    if not 0.0 < float(share) < 1.0:
        raise ConfigError(f"share must be in (0, 1), got {share!r}")
    if int(steps) < 0:
        raise ConfigError(f"steps must be >= 0, got {steps!r}")
    _check_context(model, ev)
    n_train = min(n - 1, max(1, int(round(float(share) * n))))
    order = np.random.default_rng(seed).permutation(n)
    train_idx = torch.as_tensor(np.sort(order[:n_train]))
    eval_idx = torch.as_tensor(np.sort(order[n_train:]))
    e_ids, e_mask = sp.ids[eval_idx], sp.mask[eval_idx]

    def measure(m: nn.Module) -> tuple[float, float]:
        lp, tgt, em = _token_stats(m, e_ids, e_mask, batch_size)
        return float(em.mean()), float(-_mean_logprob(lp, tgt).mean())

    em_before, nll_before = measure(model)
    attacked = copy.deepcopy(model)
    dev = _device(attacked)
    t_ids, t_mask = sp.ids[train_idx].to(dev), sp.mask[train_idx].to(dev)
    opt = torch.optim.Adam(attacked.parameters(), lr=float(lr))
    attacked.train()
    for _ in range(int(steps)):
        loss = sequence_nll(attacked, t_ids, t_mask).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    attacked.eval()
    em_after, nll_after = measure(attacked)
    return {
        "relearn_em_before": em_before,
        "relearn_em_after": em_after,
        "relearn_nll_before": nll_before,
        "relearn_nll_after": nll_after,
        "relearn_recovery": relearn_recovery(em_after, em_before),
        "relearn_n_train": float(n_train),
        "relearn_n_eval": float(n - n_train),
    }


# ------------------------------------------------------------------ reporting
def _cell(v: object) -> str:
    if v is None:
        return "–"
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(float(v)) else f"{float(v):.4f}"
    return str(v)


def report_table(rows: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    """A markdown table: one row per model (``Original``, ``Retrain``, a method), one
    column per report key (``–`` where a row lacks the key)."""
    keys = list(keys)
    if not keys:
        raise ConfigError("report_table needs at least one key")
    lines = [
        "| model | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, rep in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cell(rep.get(k)) for k in keys) + " |")
    return "\n".join(lines)
