r"""CREAT (arXiv 2511.09392, AAAI-26): a constrained-RL profile-pollution attack on sequential
recommenders (torch / numpy / POT; no flwr).

Threat model (reference ``unlearning_attack.md`` §2.1): the attacker rewrites **at most K
positions** of existing user sequences to the target item ``v*`` (no fake users, no other item
is written) so that a recommender trained on the polluted sequences ranks ``v*`` high for
everyone, while the polluted sequences stay hard to tell from clean ones. The attacker holds a
white-box surrogate recommender ``model`` (in federated learning: the global model).

Interface used
--------------
Only ``model(tokens) -> (B, L, d)`` (left-padded tokens, item id + 1, 0 = padding),
``model.item_emb.weight`` (``(num_items + 1, d)``, row 0 = padding), ``model.max_len`` and
``model.num_items``: :class:`~fedrec.models.recsys.SASRec` and ``GRU4Rec`` both fit. The
sequence representation is ``phi(s) = model(to_tokens([s], L))[:, -1]`` (the last position's
hidden state). ``model`` is frozen: every call runs under ``torch.no_grad()`` in eval mode (its
mode is restored afterwards); no gradient ever reaches it. Only the last ``max_len`` items of a
sequence are read, so only they may be rewritten.

:func:`encode` computes encodings in chunks of rows of similar length, each chunk cut to its
longest row (fewer padding columns), duplicate rows once. This assumes that left padding does not
change a row's last hidden state: true for SASRec (right-aligned positions, key-padding mask;
tested against full-width calls) and GRU4Rec (its hidden state is carried over padding).

The method, step by step
------------------------
1. **Masker** :math:`M_\psi` (:class:`Masker`; paper §3, code ``Attack/model.py``). A step-wise
   MDP: the state is the partly polluted sequence :math:`s^{(i-1)}`; an action picks one
   position ``t`` that is neither padding nor already ``v*`` and writes ``v*`` there; K steps.
   Per position the input is ``[phi(s^{(i-1)}) broadcast, e(v_t), pos_t]`` (``e`` = the
   recommender's item table, detached; ``pos`` a learned position embedding, right-aligned like
   SASRec's), then a unidirectional GRU (``gru_layers`` x ``hidden``), dropout, a linear layer
   to one logit per position and a softmax over the valid positions. Rollouts sample;
   :func:`pollute` takes the argmax.
2. **Rewards** (Pattern Balanced Rewarding Policy), cumulative over the ``i`` positions
   perturbed so far and recomputed after every step (the paper's :math:`R^{(i)}`):

   * directionality (:func:`directionality_reward`):
     :math:`\sum_j D(\varphi(s'_{[:t_j]}), e(v^*)) + D(e(v^*), \varphi(s'_{[t_j+1:]}))` over the
     perturbed positions :math:`t_j` (prefix and suffix of the *current* polluted sequence,
     each encoded alone); ``distance="euclidean"`` (paper) or ``"cosine"`` = :math:`(1-\cos)/2`
     (code);
   * diversity (:func:`diversity_reward`, :func:`gram_diversity`): ``logdet`` (paper) or ``det``
     (code) of the Gram matrix of the L2-normalised encodings of the target-free segments;
   * distribution consistency :math:`R_{dist}` = minus the stealth cost: the dual-level co-OT
     distance below (:func:`dlot_distance`, :func:`stealth_costs`).

3. **Group-relative advantages.** For every batch of B sequences, G rollouts are sampled. Each
   reward of every (step, sequence) is z-normalised across its G rollouts,
   ``(r - mean_G) / (std_G + 1e-7)`` (``std`` with ``1/(G-1)``); the reward advantage is
   ``A = w_dir z(R_dir) + w_div z(R_div)`` and the cost advantage ``z(C)``.
4. **Stage 1 (localization)**: REINFORCE on :math:`R_{dir} + R_{div}` only, loss
   ``-mean(log pi(a|s) A)``. The result, frozen, is :math:`\pi_{att}`.
5. **Stage 2 (constrained fine-tuning).** The reward loss is the PPO-clip surrogate relative to
   the policy that sampled each transition plus a KL term toward :math:`\pi_{att}`,
   :math:`l_r = -\mathrm{mean}\min(r A, \mathrm{clip}(r, 1\pm\epsilon) A) +
   \beta\,\mathrm{mean}\,\mathrm{KL}(\pi_\psi(\cdot|s)\,\|\,\pi_{att}(\cdot|s))` (exact KL over
   the positions); the constraint loss is the pessimistic clipped surrogate of the cost,
   :math:`l_c = \mathrm{mean}\max(r \hat C, \mathrm{clip}(r) \hat C)` (as the code). The
   **dynamic threshold** comes from the group statistics, in normalised units per sequence:
   ``threshold="mean-std"``: :math:`\rho_{st} = \mu_G + \lambda_{st}\sigma_G`, i.e.
   ``lambda_st`` after normalisation (0 = the group mean); ``"median"``: the group's (lower)
   median (the code's ``K_PERCENTILE = 0.5``). **Dynamic barrier** (Gong & Liu 2021,
   :func:`barrier_delta`): :math:`g_r = \nabla_\psi l_r` and :math:`g_c = \nabla_\psi l_c`
   from ``torch.autograd.grad`` on the masker's parameters, :math:`\phi = \min(l_c -
   \overline{\rho_{st}}, \|g_c\|^2)` (``barrier_clip``; without it :math:`\phi = l_c -
   \overline{\rho_{st}}`), :math:`\delta = \max(0, (\phi - \langle g_c, g_r\rangle) /
   (\|g_c\|^2 + \kappa))`, and Adam steps along the descent direction :math:`g_r + \delta g_c`
   (in ascent terms :math:`\nabla J_r - \delta \nabla J_c`). With :math:`\kappa = 0` this is
   the projection of :math:`g_r` onto :math:`\{v: \langle g_c, v\rangle \ge \phi\}`: the step
   decreases :math:`l_c` at rate at least :math:`\phi` (tested against cvxpy).
   **Group-shared experience replay**: every stage-2 transition (state tokens, ``phi``,
   action, sampling log-prob, reward and cost advantages, threshold) enters a FIFO buffer of
   ``replay_size`` transitions; each update adds ``replay_ratio`` x (fresh transitions) drawn
   from the buffer (earlier batches) without replacement with probability proportional to
   ``|A| + 1e-6`` (relative prioritisation), each with its own stored sampling log-prob.
6. :func:`pollute`: K greedy (argmax) steps of the trained masker.

Dual-level co-optimal transport (DLOT), assembled from POT
-----------------------------------------------------------
:func:`ucoot` is POT's ``ot.gromov.unbalanced_co_optimal_transport`` between two sample x
feature matrices ``X`` (n, f) and ``Y`` (m, f'): a sample plan ``P`` (n, m) and a feature plan
``Q`` (f, f') minimising :math:`\sum (X_{ik} - Y_{jl})^2 P_{ij} Q_{kl}` + ``reg_marginals`` x
KL penalties on the marginals of :math:`P \otimes Q` (+ ``epsilon`` x entropic terms; ``0`` =
POT's majorisation-minimisation solver, as the code), uniform weights, plan masses kept equal
(``rescale_plan``), ``ot_max_iter`` block-coordinate-descent (BCD) iterations of
``ot_max_iter_inner`` inner iterations each. Its value is POT's full UCOOT objective (transport
+ marginal penalties). The BCD starts from ``0.9`` x (the exact OT plan of the rows under the
identity feature alignment, POT's ``ot.emd``) + ``0.1`` x uniform, and ``0.9 I/f + 0.1`` x
uniform for the features (when ``f = f'``): both sides are encoded by the same model, so their
coordinates correspond (on a 32 x 32 SASRec example POT's uniform start needed 80 x 100
iterations to come within 0.1 % of the converged value, this start 10 x 30).
:func:`dlot_distance` adds two UCOOTs:

* **sequence level**: samples = sequences, features = the d coordinates of ``phi`` (the
  code's call, but between the ORIGINAL set and the polluted set);
* **pattern level**: samples = k-gram windows ``phi(s[t:t+k])``, features = the d coordinates;

``DLOT = UCOOT_seq + pattern_weight * pattern_scale * UCOOT_pat``. Why two "sample x feature"
UCOOTs (the form of the code and of Tran et al.) and not one co-OT with sequences as samples and
patterns as features, which the paper's notation (two plans :math:`\pi_s, \pi_f`) could also
mean: that reading needs a sequence x pattern matrix :math:`\xi` the paper does not define, and a
feature plan over every window of a batch (B (L-k+1) ~ 1,600 per side) costs ~1 s per solve,
where training needs hundreds of solves.

In training the pattern level transports only the windows that **changed**: the polluted
windows overlapping a perturbed position against the original windows at the same places (at
most ``ot_max_patterns``; a seeded subsample beyond that), with ``pattern_scale`` = changed /
all windows of the batch. Unchanged windows are in both sets and cancel: exactly for the
balanced 1-Wasserstein distance (Kantorovich-Rubinstein duality); for UCOOT it is an
approximation, made for speed.

**Per-sequence costs** (:func:`stealth_costs`). The code attributes :math:`c_b = \|(P^\top X
Q)_b - X_b\|` with ``X`` the *current* encodings (a transported batch against itself,
unnormalised, hence dominated by :math:`\|X_b\|`). Here the polluted row ``b`` is compared
with the barycentre of the ORIGINAL rows transported to it, :math:`c_b = \|(P^\top X_{orig}
Q)_b / ((P^\top 1)_b (Q^\top 1)) - Y_b\|_2` (divided by the plans' column masses). The stealth
cost of a polluted sequence is its sequence-level :math:`c_b` plus ``pattern_weight`` x (the
sum of its changed windows' :math:`c_w` / its number of windows), the :math:`c_w` scaled by
changed / transported when subsampled.

Departures from the paper
-------------------------
* **Barrier sign.** The paper writes :math:`\delta = [(J_{dist} - \rho - \nabla
  J_{dist}^\top \nabla(J_{dir}+J_{div}))/(\|\nabla J_{dist}\|^2 + \kappa)]_+` next to an
  *ascent* step on :math:`J_{dir}+J_{div}`; that is Gong & Liu's formula for a *descent* step.
  We use it with loss gradients, where it is right; in ascent notation it reads
  :math:`[(J_c - \rho + \langle\nabla J_c, \nabla J_r\rangle)/\ldots]_+`. ``barrier_clip``
  (default on) uses Gong & Liu's practical :math:`\phi = \min(J_c - \rho, \|g_c\|^2)`.
* **Terminal stealth cost.** The cost is computed once per rollout, on its final polluted batch,
  and every step of the rollout gets it (GRPO's outcome supervision); the paper defines
  :math:`R^{(i)}_{dist}` per step. Stealth is a property of the published (final) sequences, and
  per-step costs would need K times more co-OT solves (the dominant cost of training).
  Directionality and diversity stay per step.
* **DLOT**: two UCOOTs, changed windows only at the pattern level (above); the paper's exact
  dual-level formula is not in the published text.
* The PPO ratio is relative to the sampling policy (as the code), not to :math:`\pi_{att}`
  (the paper's formula); :math:`\pi_{att}` enters through the KL term (the paper's Fig. 2).
* **Diversity segments.** ``n`` target occurrences cut the used part of a sequence into
  ``n + 1`` pieces, and all ``n + 1`` enter the Gram matrix; an empty piece (two adjacent
  targets, or a target at either end) is a zero vector, i.e. a degenerate direction: ``det =
  0`` and ``logdet`` gets the floor. With no target there is one piece (``det = 1``, ``logdet =
  0``). Why: comparing Gram determinants of different sizes (dropping empty pieces, as the code
  does) favours *fewer* pieces, because unit vectors can only lose volume when one is added; on
  our block-Markov toy that made the masker put targets at the ends and next to each other,
  *below* random positions in directionality. With a fixed size ``n + 1`` (a k-DPP comparison)
  the reward measures what the paper says, the diversity of the contexts between targets.
* ``logdet`` floors each Gram eigenvalue at ``1e-6`` (a degenerate direction costs
  ``log 1e-6``), so collinear or empty segments give a finite reward.
* An empty prefix or suffix adds 0 to the directionality (as the code).

Departures from the official code (SSndot/CREAT @ db4eb37)
---------------------------------------------------------
* **Stage-1 sign.** Stage 1 minimises ``-log pi(a) A`` (REINFORCE). The code minimises
  ``+pi(a) A``, which *lowers* the probability of above-average actions (a sign error, and
  ``pi`` where ``log pi`` belongs).
* Advantage = ``w_dir z(R_dir) + w_div z(R_div)`` (the paper's :math:`\hat A^{dir} + \hat
  A^{div}`); the code z-normalises ``R_dir + R_div``, two terms of different scales.
* Directionality sums over the positions the masker perturbed; the code sums over every ``v*``
  of the sequence, including ones the user already had.
* Diversity: target-free pieces, empty ones included (above); the code's segments
  ``seq[p_{j-1}:p_j]`` start with the previous target, drop empty ones, and ``dpp = 0`` when
  there is none.
* Stealth cost: against the original sequences, barycentric, dual-level and terminal (above);
  the code runs UCOOT between consecutive steps on sequence encodings with POT's uniform start
  and 20 BCD iterations (here 10 x 30 from the warm start).
* Stage 2 adds the KL term toward :math:`\pi_{att}` (absent in the code) and experience replay
  over earlier batches (the code reuses only the current batch); ``update_steps`` = the code's
  ``TRAIN_STEP``. As in the code, rollout log-probs come from the masker in eval mode and
  updates run in train mode (dropout), so the PPO ratio is not exactly 1 on fresh data.
* Defaults sized for a 2-core CPU (reference §2.10): G = 8 (code 16), GRU hidden 64 (128),
  position embedding 32 (64), batch 32 (64), lr 1e-3 (code 1e-6), 5 + 5 epochs (10 + 10);
  ``distance="euclidean"``, ``diversity="logdet"`` (the paper's; the code uses ``"cosine"``,
  ``"det"``).

Choices where the paper is silent
---------------------------------
``reg_marginals = 10`` (POT's default, used by the code), ``epsilon = 0``, k = 2, pattern weight
1; replay ratio 0.5 with priority ``|A|``; KL weight 0.01; transitions of a sequence with no
valid position left are dropped; the last item may be rewritten; a 2-item sequence may be
rewritten completely when K >= 2.

Randomness: the masker's initialisation and its dropout use torch's global generator inside
``torch.random.fork_rng`` seeded from ``seed``; actions use an explicit ``torch.Generator``, and
batching, replay and window subsampling a numpy ``Generator``, all derived from ``seed``. Same
inputs and seed give the same masker, history and pollution (tested).

References
----------
.. [1] CREAT, arXiv 2511.09392 (AAAI-26); official code github.com/SSndot/CREAT.
.. [2] Tran, Janati, Courty, Flamary, Redko, Demetci, Singh. "Unbalanced Co-Optimal Transport",
    AAAI 2023.
.. [3] Gong, C. and Liu, X. "Bi-objective Trade-off with Dynamic Barrier Gradient Descent",
    NeurIPS 2021.
.. [4] Shao et al. "DeepSeekMath" (GRPO's group-relative advantages), arXiv 2402.03300.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedrec.errors import ConfigError
from fedrec.models.recsys import to_tokens
from fedrec.seeding import derive_seed

__all__ = [
    "CreatParams",
    "CreatResult",
    "DlotResult",
    "Masker",
    "UcootResult",
    "barrier_delta",
    "creat_attack",
    "directionality_reward",
    "diversity_reward",
    "dlot_distance",
    "encode",
    "gram_diversity",
    "pollute",
    "segment_tokens",
    "stealth_costs",
    "train_masker",
    "ucoot",
]

_NEG = -1e9  # logit of a masked position (exp underflows to exactly 0 in float32)
_EIG_FLOOR = 1e-6  # logdet floor per Gram eigenvalue
_ADV_EPS = 1e-7  # the code's z-normalisation epsilon


# =========================================================================== parameters


_CHOICES = {
    "threshold": ("mean-std", "median"),
    "distance": ("cosine", "euclidean"),
    "diversity": ("det", "logdet"),
}
_INT_MIN = {
    "K": 1,
    "G": 2,
    "hidden": 1,
    "pos_dim": 1,
    "gru_layers": 1,
    "stage1_epochs": 0,
    "stage2_epochs": 0,
    "batch_size": 1,
    "update_steps": 1,
    "kgram": 1,
    "ot_max_iter": 1,
    "ot_max_iter_inner": 1,
    "ot_max_patterns": 1,
    "replay_size": 0,
    "seed": 0,
}
_FLOAT_RANGE = {  # name -> (low, high, low inclusive)
    "dropout": (0.0, 1.0, True),
    "lr": (0.0, math.inf, False),
    "clip_eps": (0.0, 1.0, False),
    "kl_coef": (0.0, math.inf, True),
    "kappa": (0.0, math.inf, True),
    "lambda_st": (-math.inf, math.inf, True),
    "w_dir": (0.0, math.inf, True),
    "w_div": (0.0, math.inf, True),
    "pattern_weight": (0.0, math.inf, True),
    "ot_reg_marginals": (0.0, math.inf, False),
    "ot_eps": (0.0, math.inf, True),
    "replay_ratio": (0.0, math.inf, True),
}


@dataclass(frozen=True)
class CreatParams:
    """CREAT hyperparameters (defaults sized for a 2-core CPU, reference §2.10).

    Attributes
    ----------
    K : budget, the most positions rewritten per sequence (code ``MAX_ATTACK_NUM`` 5).
    G : rollouts per sequence, the group of the group-relative advantages (code 16).
    hidden, pos_dim, gru_layers, dropout : masker GRU width (code 128), position-embedding size
        (code 64), GRU layers (2) and dropout after the GRU (0.1).
    lr : Adam learning rate of the masker (code 1e-6; far too small for a few epochs).
    stage1_epochs, stage2_epochs : passes over the sequences in stage 1 (localization, rewards
        only) and stage 2 (constrained); the code uses 10 + 10.
    batch_size : sequences per batch (one update per batch and ``update_steps``).
    update_steps : gradient steps per batch of rollouts (code ``TRAIN_STEP`` 1).
    clip_eps : PPO clip epsilon (code 0.2).
    kl_coef : weight of KL(pi || pi_att) in stage 2.
    kappa : barrier denominator regulariser, ``||g_c||^2 + kappa``.
    barrier_clip : use ``phi = min(J_c - rho, ||g_c||^2)`` in the barrier (Gong & Liu's
        practical form, the code's) instead of ``phi = J_c - rho`` (:func:`barrier_delta`).
    threshold, lambda_st : dynamic stealth threshold: ``"mean-std"`` = group mean +
        ``lambda_st`` x group std (0 = the mean), ``"median"`` = the group median (the code).
    w_dir, w_div : weights of the directionality and diversity advantages.
    distance : ``"euclidean"`` (paper) or ``"cosine"`` = (1 - cos) / 2 (code).
    diversity : ``"logdet"`` (paper) or ``"det"`` (code).
    kgram : window length k of the pattern level of the co-OT distance.
    pattern_weight : weight of the pattern level in the co-OT distance and the stealth cost.
    ot_reg_marginals, ot_eps : UCOOT marginal KL penalty and entropic regularisation (0 = the
        MM solver, as the code).
    ot_max_iter, ot_max_iter_inner : block-coordinate iterations (code ``OT_MAX_ITER`` 20) and
        iterations of each inner unbalanced OT solve.
    ot_max_patterns : most changed windows transported per co-OT solve (seeded subsample).
    replay_size, replay_ratio : experience-replay capacity (transitions; 0 disables replay) and
        replayed transitions per fresh one in a stage-2 update.
    seed : seed of everything random in :func:`train_masker`.
    """

    K: int = 5
    G: int = 8
    hidden: int = 64
    pos_dim: int = 32
    gru_layers: int = 2
    dropout: float = 0.1
    lr: float = 1e-3
    stage1_epochs: int = 5
    stage2_epochs: int = 5
    batch_size: int = 32
    update_steps: int = 1
    clip_eps: float = 0.2
    kl_coef: float = 0.01
    kappa: float = 1e-8
    barrier_clip: bool = True
    threshold: str = "mean-std"
    lambda_st: float = 0.0
    w_dir: float = 1.0
    w_div: float = 1.0
    distance: str = "euclidean"
    diversity: str = "logdet"
    kgram: int = 2
    pattern_weight: float = 1.0
    ot_reg_marginals: float = 10.0
    ot_eps: float = 0.0
    ot_max_iter: int = 10
    ot_max_iter_inner: int = 30
    ot_max_patterns: int = 128
    replay_size: int = 4096
    replay_ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v, name = getattr(self, f.name), f.name
            if name == "barrier_clip":
                if not isinstance(v, bool):
                    raise ConfigError(f"CreatParams.{name} must be true or false (got {v!r})")
            elif name in _CHOICES:
                if v not in _CHOICES[name]:
                    allowed = ", ".join(repr(c) for c in _CHOICES[name])
                    raise ConfigError(f"CreatParams.{name} must be one of {allowed} (got {v!r})")
            elif name in _INT_MIN:
                if (
                    isinstance(v, bool)
                    or not isinstance(v, (int, np.integer))
                    or v < _INT_MIN[name]
                ):
                    raise ConfigError(
                        f"CreatParams.{name} must be an integer >= {_INT_MIN[name]} (got {v!r})"
                    )
            else:
                lo, hi, inclusive = _FLOAT_RANGE[name]
                ok = (
                    isinstance(v, (int, float, np.floating, np.integer))
                    and not isinstance(v, bool)
                    and math.isfinite(float(v))
                    and (float(v) >= lo if inclusive else float(v) > lo)
                    and float(v) < hi
                )
                if not ok:
                    lo_s = ("[" if inclusive else "(") + f"{lo}, {hi})"
                    raise ConfigError(f"CreatParams.{name} must be a number in {lo_s} (got {v!r})")


# =========================================================================== encodings


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the block, the previous mode restored afterwards."""
    was = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was)


