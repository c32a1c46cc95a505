"""Spec of ``u2a`` (federated Unlearning to Align): Params and message keys.

Server half :mod:`fedrec.strategies.u2a`, client half :class:`fedrec.clients.u2a.U2AClient`.
Rounds ``1..num-server-rounds`` fine-tune the assistant (``fedlm``'s train phase on the
clients' SFT documents); every later round (``align-rounds`` of them) aligns it:

- ``query.u2a_score`` (``selection = "u2a"`` only): arrays = the global weights followed
  by ``grad J`` (same shapes); config :data:`SCORE_CONFIG`. Reply metric :data:`SCORES`:
  one float per candidate negative the client holds, in its local order. Nothing else
  leaves the client: not the negatives, not their gradients;
- ``train`` with :data:`ALIGN` = 1: config :data:`IDX` (local indices of the client's
  selected negatives) and :data:`WEIGHTS` (their U2A weights), or ``dpo`` = 1 (the DPO
  baseline on all its (chosen, negative) pairs); reply the weights after
  ``align-steps`` local steps and :data:`NUM_EXAMPLES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.config import POSITIVE, key


def _unit(v: float) -> bool:
    return 0 <= v < 1


@dataclass(frozen=True)
class U2AParams:
    # server optimizer of the fine-tuning rounds (as fedlm)
    server_optimizer: str = key(
        "sgd", "Fine-tuning rounds: sgd (FedAvg) or adam (FedAdam).", choices=("sgd", "adam")
    )
    server_lr: float = key(1.0, "Server learning rate.", check=lambda v: v > 0, check_doc="> 0")
    # the assistant corpus
    negatives_per_prompt: int = key(
        2, "Bad responses per prompt (1-3).", check=lambda v: 1 <= v <= 3, check_doc="in 1..3"
    )
    harmful_fraction: float = key(
        0.1,
        "Share of validation prompts with a planted harmful negative.",
        check=_unit,
        check_doc="in [0, 1)",
    )
    validation_fraction: float = key(
        0.2, "Share of prompts in the server's validation set.", check=_unit, check_doc="in [0, 1)"
    )
    chosen_repeats: int = key(2, "Copies of each chosen answer in the SFT data.", **POSITIVE)
    # alignment
    align_rounds: int = key(10, "Alignment rounds after the fine-tuning rounds.", **POSITIVE)
    selection: str = key(
        "u2a",
        "u2a (scores, greedy budget, mirror-descent weights), all (every negative, uniform), "
        "random (budget negatives drawn per round, uniform) or dpo (DPO fine-tune baseline).",
        choices=("u2a", "all", "random", "dpo"),
    )
    loss: str = key(
        "ga", "Unlearning loss: ga, graddiff or npo.", choices=("ga", "graddiff", "npo")
    )
    score: str = key(
        "dot",
        "dot: -<grad J, grad l_u>; cg: with (H + damping I)^{-1} grad J, H the Hessian of the "
        "client's kept answers' NLL (conjugate gradients on exact HVPs).",
        choices=("dot", "cg"),
    )
    budget: int = key(
        32, "U2A's budget m: negatives selected per round (also random's).", **POSITIVE
    )
    eta: float = key(
        1.0,
        "Mirror-descent step on max-normalised scores.",
        check=lambda v: v >= 0,
        check_doc=">= 0",
    )
    align_steps: int = key(5, "Local unlearning steps per alignment round.", **POSITIVE)
    align_lr: float = key(
        1e-3, "Local Adam learning rate of alignment.", check=lambda v: v > 0, check_doc="> 0"
    )
    beta: float = key(0.1, "NPO's and DPO's beta.", check=lambda v: v > 0, check_doc="> 0")
    alpha: float = key(1.0, "GradDiff's retain weight.", check=lambda v: v >= 0, check_doc=">= 0")
    cg_iters: int = key(10, "Conjugate-gradient iterations (score = cg).", **POSITIVE)
    damping: float = key(0.1, "Damping of H (score = cg).", check=lambda v: v > 0, check_doc="> 0")
    init: str = key(
        "",
        "A fine-tuned assistant to align (a checkpoint.npz, or a u2a_trace round file, of a run "
        "with the same model and data): its weights start the run and the fine-tuning rounds are "
        "skipped (the run is the align-rounds only). Empty: fine-tune first.",
    )
    trace: bool = key(
        False, "Write the weights after every alignment round to <run>/u2a_trace/round-<t>.npz."
    )


SCORES = "u2a-scores"
ALIGN = "u2a-align"
DPO = "u2a-dpo"
IDX = "u2a-idx"
WEIGHTS = "u2a-weights"
NUM_EXAMPLES = "num-examples"
NUM_NEGATIVES = "num-negatives"
SCORE_CONFIG = ("loss", "score", "beta", "cg-iters", "damping")
