"""Spec of ``fedlm`` (federated causal language model): Params and message keys.

Server half :mod:`fedrec.strategies.fedlm`, client half :class:`fedrec.clients.fedlm.LMClient`.

- handshake (``query.fedrec_hello``): :data:`NUM_TRAIN` (training documents, repeats
  included), :data:`NUM_FACTS` (distinct trained facts), :data:`NUM_TEST` (held-out facts),
  :data:`VOCAB` and :data:`CONTEXT`;
- train: reply the full model weights, :data:`NUM_EXAMPLES` (documents) and
  :data:`TRAIN_LOSS`;
- evaluate: per split (``train`` = the kept trained facts, ``forgot`` = the facts of
  forgotten people, ``test`` = held-out people), sums: ``<split>-nll-sum``,
  ``<split>-em`` (greedy exact matches) and ``<split>-n``; never a text;
- ``query.lm_mrd`` (config :data:`MRD_SEED`, :data:`MRD_K`, :data:`MRD_SIGMA`): the client
  scores its forgotten facts by MRD and keeps the scores; reply only a summary
  (:data:`MRD_SUMMARY_KEYS`) of ``log10 MRD``;
- ``query.lm_unlearn`` (config :data:`UNLEARN_KEYS`): local unlearning steps; reply the
  model weights and :data:`NUM_EXAMPLES` (the forgotten facts).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.config import POSITIVE, key


@dataclass(frozen=True)
class CausalLMParams:
    """``model.params.*`` of ``model.name = "causal-lm"``."""

    d_model: int = key(128, "Width of the transformer (a multiple of n-heads).", **POSITIVE)
    n_layers: int = key(2, "Transformer blocks.", **POSITIVE)
    n_heads: int = key(4, "Attention heads.", **POSITIVE)


@dataclass(frozen=True)
class FedLMParams:
    server_optimizer: str = key(
        "sgd",
        "sgd: FedAvg (w += server-lr * mean update; server-lr 1 is plain FedAvg); "
        "adam: FedAdam on the pseudo-gradient (Reddi et al. 2021).",
        choices=("sgd", "adam"),
    )
    server_lr: float = key(1.0, "Server learning rate.", check=lambda v: v > 0, check_doc="> 0")


MODEL_NAME = "causal-lm"
# handshake
NUM_TRAIN = "num-train"
NUM_FACTS = "num-facts"
NUM_TEST = "num-test"
VOCAB = "vocab"
CONTEXT = "context"
# train reply
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
# evaluate reply
EVAL_SPLITS = ("train", "forgot", "test")


def eval_key(split: str, what: str) -> str:
    """``<split>-nll-sum`` / ``<split>-em`` / ``<split>-n``."""
    return f"{split}-{what}"


# query.lm_mrd
MRD_SEED = "mrd-seed"
MRD_K = "mrd-k"
MRD_SIGMA = "mrd-sigma"
MRD_SUMMARY_KEYS = ("mrd-n", "mrd-mean", "mrd-q25", "mrd-q50", "mrd-q75")
# query.lm_unlearn config
UNLEARN_KEYS = (
    "loss",
    "steps",
    "lr",
    "batch-size",
    "sampling",
    "tau0",
    "tau-end",
    "step-offset",
    "total-steps",
    "beta",
    "alpha",
    "seed",
)