def _device(model: Any) -> torch.device:
    return model.item_emb.weight.device


def encode(model: Any, tokens: torch.Tensor, *, chunk: int = 512) -> torch.Tensor:
    """``phi`` of left-padded token rows: ``model(tokens)[:, -1]``, float32 ``(N, d)``, no grad.

    Rows are deduplicated and encoded in chunks of similar length, each chunk cut to its longest
    row (see the module docstring). An all-padding row has no meaningful ``phi``; callers skip
    such rows.
    """
    d = model.item_emb.weight.shape[1]
    if tokens.shape[0] == 0:
        return torch.zeros(0, d)
    dev = _device(model)
    with torch.no_grad(), _eval_mode(model):
        uniq, inv = torch.unique(tokens, dim=0, return_inverse=True)
        lengths = (uniq != 0).sum(1)
        order = torch.argsort(lengths, stable=True)
        L = uniq.shape[1]
        out = torch.empty(uniq.shape[0], d)
        for a in range(0, uniq.shape[0], chunk):
            idx = order[a : a + chunk]
            w = max(1, int(lengths[idx].max()))
            out[idx] = model(uniq[idx][:, L - w :].to(dev))[:, -1].float().cpu()
    return out[inv]


def segment_tokens(
    tokens: torch.Tensor, rows: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor
) -> torch.Tensor:
    """Left-padded ``tokens[rows[m], starts[m]:ends[m]]`` as ``(M, L)`` rows."""
    L = tokens.shape[1]
    c = torch.arange(L)
    src = c[None, :] - (L - ends[:, None])
    ok = src >= starts[:, None]
    return tokens[rows[:, None], src.clamp(min=0)] * ok


def _target_vec(model: Any, target: int) -> torch.Tensor:
    return model.item_emb.weight[int(target) + 1].detach().float().cpu()


def _check_target(model: Any, target: int) -> int:
    if int(target) != target or not 0 <= int(target) < int(model.num_items):
        raise ConfigError(f"target must be an item id in [0, {model.num_items}) (got {target})")
    return int(target)


# =========================================================================== rewards


def _distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Row-wise ``D(a, b)``: Euclidean, or cosine distance ``(1 - cos) / 2``."""
    if kind == "euclidean":
        return (a - b).norm(dim=-1)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(a, b.expand_as(a), dim=-1)) / 2.0
    raise ConfigError(f"distance must be one of 'cosine', 'euclidean' (got {kind!r})")


def directionality_reward(
    model: Any,
    tokens: torch.Tensor,
    perturbed: torch.Tensor,
    target: int,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Directionality reward per row, ``(N,)`` float32.

    ``sum_t D(phi(s[:t]), e(v*)) + D(e(v*), phi(s[t+1:]))`` over the positions ``t`` where
    ``perturbed`` (``(N, L)`` bool) is true; ``tokens`` ``(N, L)`` are the left-padded polluted
    rows, prefix and suffix are taken from them (other targets included) and encoded alone; an
    empty prefix or suffix adds 0. ``e(v*)`` is the recommender's item embedding of ``target``.
    """
    target = _check_target(model, target)
    N = tokens.shape[0]
    rows, pos = perturbed.nonzero(as_tuple=True)
    out = torch.zeros(N)
    if rows.numel() == 0:
        return out
    L = tokens.shape[1]
    e = _target_vec(model, target)
    pre = segment_tokens(tokens, rows, torch.zeros_like(pos), pos)
    suf = segment_tokens(tokens, rows, pos + 1, torch.full_like(pos, L))
    both = torch.cat([pre, suf])
    nonempty = (both != 0).any(1)
    enc = torch.zeros(both.shape[0], e.numel())
    enc[nonempty] = encode(model, both[nonempty])
    dist = _distance(enc, e[None, :], distance) * nonempty
    M = rows.numel()
    return out.index_add_(0, rows, dist[:M] + dist[M:])


def gram_diversity(
    encodings: torch.Tensor, kind: str = "logdet", sizes: torch.Tensor | None = None
) -> torch.Tensor:
    """``det`` or ``logdet`` of the Gram matrix of the L2-normalised rows of ``encodings``.

    ``(n, d)`` -> scalar; ``(N, n, d)`` -> ``(N,)``, where only the first ``sizes[r]`` rows of
    batch entry ``r`` count (default: all; the others get an identity block, which changes
    neither value). A zero row is a degenerate direction (an empty segment): ``det = 0`` and
    ``logdet`` gets the floor. ``logdet`` floors every eigenvalue at ``1e-6``; ``det`` is
    clipped at 0. No rows: ``det = 1``, ``logdet = 0`` (the empty matrix).
    """
    if kind not in ("det", "logdet"):
        raise ConfigError(f"diversity must be one of 'det', 'logdet' (got {kind!r})")
    x = encodings.float()
    single = x.dim() == 2
    if single:
        x = x[None]
    N, S, _ = x.shape
    u = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    G = u @ u.transpose(1, 2)
    if sizes is not None:
        pad = torch.arange(S)[None, :] >= sizes.reshape(-1, 1)
        G = G + torch.diag_embed(pad.to(G.dtype))
    if S == 0:
        out = torch.full((N,), 1.0 if kind == "det" else 0.0)
    elif kind == "det":
        out = torch.linalg.det(G).clamp_min(0.0)
    else:
        out = torch.linalg.eigvalsh(G).clamp_min(_EIG_FLOOR).log().sum(-1)
    return out[0] if single else out


def _segments(tokens: torch.Tensor, target_tok: int) -> tuple[torch.Tensor, ...]:
    """The pieces of every row cut by its target occurrences: ``(rows, starts, ends)``,
    row-major; ``n`` targets in a row give ``n + 1`` pieces of its used region, empty ones
    (``start == end``) included."""
    N, L = tokens.shape
    o = L - (tokens != 0).sum(1)  # first used column (left padding)
    rt, pt = (tokens == target_tok).nonzero(as_tuple=True)
    ar = torch.arange(N)
    rs, st = torch.cat([ar, rt]), torch.cat([o, pt + 1])
    re_, en = torch.cat([rt, ar]), torch.cat([pt, torch.full((N,), L)])
    i_s = torch.argsort(rs * (L + 2) + st)
    i_e = torch.argsort(re_ * (L + 2) + en)
    return rs[i_s], st[i_s], en[i_e]


def diversity_reward(
    model: Any, tokens: torch.Tensor, target: int, kind: str = "logdet"
) -> torch.Tensor:
    """Diversity reward per row, ``(N,)``: :func:`gram_diversity` of the encodings of the
    target-free segments of each row, i.e. the ``n + 1`` pieces its ``n`` target occurrences
    cut its used region into; an empty piece (adjacent targets, or a target at either end) is a
    zero vector, so it makes the Gram matrix singular (module docstring)."""
    target = _check_target(model, target)
    if kind not in ("det", "logdet"):
        raise ConfigError(f"diversity must be one of 'det', 'logdet' (got {kind!r})")
    N = tokens.shape[0]
    rows, starts, ends = _segments(tokens, target + 1)
    d = model.item_emb.weight.shape[1]
    counts = torch.bincount(rows, minlength=N)
    S = int(counts.max()) if N else 0
    padded = torch.zeros(N, S, d)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(rows.numel()) - first[rows]
    full = ends > starts
    if bool(full.any()):
        enc = encode(model, segment_tokens(tokens, rows[full], starts[full], ends[full]))
        padded[rows[full], slot[full]] = enc
    return gram_diversity(padded, kind, sizes=counts)


# =========================================================================== co-optimal transport


@dataclass(frozen=True)
class UcootResult:
    """:func:`ucoot`: ``value`` (POT's full UCOOT objective), ``transport`` (its co-transport
    term), the plans and ``sample_costs`` (m,): the barycentric discrepancy of every ``Y`` row,
    ``||(P^T X Q)_j / ((P^T 1)_j (Q^T 1)) - Y_j||_2``."""

    value: float
    transport: float
    plan_samples: np.ndarray
    plan_features: np.ndarray
    sample_costs: np.ndarray


def _ucoot_init(X: np.ndarray, Y: np.ndarray, lam: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """BCD start: ``lam`` x (the exact OT plan of the rows under the identity feature alignment,
    ``ot.emd``) + ``(1 - lam)`` x uniform, and ``lam`` x ``I / f`` + ``(1 - lam)`` x uniform for
    the features when both sides have the same features (else uniform). The uniform share keeps
    every entry positive (the MM solver's updates are multiplicative)."""
    import ot

    n, m = X.shape[0], Y.shape[0]
    f, g = X.shape[1], Y.shape[1]
    P_unif = np.full((n, m), 1.0 / (n * m))
    Q_unif = np.full((f, g), 1.0 / (f * g))
    if f != g:
        return P_unif, Q_unif
    P = ot.emd(np.full(n, 1.0 / n), np.full(m, 1.0 / m), ot.dist(X, Y))
    return lam * P + (1 - lam) * P_unif, lam * np.eye(f) / f + (1 - lam) * Q_unif


def ucoot(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    reg_marginals: float = 10.0,
    epsilon: float = 0.0,
    max_iter: int = 10,
    max_iter_ot: int = 30,
) -> UcootResult:
    """Unbalanced co-optimal transport between sample x feature matrices (POT's
    ``ot.gromov.unbalanced_co_optimal_transport``, uniform weights, KL marginals; ``epsilon =
    0`` uses POT's MM solver, otherwise Sinkhorn). See the module docstring."""
    from ot.gromov import unbalanced_co_optimal_transport

    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or min(X.shape) == 0 or min(Y.shape) == 0:
        raise ConfigError(f"ucoot needs two non-empty 2-D matrices (got {X.shape} and {Y.shape})")
    P, Q, log = unbalanced_co_optimal_transport(
        X,
        Y,
        init_pi=_ucoot_init(X, Y),
        reg_marginals=float(reg_marginals),
        epsilon=float(epsilon),
        divergence="kl",
        unbalanced_solver="mm" if epsilon == 0 else "sinkhorn",
        max_iter=int(max_iter),
        max_iter_ot=int(max_iter_ot),
        log=True,
    )
    col_p = np.maximum(P.sum(0), 1e-300)
    col_q = np.maximum(Q.sum(0), 1e-300)
    bary = (P.T @ X @ Q) / col_p[:, None] / col_q[None, :]
    costs = np.linalg.norm(bary - Y, axis=1)
    return UcootResult(
        float(log["ucoot_cost"]), float(log["linear_cost"]), P, Q, costs.astype(np.float64)
    )


@dataclass(frozen=True)
class DlotResult:
    """:func:`dlot_distance`: ``value = sequence + pattern_weight * pattern``, the two levels
    (``pattern`` already times ``pattern_scale``), and the per-row costs of the polluted
    sequences (``sequence_costs``) and windows (``pattern_costs``)."""

    value: float
    sequence: float
    pattern: float
    sequence_costs: np.ndarray
    pattern_costs: np.ndarray


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def dlot_distance(
    H_orig: np.ndarray | torch.Tensor,
    H_pert: np.ndarray | torch.Tensor,
    W_orig: np.ndarray | torch.Tensor | None = None,
    W_pert: np.ndarray | torch.Tensor | None = None,
    *,
    pattern_weight: float = 1.0,
    pattern_scale: float = 1.0,
    reg_marginals: float = 10.0,
    epsilon: float = 0.0,
    max_iter: int = 10,
    max_iter_ot: int = 30,
) -> DlotResult:
    """Dual-level unbalanced co-OT distance between an original and a polluted set.

    ``H_*``: sequence encodings (n, d) and (m, d); ``W_*``: k-gram window encodings (both or
    neither; an empty pattern set contributes 0). ``value = UCOOT(H_orig, H_pert) +
    pattern_weight * pattern_scale * UCOOT(W_orig, W_pert)`` (module docstring).
    """
    kw: dict[str, Any] = dict(
        reg_marginals=reg_marginals, epsilon=epsilon, max_iter=max_iter, max_iter_ot=max_iter_ot
    )
    seq = ucoot(_np(H_orig), _np(H_pert), **kw)
    if (W_orig is None) != (W_pert is None):
        raise ConfigError("W_orig and W_pert must be given together")
    pat_value, pat_costs = 0.0, np.zeros(0)
    if W_orig is not None and W_pert is not None:
        Wo, Wp = _np(W_orig), _np(W_pert)
        if Wo.shape[0] and Wp.shape[0]:
            pat = ucoot(Wo, Wp, **kw)
            pat_value, pat_costs = float(pattern_scale) * pat.value, pat.sample_costs
        elif Wp.shape[0]:
            pat_costs = np.zeros(Wp.shape[0])
    return DlotResult(
        seq.value + float(pattern_weight) * pat_value,
        seq.value,
        pat_value,
        seq.sample_costs,
        pat_costs,
    )


class _StealthContext:
    """Original encodings of one batch (sequence level and every k-gram window)."""

    def __init__(self, model: Any, orig: torch.Tensor, params: CreatParams):
        self.model, self.orig, self.params = model, orig, params
        B, L = orig.shape
        k = params.kgram
        self.H = encode(model, orig)
        self.nw = max(0, L - k + 1)
        d = self.H.shape[1]
        self.W = torch.zeros(B, self.nw, d)
        self.win_ok = torch.zeros(B, self.nw, dtype=torch.bool)
        if self.nw:
            self.win_ok = orig[:, : self.nw] != 0  # window [t, t + k) inside the used region
            b, t = self.win_ok.nonzero(as_tuple=True)
            if b.numel():
                self.W[b, t] = encode(model, segment_tokens(orig, b, t, t + k))
        self.n_windows = self.win_ok.sum(1)  # per sequence
        self.total_windows = int(self.n_windows.sum())


def stealth_costs(
    ctx: _StealthContext,
    polluted: torch.Tensor,
    H_pert: torch.Tensor,
    rng: np.random.Generator,
) -> tuple[np.ndarray, torch.Tensor]:
    """DLOT values ``(R,)`` and per-sequence stealth costs ``(R, B)`` of ``R`` polluted versions
    (``polluted`` ``(R * B, L)``, rollout-major, ``H_pert`` their encodings) of the batch in
    ``ctx`` (module docstring: changed windows only at the pattern level)."""
    p = ctx.params
    B, L = ctx.orig.shape
    R = polluted.shape[0] // B
    k = p.kgram
    orig_rep = ctx.orig.repeat(R, 1)
    changed_pos = polluted != orig_rep
    values = np.zeros(R)
    costs = torch.zeros(R, B)
    if ctx.nw:
        changed = changed_pos.unfold(1, k, 1).any(-1) & ctx.win_ok.repeat(R, 1)
    else:
        changed = torch.zeros(R * B, 0, dtype=torch.bool)
    sel_rows, sel_t, per_r = [], [], []
    for r in range(R):
        b, t = changed[r * B : (r + 1) * B].nonzero(as_tuple=True)
        n_c = b.numel()
        if n_c > p.ot_max_patterns:
            keep = np.sort(rng.choice(n_c, p.ot_max_patterns, replace=False))
            keep_t = torch.from_numpy(keep)
            b, t = b[keep_t], t[keep_t]
        per_r.append((b, t, n_c))
        sel_rows.append(b + r * B)
        sel_t.append(t)
    rows_all, t_all = torch.cat(sel_rows), torch.cat(sel_t)
    W_all = encode(ctx.model, segment_tokens(polluted, rows_all, t_all, t_all + k))
    off = 0
    for r, (b, t, n_c) in enumerate(per_r):
        n_s = b.numel()
        Wp = W_all[off : off + n_s]
        off += n_s
        res = dlot_distance(
            ctx.H,
            H_pert[r * B : (r + 1) * B],
            ctx.W[b, t],
            Wp,
            pattern_weight=p.pattern_weight,
            pattern_scale=n_c / max(ctx.total_windows, 1),
            reg_marginals=p.ot_reg_marginals,
            epsilon=p.ot_eps,
            max_iter=p.ot_max_iter,
            max_iter_ot=p.ot_max_iter_inner,
        )
        values[r] = res.value
        c = torch.from_numpy(res.sequence_costs).float()
        if n_s:
            w = torch.from_numpy(res.pattern_costs).float() * (n_c / n_s)
            pat = torch.zeros(B).index_add_(0, b, w) / ctx.n_windows.clamp_min(1)
            c = c + p.pattern_weight * pat
        costs[r] = c
    return values, costs


# =========================================================================== barrier


def barrier_delta(
    g_r: torch.Tensor,
    g_c: torch.Tensor,
    violation: float,
    kappa: float = 1e-8,
    *,
    clip: bool = True,
) -> float:
    """Dynamic-barrier multiplier (Gong & Liu 2021), descent form.

    ``delta = max(0, (phi - <g_c, g_r>) / (||g_c||^2 + kappa))`` for the loss gradients ``g_r``
    (objective) and ``g_c`` (constraint), with ``phi = violation = J_c - rho``, or, with
    ``clip`` (Gong & Liu's practical choice and the official code's), ``phi = min(violation,
    ||g_c||^2)``, so that a tiny ``g_c`` cannot blow ``delta`` up. With ``kappa = 0``, ``v = g_r
    + delta g_c`` is the projection of ``g_r`` onto ``{v : <g_c, v> >= phi}``: the smallest
    change of the descent direction under which ``-v`` decreases the constraint at rate at
    least ``phi``.
    """
    g_r, g_c = g_r.detach().reshape(-1).double(), g_c.detach().reshape(-1).double()
    sq = float(g_c @ g_c)
    den = sq + float(kappa)
    if den <= 0:
        return 0.0
    phi = min(float(violation), sq) if clip else float(violation)
    return max(0.0, (phi - float(g_c @ g_r)) / den)


# =========================================================================== masker


class Masker(nn.Module):
    """CREAT's perturbation masker (module docstring, step 1).

    ``forward(phi (N, d), item_emb (N, L, d), valid (N, L) bool) -> (N, L)`` log-probabilities
    over positions (invalid positions get probability 0; a row without valid positions is
    uniform and must be ignored by the caller).
    """

    def __init__(
        self,
        d: int,
        max_len: int,
        hidden: int = 64,
        pos_dim: int = 32,
        num_layers: int = 2,
        dropout: float = 0.1,
        *,
        seed: int = 0,
    ):
        super().__init__()
        self.d, self.max_len = int(d), int(max_len)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.pos_emb = nn.Embedding(self.max_len, pos_dim)
            nn.init.xavier_uniform_(self.pos_emb.weight)
            self.gru = nn.GRU(2 * self.d + pos_dim, hidden, num_layers, batch_first=True)
            self.dropout = nn.Dropout(dropout)
            self.head = nn.Linear(hidden, 1)

    def forward(
        self, phi: torch.Tensor, item_emb: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        N, L, _ = item_emb.shape
        pos = self.pos_emb.weight[self.max_len - L :]
        x = torch.cat(
            [phi[:, None, :].expand(-1, L, -1), item_emb, pos[None].expand(N, -1, -1)], dim=-1
        )
        h, _ = self.gru(x)
        logits = self.head(self.dropout(h)).squeeze(-1)
        return torch.log_softmax(logits.masked_fill(~valid, _NEG), dim=-1)

    def act(
        self,
        phi: torch.Tensor,
        item_emb: torch.Tensor,
        valid: torch.Tensor,
        *,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step: ``(positions (N,), their log-probs (N,), has_valid (N,))``.

        Sampled from the masked softmax (``generator``) or its argmax (``greedy``); rows with no
        valid position get position 0 and ``has_valid = False``.
        """
        logp = self(phi, item_emb, valid)
        if greedy:
            a = logp.argmax(-1)
        else:
            a = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        has = valid.any(-1)
        a = torch.where(has, a, torch.zeros_like(a))
        return a, logp.gather(1, a[:, None]).squeeze(1), has


def _valid(tokens: torch.Tensor, target_tok: int) -> torch.Tensor:
    return (tokens != 0) & (tokens != target_tok)


def _item_emb(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    return model.item_emb.weight.detach().float().cpu()[tokens]


# =========================================================================== rollouts


@dataclass
class _Rollouts:
    """Transitions of G rollouts of a batch, all ``(K, G*B, ...)``, rollout-major rows."""

    states: torch.Tensor
    phis: torch.Tensor
    actions: torch.Tensor
    logp: torch.Tensor
    active: torch.Tensor
    r_dir: torch.Tensor
    r_div: torch.Tensor
    cost: torch.Tensor  # (G*B,) stealth cost of every final polluted sequence
    final: torch.Tensor
    final_phi: torch.Tensor
    values: np.ndarray  # (G,) DLOT of every rollout's final polluted batch


def _rollout(
    model: Any,
    masker: Masker,
    orig: torch.Tensor,
    target: int,
    params: CreatParams,
    gen: torch.Generator,
    rng: np.random.Generator,
    *,
    ctx: _StealthContext,
) -> _Rollouts:
    K, G = params.K, params.G
    tt = target + 1
    cur = orig.repeat(G, 1)
    N, L = cur.shape
    pert = torch.zeros_like(cur, dtype=torch.bool)
    states = torch.zeros(K, N, L, dtype=torch.long)
    phis = torch.zeros(K, N, model.item_emb.weight.shape[1])
    actions = torch.zeros(K, N, dtype=torch.long)
    logp = torch.zeros(K, N)
    active = torch.zeros(K, N, dtype=torch.bool)
    r_dir, r_div = torch.zeros(K, N), torch.zeros(K, N)
    phi = encode(model, cur)
    with torch.no_grad(), _eval_mode(masker):
        for i in range(K):
            valid = _valid(cur, tt)
            a, lp, has = masker.act(phi, _item_emb(model, cur), valid, generator=gen)
            states[i], phis[i], actions[i], logp[i], active[i] = cur, phi, a, lp, has
            rows = has.nonzero(as_tuple=True)[0]
            cur = cur.clone()
            cur[rows, a[rows]] = tt
            pert[rows, a[rows]] = True
            phi = encode(model, cur)
            r_dir[i] = directionality_reward(model, cur, pert, target, params.distance)
            r_div[i] = diversity_reward(model, cur, target, params.diversity)
        values, cost = stealth_costs(ctx, cur, phi, rng)
    return _Rollouts(
        states, phis, actions, logp, active, r_dir, r_div, cost.reshape(-1), cur, phi, values
    )


def _znorm(x: torch.Tensor, G: int) -> torch.Tensor:
    """``(K, G*B)`` -> z-normalised across the G rollouts of every (step, sequence)."""
    K, N = x.shape
    v = x.reshape(K, G, N // G)
    z = (v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + _ADV_EPS)
    return z.reshape(K, N)


def _threshold(cost: torch.Tensor, G: int, params: CreatParams) -> torch.Tensor:
    """The dynamic threshold of every (step, sequence) in normalised units, ``(K, G*B)``."""
    K, N = cost.shape
    if params.threshold == "mean-std":
        return torch.full((K, N), float(params.lambda_st))
    v = cost.reshape(K, G, N // G)
    med = v.median(1, keepdim=True).values
    z = (med - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + _ADV_EPS)
    return z.expand(K, G, N // G).reshape(K, N)


class _Replay:
    """FIFO buffer of stage-2 transitions, prioritised sampling by ``|advantage|``."""

    KEYS = ("states", "phis", "actions", "logp", "adv", "cadv", "rho")

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.data: dict[str, torch.Tensor] | None = None

    def __len__(self) -> int:
        return 0 if self.data is None else int(self.data["actions"].shape[0])

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        if self.capacity <= 0:
            return
        if self.data is None:
            self.data = {k: batch[k].clone() for k in self.KEYS}
        else:
            self.data = {k: torch.cat([self.data[k], batch[k]]) for k in self.KEYS}
        n = len(self)
        if n > self.capacity:
            self.data = {k: v[n - self.capacity :] for k, v in self.data.items()}

    def sample(self, n: int, rng: np.random.Generator) -> dict[str, torch.Tensor] | None:
        size = len(self)
        n = min(int(n), size)
        if n <= 0 or self.data is None:
            return None
        prio = self.data["adv"].abs().double().numpy() + 1e-6
        idx = rng.choice(size, n, replace=False, p=prio / prio.sum())
        it = torch.from_numpy(np.sort(idx))
        return {k: v[it] for k, v in self.data.items()}


def _transitions(ro: _Rollouts, adv: torch.Tensor, **extra: torch.Tensor) -> dict:
    m = ro.active.reshape(-1)
    L = ro.states.shape[-1]
    out = {
        "states": ro.states.reshape(-1, L)[m],
        "phis": ro.phis.reshape(-1, ro.phis.shape[-1])[m],
        "actions": ro.actions.reshape(-1)[m],
        "logp": ro.logp.reshape(-1)[m],
        "adv": adv.reshape(-1)[m],
    }
    out.update({k: v.reshape(-1)[m] for k, v in extra.items()})
    return out


def _flat_grad(loss: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    gs = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


# =========================================================================== training


def _prepare(
    model: Any, sequences: Sequence, target: int
) -> tuple[list[np.ndarray], list[int], torch.Tensor]:
    """Arrays of the sequences, indices of the pollutable ones (>= 2 items) and their tokens."""
    target = _check_target(model, target)
    seqs = [np.asarray(s, dtype=np.int64).reshape(-1) for s in sequences]
    n = int(model.num_items)
    for i, s in enumerate(seqs):
        if s.size and (s.min() < 0 or s.max() >= n):
            raise ConfigError(f"sequence {i} has item ids outside [0, {n})")
    idx = [i for i, s in enumerate(seqs) if s.size >= 2]
    tokens = to_tokens([seqs[i] for i in idx], int(model.max_len))
    return seqs, idx, tokens


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def train_masker(
    model: Any,
    sequences: Sequence,
    target: int,
    params: CreatParams | None = None,
    *,
    progress: Callable[[dict], None] | None = None,
) -> tuple[Masker, list[dict]]:
    """Train CREAT's masker against the frozen surrogate ``model`` on ``sequences`` (0-based
    item-id arrays) for target item ``target``.

    Returns ``(masker, history)``; ``history`` holds one dict per epoch: ``stage`` (1, 2),
    ``epoch``, the means over the epoch's rollouts of the final-step rewards ``dir``, ``div``,
    ``dist`` (minus the DLOT of each rollout's polluted batch), ``cost`` (mean per-sequence
    stealth cost), and of the updates' ``loss``, ``kl`` and ``delta`` (NaN in stage 1).
    ``progress(record)`` is called after every epoch.
    """
    p = CreatParams() if params is None else params
    if not isinstance(p, CreatParams):
        raise ConfigError(f"params must be a CreatParams (got {type(p).__name__})")
    _, _, tokens = _prepare(model, sequences, target)
    target = int(target)
    tt = target + 1
    tokens = tokens[_valid(tokens, tt).any(1)]
    if tokens.shape[0] == 0:
        raise ConfigError(
            "no sequence can be polluted: every sequence has < 2 items or is only the target"
        )
    d = int(model.item_emb.weight.shape[1])
    L = int(model.max_len)
    masker = Masker(d, L, p.hidden, p.pos_dim, p.gru_layers, p.dropout, seed=p.seed)
    opt = torch.optim.Adam(masker.parameters(), lr=p.lr)
    gen = torch.Generator().manual_seed(derive_seed(p.seed, "creat-actions"))
    rng = np.random.default_rng(derive_seed(p.seed, "creat-batches"))
    replay = _Replay(p.replay_size)
    params_list = list(masker.parameters())
    history: list[dict] = []
    pi_att: Masker | None = None

    with _eval_mode(model), torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(p.seed, "creat-dropout"))
        for stage, epochs in ((1, p.stage1_epochs), (2, p.stage2_epochs)):
            if stage == 2:
                pi_att = copy.deepcopy(masker).eval()
                for q in pi_att.parameters():
                    q.requires_grad_(False)
            for epoch in range(epochs):
                rec: dict[str, list[float]] = {
                    k: [] for k in ("dir", "div", "dist", "cost", "loss", "kl", "delta")
                }
                perm = torch.from_numpy(rng.permutation(tokens.shape[0]))
                for a in range(0, tokens.shape[0], p.batch_size):
                    orig = tokens[perm[a : a + p.batch_size]]
                    ctx = _StealthContext(model, orig, p)
                    ro = _rollout(model, masker, orig, target, p, gen, rng, ctx=ctx)
                    rec["dir"].append(float(ro.r_dir[-1].mean()))
                    rec["div"].append(float(ro.r_div[-1].mean()))
                    rec["dist"].append(-float(np.mean(ro.values)))
                    rec["cost"].append(float(ro.cost.mean()))
                    adv = p.w_dir * _znorm(ro.r_dir, p.G) + p.w_div * _znorm(ro.r_div, p.G)
                    if stage == 1:
                        batch = _transitions(ro, adv)
                        for _ in range(p.update_steps):
                            loss = _stage1_step(model, masker, opt, batch, tt)
                            rec["loss"].append(loss)
                    else:
                        assert pi_att is not None
                        cost = ro.cost[None].expand(p.K, -1)  # the terminal cost, every step
                        batch = _transitions(
                            ro, adv, cadv=_znorm(cost, p.G), rho=_threshold(cost, p.G, p)
                        )
                        n_fresh = batch["actions"].shape[0]
                        old = replay.sample(round(p.replay_ratio * n_fresh), rng)
                        both = (
                            batch
                            if old is None
                            else {k: torch.cat([batch[k], old[k]]) for k in _Replay.KEYS}
                        )
                        for _ in range(p.update_steps):
                            loss, kl, delta = _stage2_step(
                                model, masker, pi_att, opt, params_list, both, tt, p
                            )
                            rec["loss"].append(loss)
                            rec["kl"].append(kl)
                            rec["delta"].append(delta)
                        replay.add(batch)
                record: dict[str, Any] = {"stage": stage, "epoch": epoch}
                record.update({k: _mean(v) for k, v in rec.items()})
                history.append(record)
                if progress is not None:
                    progress(record)
    masker.eval()
    return masker, history


def _stage1_step(
    model: Any, masker: Masker, opt: torch.optim.Optimizer, batch: dict, tt: int
) -> float:
    masker.train()
    st = batch["states"]
    logp = masker(batch["phis"], _item_emb(model, st), _valid(st, tt))
    lp = logp.gather(1, batch["actions"][:, None]).squeeze(1)
    loss = -(lp * batch["adv"]).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())


def _stage2_step(
    model: Any,
    masker: Masker,
    pi_att: Masker,
    opt: torch.optim.Optimizer,
    params_list: list[nn.Parameter],
    batch: dict,
    tt: int,
    p: CreatParams,
) -> tuple[float, float, float]:
    st = batch["states"]
    emb, valid = _item_emb(model, st), _valid(st, tt)
    with torch.no_grad():
        logq = pi_att(batch["phis"], emb, valid)
    masker.train()
    logp_all = masker(batch["phis"], emb, valid)
    lp = logp_all.gather(1, batch["actions"][:, None]).squeeze(1)
    ratio = torch.exp(lp - batch["logp"])
    clipped = ratio.clamp(1.0 - p.clip_eps, 1.0 + p.clip_eps)
    A, C = batch["adv"], batch["cadv"]
    kl = (logp_all.exp() * (logp_all - logq)).sum(-1).mean()
    l_r = -torch.min(ratio * A, clipped * A).mean() + p.kl_coef * kl
    l_c = torch.max(ratio * C, clipped * C).mean()
    g_r = _flat_grad(l_r, params_list)
    g_c = _flat_grad(l_c, params_list)
    violation = float(l_c.detach()) - float(batch["rho"].mean())
    delta = barrier_delta(
        torch.cat([g.reshape(-1) for g in g_r]),
        torch.cat([g.reshape(-1) for g in g_c]),
        violation,
        p.kappa,
        clip=p.barrier_clip,
    )
    opt.zero_grad(set_to_none=True)
    for q, gr, gc in zip(params_list, g_r, g_c):
        q.grad = gr + delta * gc
    opt.step()
    return float(l_r.detach()), float(kl.detach()), delta


# =========================================================================== inference


def _greedy(model: Any, masker: Masker, tokens: torch.Tensor, target: int, K: int) -> torch.Tensor:
    tt = target + 1
    cur = tokens.clone()
    with torch.no_grad(), _eval_mode(masker):
        for _ in range(int(K)):
            valid = _valid(cur, tt)
            if not bool(valid.any()):
                break
            phi = encode(model, cur)
            a, _, has = masker.act(phi, _item_emb(model, cur), valid, greedy=True)
            rows = has.nonzero(as_tuple=True)[0]
            cur[rows, a[rows]] = tt
    return cur


def pollute(
    model: Any,
    masker: Masker,
    sequences: Sequence,
    target: int,
    K: int,
    *,
    batch_size: int = 256,
) -> list[np.ndarray]:
    """Polluted copies of ``sequences``: K greedy (argmax) masker steps, each writing ``target``
    at one position among the last ``model.max_len`` items that is not already ``target``.

    At most ``K`` positions change (fewer when fewer are available); nothing else changes;
    sequences with fewer than 2 items are returned unchanged (as copies).
    """
    if int(K) != K or K < 1:
        raise ConfigError(f"K must be an integer >= 1 (got {K})")
    if masker.max_len != int(model.max_len) or masker.d != int(model.item_emb.weight.shape[1]):
        raise ConfigError(
            f"masker (d={masker.d}, max_len={masker.max_len}) does not fit the model "
            f"(d={model.item_emb.weight.shape[1]}, max_len={model.max_len})"
        )
    seqs, idx, tokens = _prepare(model, sequences, target)
    out = [s.copy() for s in seqs]
    L = int(model.max_len)
    with _eval_mode(model):
        for a in range(0, len(idx), int(batch_size)):
            tok = tokens[a : a + batch_size]
            new = _greedy(model, masker, tok, int(target), int(K))
            changed = (new != tok).numpy()
            for j, i in enumerate(idx[a : a + batch_size]):
                s = out[i]
                n = min(s.size, L)
                s[s.size - n :][changed[j, L - n :]] = int(target)
    return out


@dataclass
class CreatResult:
    """:func:`creat_attack`: the polluted sequences, the trained masker and its history."""

    sequences: list[np.ndarray]
    masker: Masker
    history: list[dict]


def creat_attack(
    model: Any,
    sequences: Sequence,
    target: int,
    params: CreatParams | None = None,
    *,
    progress: Callable[[dict], None] | None = None,
) -> CreatResult:
    """:func:`train_masker` then :func:`pollute` the same sequences with budget ``params.K``."""
    p = CreatParams() if params is None else params
    masker, history = train_masker(model, sequences, target, p, progress=progress)
    return CreatResult(pollute(model, masker, sequences, target, p.K), masker, history)
